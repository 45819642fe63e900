"""Configs of random-weight SD1.5-shaped models: full size (benchmarks) and tiny (tests).

The tiny model keeps SD1.5's layout (4 U-Net blocks, 2 layers each, cross-attention in the first three,
a 4-block VAE with 8x downsampling, a CLIP text encoder with the real 49408-token tokenizer) at small
widths, so every code path that works on it works on the real architecture, in well under a second.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

SD15_DIR = Path(str(resources.files("loracam.models") / "configs" / "sd15"))


def sd15_config(component: str) -> dict:
    """One component config (unet, vae, text_encoder, scheduler) of the shipped SD1.5 folder."""
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((SD15_DIR / component / name).read_text(encoding="utf-8"))


def tiny_configs() -> dict[str, dict]:
    """Component configs of ``random:tiny``: SD1.5's structure at widths 32/64, 64x64 px by default."""
    unet = sd15_config("unet") | {
        "block_out_channels": [32, 32, 64, 64],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "sample_size": 8,
    }
    vae = sd15_config("vae") | {"block_out_channels": [32, 32, 64, 64], "sample_size": 64}
    text_encoder = sd15_config("text_encoder") | {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 4,
        "projection_dim": 32,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": sd15_config("scheduler")}


def sd15_configs() -> dict[str, dict]:
    """Component configs of ``random:sd15``: the full SD1.5 architecture."""
    return {c: sd15_config(c) for c in ("unet", "vae", "text_encoder", "scheduler")}
