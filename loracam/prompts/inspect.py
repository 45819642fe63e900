"""What ``loracam prompt --json`` reports: the same view A1111's token counter and parser give."""

from __future__ import annotations

from loracam.prompts.attention import parse_attention
from loracam.prompts.multicond import split_and
from loracam.prompts.networks import extract_networks
from loracam.prompts.schedule import prompt_schedule
from loracam.prompts.tokens import Chunker


# What A1111's syntax does on a family's encoder where it differs from CLIP's (a family's ``conditioning``).
NOTES: dict[str, tuple[str, ...]] = {
    "qwen3": ("emphasis is not applied on Z-Image's LLM encoder (Qwen3), as in ComfyUI, which encodes Z-Image prompts "
              "with weights off: (word:1.3) reaches the encoder as written, brackets and all; describe what matters "
              "in words instead",
              "BREAK becomes a line break (there are no 75-token chunks); the encoder reads up to 512 tokens, its chat "
              "template included, and cuts the rest, as ZImagePipeline does",
              "scheduling [a:b:N], alternation [a|b], AND and <lora:...> work as on CLIP models"),
}


def inspect_prompt(prompt: str, tokenizer, steps: int = 20) -> dict:
    """Text without LoRA tags, the LoRAs, attention runs, schedule, token and chunk counts."""
    text, loras, others = extract_networks(prompt)
    chunker = Chunker(tokenizer)
    # Like A1111's counter: the longest of every AND sub-prompt at every scheduled step.
    candidates = [t for sub, _ in split_and(text) for _, t in prompt_schedule(sub, steps)]
    counted = [(chunker.chunks(t)[1], len(chunker.chunks(t)[0])) for t in candidates] or [(0, 1)]
    tokens, chunks = max(counted)
    return {
        "text": text,
        "loras": [{"name": r.name, "te": r.te, "unet": r.unet} for r in loras],
        "attention": [[seg, weight] for seg, weight in parse_attention(text)],
        "schedule": [[end, t] for end, t in prompt_schedule(text, steps)],
        "tokens": tokens,
        "chunks": chunks,
        "ignored_tags": others,
    }
