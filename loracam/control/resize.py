"""Fitting a control map to the render size, with A1111's three resize modes (sd-webui-controlnet's enums).

- ``Just Resize``: stretch to the size (the aspect may change).
- ``Crop and Resize`` (the default): scale until the map covers the size, then cut the overflow evenly.
- ``Resize and Fill``: scale until the map fits inside, then pad the rest (black: no control there).

Shrinking uses area averaging (thin pose limbs and canny edges fade instead of vanishing, as in the
extension), enlarging cubic interpolation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loracam.errors import LoracamError

if TYPE_CHECKING:  # numpy is imported where maps are made: the CLI imports this module at start-up
    import numpy as np

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
DEFAULT_RESIZE = "Crop and Resize"


def check_mode(mode: str) -> str:
    """The mode's canonical name; a case-insensitive match is accepted."""
    for m in RESIZE_MODES:
        if m.lower() == mode.strip().lower():
            return m
    raise LoracamError(f"unknown resize mode {mode!r}; use one of: {', '.join(RESIZE_MODES)}")


def scale_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` [H, W, C] uint8 stretched to ``size`` (width, height)."""
    import cv2

    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    shrink = size[0] * size[1] < w * h
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def fit(image: np.ndarray, size: tuple[int, int], mode: str = DEFAULT_RESIZE) -> np.ndarray:
    """A control map [H, W, 3] uint8 brought to ``size`` (width, height) by ``mode``."""
    import numpy as np

    mode = check_mode(mode)
    tw, th = size
    h, w = image.shape[:2]
    if mode == "Just Resize" or (w * th == h * tw):
        return scale_to(image, (tw, th))
    if mode == "Crop and Resize":
        k = max(tw / w, th / h)
        sw, sh = max(tw, round(w * k)), max(th, round(h * k))
        big = scale_to(image, (sw, sh))
        x0, y0 = (sw - tw) // 2, (sh - th) // 2
        return np.ascontiguousarray(big[y0: y0 + th, x0: x0 + tw])
    k = min(tw / w, th / h)
    sw, sh = min(tw, max(1, round(w * k))), min(th, max(1, round(h * k)))
    out = np.zeros((th, tw) + image.shape[2:], np.uint8)
    x0, y0 = (tw - sw) // 2, (th - sh) // 2
    out[y0: y0 + sh, x0: x0 + sw] = scale_to(image, (sw, sh))
    return out


def processor_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The size a preprocessor works at: the source scaled so its short side is ``resolution`` (A1111's
    "Processor Res"), rounded to multiples of 8 like the annotators' own resize."""
    w, h = size
    if resolution <= 0:
        raise LoracamError(f"processor resolution must be positive (got {resolution})")
    k = resolution / min(w, h)
    return max(8, int(round(w * k / 8)) * 8), max(8, int(round(h * k / 8)) * 8)
