"""Upscaling: resampling filters and ESRGAN-family models (through spandrel), tiled with feathered seams.

Tiles: the model runs on tiles of ``tile`` input pixels overlapping by ``overlap``; each tile's output is
weighted by a ramp that rises linearly over the overlap (scaled) on the sides that meet another tile, and
the picture is sum(out x weight) / sum(weight), so a seam is a blend and never a cut. Defaults 512 / 32:
ComfyUI's. A1111's 192 / 8 dates from 4 GB cards; 8 px of overlap is less than an RRDB network's reach,
which is what shows as seams, and smaller tiles cost more passes for the same picture. On out-of-memory the
tile is halved and the user told (ComfyUI's rule, giving up below 128 px).

Colour: models get RGB in [0, 1], as spandrel, ComfyUI and Real-ESRGAN feed them; A1111 feeds BGR, so the
same model's colours differ slightly there (shared/docs/finish.md section 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from loracam.errors import LoracamError

Notes = Callable[[str], None]
TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all)


@dataclass(frozen=True)
class TileOptions:
    tile: int = 512  # input pixels per tile side; 0: the whole image at once
    overlap: int = 32
    min_tile: int = 128  # out-of-memory halving stops here

    def __post_init__(self):
        if self.tile and self.tile < 16:
            raise LoracamError(f"--tile {self.tile}: give 0 (no tiles) or at least 16 pixels")
        if self.overlap < 0 or (self.tile and self.overlap * 2 >= self.tile):
            raise LoracamError(f"--overlap {self.overlap} must be from 0 to under half the tile ({self.tile})")


class Upscaler:
    """Something that enlarges an RGB image: ``name`` is what infotext calls it, ``scale`` its native factor."""

    name: str = ""
    scale: int = 1

    def upscale(self, image: Image.Image, size: tuple[int, int], notes: Notes | None = None,
                progress: TileProgress | None = None) -> Image.Image:
        raise NotImplementedError


class Resample(Upscaler):
    """A plain filter (A1111's "Lanczos" and "Nearest")."""

    def __init__(self, name: str, method: int):
        self.name, self.method = name, method

    def upscale(self, image, size, notes=None, progress=None):
        return image.convert("RGB").resize(size, self.method)


class ModelUpscaler(Upscaler):
    """A spandrel model, run as often as needed to reach the size (A1111's rule), then Lanczos to fit."""

    def __init__(self, descriptor, name: str, tiles: TileOptions = TileOptions(), dtype: torch.dtype | None = None):
        self.desc, self.name, self.tiles = descriptor, name, tiles
        self.scale = int(descriptor.scale)
        self.device = next(descriptor.model.parameters()).device
        self.dtype = dtype or _model_dtype(descriptor, self.device)
        self.desc.to(self.dtype)

    def upscale(self, image, size, notes=None, progress=None):
        x = to_tensor(image).to(self.device, self.dtype)
        passes = max(1, math.ceil(math.log(max(size[0] / image.width, size[1] / image.height, 1.0), self.scale)
                                  - 1e-9)) if self.scale > 1 else 1
        for _ in range(passes):
            x = self.run(x, notes, progress)
        out = to_image(x)
        return out if out.size == size else out.resize(size, Image.LANCZOS)

    def run(self, x: torch.Tensor, notes: Notes | None = None, progress: TileProgress | None = None) -> torch.Tensor:
        """One pass of the model over [1, 3, H, W] in [0, 1], tiled; halves the tile on out-of-memory."""
        tile = self.tiles.tile
        while True:
            try:
                with torch.inference_mode():
                    return tiled(self.desc, x, self.scale, tile, self.tiles.overlap, progress)
            except torch.OutOfMemoryError:
                smaller = (tile or max(x.shape[-2:])) // 2
                if smaller < self.tiles.min_tile:
                    raise LoracamError(f"out of memory even with {tile}-pixel tiles; free GPU memory or use "
                                       "--device cpu") from None
                if notes:
                    notes(f"out of memory with {tile or 'no'}-pixel tiles: trying {smaller}")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                tile = smaller


def _model_dtype(desc, device: torch.device) -> torch.dtype:
    """fp16 (else bf16) on a GPU where the architecture supports it; fp32 on a CPU, where halves are slow."""
    if device.type != "cuda":
        return torch.float32
    if desc.supports_half:
        return torch.float16
    return torch.bfloat16 if desc.supports_bfloat16 and torch.cuda.is_bf16_supported() else torch.float32


# ---------------------------------------------------------------------------------------------
# tiles


def tile_spans(n: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """(starts, length) of the tiles along a side of ``n``: as few as fit ``tile`` with at least ``overlap``
    between neighbours, all of one length and evenly spread, so no tile is mostly overlap (a 768-pixel side
    in 512-pixel tiles is two of 400, not 512 and 512)."""
    if tile <= 0 or n <= tile:
        return [0], n
    count = math.ceil((n - overlap) / (tile - overlap))
    length = math.ceil((n + (count - 1) * overlap) / count)
    return [round(i * (n - length) / (count - 1)) for i in range(count)], length


def ramp(length: int, feather: int, rise: bool, fall: bool) -> torch.Tensor:
    """Weights along one side of a tile's output: linear over ``feather`` px where it meets a neighbour."""
    w = torch.ones(length)
    f = min(feather, length)
    if f > 0:
        up = torch.arange(1, f + 1, dtype=torch.float32) / (f + 1)  # never 0: each pixel keeps some weight
        if rise:
            w[:f] = torch.minimum(w[:f], up)
        if fall:
            w[-f:] = torch.minimum(w[-f:], up.flip(0))
    return w


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int, overlap: int,
          progress: TileProgress | None = None) -> torch.Tensor:
    """``fn`` (an x``scale`` image model) over ``x`` [1, C, H, W] in overlapping tiles, blended at the seams."""
    _, _, h, w = x.shape
    (ys, th), (xs, tw) = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    if len(ys) == len(xs) == 1:
        out = fn(x)
        if progress:
            progress(1, 1)
        return out
    dtype = torch.promote_types(x.dtype, torch.float32)  # halves accumulate in fp32
    acc = torch.zeros(1, x.shape[1], h * scale, w * scale, device=x.device, dtype=dtype)
    weight = torch.zeros(1, 1, h * scale, w * scale, device=x.device, dtype=dtype)
    feather = round(overlap * scale)
    done = 0
    for y0 in ys:
        wy = ramp(th * scale, feather, y0 > 0, y0 + th < h).to(x.device)
        for x0 in xs:
            wx = ramp(tw * scale, feather, x0 > 0, x0 + tw < w).to(x.device)
            out = fn(x[..., y0:y0 + th, x0:x0 + tw]).to(dtype)
            m = (wy[:, None] * wx[None, :]).to(dtype)
            region = (..., slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
            acc[region] += out * m
            weight[region] += m
            done += 1
            if progress:
                progress(done, len(ys) * len(xs))
    return (acc / weight).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# pixels


def to_tensor(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] float32 RGB in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_image(x: torch.Tensor) -> Image.Image:
    arr = x[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((arr * 255).round().astype("uint8"))


# ---------------------------------------------------------------------------------------------
# choosing an upscaler by name


RESAMPLERS = {"lanczos": ("Lanczos", Image.LANCZOS), "nearest": ("Nearest", Image.NEAREST)}


def builtin_models() -> dict[str, Path]:
    """Upscaler files shipped with loracam, by the name ``--model`` takes."""
    from loracam.models.builtin import UPSCALERS

    return dict(UPSCALERS)


def upscaler_names() -> list[str]:
    return [*RESAMPLERS, *builtin_models()]


def load_upscaler(ref: str, device: torch.device, tiles: TileOptions = TileOptions(),
                  dirs: tuple[Path, ...] = ()) -> Upscaler:
    """An upscaler by built-in name (lanczos, nearest, toy-4x), file path, or file stem in ``dirs``."""
    key = ref.strip().lower()
    if key in RESAMPLERS:
        return Resample(*RESAMPLERS[key])
    from loracam.models.upscalers import MODEL_SUFFIXES, load_descriptor

    shipped = builtin_models()
    if key in shipped:
        if not shipped[key].is_file():
            raise LoracamError(f"the {key} upscaler is not built in this install; build it with make toy-upscaler")
        return ModelUpscaler(load_descriptor(shipped[key], device), key, tiles)
    path = Path(ref).expanduser()
    if not path.exists():
        found = [d / f"{ref}{s}" for d in dirs for s in MODEL_SUFFIXES if (d / f"{ref}{s}").is_file()]
        if not found:
            raise LoracamError(f"unknown upscaler {ref!r}: give a model file (.pth, .safetensors), a model's name "
                               f"in --upscaler-dir, or one of {', '.join(upscaler_names())}")
        path = found[0]
    return ModelUpscaler(load_descriptor(path, device), path.stem, tiles)


def target_size(size: tuple[int, int], scale: float | None = None, resize: tuple[int, int] | None = None
                ) -> tuple[int, int]:
    """A1111's target: ``resize`` (a side of 0 keeps the aspect) when given, else the size times ``scale``."""
    w, h = size
    if resize and (resize[0] or resize[1]):
        rw, rh = resize
        if not rw:
            rw = round(w * rh / h)
        if not rh:
            rh = round(h * rw / w)
        return rw, rh
    s = 1.0 if scale is None else scale
    if s <= 0:
        raise LoracamError(f"upscale factor {s} must be positive")
    return max(1, round(w * s)), max(1, round(h * s))
