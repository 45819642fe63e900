"""A CLIP model from the user's disk, for image-to-image and text-to-image similarity.

``ClipModel(spec)``: ``spec`` is a folder saved with ``save_pretrained`` (a whole CLIPModel: both towers) or a
hub id already in the local hub cache (``openai/clip-vit-large-patch14``); nothing is downloaded
(``local_files_only``). Images go through the folder's own preprocessing (aesthetic.py's reading of
preprocessor_config.json); texts through its tokenizer, cut at its context length.

CLIPScore (Hessel et al. 2021) is how text-image similarity is reported: 2.5 x max(cosine, 0), which spreads
a real CLIP's typical 0.2-0.35 cosines over 0.5-0.9.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from loracam.errors import LoracamError

BATCH = 16
CLIPSCORE_W = 2.5


class ClipModel:
    def __init__(self, spec: str) -> None:
        from transformers import CLIPModel, CLIPTokenizer
        from transformers.utils import logging

        from loracam.judge.aesthetic import _preprocessing

        logging.set_verbosity_error()
        path = Path(spec).expanduser()
        local = path.is_dir()
        try:
            self.model = CLIPModel.from_pretrained(str(path) if local else spec, local_files_only=True).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(str(path) if local else spec, local_files_only=True)
        except (OSError, ValueError) as exc:
            where = f"the folder {path}" if local else f"{spec!r} (not a folder, and not in the local hub cache)"
            raise LoracamError(f"no CLIP model could be loaded from {where}: {str(exc).splitlines()[0]}. Give "
                               "--clip a folder with a CLIPModel saved by save_pretrained (config.json, weights, "
                               "tokenizer files), or download one yourself, e.g. `huggingface-cli download "
                               "openai/clip-vit-large-patch14`; loracam never downloads") from None
        self.name = spec
        # a folder's preprocessor_config.json, else (a hub id, or a folder without one) CLIP's own defaults
        self.resize, self.size, self.mean, self.std = _preprocessing(path, int(self.model.config.vision_config.image_size))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Shortest side to ``resize``, centre crop ``size``, normalised: CLIP's own preprocessing."""
        from loracam.judge.aesthetic import clip_pixels

        return clip_pixels(images, self.resize, self.size, self.mean, self.std)

    @torch.no_grad()
    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings [N, D]."""
        if not images:
            return np.zeros((0, self.model.config.projection_dim))
        parts = [self.model.get_image_features(pixel_values=self.pixels(images[i:i + BATCH]))
                 for i in range(0, len(images), BATCH)]
        return _unit(torch.cat([_tensor(p) for p in parts]))

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings [N, D]."""
        ids = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        return _unit(_tensor(self.model.get_text_features(**ids)))

    def clipscore(self, images: Sequence[Image.Image], text: str) -> np.ndarray:
        """CLIPScore of each image against one text, in [0, 2.5] (0.5-0.9 is typical of a real CLIP)."""
        cos = self.images(images) @ self.texts([text])[0]
        return CLIPSCORE_W * np.maximum(cos, 0.0)


def _tensor(out) -> torch.Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x a model output with the pooled projection."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).double().numpy()
