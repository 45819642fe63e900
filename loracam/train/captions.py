"""How training turns a batch's captions (and image sizes) into the denoiser's conditioning, per family.

SD1.x: one CLIP's context. SDXL (sd-scripts' sdxl_train_network): CLIP-L's layer-11 and bigG's penultimate hidden
states side by side, bigG's pooled projection, and per image the size ids sd-scripts computes from its bucket:
original size (the image before resizing), the crop offset ``get_crop_ltrb`` gives, and the target size (the
bucket), all (height, width). A family's entry names its conditioner (``conditioning``); ``CAPTIONS`` builds it.
Captions are one 77-token chunk, truncated, without A1111's emphasis parsing, as kohya trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Conditioning:
    context: torch.Tensor  # [B, 77, C]
    pooled: torch.Tensor | None = None  # [B, P] (SDXL)


def _ids(tokenizer, captions: list[str], device) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def _device(module) -> torch.device:
    inner = getattr(module, "module", module)  # DDP wraps a trained text encoder
    return next(inner.parameters()).device


class ClipCaptions:
    """SD1.x: CLIP's last layer, or layer -clip_skip through the final norm."""

    def __init__(self, model, clip_skip: int = 1):
        self.tokenizer, self.clip_skip = model.tokenizer, clip_skip

    def encode(self, encoders: list, captions: list[str]) -> Conditioning:
        from loracam.prompts.encode import final_layer_norm

        te = encoders[0]
        ids = _ids(self.tokenizer, captions, _device(te))
        if self.clip_skip == 1:
            return Conditioning(te(ids)[0])
        hidden = te(ids, output_hidden_states=True).hidden_states[-self.clip_skip]
        return Conditioning(final_layer_norm(getattr(te, "module", te))(hidden))

    def added(self, cond: Conditioning, batch, dtype) -> dict | None:
        return None


class SDXLCaptions:
    """SDXL as sd-scripts trains it (shared/docs/research/sdxl_flux.md s1.1-1.2); clip skip is not applied (sd-scripts
    warns it "will be unexpected" on SDXL)."""

    def __init__(self, model, clip_skip: int = 1):
        self.tokenizer, self.tokenizer_2 = model.tokenizer, model.tokenizer_2

    def encode(self, encoders: list, captions: list[str]) -> Conditioning:
        te1, te2 = encoders
        h1 = te1(_ids(self.tokenizer, captions, _device(te1)), output_hidden_states=True).hidden_states[-2]
        out2 = te2(_ids(self.tokenizer_2, captions, _device(te2)), output_hidden_states=True)  # pads with "!"
        return Conditioning(torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds)

    def added(self, cond: Conditioning, batch, dtype) -> dict:
        ids = torch.tensor([size_ids(o, batch.bucket, f) for o, f in zip(batch.originals, batch.flipped)],
                           dtype=dtype, device=cond.pooled.device)
        return {"text_embeds": cond.pooled.to(dtype), "time_ids": ids}


def crop_ltrb(bucket: tuple[int, int], image: tuple[int, int]) -> tuple[float, float, float, float]:
    """sd-scripts' BucketManager.get_crop_ltrb: the offset of the image fitted inside the bucket (Stability's
    preprocessing, as sd-scripts describes it), not the trim the resize made; floats, as sd-scripts keeps them (the
    offsets floor-divided, the right and bottom edges not). Sizes are (width, height)."""
    bucket_ar, image_ar = bucket[0] / bucket[1], image[0] / image[1]
    if bucket_ar > image_ar:
        w, h = bucket[1] * image_ar, bucket[1]
    else:
        w, h = bucket[0], bucket[0] / image_ar
    left, top = (bucket[0] - w) // 2, (bucket[1] - h) // 2
    return left, top, left + w, top + h


def size_ids(original: tuple[int, int], bucket: tuple[int, int], flipped: bool) -> list[float]:
    """One image's six SDXL size ids: original (h, w), crop (top, left), target (h, w); a flipped image's left is
    the bucket width minus the crop's right edge, as sd-scripts flips it."""
    left, top, right, _ = crop_ltrb(bucket, original)
    if flipped:
        left = bucket[0] - right
    return [original[1], original[0], top, left, bucket[1], bucket[0]]


CAPTIONS: dict[str, Callable] = {"clip": ClipCaptions, "sdxl": SDXLCaptions}


def captions_for(model, clip_skip: int = 1):
    return CAPTIONS[model.spec.conditioning](model, clip_skip)
