"""Body parts located from a person's pose: where the garment, the shoes, the upper and the full body are.

The pose is mediapipe's legacy BlazePose (33 landmarks; its model ships inside the 0.10.21 wheel). The
boxes are regions in photo pixels, clipped to the photo; the caller grows each to the dataset aspect with
geometry.aspect_crop, as the NGA guide crops by hand: the garment alone for training, the full body at the
same 2:3 ratio for regularization, the shoes as a small crop. A part whose landmarks are not clearly
visible is reported as missing, with the reason, and never guessed: a wrong crop trains a wrong LoRA.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from loracam.data.geometry import Box
from loracam.errors import LoracamError

PARTS = ("full_body", "upper_body", "garment", "shoes")

# mediapipe's PoseLandmark order, lower-cased.
LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
_INDEX = {name: i for i, name in enumerate(LANDMARKS)}

INSTALL_HINT = ('pip install --no-deps mediapipe==0.10.21 && '
                'pip install absl-py attrs flatbuffers "protobuf<5" matplotlib')

# Proportions, as fractions of a body measure (see _Body). Generous where cutting would spoil a crop.
_HEAD_PER_SHOULDER = 0.55  # nose to top of the head (hair included) / shoulder-joint width, frontal
_HEAD_PER_EARS = 1.3  # the same / ear-to-ear distance; holds when the shoulders turn away
_HEAD_PER_EYE_EAR = 3.0  # the same / eye-to-ear distance; holds in profile
_HEAD_PER_TORSO = 0.3  # the same / shoulder-to-hip length; holds when shoulders and head turn
_BODY_MARGIN = 0.05  # of the body's height, around full and upper body
_SIDE_MARGIN = 0.3  # of the torso width, beside arms, sleeves and skirts
_COLLAR = 0.25  # of the torso width, above the shoulder joints: straps, collar, neckline
_HEM_MARGIN = 0.08  # of the garment's height, below the knees or ankles: the hem hangs lower
_SHOE_MARGIN = 0.6  # of the foot's length, around the foot landmarks: a shoe is bigger than the foot
_FRAME_TOLERANCE = 0.03  # of the photo's longer side: landmarks this far outside still count as in it


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make the generated __eq__/__hash__ unusable
class Pose:
    """One person's 33 landmarks in photo pixels, with mediapipe's visibility score (0..1) for each."""

    points: np.ndarray  # [33, 2] x, y
    visibility: np.ndarray  # [33]

    def __post_init__(self) -> None:
        points = np.array(self.points, dtype=np.float64)
        vis = np.array(self.visibility, dtype=np.float64)
        if points.shape != (len(LANDMARKS), 2) or vis.shape != (len(LANDMARKS),):
            raise ValueError(f"a Pose needs points [33, 2] and visibility [33], got {points.shape} and {vis.shape}")
        points.flags.writeable = vis.flags.writeable = False  # frozen means frozen, arrays included
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "visibility", vis)

    def visible(self, name: str, min_vis: float = 0.5) -> bool:
        """Whether landmark ``name`` (mediapipe's name, e.g. "left_ankle") has visibility >= ``min_vis``."""
        return bool(self.visibility[_landmark(name)] >= min_vis)

    def point(self, name: str) -> tuple[float, float]:
        """The (x, y) pixel position of landmark ``name``."""
        x, y = self.points[_landmark(name)]
        return float(x), float(y)


@dataclass(frozen=True)
class PartFinding:
    """The parts located in one photo, and why each of the others could not be."""

    boxes: dict[str, Box]
    missing: dict[str, str]


def _landmark(name: str) -> int:
    try:
        return _INDEX[name]
    except KeyError:
        raise ValueError(f"unknown pose landmark {name!r}; known: {', '.join(LANDMARKS)}") from None


# ---------------------------------------------------------------------------------------------
# locating parts (pure geometry: no mediapipe needed)


class _Missing(Exception):
    """A part's defining landmarks are not visible; the message is the reason shown to the user."""


@dataclass(frozen=True)
class _Body:
    """A pose seen in a photo of ``width`` x ``height``: which landmarks count, and body measures."""

    pose: Pose
    width: int
    height: int
    min_vis: float

    def ok(self, name: str) -> bool:
        """Visible enough, and inside the photo (a landmark placed past the edge is a guess)."""
        x, y = self.pose.point(name)
        tol = _FRAME_TOLERANCE * max(self.width, self.height)
        inside = -tol <= x <= self.width + tol and -tol <= y <= self.height + tol
        return inside and self.pose.visible(name, self.min_vis)

    def require(self, what: str, *names: str) -> np.ndarray:
        """The points [n, 2] of ``names``, or _Missing saying that ``what`` (e.g. "ankles") is not visible."""
        bad = [n for n in names if not self.ok(n)]
        if bad:
            raise _Missing(f"{what} not visible ({self._why(bad)})")
        return np.array([self.pose.point(n) for n in names])

    def pair(self, stem: str) -> np.ndarray:
        """Both sides of a landmark (e.g. "knee"), required: [2, 2] (left, right)."""
        return self.require(f"{stem}s", f"left_{stem}", f"right_{stem}")

    def _why(self, names: list[str]) -> str:
        xs, ys = zip(*(self.pose.point(n) for n in names))
        x, y = float(np.mean(xs)), float(np.mean(ys))
        if y > self.height:
            return f"photo cut {self._lowest_visible()}"
        if y < 0:
            return "photo cut at the top"
        if x < 0 or x > self.width:
            return f"photo cut at the {'left' if x < 0 else 'right'} edge"
        return "hidden or unclear in the photo"

    def _lowest_visible(self) -> str:
        for stem, words in (("ankle", "ankles"), ("knee", "knees"), ("hip", "hips"), ("shoulder", "shoulders")):
            if self.ok(f"left_{stem}") or self.ok(f"right_{stem}"):
                return f"below the {words}"
        return "at the bottom"

    @property
    def torso_width(self) -> float:
        """The wider of shoulders and hips (joint to joint); shoulders alone when the hips are not seen."""
        widths = [_spread(self.pair("shoulder"))]
        if self.ok("left_hip") and self.ok("right_hip"):
            widths.append(_spread(self.pair("hip")))
        return max(widths)

    def head_top(self) -> float:
        """The y of the top of the head, estimated above the nose from whichever head measures are seen."""
        nose = self.require("head", "nose")[0]
        shoulders = self.pair("shoulder")
        rise = [_HEAD_PER_SHOULDER * _spread(shoulders)]
        if self.ok("left_ear") and self.ok("right_ear"):
            rise.append(_HEAD_PER_EARS * _spread(self.pair("ear")))
        for side in ("left", "right"):
            if self.ok(f"{side}_eye") and self.ok(f"{side}_ear"):
                rise.append(_HEAD_PER_EYE_EAR * _spread(self.require("eye", f"{side}_eye", f"{side}_ear")))
        if self.ok("left_hip") and self.ok("right_hip"):
            rise.append(_HEAD_PER_TORSO * float(np.linalg.norm(shoulders.mean(0) - self.pair("hip").mean(0))))
        return float(nose[1] - max(rise))

    def visible_points(self, names: tuple[str, ...] = LANDMARKS) -> np.ndarray:
        """Every landmark among ``names`` that counts as visible: [n, 2]."""
        return np.array([self.pose.point(n) for n in names if self.ok(n)]).reshape(-1, 2)


def _spread(points: np.ndarray) -> float:
    """The largest distance between any two of ``points`` [n, 2]."""
    return max((float(np.linalg.norm(a - b)) for a in points for b in points), default=0.0)


def _full_body(body: _Body, long_garment: bool) -> Box:
    head = body.head_top()
    body.pair("ankle")  # the feet define the bottom; without them this is not a full-body photo
    pts = body.visible_points()
    top, bottom = min(head, float(pts[:, 1].min())), float(pts[:, 1].max())  # min: hands raised overhead
    margin = _BODY_MARGIN * (bottom - top)
    side = max(margin, _SIDE_MARGIN * body.torso_width)
    return Box(float(pts[:, 0].min()) - side, top - margin, float(pts[:, 0].max()) + side, bottom + margin)


def _upper_body(body: _Body, long_garment: bool) -> Box:
    head = body.head_top()
    if body.ok("left_hip") and body.ok("right_hip"):
        bottom = float(body.pair("hip")[:, 1].max())
    elif body.ok("left_knee") or body.ok("right_knee"):
        raise _Missing("hips not visible (hidden or unclear in the photo)")  # legs seen: the hips are hidden
    else:
        bottom = float(body.height)  # the photo ends above the hips: the upper body runs to its edge
    pts = body.visible_points(LANDMARKS[:25])  # head, arms, hands, hips
    top = min(head, float(pts[:, 1].min()))
    margin = _BODY_MARGIN * (bottom - top)
    side = max(margin, _SIDE_MARGIN * body.torso_width)
    return Box(float(pts[:, 0].min()) - side, top - margin, float(pts[:, 0].max()) + side, bottom + margin)


def _garment(body: _Body, long_garment: bool) -> Box:
    ends = body.pair("ankle") if long_garment else body.pair("knee")  # first: the likeliest to be missing
    shoulders, hips = body.pair("shoulder"), body.pair("hip")
    pts = np.concatenate([shoulders, hips, ends])
    top = float(shoulders[:, 1].min()) - _COLLAR * body.torso_width
    bottom = float(ends[:, 1].max())
    bottom += _HEM_MARGIN * (bottom - top)
    side = _SIDE_MARGIN * body.torso_width
    return Box(float(pts[:, 0].min()) - side, top, float(pts[:, 0].max()) + side, bottom)


def _shoes(body: _Body, long_garment: bool) -> Box:
    feet = []
    for side in ("left", "right"):
        ankle = body.require("ankles", f"{side}_ankle")
        ends = body.visible_points((f"{side}_heel", f"{side}_foot_index"))
        if len(ends) == 0:
            body.require(f"{side} foot", f"{side}_heel", f"{side}_foot_index")  # raises, saying why
        feet.append(np.concatenate([ankle, ends]))
    foot = max(_spread(f) for f in feet)
    pts = np.concatenate(feet)
    m = _SHOE_MARGIN * foot
    return Box(float(pts[:, 0].min()) - m, float(pts[:, 1].min()) - m, float(pts[:, 0].max()) + m,
               float(pts[:, 1].max()) + m)


_LOCATORS: dict[str, Callable[[_Body, bool], Box]] = {
    "full_body": _full_body, "upper_body": _upper_body, "garment": _garment, "shoes": _shoes,
}


def locate_parts(pose: Pose, size: tuple[int, int], long_garment: bool = False,
                 min_visibility: float = 0.5) -> PartFinding:
    """Each of PARTS located in a photo of ``size`` (width, height), or the reason it could not be."""
    body = _Body(pose, int(size[0]), int(size[1]), min_visibility)
    boxes, missing = {}, {}
    for part in PARTS:
        try:
            box = _LOCATORS[part](body, long_garment)
        except _Missing as why:
            missing[part] = str(why)
            continue
        boxes[part] = Box(max(0.0, box.x0), max(0.0, box.y0), min(float(body.width), box.x1),
                          min(float(body.height), box.y1))
    return PartFinding(boxes, missing)


# ---------------------------------------------------------------------------------------------
# the detector


class PoseAnalyzer:
    """Loads mediapipe's pose model once; detects one person's pose per photo and locates its parts."""

    def __init__(self, min_visibility: float = 0.5) -> None:
        if not 0.0 < min_visibility <= 1.0:
            raise ValueError(f"min_visibility must be in (0, 1], got {min_visibility}")
        self.min_visibility = min_visibility
        solution = _pose_solution()
        with _quiet_native_logs():
            try:
                self._model = solution.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False)
            except (RuntimeError, OSError, ValueError) as e:  # a mediapipe without its bundled model files
                raise LoracamError(f"mediapipe's pose model could not be loaded ({e}); install the version "
                                   f"that carries it: {INSTALL_HINT}") from e
            # One run now, so the graph's one-off start-up chatter lands inside this quiet block.
            self._model.process(np.zeros((64, 64, 3), np.uint8))

    def detect(self, image: Image.Image) -> Pose | None:
        """The pose of the (most prominent) person in ``image``, or None when no person is found."""
        if self._model is None:
            raise RuntimeError("PoseAnalyzer.detect called after close()")
        rgb = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        with _quiet_native_logs():
            result = self._model.process(rgb)
        if result.pose_landmarks is None:
            return None
        marks = result.pose_landmarks.landmark
        points = np.array([[m.x * image.width, m.y * image.height] for m in marks])  # normalised -> pixels
        return Pose(points, np.array([m.visibility for m in marks]))

    def regions(self, pose: Pose, size: tuple[int, int], long_garment: bool = False) -> PartFinding:
        """The parts of ``pose`` in a photo of ``size`` (width, height); see locate_parts."""
        return locate_parts(pose, size, long_garment, self.min_visibility)

    def close(self) -> None:
        """Free the model; later detect() calls are an error."""
        if self._model is not None:
            self._model.close()
            self._model = None

    def __enter__(self) -> "PoseAnalyzer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pose_solution():
    """mediapipe's legacy ``solutions.pose`` module, or a LoracamError saying how to install it."""
    try:
        import mediapipe as mp
    except ImportError as e:
        raise LoracamError(f"finding body parts needs mediapipe 0.10.21, which is not installed ({e}); "
                           f"install it with: {INSTALL_HINT}") from e
    try:
        return mp.solutions.pose
    except AttributeError as e:
        version = getattr(mp, "__version__", "unknown")
        raise LoracamError(f"mediapipe {version} has no legacy 'solutions.pose' API with its model inside; "
                           f"install the version that has: {INSTALL_HINT}") from e


# absl/TFLite start-up chatter from mediapipe's C++ side; environment switches (GLOG_minloglevel,
# TF_CPP_MIN_LOG_LEVEL, absl verbosity) do not reach it in 0.10.21, so it is filtered at the fd.
_NOISE = re.compile(r"INFO: Created TensorFlow Lite|WARNING: All log messages before absl::InitializeLog"
                    r"|[IW]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\]")


@contextmanager
def _quiet_native_logs() -> Iterator[None]:
    """Send fd 2 to a temporary file while native code runs, then replay all but the known chatter."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to quieten
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines(True) if not _NOISE.match(ln)]
            if kept:
                sys.stderr.write("".join(kept))


# ---------------------------------------------------------------------------------------------
# the user's --boxes file

_BOXES_EXAMPLE = '{"photo.jpg": {"garment": [x0, y0, x1, y1], "shoes": [x0, y0, x1, y1]}}'


def boxes_from_json(path: Path) -> dict[str, dict[str, Box]]:
    """The user's hand-drawn part boxes by photo name, validated; every problem is named in one error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LoracamError(f"cannot read the boxes file {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        near = _photo_before(text, e.pos)
        raise LoracamError(f"{path} is not valid JSON{near}: {e.msg} at line {e.lineno}, column {e.colno}; "
                           f"it should look like {_BOXES_EXAMPLE}") from e
    if not isinstance(data, dict):
        raise LoracamError(f"{path} must map photo names to boxes, like {_BOXES_EXAMPLE}")
    boxes, problems = {}, []
    for photo, parts in data.items():
        boxes[photo] = _photo_boxes(photo, parts, problems)
    if problems:
        raise LoracamError(f"{path} has {len(problems)} problem(s): " + "; ".join(problems)
                           + f". Each entry looks like {_BOXES_EXAMPLE} (pixels, x1 > x0, y1 > y0)")
    return boxes


def _photo_before(text: str, pos: int) -> str:
    """' (in the entry for "b.jpg")': the last photo name before a JSON syntax error, when one is there."""
    keys = [k for k in re.findall(r'"((?:[^"\\]|\\.)*)"\s*:', text[:pos]) if k not in PARTS]
    return f' (in the entry for "{keys[-1]}")' if keys else ""


def _photo_boxes(photo: str, parts: object, problems: list[str]) -> dict[str, Box]:
    """One photo's boxes; what is wrong goes to ``problems``, naming the photo."""
    if not isinstance(parts, dict):
        problems.append(f'"{photo}": expected an object of part boxes, got {json.dumps(parts)}')
        return {}
    out = {}
    for part, coords in parts.items():
        if part not in PARTS:
            problems.append(f'"{photo}": unknown part "{part}" (known: {", ".join(PARTS)})')
            continue
        why = _box_problem(coords)
        if why:
            problems.append(f'"{photo}" {part}: {why}')
            continue
        out[part] = Box(*(float(v) for v in coords))
    return out


def _box_problem(coords: object) -> str | None:
    """What is wrong with [x0, y0, x1, y1], or None."""
    numbers = isinstance(coords, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coords)
    if not numbers or len(coords) != 4:
        return f"needs 4 numbers [x0, y0, x1, y1], got {json.dumps(coords)}"
    x0, y0, x1, y1 = coords
    if x1 <= x0:
        return f"x1 ({x1}) must be greater than x0 ({x0})"
    if y1 <= y0:
        return f"y1 ({y1}) must be greater than y0 ({y0})"
    return None
