"""The model cache object: loaded base models kept for reuse, passed in explicitly (no module globals)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from loracam.models.base import BaseModel
from loracam.models.hashing import HashCache
from loracam.models.loader import LoadOptions, load_base, resolve_ref


class ModelCache:
    """Keeps up to ``max_models`` loaded bases (least recently used evicted) and one hash cache."""

    def __init__(self, hash_cache: HashCache | None = None, max_models: int = 1):
        self.hash_cache = hash_cache if hash_cache is not None else HashCache(None)
        self.max_models = max_models
        self._models: OrderedDict[tuple, BaseModel] = OrderedDict()

    def get(self, ref: str | None, device: torch.device, dtype: torch.dtype,
            allow_pickle: bool = False, prediction: str | None = None, vae: str | None = None,
            variant: str | None = None) -> BaseModel:
        """The loaded model for ``ref`` on ``device``/``dtype`` (``prediction`` and ``vae`` as LoadOptions says),
        loading it on first use."""
        r = resolve_ref(ref)
        key = (r.kind, r.value, str(device), dtype, prediction, vae, variant)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.max_models:
            self._models.popitem(last=False)
        model = load_base(ref, LoadOptions(device, dtype, allow_pickle, self.hash_cache, prediction, vae,
                                                  variant))
        self._models[key] = model
        return model

    def clear(self) -> None:
        self._models.clear()
