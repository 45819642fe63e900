"""A doll's OpenPose skeleton, from the renderer's own geometry: what the toy ControlNet is conditioned on.

``person(doll)`` gives the 18 OpenPose keypoints (loracam.control.openpose's order) in image fractions, at
the places ``world.render`` draws the parts (doll units: 0 = top of the head, 1 = the soles; x = 0 the centre
line): the eyes' discs at (+-0.032, 0.105), the arm segments from (+-0.08, 0.22) to the hands (the wrist at
the segment's end, the elbow its midpoint), the legs' rectangles from y 0.6 to 0.93 at x = side * (0.045 +
legs). The person's right is the image's left (side -1), as for a person facing the camera. A point outside
the picture is missing (None): OpenPose does not see it.

``control_map(doll)`` draws that pose as A1111's openpose preprocessor would hand it over: drawn at the
processor resolution (512 on the short side: 512x768 for the 2:3 world) and fitted to the render size.
"""

from __future__ import annotations

import numpy as np

from loracam.control import openpose, resize
from loracam.toy.world import H, W, Doll

PROCESSOR_RES = 512

# Keypoints that do not move with the pose, in doll units (x, y), by OpenPose index.
_FIXED = {
    0: (0.0, 0.125),  # nose: between the eyes (y 0.105) and the mouth (y 0.145)
    1: (0.0, 0.19),  # neck: the neck's rectangle (y 0.15-0.2) meets the dress's neckline (y 0.19)
    14: (-0.032, 0.105), 15: (0.032, 0.105),  # right/left eye: the eye-white discs' centres
    16: (-0.085, 0.1), 17: (0.085, 0.1),  # right/left ear: the head disc's (r 0.085 at y 0.1) sides
}
SHOULDER_Y, HIP_Y, KNEE_Y, ANKLE_Y = 0.22, 0.6, 0.77, 0.93


def doll_points(doll: Doll) -> list[tuple[float, float]]:
    """The 18 keypoints in doll units, every one of them (on or off the picture)."""
    pts: list[tuple[float, float] | None] = [None] * openpose.N_POINTS
    for k, p in _FIXED.items():
        pts[k] = p
    for side, (sh, el, wr, hip, knee, ankle) in ((-1, (2, 3, 4, 8, 9, 10)), (1, (5, 6, 7, 11, 12, 13))):
        shoulder = (side * 0.08, SHOULDER_Y)
        hand = (side * (0.16 + doll.arms), 0.44 - abs(doll.arms) * 0.5)  # as render() draws the arm
        pts[sh], pts[wr] = shoulder, hand
        pts[el] = ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2)
        x = side * (0.045 + doll.legs)  # the leg rectangle's centre line
        pts[hip], pts[knee], pts[ankle] = (x, HIP_Y), (x, KNEE_Y), (x, ANKLE_Y)
    return pts  # type: ignore[return-value]


def to_image(doll: Doll, point: tuple[float, float], size: tuple[int, int] = (W, H)) -> tuple[float, float]:
    """A doll-unit point in image fractions (the renderer's camera: scale in image heights, top, center)."""
    x, y = point
    return doll.center + x * doll.scale * size[1] / size[0], doll.top + y * doll.scale


def person(doll: Doll, size: tuple[int, int] = (W, H)) -> openpose.Person:
    """The doll's OpenPose keypoints in fractions of a ``size`` picture; None where a point is off the picture."""
    out = []
    for p in doll_points(doll):
        fx, fy = to_image(doll, p, size)
        out.append((fx, fy) if 0.0 <= fx < 1.0 and 0.0 <= fy < 1.0 else None)
    return openpose.Person(tuple(out))


def pose(doll: Doll, size: tuple[int, int] = (W, H)) -> openpose.Pose:
    return openpose.Pose((person(doll, size),), *size)


def control_map(doll: Doll, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """[h, w, 3] uint8: the pose drawn at the processor resolution, then fitted to ``size`` (A1111's way)."""
    canvas = resize.processor_size(size, PROCESSOR_RES)
    return resize.fit(openpose.draw([person(doll, size)], canvas), size)
