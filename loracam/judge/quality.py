"""Image quality without a reference: sharpness, exposure and obvious artefacts, each a number in [0, 1] (1 = good).

All three read the luminance Y = 0.299 R + 0.587 G + 0.114 B, scaled to [0, 1], of a copy no longer than
``WORK_SIDE`` px on its long side (a 2048 px image costs what a 512 px one does; shrinking keeps edges sharp).

sharpness: the share of the image's detail energy that one more blur removes::

    E   = var(L * Y)      - |L|^2    s^2      L: the 4-neighbour Laplacian, |L|^2 = 20 (its squared taps)
    E_b = var(L * G * Y)  - |L*G|^2  s^2      G: a Gaussian blur of sigma 1 px
    sharpness = clip(1 - E_b / E, 0, 1)       0 when E < max(DETAIL_FLOOR, 0.1 |L|^2 s^2): no edges beyond grain

  The plain variance of the Laplacian rewards grain as much as edges, and grows with contrast. Here white
  noise of standard deviation s adds |K|^2 s^2 to var(K * Y) for any filter K, so subtracting that leaves the
  energy of the picture's own edges; s is estimated robustly (Immerkaer's noise operator, through the median
  of its absolute response, which the minority of edge pixels does not move). The ratio then makes the number
  independent of contrast and brightness: a sharp edge loses most of its Laplacian energy under one more
  sigma-1 blur, an edge that is already soft keeps most of it. Measured: toy renders ~0.8, the same blurred
  by 1 px 0.5-0.66, by 0.6 px ~0.83; the astronaut photo 0.92, blurred by 1 px 0.61, by 2 px 0.29; heavy
  noise on a toy render leaves its score alone (0.92) and a flat image with heavy noise scores 0, where the
  plain variance of the Laplacian would rate it the sharpest of all.

exposure: blown highlights, crushed shadows and a mean far from mid-grey::

    clipped  = share of pixels with Y <= 2/255 or Y >= 253/255
    off      = clip((|mean(Y) - 0.5| - 0.3) / 0.2, 0, 1)
    exposure = (1 - clipped) * (1 - off / 2)

  A mean brightness anywhere in 0.2..0.8 costs nothing; beyond that up to half the score goes, at pure black
  or white (where clipping takes the rest). Only half: a white-background portrait is bright on purpose (a
  toy render on white averages 0.8-0.9). A blown white studio background counts as clipped, equally for
  every candidate of one style, so it moves no ranking within the style.

artefacts: 1 - max(flat, black, blocks), the worst of three signs of a broken render::

    flat   = clip((0.04 - std(Y)) / 0.03, 0, 1)       one colour: nothing was drawn
    black  = clip((b - 0.25) / 0.25, 0, 1)           b = share of pure-black 8x8 tiles (every channel <= 2/255)
    blocks = clip((u - 0.9) / 0.1, 0, 1)             u = share of 8x8 tiles without any variation
  fp16 overflow gives NaN latents that decode to exactly black; a render stopped halfway leaves black or
  featureless blocks. Real pictures have some of both: the astronaut photo is 11% pure black (space), and
  clean backgrounds are uniform (a toy render's is exactly one colour), hence the allowances: a quarter of
  the image pure black, or 90% featureless, before anything counts as broken (half black scores 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

WORK_SIDE = 512
NOISE_SIGMA_PX = 1.0  # the extra blur sharpness compares against
DETAIL_FLOOR = 1e-5  # Laplacian energy (Y in [0, 1]) below which an image has no edges to judge
TILE = 8

_LAPLACE = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)  # |N|_2 = 6


@dataclass(frozen=True)
class Quality:
    """The three quality numbers of one image, each in [0, 1], 1 = good."""

    sharpness: float
    exposure: float
    artefacts: float
    noise: float  # the estimated noise sigma (Y in [0, 1]), for reports
    flaw: str | None = None  # the worst artefact found, when it costs anything ("mostly pure black")

    def as_dict(self) -> dict[str, float]:
        return {"sharpness": self.sharpness, "exposure": self.exposure, "artefacts": self.artefacts}


def quality(image: Image.Image) -> Quality:
    """Sharpness, exposure and artefacts of one image (see the module docstring for the formulas)."""
    rgb = np.asarray(_work_copy(image.convert("RGB")), np.float32) / 255.0  # [h, w, 3]
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # [h, w]
    noise = noise_sigma(y)
    score, flaw = artefacts(rgb, y)
    return Quality(sharpness(y, noise), exposure(y), score, noise, flaw)


def _work_copy(image: Image.Image) -> Image.Image:
    w, h = image.size
    scale = WORK_SIDE / max(w, h)
    if scale >= 1:
        return image  # small images (the toy's 64x96) are judged as they are, never enlarged
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)


def _filter(y: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlation with replicated borders (the symmetric kernels here make it a convolution)."""
    import cv2

    return cv2.filter2D(y, cv2.CV_32F, kernel, borderType=cv2.BORDER_REPLICATE)


def noise_sigma(y: np.ndarray) -> float:
    """Immerkaer's estimate of white-noise sigma, through the median absolute response (robust to edges)."""
    if min(y.shape) < 3:
        return 0.0
    response = np.abs(_filter(y, _IMMERKAER)[1:-1, 1:-1])
    return float(np.median(response) / (0.6745 * 6.0))  # median |N(0, s)| = 0.6745 s; N's gain is 6


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma))
    k = np.exp(-np.arange(-r, r + 1, dtype=np.float64) ** 2 / (2 * sigma * sigma))
    k /= k.sum()
    return np.outer(k, k).astype(np.float32)


def _full_convolution(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The full 2-D convolution of two small kernels (the one filter equal to applying both)."""
    out = np.zeros((a.shape[0] + b.shape[0] - 1, a.shape[1] + b.shape[1] - 1), np.float64)
    for (i, j), v in np.ndenumerate(b):
        out[i:i + a.shape[0], j:j + a.shape[1]] += v * a
    return out


_G = _gaussian_kernel(NOISE_SIGMA_PX)
_LG = _full_convolution(_G, _LAPLACE).astype(np.float32)
_LG_GAIN = float((_LG.astype(np.float64) ** 2).sum())  # what white noise of sigma 1 puts into var(L * G * Y)
_L_GAIN = float((_LAPLACE ** 2).sum())  # 20


def sharpness(y: np.ndarray, noise: float | None = None) -> float:
    """1 - (detail energy left after a sigma-1 blur) / (detail energy), noise energy subtracted from both."""
    if min(y.shape) < 8:
        return 0.0
    s2 = (noise_sigma(y) if noise is None else noise) ** 2
    m = max(int(np.ceil(3 * NOISE_SIGMA_PX)) + 1, 1)  # borders: the filters see replicated pixels there
    energy = float(_filter(y, _LAPLACE)[m:-m, m:-m].var()) - _L_GAIN * s2
    if energy < max(DETAIL_FLOOR, 0.1 * _L_GAIN * s2):  # estimation error of the noise term is far below this
        return 0.0
    blurred = float(_filter(y, _LG)[m:-m, m:-m].var()) - _LG_GAIN * s2
    return float(np.clip(1.0 - blurred / energy, 0.0, 1.0))


def exposure(y: np.ndarray) -> float:
    """(1 - clipped share) x a penalty (up to half) for a mean brightness outside 0.2..0.8."""
    clipped = float(np.mean((y <= 2 / 255) | (y >= 253 / 255)))
    off = np.clip((abs(float(y.mean()) - 0.5) - 0.3) / 0.2, 0.0, 1.0)
    return float((1.0 - clipped) * (1.0 - off / 2))


def artefacts(rgb: np.ndarray, y: np.ndarray) -> tuple[float, str | None]:
    """1 - the worst of: one flat colour, pure-black tiles (NaN renders), almost all featureless tiles; and
    the worst one's name when it costs anything."""
    if not np.all(np.isfinite(rgb)):
        return 0.0, "not a number"
    h, w = (y.shape[0] // TILE) * TILE, (y.shape[1] // TILE) * TILE
    penalties = _tile_penalties(rgb[:h, :w], y[:h, :w]) if h and w else {}
    penalties["one flat colour"] = float(np.clip((0.04 - float(y.std())) / 0.03, 0.0, 1.0))
    worst = max(penalties, key=penalties.__getitem__)  # ties go to the first listed: a black image is "black"
    return 1.0 - penalties[worst], worst if penalties[worst] > 0 else None


def _tile_penalties(rgb: np.ndarray, y: np.ndarray) -> dict[str, float]:
    h, w = y.shape
    tiles = rgb.reshape(h // TILE, TILE, w // TILE, TILE, 3)
    black = np.clip((float(np.mean(tiles.max(axis=(1, 3, 4)) <= 2 / 255)) - 0.25) / 0.25, 0.0, 1.0)
    ytiles = y.reshape(h // TILE, TILE, w // TILE, TILE)
    uniform = float(np.mean(ytiles.max(axis=(1, 3)) - ytiles.min(axis=(1, 3)) <= 1 / 255))
    return {"mostly pure black": float(black), "mostly featureless blocks": float(np.clip((uniform - 0.9) / 0.1, 0, 1))}
