"""The toy world's "user photos": dolls wearing a held-out concept, in varied poses, framings and
backgrounds, rendered larger than the model's size (as phone photos are) with the part boxes that
``loracam prep --boxes`` takes (mediapipe finds people, not paper dolls).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes, writable_dir
from loracam.toy import world
from loracam.toy.world import MYSHOES, SKS, TESTDRESS

# concept -> (the doll field it sets, the framings its photos use)
SUBJECT_PHOTOS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    TESTDRESS: ("dress", ("full body",)),
    MYSHOES: ("shoes", ("full body",)),
    SKS: ("face", ("upper body", "close-up")),
    "none": (None, world.FRAMINGS),
}
BOXES_FILE = "boxes.json"


def write_photos(out: Path, concept: str, count: int, seed: int = 0, size: tuple[int, int] = (192, 288)) -> list[Path]:
    """``count`` PNG photos of dolls with ``concept`` into ``out`` plus ``boxes.json``; nothing is overwritten."""
    if concept not in SUBJECT_PHOTOS:
        raise LoracamError(f"unknown toy concept {concept!r}; use one of {', '.join(SUBJECT_PHOTOS)}")
    if count < 1:
        raise LoracamError("-n must be at least 1")
    if size[0] * world.H != size[1] * world.W:
        raise LoracamError(f"--size {size[0]}x{size[1]}: toy photos are 2:3 (e.g. 192x288)")
    out = writable_dir(out, "photo folder")
    if (out / BOXES_FILE).exists():
        raise LoracamError(f"{out} already holds toy photos ({BOXES_FILE}); choose an empty folder")
    field, framings = SUBJECT_PHOTOS[concept]
    rng = np.random.default_rng(seed)
    boxes, paths = {}, []
    for i in range(count):
        fixed = {"framing": framings[int(rng.integers(len(framings)))]}
        if field:
            fixed[field] = concept
        doll = world.sample_doll(rng, held_out=True, **fixed)
        name = f"photo_{i:03d}.png"
        paths.append(atomic_write_bytes(out / name, _png(world.render(doll, size))))
        boxes[name] = {k: v for k, v in world.boxes(doll, size).items()
                       if k in ("garment", "shoes", "full_body", "upper_body")}
    atomic_write_bytes(out / BOXES_FILE, json.dumps(boxes, indent=1).encode())
    return paths


def _png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
