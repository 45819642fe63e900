"""Regenerate loracam/models/configs/sd15: SD1.5's component configs and its CLIP tokenizer files.

The folder holds no weights; it lets diffusers load single-file checkpoints offline
(`from_single_file(..., config=folder)`) and lets loracam build random-weight SD1.5 models.

The tokenizer is rebuilt from the BPE merge list inside the open_clip_torch wheel
(open_clip/bpe_simple_vocab_16e6.txt.gz) using CLIP's published construction: 256 byte symbols,
the same with an end-of-word marker, one symbol per merge, then the two special tokens.
Usage: python tools/make_sd15_config.py PATH/TO/open_clip_torch-*.whl
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "loracam" / "models" / "configs" / "sd15"
N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges, giving a 49408-token vocabulary


def byte_symbols() -> list[str]:
    """CLIP/GPT-2's reversible byte -> printable unicode symbols, in CLIP's vocabulary order.

    The printable bytes come first (as themselves, in codepoint order), then the other 68 bytes mapped
    to codepoints 256, 257, ... in byte order.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def build_tokenizer(bpe_lines: list[str]) -> tuple[dict[str, int], list[str]]:
    merges = [tuple(line.split()) for line in bpe_lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return vocab, [" ".join(m) for m in merges]


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    vocab, merges = build_tokenizer(lines)
    tok = OUT / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    for name, cfg in CONFIGS.items():
        path = OUT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(vocab)} tokens, {len(merges)} merges)")


# SD1.5's published component configurations (runwayml/stable-diffusion-v1-5 layout).
CONFIGS = {
    "model_index.json": {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler/scheduler_config.json": {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    },
    "text_encoder/config.json": {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "quick_gelu",
        "hidden_size": 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 1,
        "projection_dim": 768,
        "torch_dtype": "float32",
        "vocab_size": 49408,
    },
    "tokenizer/special_tokens_map.json": {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    },
    "tokenizer/tokenizer_config.json": {
        "add_prefix_space": False,
        "bos_token": "<|startoftext|>",
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    },
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
}

if __name__ == "__main__":
    main(sys.argv[1])
