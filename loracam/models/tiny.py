"""Configs of random-weight models of the families' shapes: full size (benchmarks) and tiny (tests).

The tiny model keeps SD1.5's layout (4 U-Net blocks, 2 layers each, cross-attention in the first three,
a 4-block VAE with 8x downsampling, a CLIP text encoder with the real 49408-token tokenizer) at small
widths, so every code path that works on it works on the real architecture, in well under a second.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

CONFIGS_DIR = Path(str(resources.files("loracam.models") / "configs"))
SD15_DIR = CONFIGS_DIR / "sd15"
SDXL_DIR = CONFIGS_DIR / "sdxl"


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


# ---------------------------------------------------------------------------------------------
# SDXL: stabilityai/stable-diffusion-xl-base-1.0's configs (shared/docs/research/sdxl_flux.md s2.1); both
# tokenizers are CLIP's BPE, which the SD1.5 folder ships once: the second pads with "!" (id 0), the first with
# its end token.

SDXL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")


def sdxl_configs() -> dict[str, dict]:
    """Component configs of the full SDXL base architecture."""
    return {c: _read(SDXL_DIR, c) for c in SDXL_COMPONENTS}


def tiny_sdxl_configs() -> dict[str, dict]:
    """SDXL's structure (two CLIPs of different widths concatenated, pooled + size conditioning, U-Net blocks
    with 1 and 2 transformer layers) at small widths: context 32 + 48 = 80 (SDXL: 768 + 1280 = 2048), added
    embedding 6 x 8 + 48 = 96 (SDXL: 6 x 256 + 1280 = 2816). The two encoders' widths differ, as in SDXL:
    diffusers' single-file reader tells them apart by it."""
    full = sdxl_configs()
    te = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
          "projection_dim": 32}
    te2 = te | {"hidden_size": 48, "intermediate_size": 64, "projection_dim": 48}
    unet = full["unet"] | {
        "block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": [2, 4],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "transformer_layers_per_block": [1, 2],
        "cross_attention_dim": 80, "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 96,
        "norm_num_groups": 32, "sample_size": 16}
    vae = full["vae"] | {"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
                         "up_block_types": ["UpDecoderBlock2D"] * 2, "sample_size": 128}
    return {"unet": unet, "vae": vae, "text_encoder": full["text_encoder"] | te,
            "text_encoder_2": full["text_encoder_2"] | te2, "scheduler": full["scheduler"]}


def clip_tokenizer(folder: Path):
    """A CLIPTokenizer with ``folder``'s settings (its pad token) on the BPE files the SD1.5 folder ships."""
    from transformers import CLIPTokenizer

    settings = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    keep = ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length")
    return CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer", **{k: settings[k] for k in keep if k in settings})


def _read(folder: Path, component: str) -> dict:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((folder / component / name).read_text(encoding="utf-8"))
