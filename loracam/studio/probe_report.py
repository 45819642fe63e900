"""The toy probe's reading of a toy job's kept images: does each show the concept, and the style's attributes?

The probe reads the kept candidates at the toy base's size (64x96; the upscaled finals are 4x that, and
the probe was trained at 64x96). An image "shows the attributes" when every attribute the style's
``expect`` names is read as named.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def read_files(paths: Sequence[Path]) -> list[dict[str, str]]:
    """The probe's reading of image files (resized to 64x96 if they are not)."""
    from loracam.toy.probe import Probe
    from loracam.toy.world import H, W

    if not paths:
        return []
    images = np.stack([np.array(Image.open(p).convert("RGB").resize((W, H), Image.LANCZOS)) for p in paths])
    return Probe.load().read(images)


def verdicts(reads: Sequence[dict[str, str]], concept: str, expect: dict[str, str]) -> list[tuple[bool, bool]]:
    """Per image: (shows the concept, shows every expected attribute)."""
    from loracam.toy.judge import shows

    return [(shows(r, concept), all(r.get(a) == v for a, v in expect.items())) for r in reads]


def probe_reading(run, styles: list[dict]) -> dict:
    from loracam.studio.portrait import _toy_concept, kept_files

    concept = _toy_concept(run)
    out = {}
    for s in styles:
        marks = verdicts(read_files(kept_files(run, s["style"])), concept, s["expect"])
        out[s["style"]] = {"n": len(marks), "concept": sum(c for c, _ in marks), "attributes": sum(a for _, a in marks),
                           "both": sum(c and a for c, a in marks)}
    return {"concept": concept, "styles": out}
