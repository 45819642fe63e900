"""LoRA names on diffusion-transformer families (Z-Image): the layouts trainers write, and the one loracam writes.

Z-Image LoRAs come in the layouts diffusers' Z-Image loader accepts (diffusers 0.42.1,
``_convert_non_diffusers_z_image_lora_to_diffusers``): diffusers/peft names under ``transformer.``; ai-toolkit's
same names under ``diffusion_model.``; musubi-tuner's kohya names ``lora_unet_layers_0_attention_to_q`` with alpha;
kohya-style files over Z-Image's original modules, whose attention is one fused ``attention.qkv`` and
``attention.out``; LyCORIS LoKr. Inside loracam every module is named the kohya way on diffusers' module paths
(``lora_unet_layers_0_attention_to_q``), so the rest of loracam handles them as it handles SD's.

loracam writes ai-toolkit's layout: ``diffusion_model.<diffusers path>.lora_A.weight`` / ``.lora_B.weight`` with
an ``.alpha`` per module. diffusers' ``load_lora_weights`` reads it (the prefix dropped, alpha folded into the
weights), and ComfyUI's Z-Image key map takes ``diffusion_model.`` + diffusers names onto its fused qkv slices
(comfy/lora.py, z_image_to_diffusers), so the same file works in both; musubi's ``lora_unet_`` files need
converting before ComfyUI reads them (families_2026.md s2.1).
"""

from __future__ import annotations

import re
from typing import Iterator

import torch
from torch import nn

WRITE_PREFIX = "diffusion_model."
# kohya names over Z-Image's original modules -> diffusers' paths (what diffusers' converter normalises)
_ORIGINAL = ((re.compile(r"_attention_out$"), "_attention_to_out_0"),)
_FUSED_QKV = re.compile(r"^(?P<block>.+_attention)_qkv$")
ZIMAGE_PATH = re.compile(r"^(layers|noise_refiner|context_refiner)_\d+_(attention|feed_forward|adaLN_modulation)")
# which layers of a Z-Image block a new LoRA trains: attention and feed-forward of every block (main layers and
# both refiners), as ai-toolkit and diffusers' train_dreambooth_lora_z_image target them; not the modulation
BLOCKS = {"zimage": ("ZImageTransformerBlock",)}
TARGET = re.compile(r"(^|\.)(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.w[123])$")


def is_zimage_path(path: str) -> bool:
    """A U-Net-component path that only Z-Image's transformer has."""
    return bool(ZIMAGE_PATH.match(path))


def normalize(records: list, filename: str) -> list:
    """Records on Z-Image's original module names brought to diffusers' paths: ``attention_out`` is ``to_out_0``;
    a fused ``attention_qkv`` becomes to_q/to_k/to_v with the shared down and a third of up each, the same delta
    (up = [up_q; up_k; up_v], so up @ down stacks the three projections' deltas). A qkv module next to split ones
    is the same weights twice (files that carry both), and is dropped, as diffusers drops it."""
    from loracam.lora.layouts import RawModule

    paths = {r.path for r in records}
    out = []
    for r in records:
        for pattern, repl in _ORIGINAL:
            r.path = pattern.sub(repl, r.path)
        m = _FUSED_QKV.match(r.path) if r.component == "unet" else None
        if m is None:
            out.append(r)
            continue
        if any(f"{m['block']}_to_{p}" in paths for p in "qkv"):
            continue
        if r.up is None or r.down is None or r.up.shape[0] % 3:
            from loracam.errors import LoracamError

            raise LoracamError(f"{filename}: its fused {r.path} module cannot be split into q, k and v "
                               f"(up is {list(r.up.shape) if r.up is not None else 'missing'}); export it again")
        for p, up in zip("qkv", r.up.chunk(3, dim=0)):
            out.append(RawModule(r.component, f"{m['block']}_to_{p}", r.down, up.contiguous(), r.alpha,
                                 kind=r.kind))
    return out


def targets(root: nn.Module, family: str) -> Iterator[tuple[str, nn.Module]]:
    """(dotted path, Linear) of the layers a new LoRA on this family's transformer trains."""
    blocks = BLOCKS[family]
    for block_path, block in root.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for path, child in block.named_modules():
            if isinstance(child, nn.Linear) and TARGET.search(path):
                yield f"{block_path}.{path}", child


def write_tensors(modules) -> dict[str, torch.Tensor]:
    """ai-toolkit's layout of kohya-named modules (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    for key, m in modules.items():
        if key != m.name or not m.name.startswith("lora_unet_"):
            raise ValueError(f"LoRA module {key!r} must be a transformer module keyed by its kohya name (lora_unet_*)")
        stem = WRITE_PREFIX + diffusers_path(m.name[len("lora_unet_"):])
        tensors[f"{stem}.lora_A.weight"] = m.down.detach().to("cpu").contiguous()
        tensors[f"{stem}.lora_B.weight"] = m.up.detach().to("cpu").contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(m.alpha), dtype=torch.float32)
    return tensors


# module names of Z-Image's transformer that keep their underscores when a kohya name becomes a dotted path
_KEEP = ("noise_refiner", "context_refiner", "feed_forward", "adaLN_modulation", "to_q", "to_k", "to_v", "to_out",
         "all_x_embedder", "all_final_layer", "cap_embedder", "t_embedder", "x_pad_token", "cap_pad_token")


def diffusers_path(flat: str) -> str:
    """``layers_0_attention_to_out_0`` -> ``layers.0.attention.to_out.0``."""
    parts, i, out = flat.split("_"), 0, []
    while i < len(parts):
        for keep in sorted(_KEEP, key=len, reverse=True):
            n = keep.count("_") + 1
            if "_".join(parts[i:i + n]) == keep:
                out.append(keep)
                i += n
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)
