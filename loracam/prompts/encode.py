"""CLIP text encoding the A1111 way: chunk by chunk, clip skip, emphasis with mean restoration.

Emphasis multiplies each token's embedding by its weight, then rescales the chunk so its mean equals
the mean before weighting. A1111 takes that mean over every prompt encoded in the same call; loracam
takes it per prompt chunk, so a prompt encodes the same alone or in a batch (identical for one prompt).
"""

from __future__ import annotations

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
