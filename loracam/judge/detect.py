"""Which images have exactly one face of a usable size: FaceChain's output filters, detectors in a table.

FaceChain keeps a candidate only with exactly one face whose max(box width, height) is between 120 and 300 px
of its 512 px outputs. loracam states the size relative to the image's shorter side (0.234..0.586), so the rule
means the same at 512x768, at 1024 px and at the toy's 64x96; each identity embedder brings its own default
range (the toy's faces are far larger relative to the picture: see loracam.judge.embed).

Detectors (``DETECTORS``, name -> builder), each loaded once and run on a batch of images:
- ``dlib``: loracam.data.faces (HOG, weak hits confirmed by dlib's CNN); counts every face and fits the 68
  landmarks of the largest, which the dlib and ONNX embedders then use.
- ``toy``: the toy world's part locator. It has one face slot, so it finds one face per image at most:
  "exactly one" reads "one found" there.

Subjects without a face to judge (garment, shoes, pet, object) skip the face rules; a person is full-body as
often as not, so only the count applies to it (two people in a person's portrait is still wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# subject -> (count faces, check the face's size)
SUBJECT_RULES: dict[str, tuple[bool, bool]] = {
    "face": (True, True),
    "person": (True, False),
    "garment": (False, False),
    "shoes": (False, False),
    "pet": (False, False),
    "object": (False, False),
}
FACECHAIN_FACE_SIZE = (120 / 512, 300 / 512)  # 0.234..0.586 of the shorter side
TOY_FACE_PRESENT = 0.5  # the locator's confidence above which a face is there


@dataclass(frozen=True)
class FoundFaces:
    """What a detector saw in one image: how many faces, and the largest one's box (image pixels)."""

    count: int
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    face: Any = None  # the detector's own record of the largest face (dlib: Face with landmarks)

    def relative_size(self, image_size: tuple[int, int]) -> float | None:
        """max(box w, h) over the image's shorter side; None without a box."""
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0) / min(image_size)


def face_rule(found: FoundFaces | None, image_size: tuple[int, int], face_size: tuple[float, float],
              subject: str) -> str | None:
    """Why an image fails the face rules for ``subject`` ("2 faces", "face 38 px, under 0.23 of the side"),
    or None when it passes (always, for subjects without a face)."""
    count, size = SUBJECT_RULES[subject]
    if not count:
        return None
    assert found is not None, "a face subject needs a detector"
    if found.count == 0:
        return "no face found"
    if found.count > 1:
        return f"{found.count} faces"
    rel = found.relative_size(image_size)
    if not size or rel is None:
        return None
    lo, hi = face_size
    px = round(rel * min(image_size))
    if rel < lo:
        return f"face {px} px, under {lo:.2f} of the side"
    if rel > hi:
        return f"face {px} px, over {hi:.2f} of the side"
    return None


class DlibDetector:
    """Every face dlib finds; the largest one's landmarks (for embedding it)."""

    name = "dlib"

    def __init__(self, analyzer=None) -> None:
        if analyzer is None:
            from loracam.data.faces import FaceAnalyzer

            # No absolute minimum: the size rule here is relative to the image, and says so in its reason.
            analyzer = FaceAnalyzer(min_face_px=1)
        self.analyzer = analyzer

    def detect(self, images: Sequence[Image.Image]) -> list[FoundFaces]:
        out = []
        for image in images:
            found = self.analyzer.find(image)
            face = found.face
            box = None if face is None else (face.box.x0, face.box.y0, face.box.x1, face.box.y1)
            out.append(FoundFaces(found.faces_seen, box, face))
        return out


class ToyDetector:
    """The toy locator's face slot: one face or none."""

    name = "toy"

    def __init__(self, locator=None) -> None:
        if locator is None:
            from loracam.models.builtin import load_locator

            locator = load_locator("toy")
        self.locator = locator

    def detect(self, images: Sequence[Image.Image]) -> list[FoundFaces]:
        from loracam.toy.locator import PARTS

        out: list[FoundFaces | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):  # the locator batches images of one size
            by_size.setdefault(image.size, []).append(i)
        j = PARTS.index("face")
        for idx in by_size.values():
            batch = np.stack([np.asarray(images[i].convert("RGB")) for i in idx])
            conf, boxes = self.locator.predict(batch)
            for k, i in enumerate(idx):
                if float(conf[k, j]) >= TOY_FACE_PRESENT:
                    out[i] = FoundFaces(1, tuple(float(v) for v in boxes[k, j]))
                else:
                    out[i] = FoundFaces(0)
        return out  # type: ignore[return-value]


DETECTORS: dict[str, Callable[[], Any]] = {
    "dlib": DlibDetector,
    "toy": ToyDetector,
}
