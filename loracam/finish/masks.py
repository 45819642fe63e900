"""Masks and crop regions for detail passes, as ADetailer and A1111's "inpaint only masked" compute them.

ADetailer (scripts/!adetailer.py): a detection's box becomes a filled rectangle; offset first (+y is up),
then dilate (> 0) or erode (< 0) once with a square kernel of |value| pixels; empty masks are dropped.
A1111 (modules/masking.py, processing.py): the mask is blurred (Gaussian, sigma = mask blur, kernel
2 int(2.5 blur + 0.5) + 1); the crop is the blurred mask's box plus padding, clamped to the image and widened
to the working size's aspect inside the image; the crop is rendered at the working size, resized back,
pasted, and the original composited over it with the blurred mask, so pixels where it is 0 stay as they were.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image


def box_mask(size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """A filled rectangle (uint8 0/255) of image ``size`` (w, h); box (x0, y0, x1, y1), x1/y1 exclusive."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    m[y0:y1, x0:x1] = 255
    return m


def offset(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Shift right by dx and up by dy (ADetailer's +y is up); what leaves the image is gone."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    sy, sx = -dy, dx
    ys = slice(max(0, sy), min(h, h + sy)), slice(max(0, -sy), min(h, h - sy))
    xs = slice(max(0, sx), min(w, w + sx)), slice(max(0, -sx), min(w, w - sx))
    out[ys[0], xs[0]] = mask[ys[1], xs[1]]
    return out


def dilate_erode(mask: np.ndarray, value: int) -> np.ndarray:
    if value == 0:
        return mask
    kernel = np.ones((abs(value), abs(value)), np.uint8)
    return cv2.dilate(mask, kernel, iterations=1) if value > 0 else cv2.erode(mask, kernel, iterations=1)


def blur(mask: np.ndarray, sigma: int) -> np.ndarray:
    if sigma <= 0:
        return mask
    k = 2 * int(2.5 * sigma + 0.5) + 1
    return cv2.GaussianBlur(mask, (k, k), sigma)


def crop_region(mask: np.ndarray, padding: int, aspect_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) around the mask's nonzero pixels plus padding, widened to aspect_size's w/h ratio."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    x0, y0 = max(0, xs.min() - padding), max(0, ys.min() - padding)
    x1, y1 = min(w, xs.max() + 1 + padding), min(h, ys.max() + 1 + padding)
    return _widen(x0, y0, x1, y1, aspect_size[0] / aspect_size[1], w, h)


def _widen(x0: int, y0: int, x1: int, y1: int, ratio: float, w: int, h: int) -> tuple[int, int, int, int]:
    """Grow the short side around the centre until width/height = ratio, shifted (and clamped) to fit."""
    cw, ch = x1 - x0, y1 - y0
    if cw / ch < ratio:
        want = min(w, round(ch * ratio))
        x0, x1 = _grow(x0, x1, want, w)
    else:
        want = min(h, round(cw / ratio))
        y0, y1 = _grow(y0, y1, want, h)
    return x0, y0, x1, y1


def _grow(a: int, b: int, want: int, limit: int) -> tuple[int, int]:
    extra = want - (b - a)
    a -= extra // 2
    b += extra - extra // 2
    if a < 0:
        b, a = b - a, 0
    if b > limit:
        a, b = max(0, a - (b - limit)), limit
    return a, b


def paste(original: Image.Image, patch: Image.Image, region: tuple[int, int, int, int],
          soft_mask: np.ndarray) -> Image.Image:
    """``patch`` (rendered at the working size) resized into ``region`` of the original, blended by the mask."""
    x0, y0, x1, y1 = region
    full = original.copy()
    full.paste(patch.resize((x1 - x0, y1 - y0), Image.LANCZOS), (x0, y0))
    return Image.composite(full, original, Image.fromarray(soft_mask, "L"))
