"""Models shipped with loracam (its toy world's), found by name through tables: the stages that use them (hires
fix, upscale, detail passes, the judges) ask for "toy-4x" or the "toy" locator and never import the toy package,
which sits beside the engine as a provider of models, like a file on disk."""

from __future__ import annotations

import importlib
from pathlib import Path

TOY = Path(__file__).resolve().parents[1] / "toy"

# upscaler name (as --model and --hires-upscaler take it) -> the shipped file; spandrel reads it like any ESRGAN file
UPSCALERS: dict[str, Path] = {"toy-4x": TOY / "upscaler_x4.pth"}

# ControlNet name -> its diffusers folder: usable without --controlnet-dir
CONTROLNETS: dict[str, Path] = {"toy-openpose": TOY / "controlnet_openpose"}

# locator name -> "module:class" with a ``load()`` and ``locate(image) -> {part: (box, score)}``, imported on first use
LOCATORS: dict[str, str] = {"toy": "loracam.toy.locator:Locator"}


def load_locator(name: str):
    """A shipped part locator by name (its weights are read once per call: callers keep it)."""
    module, _, cls = LOCATORS[name].partition(":")
    return getattr(importlib.import_module(module), cls).load()
