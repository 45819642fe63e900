"""``loracam demo``: the main job on the built-in model.

Until the toy model ships, the demo renders a few images with ``random:tiny``, an untrained
SD1.5-shaped model, to show the whole path (prompt parsing, LoRA, sampling, PNG infotext) working.
Its images are noise, and the demo says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from loracam.generate import GenRequest, generate
from loracam.io import writable_dir
from loracam.lora import LoraLibrary, random_lora, write_kohya
from loracam.models import ModelCache


def run_demo(output: Path, models: ModelCache, echo: Callable[[str], None] = print) -> list[Path]:
    """Render a seed row on random:tiny with and without a LoRA; return the saved PNGs."""
    out = writable_dir(output)
    echo("loracam demo: the built-in toy model is not bundled yet, so this renders with random:tiny,")
    echo("an UNTRAINED model with random weights. The images are noise; what is real is the path they took.")
    base = "random:tiny"
    req = GenRequest(prompt="1girl, full body, red dress, (white shoes:1.2), blue background",
                     negative="lowres", base=base, steps=8, seed=1234, batch_size=4, sampler="DPM++ 2M")
    model = models.get(base, *_device_dtype())
    lora_dir = writable_dir(out / "loras", "LoRA folder")
    lora_path = lora_dir / "demo_style.safetensors"
    if not lora_path.exists():
        modules = random_lora(model.unet, model.text_encoder, dim=4, alpha=2, seed=7)
        write_kohya(lora_path, modules, {"ss_output_name": "demo_style", "ss_network_dim": "4",
                                         "ss_network_alpha": "2", "ss_base_model_version": "sd_v1"})
    library = LoraLibrary([lora_dir], models.hash_cache)
    saved = generate(req, models, library).save(out)
    with_lora = GenRequest(**{**req.__dict__, "prompt": req.prompt + " <lora:demo_style:0.8>"})
    saved += generate(with_lora, models, library).save(out)
    echo(f"wrote {len(saved)} images to {out}/ (open one with `loracam info` to see its A1111 infotext):")
    for p in saved:
        echo(f"  {p}")
    return saved


def _device_dtype():
    from loracam.models import pick_device, pick_dtype

    dev = pick_device("auto")
    return dev, pick_dtype("auto", dev)
