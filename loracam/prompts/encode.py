"""CLIP text encoding the A1111 way: chunk by chunk, clip skip, emphasis with mean restoration.

SD1.x encodes with one CLIP (``PromptEncoder``); SDXL with two (``SDXLPromptEncoder``): CLIP-L's and OpenCLIP
bigG's penultimate hidden states side by side, plus bigG's pooled projection of the first chunk. A family names
its encoder in its table entry (``conditioning``); ``ENCODERS`` builds it for a model.

Emphasis multiplies each token's embedding by its weight, then rescales the chunk so its mean equals
the mean before weighting. A1111 takes that mean over every prompt encoded in the same call; loracam
takes it per prompt chunk, so a prompt encodes the same alone or in a batch (identical for one prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from loracam.prompts.tokens import Chunker


class PromptEncoder:
    """Encodes prompt texts (no AND / scheduling syntax left) into [77*k, C] embeddings each."""

    def __init__(self, tokenizer, text_encoder, clip_skip: int = 1):
        if clip_skip < 1:
            raise ValueError("clip skip counts from 1 (the last layer)")
        self.chunker = Chunker(tokenizer)
        self.text_encoder = text_encoder
        self.clip_skip = clip_skip

    def encode(self, texts: Sequence[str],
               on_rows: Callable[[torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Encode ``texts`` in one text-encoder call.

        ``on_rows`` receives, before the call, the index into ``texts`` of every row of the batch, so a
        caller can set per-row LoRA multipliers for the text encoder.
        """
        chunk_lists = [self.chunker.chunks(t)[0] for t in texts]
        rows = [c for chunks in chunk_lists for c in chunks]
        owner = torch.tensor([i for i, chunks in enumerate(chunk_lists) for _ in chunks])
        device = self.text_encoder.device
        ids = torch.tensor([c.tokens for c in rows], device=device)
        if on_rows is not None:
            on_rows(owner)
        z = self._hidden(ids)  # [R, 77, C]
        weights = torch.tensor([c.weights for c in rows], device=device, dtype=torch.float32)
        z = _emphasize(z, weights)
        out, start = [], 0
        for chunks in chunk_lists:
            out.append(z[start : start + len(chunks)].reshape(-1, z.shape[-1]))
            start += len(chunks)
        return out

    def encode_all(self, texts: Sequence[str], on_rows: Callable[[torch.Tensor], None] | None = None) -> "Encoded":
        """``encode`` as an Encoded (SD1.x has no pooled vector)."""
        return Encoded(self.encode(texts, on_rows), None)

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        te = self.text_encoder
        if self.clip_skip == 1:
            return te(ids)[0]
        out = te(ids, output_hidden_states=True)
        return final_layer_norm(te)(out.hidden_states[-self.clip_skip])


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """CLIP's last LayerNorm; transformers 5 dropped the ``text_model`` wrapper that 4.x had."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def _emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-row emphasis with the row mean restored; rows of all-ones weights stay bit-identical."""
    plain = (weights == 1.0).all(dim=1)
    if bool(plain.all()):
        return z
    zf = z.float()
    before = zf.mean(dim=(1, 2), keepdim=True)
    weighted = zf * weights[:, :, None]
    after = weighted.mean(dim=(1, 2), keepdim=True)
    # A1111 divides unconditionally; a mean of exactly ~0 only occurs in untrained encoders (LayerNorm
    # bias 0) and would turn the whole prompt into NaN, so such rows keep the plain weighting.
    ratio = torch.where(after.abs() > 1e-12, before / after, torch.ones_like(after))
    scaled = weighted * ratio
    return torch.where(plain[:, None, None], z, scaled.to(z.dtype))


@dataclass
class Encoded:
    """Per text: its context [77*k, C] and, for families that take one, its pooled vector [P]."""

    contexts: list[torch.Tensor]
    pooled: list[torch.Tensor] | None


class SDXLPromptEncoder:
    """SDXL's conditioning as A1111 and diffusers compute it: each 77-token chunk through CLIP-L (hidden state of
    layer 11 of 12, no final norm) and bigG (penultimate), emphasis on each, concatenated to 768 + 1280 channels;
    bigG's pooled projection of the first chunk. bigG's chunks pad with its tokenizer's pad token ("!") after the
    first end token, as A1111's OpenCLIP wrapper and diffusers' tokenizer_2 do.

    Clip skip: A1111 leaves SDXL's layers alone by default, so 1 and 2 both give the penultimate layer (Pony's
    "clip skip 2" is SDXL's default); N > 2 takes CLIP-L's layer -N, as its "Clip skip SDXL" option does. bigG is
    never skipped (shared/docs/research/sdxl_flux.md s2.2).
    """

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, clip_skip: int = 1):
        if clip_skip < 1:
            raise ValueError("clip skip counts from 1 (the last layer)")
        self.chunker = Chunker(tokenizer)
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2
        self.pad_2 = tokenizer_2.pad_token_id
        self.layer_1 = -max(2, clip_skip)

    def encode(self, texts: Sequence[str], on_rows: Callable[[torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        return self.encode_all(texts, on_rows).contexts

    def encode_all(self, texts: Sequence[str], on_rows: Callable[[torch.Tensor], None] | None = None) -> Encoded:
        chunk_lists = [self.chunker.chunks(t)[0] for t in texts]
        rows = [c for chunks in chunk_lists for c in chunks]
        owner = torch.tensor([i for i, chunks in enumerate(chunk_lists) for _ in chunks])
        device = self.text_encoder.device
        ids = torch.tensor([c.tokens for c in rows], device=device)
        if on_rows is not None:
            on_rows(owner)  # both encoders see the same rows: one call sets their LoRA multipliers
        weights = torch.tensor([c.weights for c in rows], device=device, dtype=torch.float32)
        z1 = self.text_encoder(ids, output_hidden_states=True).hidden_states[self.layer_1]
        out2 = self.text_encoder_2(self._pad_second(ids), output_hidden_states=True)
        z = torch.cat([_emphasize(z1, weights), _emphasize(out2.hidden_states[-2], weights)], dim=-1)
        contexts, pooled, start = [], [], 0
        for chunks in chunk_lists:
            contexts.append(z[start : start + len(chunks)].reshape(-1, z.shape[-1]))
            pooled.append(out2.text_embeds[start])  # A1111 and diffusers pool the first chunk only
            start += len(chunks)
        return Encoded(contexts, pooled)

    def _pad_second(self, ids: torch.Tensor) -> torch.Tensor:
        """bigG's ids: every token after a row's first end token becomes the pad token."""
        eos = self.chunker.eos
        first = (ids == eos).int().argmax(dim=1, keepdim=True)
        after = torch.arange(ids.shape[1], device=ids.device)[None] > first
        return torch.where(after, torch.full_like(ids, self.pad_2), ids)


class QwenPromptEncoder:
    """Z-Image's conditioning as diffusers' ZImagePipeline computes it: the prompt in the tokenizer's chat template
    (one user message, generation prompt, thinking on), at most 512 tokens, through Qwen3; the penultimate hidden
    state of the prompt's own tokens (no padding), so each text is [tokens, 2560].

    A1111 syntax on an LLM encoder: BREAK (a 75-token chunk boundary for CLIP) becomes a line break; emphasis is
    not applied, as in ComfyUI, which tokenizes Z-Image prompts with weights disabled: "(red:1.3)" reaches the
    encoder as written, brackets and all. Scheduling, alternation, AND and <lora:...> work as for CLIP (they are
    resolved before the encoder sees a text). Clip skip does not apply: the family's layer is fixed.
    """

    max_length = 512  # the pipeline's max_sequence_length, template included

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    def template(self, text: str) -> str:
        text = text.replace(" BREAK ", "\n").replace("BREAK", "\n") if "BREAK" in text else text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True, enable_thinking=True)

    def encode(self, texts: Sequence[str], on_rows: Callable[[torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        return self.encode_all(texts, on_rows).contexts

    def encode_all(self, texts: Sequence[str], on_rows: Callable[[torch.Tensor], None] | None = None) -> Encoded:
        # One text per call, padded to 512 as the pipeline pads: a text encodes to the same bits alone or among
        # others (a batch changes the matrix shapes, and with them the last bits), and as ZImagePipeline encodes
        # one prompt. Qwen3 is causal, so the padding after a prompt cannot change its tokens' states.
        return Encoded([self._one(t, i, on_rows) for i, t in enumerate(texts)], None)

    def _one(self, text: str, index: int, on_rows) -> torch.Tensor:
        batch = self.tokenizer([self.template(text)], padding="max_length", max_length=self.max_length,
                               truncation=True, return_tensors="pt")
        device = self.text_encoder.device
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device).bool()
        if on_rows is not None:
            on_rows(torch.tensor([index]))
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        return hidden[0][mask[0]]


def encoder_for(model, clip_skip: int = 1):
    """The prompt encoder of a model's family (its table entry's ``conditioning``)."""
    return ENCODERS[model.spec.conditioning](model, clip_skip)


ENCODERS: dict[str, Callable] = {
    "clip": lambda m, skip: PromptEncoder(m.tokenizer, m.text_encoder, skip),
    "sdxl": lambda m, skip: SDXLPromptEncoder(m.tokenizer, m.text_encoder, m.tokenizer_2, m.text_encoder_2, skip),
    "qwen3": lambda m, skip: QwenPromptEncoder(m.tokenizer, m.text_encoder),
}
