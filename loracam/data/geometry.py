"""Boxes and aspect-ratio crops shared by the face and pose croppers.

A crop never stretches and never upscales: the region is grown (not squeezed) to the dataset's aspect
ratio around its centre, and where it runs past the photo's edge the missing part is filled with the
photo's own border colour (or white), as the NGA guide's hand crops do in GIMP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates (x1, y1 exclusive); may extend past the image."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2)

    def as_list(self) -> list[float]:
        return [round(v, 1) for v in (self.x0, self.y0, self.x1, self.y1)]

    def scaled(self, factor: float) -> "Box":
        """The box grown (factor > 1) or shrunk around its centre."""
        cx, cy = self.center
        w, h = self.width * factor / 2, self.height * factor / 2
        return Box(cx - w, cy - h, cx + w, cy + h)

    def to_aspect(self, aspect: float) -> "Box":
        """The smallest box with width/height == ``aspect`` that contains this one, same centre."""
        cx, cy = self.center
        w, h = self.width, self.height
        if w / h < aspect:
            w = h * aspect
        else:
            h = w / aspect
        return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    def shifted_inside(self, width: int, height: int) -> "Box":
        """Slide the box (same size) so as much of it as possible lies inside a width x height image."""
        dx = _shift(self.x0, self.x1, width)
        dy = _shift(self.y0, self.y1, height)
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def union(self, other: "Box") -> "Box":
        return Box(min(self.x0, other.x0), min(self.y0, other.y0), max(self.x1, other.x1), max(self.y1, other.y1))

    def iou(self, other: "Box") -> float:
        inter = Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))
        i = inter.area if inter.width > 0 and inter.height > 0 else 0.0
        return i / (self.area + other.area - i) if i else 0.0


def _shift(lo: float, hi: float, limit: int) -> float:
    if hi - lo >= limit:
        return (limit - (hi - lo)) / 2 - lo  # wider than the image: centre it
    if lo < 0:
        return -lo
    if hi > limit:
        return limit - hi
    return 0.0


def border_colour(image: Image.Image) -> tuple[int, int, int]:
    """The median colour of the photo's outermost pixels: the fill that looks like 'more background'."""
    a = np.asarray(image.convert("RGB"))
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def crop(image: Image.Image, box: Box, fill: tuple[int, int, int] | str = "border") -> Image.Image:
    """Cut ``box`` (rounded to whole pixels) out of ``image``, filling what lies outside the photo.

    ``fill`` is "border" (the photo's border colour), "white", or an RGB tuple. No resampling happens.
    """
    x0, y0 = int(round(box.x0)), int(round(box.y0))
    x1, y1 = max(x0 + 1, int(round(box.x1))), max(y0 + 1, int(round(box.y1)))
    if fill == "border":
        colour = border_colour(image)
    elif fill == "white":
        colour = (255, 255, 255)
    else:
        colour = tuple(fill)
    out = Image.new("RGB", (x1 - x0, y1 - y0), colour)
    src = image.convert("RGB")
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(src.width, x1), min(src.height, y1)
    if ix1 > ix0 and iy1 > iy0:
        out.paste(src.crop((ix0, iy0, ix1, iy1)), (ix0 - x0, iy0 - y0))
    return out


def aspect_crop(image: Image.Image, region: Box, aspect: float, fill: tuple[int, int, int] | str = "border") -> tuple[Image.Image, Box]:
    """Crop ``region`` grown to ``aspect`` (w/h), kept inside the photo where it fits; returns (crop, box)."""
    box = region.to_aspect(aspect).shifted_inside(image.width, image.height)
    return crop(image, box, fill), box


def downscale_to(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to ``size`` only when that is smaller (never upscale: kohya's bucket_no_upscale)."""
    if image.width <= size[0] and image.height <= size[1]:
        return image
    return image.resize(size, Image.LANCZOS)
