"""Regenerate loracam/control/poses/*.json: the shipped OpenPose templates, from a parametric skeleton.

The skeleton is an adult in head units (7.5 heads tall; shoulder joints 1.5 heads apart, hip joints 0.9), built
in 3D, turned by a yaw, seen through a pinhole camera a few metres away and placed on a 512x768 canvas.
3D and perspective matter for the poses that are not flat: a sitting person's thighs point at the camera,
and a walker's forward foot lands lower in the picture than the one behind.
Points that fall outside the canvas are written missing (0, 0, 0), as OpenPose does for a cut photo.

Usage: python tools/make_pose_templates.py [--preview DIR]   (DIR gets a PNG drawing of each template)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loracam.control.openpose import NAMES, Person, Pose  # noqa: E402
from loracam.io import atomic_write_bytes  # noqa: E402

OUT = ROOT / "loracam" / "control" / "poses"
CANVAS = (512, 768)

# Adult proportions in head heights (top of the head to the chin), measured from the neck point (the
# shoulders' midpoint); y grows downwards, x towards the person's left (the image's right), z towards the
# camera. The head's points sit on a skull centred HEAD_CENTRE above the neck.
HEAD_TOP = 1.4  # the neck point lies 1.4 heads below the top of the head
SHOULDER = 0.75  # half the shoulder-joint width (the joints, inside the shoulders' outline)
HIP = (0.45, 2.3)  # half the hip-joint width; the hips' drop below the neck
UPPER_ARM, FOREARM, THIGH, SHIN = 1.35, 1.15, 1.75, 1.8
HEAD_CENTRE = (0.0, -0.85, 0.0)
FACE = {"nose": (0.0, 0.12, 0.45), "right_eye": (-0.14, -0.05, 0.36), "left_eye": (0.14, -0.05, 0.36),
        "right_ear": (-0.34, 0.0, 0.0), "left_ear": (0.34, 0.0, 0.0)}  # relative to the skull's centre
FOOT = 0.3  # how far the sole reaches below the ankle point, kept inside the canvas when fitting


@dataclass(frozen=True)
class Limb:
    """A two-segment limb as two directions: (outward, forward) degrees from hanging straight down.

    Outward swings away from the body's midline in the frontal plane; forward swings towards the camera
    (negative: backwards). Each segment's angles are absolute, not relative to the one before.
    """

    upper: tuple[float, float] = (0.0, 0.0)
    lower: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class Figure:
    """One person's pose: the four limbs, the body's yaw and the head's own turn and tilt (degrees)."""

    right_arm: Limb = Limb((8, 0), (6, 8))
    left_arm: Limb = Limb((8, 0), (6, 8))
    right_leg: Limb = Limb((3, 0), (1, 0))
    left_leg: Limb = Limb((3, 0), (1, 0))
    yaw: float = 0.0  # positive turns the person towards their left (the image's right)
    head_yaw: float = 0.0
    head_tilt: float = 0.0  # positive drops the right ear (the head leans towards the image's left)
    hidden: frozenset[str] = frozenset()  # points something in front hides (OpenPose leaves them out)


@dataclass(frozen=True)
class Shot:
    """Where a figure lands: its top (head) and bottom reference at these canvas fractions, centred on x.

    ``bottom`` names what sits at ``y1``: "feet" (the soles), "hips" or "shoulders".
    """

    x: float
    y0: float
    y1: float
    bottom: str = "feet"
    camera_height: float = 2.0  # the lens's height, in heads below the neck point
    distance: float = 14.0  # the lens's distance in front of the body, in heads
    pitch: float = 0.0  # how far the lens looks down on the person, degrees


def _direction(side: float, outward: float, forward: float) -> np.ndarray:
    """A unit vector hanging down, swung ``outward`` (towards ``side``, -1 right, +1 left) and ``forward``."""
    a, f = math.radians(outward), math.radians(forward)
    return np.array([side * math.sin(a) * math.cos(f), math.cos(a) * math.cos(f), math.sin(f)])


def _rotate_y(points: dict[str, np.ndarray], degrees: float, centre: np.ndarray) -> dict[str, np.ndarray]:
    """``points`` turned about the vertical axis through ``centre``; +yaw carries the face towards +x."""
    t = math.radians(degrees)
    m = np.array([[math.cos(t), 0.0, math.sin(t)], [0.0, 1.0, 0.0], [-math.sin(t), 0.0, math.cos(t)]])
    return {k: centre + m @ (v - centre) for k, v in points.items()}


def _rotate_z(points: dict[str, np.ndarray], degrees: float, centre: np.ndarray) -> dict[str, np.ndarray]:
    """``points`` rolled in the picture plane about ``centre`` (positive: clockwise on screen, y down)."""
    t = math.radians(degrees)
    m = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
    return {k: centre + m @ (v - centre) for k, v in points.items()}


def _head(fig: Figure) -> dict[str, np.ndarray]:
    centre = np.array(HEAD_CENTRE)
    head = {k: centre + np.array(v) for k, v in FACE.items()}
    head["head_top"] = centre + np.array([0.0, -(HEAD_TOP + HEAD_CENTRE[1]), 0.0])
    head = _rotate_y(head, fig.head_yaw, centre)
    return _rotate_z(head, -fig.head_tilt, centre)


def _hidden_ears(pts: dict[str, np.ndarray]) -> set[str]:
    """The ears the head hides: turned more than about 20 degrees away, as OpenPose then finds no ear."""
    centre_z = pts["right_ear"][2] / 2 + pts["left_ear"][2] / 2
    return {ear for ear in ("right_ear", "left_ear") if pts[ear][2] - centre_z < -0.12}


def skeleton(fig: Figure) -> dict[str, np.ndarray]:
    """The figure's joints in 3D head units (OpenPose's names, plus the top of the head and the soles)."""
    pts = {"neck": np.zeros(3), **_head(fig)}
    for side, name in ((-1.0, "right"), (1.0, "left")):
        arm, leg = getattr(fig, f"{name}_arm"), getattr(fig, f"{name}_leg")
        pts[f"{name}_shoulder"] = np.array([side * SHOULDER, 0.0, 0.0])
        pts[f"{name}_elbow"] = pts[f"{name}_shoulder"] + UPPER_ARM * _direction(side, *arm.upper)
        pts[f"{name}_wrist"] = pts[f"{name}_elbow"] + FOREARM * _direction(side, *arm.lower)
        pts[f"{name}_hip"] = np.array([side * HIP[0], HIP[1], 0.0])
        pts[f"{name}_knee"] = pts[f"{name}_hip"] + THIGH * _direction(side, *leg.upper)
        pts[f"{name}_ankle"] = pts[f"{name}_knee"] + SHIN * _direction(side, *leg.lower)
        pts[f"{name}_sole"] = pts[f"{name}_ankle"] + np.array([0.0, FOOT, 0.0])
    return _rotate_y(pts, fig.yaw, np.zeros(3))


def project(pts: dict[str, np.ndarray], shot: Shot) -> dict[str, np.ndarray]:
    """A pinhole camera at the shot's height, distance and pitch: nearer points spread away from its axis,
    and looking down drops whatever reaches towards the lens (a sitter's knees) lower in the picture."""
    out = {}
    cos, sin = math.cos(math.radians(shot.pitch)), math.sin(math.radians(shot.pitch))
    for k, (x, y0, z0) in pts.items():
        y, z = y0 * cos + z0 * sin, z0 * cos - y0 * sin
        grow = shot.distance / (shot.distance - z)
        out[k] = np.array([x * grow, shot.camera_height + (y - shot.camera_height) * grow])
    return out


def _bottom(flat: dict[str, np.ndarray], what: str) -> float:
    if what == "feet":
        return max(flat["right_sole"][1], flat["left_sole"][1])
    return (flat[f"right_{what[:-1]}"][1] + flat[f"left_{what[:-1]}"][1]) / 2  # "hips" -> the hips' mean


def place(fig: Figure, shot: Shot, canvas: tuple[int, int] = CANVAS) -> Person:
    """The figure on the canvas: head top at y0, the shot's bottom at y1, the neck at x; outside -> missing."""
    pts = skeleton(fig)
    hidden = _hidden_ears(pts) | fig.hidden
    flat = project(pts, shot)
    top, bottom = flat["head_top"][1], _bottom(flat, shot.bottom)
    scale = (shot.y1 - shot.y0) * canvas[1] / (bottom - top)  # pixels per head
    x0, y0 = shot.x * canvas[0] - scale * flat["neck"][0], shot.y0 * canvas[1] - scale * top
    points = []
    for name in NAMES:
        px, py = x0 + scale * flat[name][0], y0 + scale * flat[name][1]
        seen = 0 <= px < canvas[0] and 0 <= py < canvas[1] and name not in hidden
        points.append((px / canvas[0], py / canvas[1]) if seen else None)
    return Person(tuple(points))


# ---------------------------------------------------------------------------------------------
# the templates

def mirrored(fig: Figure) -> Figure:
    """The same pose seen in a mirror: the limbs swap sides and every turn and tilt goes the other way."""
    return Figure(right_arm=fig.left_arm, left_arm=fig.right_arm, right_leg=fig.left_leg, left_leg=fig.right_leg,
                  yaw=-fig.yaw, head_yaw=-fig.head_yaw, head_tilt=-fig.head_tilt,
                  hidden=frozenset(_other_side(n) for n in fig.hidden))


def _other_side(name: str) -> str:
    return name.replace("right", "@").replace("left", "right").replace("@", "left")


STANDING = Figure()
# mid-stride, seen a little from the side so the stride shows: the right leg reaches forward, the left
# pushes off behind with its knee bent; the arms swing the other way round.
WALKING = Figure(right_arm=Limb((6, -22), (5, -8)), left_arm=Limb((6, 24), (4, 50)),
                 right_leg=Limb((2, 24), (1, 6)), left_leg=Limb((2, -14), (1, -38)), yaw=-28, head_yaw=20)
# on a low seat, seen a little from above and from the side: thighs forward with the knees apart and
# higher than the hips, shins down to the floor; hands resting on the thighs.
SITTING = Figure(right_arm=Limb((4, 10), (-10, 58)), left_arm=Limb((4, 10), (-10, 58)),
                 right_leg=Limb((12, 98), (4, 6)), left_leg=Limb((12, 98), (4, 6)), yaw=-30, head_yaw=18)
# the right hand on the hip, elbow out; the left arm relaxed, its hand just above the cut at the hips
HALF_BODY = Figure(right_arm=Limb((30, 0), (-48, 0)), left_arm=Limb((6, 0), (2, 35)), head_tilt=4)
CLOSE_UP = Figure(head_yaw=-8, head_tilt=-3)
PAIR_RIGHT = Figure(right_arm=Limb((6, 0), (4, 10)), left_arm=Limb((5, 0), (3, 6)), yaw=18, head_yaw=8)
PAIR_LEFT = Figure(right_arm=Limb((4, 0), (2, 6)), left_arm=Limb((12, 0), (20, 20)), yaw=-18, head_yaw=-8)
# shoulder to shoulder, turned towards the partner (the image's right), the inner arm round the partner's
# back and so out of sight
HALF_PAIR = Figure(right_arm=Limb((3, 0), (-3, 30)), yaw=15, head_yaw=6, head_tilt=3,
                   hidden=frozenset({"left_elbow", "left_wrist"}))

TEMPLATES: dict[str, list[tuple[Figure, Shot]]] = {
    "standing": [(STANDING, Shot(0.5, 0.06, 0.95))],
    "walking": [(WALKING, Shot(0.5, 0.06, 0.95))],
    "sitting": [(SITTING, Shot(0.58, 0.12, 0.93, camera_height=1.0, pitch=12))],  # centres the legs
    # off centre, so the elbow on the hip stays in the picture
    "half_body": [(HALF_BODY, Shot(0.56, 0.09, 0.97, bottom="hips", distance=8))],
    "close_up": [(CLOSE_UP, Shot(0.5, 0.13, 0.69, bottom="shoulders", camera_height=-0.9, distance=6))],
    # two people side by side, each turned a little towards the other
    "two_standing": [(PAIR_RIGHT, Shot(0.29, 0.08, 0.94)), (PAIR_LEFT, Shot(0.71, 0.09, 0.95))],
    "two_half_body": [(HALF_PAIR, Shot(0.26, 0.21, 0.97, bottom="hips", distance=10)),
                      (mirrored(HALF_PAIR), Shot(0.74, 0.23, 0.97, bottom="hips", distance=10))],
}


def build(name: str) -> Pose:
    return Pose(tuple(place(fig, shot) for fig, shot in TEMPLATES[name]), *CANVAS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", type=Path, help="also write a PNG drawing of each template here")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in TEMPLATES:
        pose = build(name)
        text = json.dumps(pose.to_json(), indent=None, separators=(", ", ": ")) + "\n"
        atomic_write_bytes(OUT / f"{name}.json", text.encode(), overwrite=True)  # regenerated on purpose
        if args.preview:
            from PIL import Image

            args.preview.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pose.draw()).save(args.preview / f"{name}.png")
        print(f"{name}: {len(pose.people)} people, "
              f"{sum(len(p.present()) for p in pose.people)} keypoints")


if __name__ == "__main__":
    main()
