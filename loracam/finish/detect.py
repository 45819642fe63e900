"""Detectors for detail passes, by name: what a pass repaints.

- ``face``: mediapipe's face detector (full range, as ADetailer's mediapipe_face_full); dlib's HOG detector
  where mediapipe is not installed.
- ``person``, ``garment``, ``shoes``: body-pose regions (loracam.data.pose, the crops prep makes).
- ``mask:FILE``: the white pixels of a mask the user drew, at the image's size.
- ``toy-face``, ``toy-garment``, ``toy-shoes``: the toy world's locator (mediapipe finds people, not paper
  dolls); on the toy base, ``face``/``garment``/``shoes`` mean these, and the infotext names the one that ran.
Detectors load their models once per ``Detectors`` (passed in, never a module global).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image

from loracam.errors import LoracamError


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (x1, y1 exclusive)
    score: float
    mask: np.ndarray | None = None  # uint8 0/255 [h, w] when the detector gives a shape, not a box

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class Detector(Protocol):
    def __call__(self, image: Image.Image, confidence: float) -> list[Detection]: ...


class _MediapipeFaces:
    def __init__(self):
        import mediapipe as mp

        self.solution = mp.solutions.face_detection

    def __call__(self, image: Image.Image, confidence: float) -> list[Detection]:
        from loracam.data.pose import _quiet_native_logs

        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        with _quiet_native_logs(), self.solution.FaceDetection(model_selection=1,
                                                               min_detection_confidence=confidence) as fd:
            found = fd.process(rgb).detections or []
        w, h = image.size
        out = []
        for d in found:
            b = d.location_data.relative_bounding_box
            out.append(Detection((b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h),
                                 float(d.score[0])))
        return out


class _DlibFaces:
    def __init__(self):
        from loracam.data.faces import FaceAnalyzer

        self.analyzer = FaceAnalyzer(min_face_px=1)

    def __call__(self, image: Image.Image, confidence: float) -> list[Detection]:
        # HOG scores are margins, not probabilities: dlib's own threshold (0) stands in for the confidence
        return [Detection((b.x0, b.y0, b.x1, b.y1), s) for b, s in self.analyzer.all_faces(image)]


def _faces() -> Detector:
    try:
        return _MediapipeFaces()
    except (ImportError, AttributeError):
        return _DlibFaces()


class _PoseRegion:
    """The first of ``parts`` that the body's pose locates (a person: the full body, else the upper body)."""

    def __init__(self, *parts: str):
        from loracam.data.pose import PoseAnalyzer

        self.parts, self.analyzer = parts, PoseAnalyzer()

    def __call__(self, image: Image.Image, confidence: float) -> list[Detection]:
        pose = self.analyzer.detect(image)
        if pose is None:
            return []
        found = self.analyzer.regions(pose, image.size).boxes
        box = next((found[p] for p in self.parts if p in found), None)
        score = float(np.mean(pose.visibility))
        return [] if box is None or score < confidence else [Detection((box.x0, box.y0, box.x1, box.y1), score)]


class _Toy:
    def __init__(self, part: str):
        from loracam.models.builtin import load_locator

        self.part, self.locator = part, load_locator("toy")

    def __call__(self, image: Image.Image, confidence: float) -> list[Detection]:
        box, score = self.locator.locate(image)[self.part]
        return [Detection(box, score)] if score >= confidence else []


DETECTORS: dict[str, Callable[[], Detector]] = {
    "face": _faces,
    "person": lambda: _PoseRegion("full_body", "upper_body"),
    "garment": lambda: _PoseRegion("garment"),
    "shoes": lambda: _PoseRegion("shoes"),
    "toy-face": lambda: _Toy("face"),
    "toy-garment": lambda: _Toy("garment"),
    "toy-shoes": lambda: _Toy("shoes"),
}


# ADetailer's model names, as A1111 infotexts carry them, and the loracam detector that does the same job
ADETAILER_MODELS = (("face_yolo", "face"), ("mediapipe_face", "face"), ("person_yolo", "person"))


def resolve(name: str, base_kind: str | None = None) -> str:
    """The detector a pass runs: its own name, ``mask:FILE``, or on the toy base the toy world's own."""
    key = name.strip()
    if key.lower().startswith("mask:"):
        return "mask:" + key[5:]
    key = key.lower()
    key = next((ours for prefix, ours in ADETAILER_MODELS if key.startswith(prefix)), key)
    if key not in DETECTORS:
        raise LoracamError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)} or mask:FILE")
    if base_kind == "toy" and f"toy-{key}" in DETECTORS:
        return f"toy-{key}"
    return key


class Detectors:
    """Loads each detector once and runs it by name."""

    def __init__(self):
        self._loaded: dict[str, Detector] = {}

    def detect(self, name: str, image: Image.Image, confidence: float) -> list[Detection]:
        if name.startswith("mask:"):
            return [mask_detection(Path(name[5:]), image.size)]
        if name not in self._loaded:
            self._loaded[name] = DETECTORS[name]()
        return self._loaded[name](image, confidence)


def mask_detection(path: Path, size: tuple[int, int]) -> Detection:
    """A user's mask (white = repaint) as a detection; it must be the image's size."""
    from loracam.generate.images import load_image

    mask = load_image(path, "mask", mode="L")
    if mask.size != size:
        raise LoracamError(f"mask {path.name} is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}; "
                           "draw the mask at the image's size")
    arr = np.where(np.asarray(mask) >= 128, 255, 0).astype(np.uint8)
    ys, xs = np.nonzero(arr)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (0, 0, 0, 0)
    return Detection(box, 1.0, arr)
