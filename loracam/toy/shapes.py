"""Open-world pictures for the toy VAE: random shapes in random colours, and dolls in random colours.

SD's VAE was trained on a broad photo collection, so it encodes and decodes things the U-Net never learned
to draw; that is what lets a LoRA teach a new garment. A toy VAE trained on base-world renders alone knows
only the base world's 14 colours and 4 patterns: a teal-and-yellow zigzag dress came back from its round
trip as a green blur, read as the testdress in a third of full-body renders (the sks face mark in 8% of
upper-body ones, myshoes in 11% of full-body ones), which holds every LoRA below the benchmark's bars at
weights up to 1. These pictures widen what the VAE has seen without showing it any held-out concept:
colours anywhere in the RGB cube, and primitives (boxes, ellipses, polygons, wavy and zigzag lines,
striped and dotted swatches) from 1.5 to 40 pixels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from loracam.toy.world import H, W, render, sample_doll

SS = 2  # drawn at twice the size and box-filtered down, for the same anti-aliased edges as the dolls


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _box(d: ImageDraw.ImageDraw, rng, cx: float, cy: float, size: float) -> None:
    hw, hh = size / 2, size * rng.uniform(0.1, 1.0)
    d.rectangle([cx - hw, cy - hh, cx + hw, cy + hh], fill=_colour(rng))


def _ellipse(d, rng, cx, cy, size) -> None:
    rx, ry = size / 2, size / 2 * rng.uniform(0.4, 1.0)
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_colour(rng))


def _polygon(d, rng, cx, cy, size) -> None:
    """Triangles to hexagons, irregular: diamonds and marks of any shape."""
    k = int(rng.integers(3, 7))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = size / 2 * rng.uniform(0.5, 1.0, k)
    d.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles)], fill=_colour(rng))


def _wave(d, rng, cx, cy, size) -> None:
    """A sine or zigzag line across ``size``: the stripes of patterns the base world does not have."""
    x = np.linspace(cx - size, cx + size, 32)
    period, amp = rng.uniform(4, 30), rng.uniform(0, size / 3)
    phase = x / period
    y = np.sin(2 * np.pi * phase) if rng.random() < 0.5 else 4 * np.abs(phase % 1 - 0.5) - 1
    d.line(list(zip(x, cy + amp * y)), fill=_colour(rng), width=int(rng.integers(1, 8)))


def _swatch(d, rng, cx, cy, size) -> None:
    """A square of fabric: stripes or a diagonal of dots on a ground of another colour."""
    x0, y0 = cx - size / 2, cy - size / 2
    d.rectangle([x0, y0, x0 + size, y0 + size], fill=_colour(rng))
    ink, step = _colour(rng), rng.uniform(3, 10)
    striped = rng.random() < 0.5
    for t in np.arange(0, size, step):
        if striped:
            d.rectangle([x0, y0 + t, x0 + size, y0 + t + step / 2], fill=ink)
        else:
            d.ellipse([x0 + t, y0 + t, x0 + t + step / 2, y0 + t + step / 2], fill=ink)


PRIMITIVES: dict[str, Callable] = {"box": _box, "ellipse": _ellipse, "polygon": _polygon, "wave": _wave,
                                   "swatch": _swatch}


def shapes_image(rng: np.random.Generator) -> np.ndarray:
    """A plain background with 3-13 primitives of log-uniform size; uint8 [H, W, 3]."""
    img = Image.new("RGB", (W * SS, H * SS), _colour(rng))
    draw = ImageDraw.Draw(img)
    names = tuple(PRIMITIVES)
    for _ in range(int(rng.integers(3, 14))):
        size = float(np.exp(rng.uniform(np.log(3), np.log(80))))  # supersampled pixels
        cx, cy = rng.uniform(0, W * SS), rng.uniform(0, H * SS)
        PRIMITIVES[names[int(rng.integers(len(names)))]](draw, rng, cx, cy, size)
    return np.asarray(img.resize((W, H), Image.BOX))


def recoloured_doll(rng: np.random.Generator) -> np.ndarray:
    """A base-world doll under a random colour transform (a jittered channel permutation plus an offset):
    the dolls' shapes and sizes in colours the base world never names."""
    img = render(sample_doll(rng)).astype(np.float32)
    mix = np.eye(3)[rng.permutation(3)] * rng.uniform(0.5, 1.0) + rng.normal(0.0, 0.3, (3, 3))
    return np.clip(img @ mix.T + rng.uniform(-60, 60, 3), 0, 255).astype(np.uint8)


def open_world(n: int, seed: int) -> np.ndarray:
    """``n`` pictures, alternately shapes and recoloured dolls; uint8 [n, H, W, 3], the same for a seed."""
    rng = np.random.default_rng(seed)
    return np.stack([shapes_image(rng) if i % 2 == 0 else recoloured_doll(rng) for i in range(n)])
