"""Poses in the OpenPose convention: 18 body keypoints per person, drawn as ControlNet's openpose models
expect (lllyasviel's annotator, the one sd-webui-controlnet and controlnet_aux use), read and written as
OpenPose JSON, and converted from mediapipe's 33 landmarks.

Keypoints: 0 nose, 1 neck, 2/3/4 right shoulder/elbow/wrist, 5/6/7 left shoulder/elbow/wrist, 8/9/10 right
hip/knee/ankle, 11/12/13 left hip/knee/ankle, 14/15 right/left eye, 16/17 right/left ear ("right" is the
person's right: the image's left for a person facing the camera).

Drawing: a black RGB canvas; person by person, the 17 limbs first, each a filled ellipse along the limb (half its length by
the stick width 4) at 0.6 of its colour, skipped when an end is missing; then every point a filled circle of
radius 4 in full colour. The widths are pixels at the canvas's size, as in the annotator, which draws at its
processor resolution (512 on the short side) before the map is resized to the render size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from loracam.errors import LoracamError

N_POINTS = 18
NAMES = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
         "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
         "right_eye", "left_eye", "right_ear", "left_ear")
# limbs as 0-based point pairs, in drawing order (the convention's 1-based 2-3, 2-6, 3-4, ...)
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
STICK_WIDTH = 4
POINT_RADIUS = 4
LIMB_SHADE = 0.6

# mediapipe's 33 landmarks -> OpenPose's 18 (the community convention; no mirroring). The neck is the
# shoulders' midpoint, present only when both shoulders are.
FROM_MEDIAPIPE = {0: 0, 2: 12, 3: 14, 4: 16, 5: 11, 6: 13, 7: 15, 8: 24, 9: 26, 10: 28, 11: 23, 12: 25,
                  13: 27, 14: 5, 15: 2, 16: 8, 17: 7}


@dataclass(frozen=True)
class Person:
    """One person's keypoints in canvas fractions (0-1 of width and height); None where a point is missing."""

    points: tuple[tuple[float, float] | None, ...]

    def __post_init__(self):
        if len(self.points) != N_POINTS:
            raise LoracamError(f"an OpenPose person has {N_POINTS} keypoints (got {len(self.points)})")

    def present(self) -> list[tuple[float, float]]:
        return [p for p in self.points if p is not None]

    def box(self, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
        """The keypoints' bounding box in pixels of ``size`` (x0, y0, x1, y1), or None with no points."""
        pts = self.present()
        if not pts:
            return None
        xs, ys = [p[0] * size[0] for p in pts], [p[1] * size[1] for p in pts]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class Pose:
    """The people of one picture, on a canvas of ``width`` x ``height`` pixels."""

    people: tuple[Person, ...]
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    # -- OpenPose JSON --------------------------------------------------------------------------

    def to_json(self) -> dict:
        """OpenPose JSON: pixel coordinates, a missing point as 0, 0, 0 and a present one with confidence 1."""
        people = []
        for person in self.people:
            flat: list[float] = []
            for p in person.points:
                flat += [0.0, 0.0, 0.0] if p is None else [round(p[0] * self.width, 2), round(p[1] * self.height, 2), 1.0]
            people.append({"pose_keypoints_2d": flat})
        return {"people": people, "canvas_height": self.height, "canvas_width": self.width}

    @classmethod
    def from_json(cls, data: dict, where: str = "the pose JSON") -> "Pose":
        """A pose from OpenPose JSON (pixel coordinates; normalised ones, all within 0-1, are taken as such)."""
        try:
            width, height = int(data["canvas_width"]), int(data["canvas_height"])
            raw = [person["pose_keypoints_2d"] for person in data["people"]]
        except (KeyError, TypeError, ValueError):
            raise LoracamError(f"{where} is not OpenPose JSON: it needs people[].pose_keypoints_2d, canvas_width "
                               "and canvas_height") from None
        if width < 1 or height < 1:
            raise LoracamError(f"{where}: canvas {width}x{height} is empty")
        people = []
        for i, flat in enumerate(raw):
            if not isinstance(flat, list) or len(flat) != 3 * N_POINTS:
                raise LoracamError(f"{where}: person {i} needs {3 * N_POINTS} numbers (x, y, confidence for "
                                   f"{N_POINTS} points), got {len(flat) if isinstance(flat, list) else flat!r}")
            bad = [v for v in flat if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
            if bad:  # float() on these would raise a bare traceback (or let NaN reach the drawing)
                raise LoracamError(f"{where}: person {i}'s keypoints must all be numbers, found {bad[0]!r}")
            people.append([float(v) for v in flat])
        values = [v for flat in people for k, v in enumerate(flat) if k % 3 < 2]
        normalised = bool(values) and max(values) <= 1.0  # sd-webui-controlnet's editor may write fractions
        sx, sy = (1.0, 1.0) if normalised else (1.0 / width, 1.0 / height)
        out = []
        for flat in people:
            pts = []
            for k in range(N_POINTS):
                x, y, c = flat[3 * k: 3 * k + 3]
                pts.append(None if c <= 0 else (x * sx, y * sy))
            out.append(Person(tuple(pts)))
        return cls(tuple(out), width, height)

    @classmethod
    def load(cls, path: Path) -> "Pose":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LoracamError(f"pose file not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise LoracamError(f"{path} is not readable JSON ({exc})") from None
        if isinstance(data, list):  # sd-webui-controlnet's "Send pose" writes a one-element list
            data = data[0] if len(data) == 1 else {}
        return cls.from_json(data, str(path))

    def resized(self, width: int, height: int) -> "Pose":
        """The same pose on a canvas of another size (points keep their fractions)."""
        return Pose(self.people, width, height)

    # -- drawing --------------------------------------------------------------------------------

    def draw(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """The control map: [H, W, 3] uint8 RGB at ``size`` (default: the canvas's own)."""
        return draw(self.people, size or self.size)


def draw(people: Sequence[Person], size: tuple[int, int]) -> np.ndarray:
    """OpenPose's drawing of ``people`` on a black canvas of ``size`` (width, height)."""
    import cv2

    w, h = size
    canvas = np.zeros((h, w, 3), np.uint8)
    for person in people:  # each person whole (limbs, then points) before the next, as the annotator does
        for k, (a, b) in enumerate(LIMBS):
            pa, pb = person.points[a], person.points[b]
            if pa is None or pb is None:
                continue
            xa, ya, xb, yb = pa[0] * w, pa[1] * h, pb[0] * w, pb[1] * h
            length = math.hypot(xa - xb, ya - yb)
            angle = math.degrees(math.atan2(ya - yb, xa - xb))
            poly = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), STICK_WIDTH),
                                    int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, [int(c * LIMB_SHADE) for c in COLOURS[k]])
        for k, p in enumerate(person.points):
            if p is not None:
                cv2.circle(canvas, (int(p[0] * w), int(p[1] * h)), POINT_RADIUS, COLOURS[k], thickness=-1)
    return canvas


def from_mediapipe(points: np.ndarray, visible: np.ndarray, size: tuple[int, int]) -> Person:
    """A Person from mediapipe's 33 landmarks (pixels [33, 2]) and which of them count as seen ([33] bool)."""
    w, h = size
    out: list[tuple[float, float] | None] = [None] * N_POINTS
    for k, m in FROM_MEDIAPIPE.items():
        if visible[m]:
            out[k] = (float(points[m][0]) / w, float(points[m][1]) / h)
    if visible[11] and visible[12]:
        out[1] = (float(points[11][0] + points[12][0]) / 2 / w, float(points[11][1] + points[12][1]) / 2 / h)
    return Person(tuple(out))
