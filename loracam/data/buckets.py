"""Aspect-ratio buckets exactly as kohya sd-scripts computes them (interop.md §4).

The trainer and ``loracam prep`` share this module, so the buckets prep reports are the ones training
uses, and a dataset trained with sd-scripts lands in the same buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def bucket_resolutions(resolution: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                       step: int = 64) -> list[tuple[int, int]]:
    """sd-scripts' ``make_bucket_resolutions``: the square of the area, then every width by ``step``."""
    max_area = resolution[0] * resolution[1]
    resos = set()
    side = int(math.sqrt(max_area) // step) * step
    resos.add((side, side))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // step) * step)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += step
    return sorted(resos)


def default_step(resolution: tuple[int, int]) -> int:
    """sd-scripts' 64, or 32 for sizes that are not multiples of 64 (small models such as the toy's 64x96)."""
    return 64 if resolution[0] % 64 == 0 and resolution[1] % 64 == 0 else 32


@dataclass(frozen=True)
class Bucketing:
    """sd-scripts' bucket settings: resolution (max area), min/max side, step, bucket_no_upscale."""

    resolution: tuple[int, int] = (512, 512)
    min_size: int = 256
    max_size: int = 1024
    step: int | None = None  # None: default_step(resolution), 64 for SD sizes
    no_upscale: bool = False

    def __post_init__(self) -> None:
        if self.step is None:
            object.__setattr__(self, "step", default_step(self.resolution))

    def resolutions(self) -> list[tuple[int, int]]:
        return bucket_resolutions(self.resolution, self.min_size, self.max_size, self.step)

    def select(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(bucket, resized size) for an image: scale to cover the bucket, then centre-crop to it."""
        if self.no_upscale:
            return self._own_size(width, height)
        resos = self.resolutions()
        ar = width / height
        reso = (width, height)
        if reso not in resos:
            # nearest aspect ratio; ties go to the first in sorted order, as numpy's argmin does
            reso = min(resos, key=lambda r: abs(r[0] / r[1] - ar))
        scale = reso[1] / height if ar > reso[0] / reso[1] else reso[0] / width
        return reso, (int(width * scale + 0.5), int(height * scale + 0.5))

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        # sd-scripts lets this reach 0 (and then divides by it) for images far from square at tiny
        # resolutions; one step is the smallest bucket side that exists.
        return max(self.step, x - x % self.step)

    def _own_size(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """bucket_no_upscale: images above the area shrink to it; the bucket is the size cut to the step."""
        ar = width / height
        max_area = self.resolution[0] * self.resolution[1]
        if width * height > max_area:
            rw = math.sqrt(max_area * ar)
            rh = max_area / rw
            bw = self._round(rw)
            ar_w = bw / self._round(bw / ar)
            bh = self._round(rh)
            ar_h = self._round(bh * ar) / bh
            if abs(ar_w - ar) < abs(ar_h - ar):
                resized = (bw, int(bw / ar + 0.5))
            else:
                resized = (int(bh * ar + 0.5), bh)
        else:
            resized = (width, height)
        return (resized[0] - resized[0] % self.step, resized[1] - resized[1] % self.step), resized
