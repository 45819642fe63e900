"""LoRA files: read any common layout into kohya-named modules, write kohya files, make random LoRAs.

Whatever layout a file has (kohya, peft/diffusers, old diffusers), ``read_lora`` returns its modules under
kohya names, which is what A1111, ComfyUI and loracam's own files use. ``write_kohya`` writes the format
A1111 reads, with the ``sshs_model_hash`` it shows as "Lora hashes".
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes
from loracam.lora import layouts
from loracam.lora.naming import component_of, kohya_targets

LORA_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".ckpt", ".bin", ".pth")


@dataclass(frozen=True)
class LoraModule:
    """One LoRA module: delta_W = multiplier x (alpha / dim) x up @ down (conv: flattened, then reshaped).

    A DoRA module also has a ``magnitude``: the layer becomes W + multiplier x (W_dora - W), with
    W_dora = (W + delta_W) x magnitude / ||W + delta_W||, the norm taken per output row when the magnitude has
    one value per output ([out, 1, ...], peft's and LyCORIS 3+'s default) and per input column otherwise
    ([1, in, ...], the DoRA paper's and kohya's). ``dora_weight`` computes it."""

    name: str  # kohya module name: "lora_unet_down_blocks_0_attentions_0_proj_in"
    down: torch.Tensor  # [dim, in] or [dim, in, kh, kw]
    up: torch.Tensor  # [out, dim] or [out, dim, 1, 1]
    alpha: float  # the file's alpha; = dim when the file has none
    magnitude: torch.Tensor | None = None  # DoRA: [out] or [out, 1(, 1, 1)] or [1, in(, 1, 1)] as the file has it

    @property
    def dim(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.dim

    @property
    def component(self) -> str:
        """"unet" or "te"."""
        return component_of(self.name)

    def delta(self) -> torch.Tensor:
        """(alpha/dim) x up @ down in fp32, shaped like the target weight ([out, in] or [out, in, kh, kw])."""
        up = self.up.float().flatten(1)
        down = self.down.float().flatten(1)
        shape = (self.up.shape[0], *self.down.shape[1:])
        return (self.scale * (up @ down)).reshape(shape)

    def dora_gain(self, weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """DoRA's magnitude / ||W + delta_W|| for a base weight W, in fp32: [out] when the norm is per output row,
        [in] when per input column (which of the two is the second value)."""
        w = weight.detach().float()
        merged = w + self.delta().reshape(w.shape)
        on_out = dora_on_output(self.magnitude, w.shape)
        norm = (merged if on_out else merged.transpose(0, 1)).flatten(1).norm(dim=1)
        return self.magnitude.float().reshape(-1) / (norm + torch.finfo(torch.float32).eps), on_out

    def dora_delta(self, weight: torch.Tensor) -> torch.Tensor:
        """W_dora - W in fp32 for a base weight W: what multiplier 1 adds to the layer.

        As ComfyUI's and A1111's DoRA (and LyCORIS' merge at multiplier 1): the norm is that of the merged
        W + delta_W, per output row or per input column as the magnitude's shape says; a multiplier m gives
        W + m x (W_dora - W), so 0 is the base layer (LyCORIS' own merge keeps delta_W at m = 0)."""
        w = weight.detach().float()
        gain, on_out = self.dora_gain(w)
        shape = (-1, *[1] * (w.ndim - 1)) if on_out else (1, -1, *[1] * (w.ndim - 2))
        return (w + self.delta().reshape(w.shape)) * gain.reshape(shape) - w


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as loracam uses it: its name in prompts, base family, and modules by kohya name."""

    path: Path
    name: str  # the name prompts use: the ss_output_name alias if present, else the file stem
    stem: str
    family: str  # "sd1" | "sd2" | "sdxl" | "unknown"
    layout: str  # "kohya" | "peft" | "diffusers-legacy"
    metadata: dict[str, str]
    modules: dict[str, LoraModule]
    networks: tuple[str, ...] = ("LoRA",)  # what the file's modules are: "LoRA", "LoHa", "LoKr", and "DoRA"

    @property
    def dora_modules(self) -> int:
        return sum(1 for m in self.modules.values() if m.magnitude is not None)

    @property
    def note(self) -> str | None:
        """What a user should know before trusting the file: an SDXL LoRA with CLIP-L (lora_te1_) modules and none
        for bigG (lora_te2_). sd-scripts trains both; OneTrainer can train CLIP-L alone, so the file is applied as
        it is (as A1111 and ComfyUI do), with this said."""
        names = self.modules
        if self.family == "sdxl" and any(n.startswith("lora_te1_") for n in names) and \
                not any(n.startswith("lora_te2_") for n in names):
            return (f"{self.path.name} has CLIP-L text-encoder modules (lora_te1_) but none for bigG (lora_te2_): "
                    "applied as it is; if it was trained on both encoders, the file is incomplete: get it again")
        return None


# ---------------------------------------------------------------------------------------------
# reading


def dora_on_output(magnitude: torch.Tensor, weight_shape: torch.Size) -> bool:
    """Whether a DoRA magnitude has one value per output row (else one per input column): ComfyUI's test, the
    first axis matching the weight's outputs ([out] or [out, 1, ...]; [1, in, ...] is per input)."""
    return magnitude.ndim == 1 or (magnitude.shape[0] == weight_shape[0] and magnitude.shape[0] != 1)


def read_lora(path: Path) -> LoraFile:
    """Read a LoRA file of any supported layout; every problem is a LoracamError naming the file."""
    path = Path(path)
    tensors, metadata = _load_safetensors(path)
    keys = list(tensors)
    layouts.check_variant(keys, path.name)
    layout = layouts.detect_layout(keys)
    if layout is None:
        raise _not_a_lora(path.name, keys)
    records = layouts.PARSERS[layout](tensors, metadata, path.name)
    family = layouts.detect_family(records, metadata)
    if family == "zimage":  # Z-Image's original module names (fused qkv) to diffusers' paths
        from loracam.lora.transformer import normalize

        records = normalize(records, path.name)
    modules = _modules(records, family, path.name)
    alias = metadata.get("ss_output_name", "").strip()
    networks = sorted({r.kind for r in records}) + (["DoRA"] if any(r.magnitude is not None for r in records) else [])
    return LoraFile(path=path, name=alias or path.stem, stem=path.stem, family=family, layout=layout,
                    metadata=dict(metadata), modules=modules, networks=tuple(networks))


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise LoracamError(f"LoRA file not found: {path}; check the name and the LoRA folder")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoracamError(
            f"{path.name} is a pickle file ({path.suffix}), which can run code when loaded; loracam reads "
            ".safetensors LoRAs only. Use a .safetensors version of it"
        )
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged or foreign files
        raise LoracamError(
            f"{path.name} could not be read as a safetensors LoRA ({type(exc).__name__}: {exc}); the file is "
            "damaged, incomplete or not a safetensors file: download or export it again"
        ) from None
    return tensors, metadata


def _not_a_lora(filename: str, keys: list[str]) -> LoracamError:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return LoracamError(f"{filename} is a base model checkpoint, not a LoRA: pass it with --base")
    if any("string_to_param" in k or k.startswith(("emb_params", "clip_l", "clip_g")) for k in keys):
        return LoracamError(f"{filename} is a textual-inversion embedding, not a LoRA")
    shown = ", ".join(keys[:3]) if keys else "no tensors at all"
    return LoracamError(f"{filename} is not a LoRA (its tensors are named {shown}); check that it is the right file")


def _modules(records: list[layouts.RawModule], family: str, filename: str) -> dict[str, LoraModule]:
    modules: dict[str, LoraModule] = {}
    for rec in records:
        name = layouts.to_kohya_name(rec, family)
        if rec.down is None or rec.up is None:
            half = "up" if rec.up is None else "down"
            raise LoracamError(f"{filename} is incomplete: module {name} has no {half} weight; export it again")
        module = LoraModule(name, rec.down, rec.up, float(rec.alpha if rec.alpha is not None else rec.down.shape[0]),
                            rec.magnitude)
        _check_shapes(module, filename)
        modules[name] = module
    return modules


def _check_shapes(m: LoraModule, filename: str) -> None:
    """down [dim, in(, kh, kw)] and up [out, dim(, 1, 1)] of one rank: anything else is a damaged file."""
    ok = (
        m.down.ndim in (2, 4)
        and m.up.ndim == m.down.ndim
        and m.up.shape[1] == m.down.shape[0]
        and (m.up.ndim == 2 or tuple(m.up.shape[2:]) == (1, 1))
        and m.dim > 0
    )
    if not ok:
        raise LoracamError(
            f"{filename}: module {m.name} has inconsistent shapes (down {tuple(m.down.shape)}, up "
            f"{tuple(m.up.shape)}); the file is damaged or of an unsupported variant"
        )
    if m.magnitude is not None:
        mag, out, width = m.magnitude, m.up.shape[0], m.down.shape[1]
        per_out = mag.numel() == out and (mag.ndim == 1 or mag.shape[0] == out)
        # per input: [1, in(, 1, 1)]; a LoHa conv's down is flattened to [D, in x kh x kw], so in divides width
        per_in = mag.ndim >= 2 and mag.shape[0] == 1 and mag.numel() == mag.shape[1] and width % mag.shape[1] == 0
        if not (per_out or per_in):
            raise LoracamError(
                f"{filename}: DoRA module {m.name} has a magnitude of shape {tuple(mag.shape)}, which fits neither "
                f"its {out} outputs nor its {width} inputs; the file is damaged"
            )


# ---------------------------------------------------------------------------------------------
# writing


def write_kohya(path: Path, modules: Mapping[str, LoraModule], metadata: Mapping[str, Any],
                overwrite: bool = False, family: str | None = None) -> Path:
    """Write a LoRA with string metadata and ``sshs_model_hash``, atomically, never clobbering a file: kohya's
    layout, or for a transformer family (``family``: Z-Image) the layout its tools share (lora/transformer.py)."""
    from safetensors.torch import save

    from loracam.lora.transformer import BLOCKS, write_tensors

    path = Path(path)
    if path.exists() and not overwrite:
        raise LoracamError(f"{path} already exists; choose another name, or allow overwriting it")
    tensors = write_tensors(modules) if family in BLOCKS else _kohya_tensors(modules)
    meta = {k: _meta_str(k, v) for k, v in metadata.items() if k not in ("sshs_model_hash", "sshs_legacy_hash")}
    # The hash covers the tensor bytes only; sd-scripts computes it with just the ss_* metadata present,
    # and the body after the header does not depend on the metadata, so this is the final file's body hash.
    ss_only = {k: v for k, v in meta.items() if k.startswith("ss_")}
    meta["sshs_model_hash"] = hashlib.sha256(_body(save(tensors, metadata=ss_only))).hexdigest()
    data = save(tensors, metadata=meta)
    try:
        return atomic_write_bytes(path, data, overwrite=overwrite)
    except FileExistsError:
        raise LoracamError(f"{path} appeared while writing it; choose another name") from None
    except OSError as exc:
        raise LoracamError(f"cannot write {path}: {exc.strerror}; check that its folder exists and is writable") \
            from None


def _kohya_tensors(modules: Mapping[str, LoraModule]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for key, m in modules.items():
        if key != m.name or not m.name.startswith(("lora_unet_", "lora_te")):
            raise ValueError(f"LoRA module {key!r} must be keyed by its kohya name (lora_unet_*/lora_te*_*)")
        tensors[f"{m.name}.lora_down.weight"] = m.down.detach().to("cpu").contiguous()
        tensors[f"{m.name}.lora_up.weight"] = m.up.detach().to("cpu").contiguous()
        tensors[f"{m.name}.alpha"] = torch.tensor(float(m.alpha), dtype=torch.float32)
    return tensors


def _meta_str(key: str, value: Any) -> str:
    """safetensors metadata must be strings; dicts and lists become JSON as sd-scripts writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    raise TypeError(f"metadata {key!r} must be a string, number, bool, list or dict, not {type(value).__name__}")


def _body(data: bytes) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    return data[8 + n:]


# ---------------------------------------------------------------------------------------------
# random LoRAs for tests and benchmarks


def random_lora(unet: nn.Module, text_encoder: nn.Module | None, dim: int = 4, alpha: float | None = None,
                seed: int = 0, conv: bool = False, te: bool = True, std: float = 0.05,
                text_encoder_2: nn.Module | None = None) -> dict[str, LoraModule]:
    """A LoRA with random weights on kohya's default targets (``conv`` adds LoCon's 3x3 convs; SDXL's second text
    encoder with ``text_encoder_2``).

    down is scaled like a Kaiming init (unit-variance outputs) and up ~ N(0, std), so each layer's output
    moves by about std x sqrt(dim) x alpha/dim of its natural size: visible, not destructive. ``alpha``
    defaults to ``dim`` (scale 1). Works on meta-device models: only the layers' shapes are read.
    """
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, LoraModule] = {}
    for name, module in kohya_targets(unet, text_encoder if te else None, conv=conv,
                                      text_encoder_2=text_encoder_2 if te else None):
        down_shape, up_shape = _lora_shapes(module, dim)
        fan_in = math.prod(down_shape[1:])
        down = torch.randn(down_shape, generator=gen) / math.sqrt(fan_in)
        up = torch.randn(up_shape, generator=gen) * std
        out[name] = LoraModule(name, down, up, float(alpha if alpha is not None else dim))
    return out


def _lora_shapes(module: nn.Module, dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """kohya's LoRA shapes for a layer: linear [dim, in]/[out, dim]; conv [dim, in, kh, kw]/[out, dim, 1, 1]."""
    w = module.weight.shape
    if isinstance(module, nn.Conv2d):
        return (dim, w[1], w[2], w[3]), (w[0], dim, 1, 1)
    return (dim, w[1]), (w[0], dim)
