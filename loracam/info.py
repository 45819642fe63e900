"""``loracam info FILE``: what a PNG, LoRA, ControlNet or checkpoint file is, as one dict."""

from __future__ import annotations

from pathlib import Path

from loracam.errors import LoracamError
from loracam.generate.infotext import read_png_infotext
from loracam.models.hashing import HashCache


def describe(path: Path, hash_cache: HashCache) -> dict:
    """Infotext of a PNG; metadata, dim, alpha, family, modules and hashes of a LoRA; family of a model."""
    if not path.exists():
        raise LoracamError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg", ".webp"):
        info = read_png_infotext(path)
        return {"kind": "image", "prompt": info.prompt, "negative_prompt": info.negative, "parameters": info.params}
    if suffix == ".safetensors":
        return _describe_safetensors(path, hash_cache)
    raise LoracamError(f"{path.name}: loracam info reads .png images and .safetensors LoRAs/checkpoints")


def _describe_safetensors(path: Path, hash_cache: HashCache) -> dict:
    from loracam.lora import read_lora
    from loracam.models.families import family_of_checkpoint
    from loracam.models.loader import checkpoint_family, checkpoint_keys

    keys = checkpoint_keys(path, allow_pickle=False)
    known = family_of_checkpoint(keys)
    if known or any(k.startswith("model.diffusion_model.") for k in keys):
        try:
            family, usable = checkpoint_family(keys, path.name), "yes"
        except LoracamError as exc:  # a file of a family loracam does not run (yet) is described, with why
            if known is None:
                raise
            family, usable = known, f"no: {exc}"
        sha = hash_cache.sha256(path)
        return {"kind": "checkpoint", "family": family.name, "family_name": family.short, "usable": usable,
                "tensors": len(keys), "sha256": sha, "hash": sha[:10]}
    if any(k.startswith("control_model.") for k in keys) or "controlnet_cond_embedding.conv_in.weight" in keys:
        return _describe_controlnet(path, keys)
    lora = read_lora(path)
    dims = sorted({m.dim for m in lora.modules.values()})
    alphas = sorted({m.alpha for m in lora.modules.values()})
    convs = sum(1 for m in lora.modules.values() if m.down.ndim == 4 and m.down.shape[-1] > 1)
    return {
        "kind": "lora",
        "name": lora.name,
        "layout": lora.layout,
        "network": "+".join(lora.networks),  # LoRA (LoCon), LoHa, LoKr as read; +DoRA with magnitudes
        "family": lora.family,
        "dim": dims[0] if len(dims) == 1 else dims,
        "alpha": alphas[0] if len(alphas) == 1 else alphas,
        "modules": len(lora.modules),
        "unet_modules": sum(1 for m in lora.modules.values() if m.component == "unet"),
        "te_modules": sum(1 for m in lora.modules.values() if m.component == "te"),
        "conv3x3_modules": convs,
        "dora_modules": lora.dora_modules,
        "hash": hash_cache.addnet_hash(path)[:12],
        "metadata": lora.metadata,
    }


def _describe_controlnet(path: Path, keys: dict) -> dict:
    """A ControlNet file: its naming, text width (768: SD1.x), hint stages, and the name and hash infotexts use."""
    from loracam.control.models import CONFIG_KEY, NetFile, family_of_keys, text_width

    ldm = any(k.startswith("control_model.") for k in keys)
    width = text_width(keys, ldm)
    hint = sum(1 for k in keys if "input_hint_block" in k and k.endswith(".weight")) if ldm else \
        sum(1 for k in keys if k.startswith("controlnet_cond_embedding.") and k.endswith(".weight"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        own_config = CONFIG_KEY in (f.metadata() or {})
    from loracam.control.union import TYPES, is_union_state

    net = NetFile(path.stem, path)
    family = family_of_keys(keys, width) or f"unknown (text width {width})"
    default = "SDXL's, made from the shipped SDXL U-Net" if family == "sdxl" else "SD1.5's, shipped with loracam"
    union = {"union_types": ", ".join(TYPES[:keys["task_embedding"][0]])} if is_union_state(keys) else {}
    return {
        "kind": "controlnet",
        "names": "LDM (control_model.*)" if ldm else "diffusers",
        "family": family,
        **union,
        "hint_convs": hint,
        "config": "in the file (loracam)" if own_config else
                  f"{path.with_suffix('.json').name}, beside it" if path.with_suffix(".json").exists() else default,
        "tensors": len(keys),
        "infotext_model": net.label,
    }
