"""Base models: resolve a reference, load it offline, cache it, and hash files as A1111 does."""

from loracam.models.base import BaseModel
from loracam.models.cache import ModelCache
from loracam.models.hashing import HashCache, default_cache_path
from loracam.models.loader import (LoadOptions, build_random, load_base, pick_device, pick_dtype, preset_lr_scale,
                                   resolve_ref)
from loracam.models.tiny import SD15_DIR, SDXL_DIR, sd15_configs, sdxl_configs, tiny_configs, tiny_sdxl_configs

__all__ = [
    "BaseModel", "HashCache", "LoadOptions", "ModelCache", "SD15_DIR", "build_random", "default_cache_path",
    "load_base", "pick_device", "pick_dtype", "preset_lr_scale", "resolve_ref", "sd15_configs", "tiny_configs",
    "SDXL_DIR", "sdxl_configs", "tiny_sdxl_configs",
]
