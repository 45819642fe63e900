"""Z-Image's parts (Tongyi-MAI, Turbo and Base): configs of the shipped folder, random models, its variants.

Z-Image is a single-stream diffusion transformer (ZImageTransformer2DModel) trained by flow matching, with
Qwen3-4B as its text encoder (the penultimate hidden state of a chat-templated prompt) and FLUX.1's 16-channel VAE
(shared/docs/research/families_2026.md s2.1). Its family entry is in families.py; what runs it is the flow path
of the engine (loracam.generate.flow) and the ``qwen3`` prompt encoder.

Its tokenizer is Qwen's byte-level BPE. Tests cannot download it, so ``random:tiny-zimage`` gets one built here:
the 256 byte symbols, merges learned by tokenizers' BPE trainer from a fixed text (deterministic), Qwen's special
tokens at the end and a chat template that writes what Qwen3's does for one user message with a generation prompt
and thinking on (``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``, as ComfyUI's Z-Image template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from loracam.models.tiny import CONFIGS_DIR

ZIMAGE_DIR = CONFIGS_DIR / "zimage"
COMPONENTS = ("transformer", "vae", "text_encoder", "scheduler")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Written for the one conversation shape the pipeline encodes; a real Qwen folder brings Qwen's own template.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
                 "{% endif %}")
_CORPUS = ("a photo of a person wearing a red dress, portrait, studio light, full body, white shoes, smiling woman "
           "and man standing in a garden, the dog sits on the sofa, close-up of a face, blue sky, city street at night")


@dataclass(frozen=True)
class Variant:
    """A checkpoint of the family that runs differently: its default steps, CFG scale and whether it trains."""

    name: str
    steps: int
    cfg: float  # loracam's (A1111's) scale: 1 is no guidance; the pipeline's guidance_scale is cfg - 1
    trainable: bool
    note: str


# Turbo is distilled to 8 model calls (9 steps, the last sigma 0) without CFG; Base is the undistilled model
# Tongyi recommends 28-50 steps and guidance 4 for (guidance_scale 4 in ZImagePipeline's pos + 4 (pos - neg) is
# A1111's scale 5). Sources: families_2026.md s2.1 (musubi, ai-toolkit, the pipeline).
VARIANTS = {
    "turbo": Variant("turbo", 9, 1.0, False,
                     "Z-Image Turbo is distilled: LoRAs are trained on Base (or on Turbo through a training adapter "
                     "such as ostris' zimage_turbo_training_adapter, given with --training-adapter) and render on "
                     "Turbo"),
    "base": Variant("base", 30, 5.0, True, ""),
}


def variant_of(name: str, override: str | None = None) -> Variant:
    """Turbo or Base: the override, else the file's or folder's name (z_image_turbo_bf16, Z-Image-Turbo), else
    Turbo, the one most users have. Their weights have the same names and shapes, so a name is all a file says."""
    from loracam.errors import LoracamError

    if override is not None:
        if override not in VARIANTS:
            raise LoracamError(f"unknown Z-Image variant {override!r}; use {' or '.join(VARIANTS)}")
        return VARIANTS[override]
    low = name.lower()
    if "turbo" in low:
        return VARIANTS["turbo"]
    return VARIANTS["base"] if "base" in low or "deturbo" in low.replace("-", "") else VARIANTS["turbo"]


def read_config(component: str) -> dict:
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    return json.loads((ZIMAGE_DIR / component / name).read_text(encoding="utf-8"))


def zimage_configs() -> dict[str, dict]:
    """The full architecture (Turbo's scheduler): 6B transformer, Qwen3-4B, FLUX.1's VAE."""
    return {c: read_config(c) for c in COMPONENTS}


def tiny_zimage_configs() -> dict[str, dict]:
    """Z-Image's structure at small widths: 2 main and 1+1 refiner layers of width 32 with 2 heads (head 16 =
    rope axes 8 + 4 + 4), a Qwen3 of width 16 (= cap_feat_dim), a 2-block VAE with 16 latent channels."""
    full = zimage_configs()
    transformer = full["transformer"] | {"dim": 32, "n_layers": 2, "n_refiner_layers": 1, "n_heads": 2,
                                         "n_kv_heads": 2, "cap_feat_dim": 16, "axes_dims": [8, 4, 4],
                                         "axes_lens": [256, 32, 32]}
    vae = full["vae"] | {"block_out_channels": [32, 64], "down_block_types": ["DownEncoderBlock2D"] * 2,
                         "up_block_types": ["UpDecoderBlock2D"] * 2, "sample_size": 64}
    text_encoder = full["text_encoder"] | {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                                           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                                           "max_position_embeddings": 1024, "max_window_layers": 2,
                                           "vocab_size": 384}
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "scheduler": full["scheduler"]}


def tiny_tokenizer():
    """A Qwen-style byte-level BPE tokenizer built offline (see the module's docstring)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="right", model_max_length=131072)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_random_zimage(configs: dict[str, dict], seed: int = 0) -> dict:
    """Z-Image's components from config dicts with seeded random weights (the global RNG is forked)."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = tiny_tokenizer()
    te_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "torch_dtype")}
    if te_cfg["vocab_size"] < len(tokenizer):
        te_cfg["vocab_size"] = len(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel.from_config(configs["transformer"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = Qwen3Model(Qwen3Config(**te_cfg))
        # diffusers initialises the pad tokens with torch.empty; seeded values keep random models reproducible
        for p in (transformer.x_pad_token, transformer.cap_pad_token):
            p.data.normal_()
    return {"unet": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}


def save_folder(parts: dict, scheduler_config: dict, folder: Path) -> Path:
    """A diffusers ZImagePipeline folder of these components (what ``loracam save`` and the tests write)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    pipe = ZImagePipeline(transformer=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
                          tokenizer=parts["tokenizer"],
                          scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config))
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
