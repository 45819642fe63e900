"""Faces for `loracam prep --subject face|person|pet`: find the subject's face, level it, frame it, fingerprint it.

Detection is dlib's HOG detector (fast, CPU) with FaceChain's rules: no face, or a largest face that is not
4x the area of the next one ("2 people"), makes a photo unusable for a face LoRA. Landmarks are dlib's
68 points, identity is dlib's 128-d ResNet descriptor (same person below ~0.6 euclidean distance).

Photos are expected upright (EXIF orientation already applied, as intake does); every coordinate here is
in that photo's pixels.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from loracam.data.geometry import Box, aspect_crop, border_colour
from loracam.errors import LoracamError

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
INSTALL_HINT = "pip install face-recognition-models dlib-bin"

# FaceChain's crop puts the face box at 0.35 of the side; the head-and-shoulders framing gives the face a
# fifth of the height with its centre at 0.3, so the face sits in the upper third with room for hair.
CLOSEUP_FACE_FRACTION = 0.35
HEAD_SHOULDERS_FACE_FRACTION = 0.2
HEAD_SHOULDERS_FACE_CENTRE_Y = 0.3

# HOG cost grows with pixels x 4**upsample; a 12-80 MP phone photo is searched on a copy this long instead
# (faces big enough to train on are still far above the detector's ~40 px floor at upsample 1).
DETECT_MAX_SIDE = 1600
# When nothing is found, one more upsample level finds faces down to ~20 px, so the photo can be reported
# as "face too small" rather than "no face found"; only when that stays cheap (~0.5 s).
RETRY_MAX_PIXELS = 4_500_000
# A weak HOG hit (0 < score < min_score) is re-checked by dlib's CNN detector on a crop scaled so the
# candidate is this many pixels wide: the CNN separates tilted faces from patches and logos cleanly.
VERIFY_FACE_PX = 80
VERIFY_CONTEXT = 1.6  # crop side in candidate widths
ALIGN_PASSES = 3
ALIGN_TOLERANCE_DEGREES = 1.0


@dataclass(frozen=True)
class Face:
    """One detected face: its box, HOG score and 68 landmarks, all in photo coordinates."""

    box: Box
    score: float
    landmarks: np.ndarray  # [68, 2] float (x, y)

    def scaled(self, factor: float) -> "Face":
        """The same face in a copy of the photo resized by ``factor``."""
        b = self.box
        box = Box(b.x0 * factor, b.y0 * factor, b.x1 * factor, b.y1 * factor)
        return Face(box, self.score, self.landmarks * factor)

    def eye_centers(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The eye centres (left-in-image, right-in-image): means of landmarks 36-41 and 42-47."""
        left = self.landmarks[36:42].mean(axis=0)
        right = self.landmarks[42:48].mean(axis=0)
        return (float(left[0]), float(left[1])), (float(right[0]), float(right[1]))

    def roll_degrees(self) -> float:
        """The eye line's angle (image y down): ``image.rotate(roll_degrees())`` levels the eyes."""
        (lx, ly), (rx, ry) = self.eye_centers()
        return math.degrees(math.atan2(ry - ly, rx - lx))


@dataclass(frozen=True)
class FaceFinding:
    """The verdict on one photo: the subject's face, or why the photo can't give one."""

    face: Face | None
    reason: str | None
    faces_seen: int


@dataclass(frozen=True)
class _Hit:
    box: Box
    score: float


class FaceAnalyzer:
    """Loads dlib's models once (models_dir=None: from face_recognition_models) and analyses photos."""

    closeup_fraction = CLOSEUP_FACE_FRACTION  # the face's share of a close-up's height (prep's working scale)

    def __init__(self, models_dir: Path | None = None, min_face_px: int = 64, dominance: float = 4.0,
                 min_score: float = 0.5, upsample: int = 1) -> None:
        self.min_face_px = min_face_px
        self.dominance = dominance
        self.min_score = min_score
        self.upsample = upsample
        self._dlib = _import_dlib()
        folder = Path(models_dir) if models_dir is not None else _default_models_dir()
        paths = {name: folder / name for name in (LANDMARKS_68, RESNET, CNN_DETECTOR)}
        missing = [name for name, p in paths.items() if not p.is_file()]
        if missing:
            raise LoracamError(f"dlib model files missing in {folder}: {', '.join(missing)}; "
                               f"run `{INSTALL_HINT}` or pass the folder that holds them")
        self._hog = self._dlib.get_frontal_face_detector()
        self._cnn = self._dlib.cnn_face_detection_model_v1(str(paths[CNN_DETECTOR]))
        self._landmarks = self._dlib.shape_predictor(str(paths[LANDMARKS_68]))
        self._resnet = self._dlib.face_recognition_model_v1(str(paths[RESNET]))

    # -- finding -------------------------------------------------------------------------------------

    def find(self, image: Image.Image) -> FaceFinding:
        """The subject's face in an upright photo, or the reason there is none usable."""
        photo = _rgb(image)
        hits = self._faces(photo, self.upsample)
        if not hits and _upsampled_pixels(photo, self.upsample + 1) <= RETRY_MAX_PIXELS:
            hits = self._faces(photo, self.upsample + 1)
        if not hits:
            return FaceFinding(None, "no face found", 0)
        hits.sort(key=lambda h: h.box.area, reverse=True)
        largest = hits[0]
        if len(hits) > 1 and largest.box.area < self.dominance * hits[1].box.area:
            people = sum(1 for h in hits if h.box.area * self.dominance > largest.box.area)
            ratio = hits[1].box.area / largest.box.area
            return FaceFinding(None, f"{people} people (second face {ratio:.1f}x the area of the largest)", len(hits))
        side = min(largest.box.width, largest.box.height)
        if side < self.min_face_px:
            return FaceFinding(None, f"face too small: {round(side)} px", len(hits))
        face = Face(largest.box, largest.score, self._fit_landmarks(photo, largest.box))
        return FaceFinding(face, None, len(hits))

    def all_faces(self, image: Image.Image) -> list[tuple[Box, float]]:
        """Every face found (box, HOG score), largest first; a detail pass treats each in turn."""
        hits = self._faces(_rgb(image), self.upsample)
        return [(h.box, h.score) for h in sorted(hits, key=lambda h: h.box.area, reverse=True)]

    def _faces(self, photo: np.ndarray, upsample: int) -> list[_Hit]:
        """HOG hits that count as faces: strong ones outright, weak ones once the CNN agrees."""
        hits = self._hog_hits(photo, upsample)
        return [h for h in hits if h.score >= self.min_score or self._cnn_confirms(photo, h.box)]

    def _hog_hits(self, photo: np.ndarray, upsample: int) -> list[_Hit]:
        """All HOG detections above dlib's own threshold (and min_score, if that is lower), in photo pixels."""
        scale = min(1.0, DETECT_MAX_SIDE / max(photo.shape[:2]))
        small = photo if scale == 1.0 else _resize(photo, scale)
        rects, scores, _ = self._hog.run(small, upsample, min(0.0, self.min_score))
        return [_Hit(_from_rect(r, scale), float(s)) for r, s in zip(rects, scores)]

    def _cnn_confirms(self, photo: np.ndarray, box: Box) -> bool:
        """Whether dlib's CNN detector sees a face at this HOG candidate (HOG scores of tilted faces sag to
        ~0.4 while patches and logos reach ~0.48, so the score alone can't tell them apart)."""
        window = box.scaled(VERIFY_CONTEXT)
        scale = VERIFY_FACE_PX / max(box.width, 1.0)
        x0, y0 = max(0, int(window.x0)), max(0, int(window.y0))
        x1, y1 = min(photo.shape[1], int(math.ceil(window.x1))), min(photo.shape[0], int(math.ceil(window.y1)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return False
        patch = _resize(photo[y0:y1, x0:x1], scale)
        found = self._cnn(patch, 0)
        centre = ((box.center[0] - x0) * scale, (box.center[1] - y0) * scale)
        return any(_rect_box(d.rect).iou(_around(centre, VERIFY_FACE_PX)) > 0.3 for d in found)

    def _fit_landmarks(self, photo: np.ndarray, box: Box) -> np.ndarray:
        """dlib's 68 points for the face in ``box``, as a [68, 2] float array."""
        shape = self._landmarks(photo, _to_rect(self._dlib, box))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)

    # -- aligning and framing ------------------------------------------------------------------------

    def align(self, image: Image.Image, face: Face, window: float | None = None) -> tuple[Image.Image, Face]:
        """The photo rotated about the eye midpoint so the eyes are level, on a canvas grown to keep every
        pixel (border-colour fill), and the face in it (box moved, landmarks re-fitted on the level face).

        ``window``: render only a square of ``window`` face heights around the face (plenty for crops()
        at 12), which on a 12 MP phone photo is many times cheaper than turning the whole photo."""
        source, fill = image.convert("RGB"), border_colour(image)
        angle = face.roll_degrees()
        side = window * face.box.height if window else None
        for _ in range(ALIGN_PASSES - 1):
            rotated, level = self._turn(source, face, angle, fill, side)
            # Landmarks fitted on a face tilted by 30+ degrees under-read the tilt; the fit on the turned
            # face tells what is left, and the next turn (from the original: one resampling) removes it.
            if abs(level.roll_degrees()) <= ALIGN_TOLERANCE_DEGREES:
                return rotated, level
            angle += level.roll_degrees()
        return self._turn(source, face, angle, fill, side)

    def _turn(self, source: Image.Image, face: Face, degrees: float,
              fill: tuple[int, int, int], side: float | None = None) -> tuple[Image.Image, Face]:
        """``source`` turned back by ``degrees`` about the eye midpoint, and the face re-fitted in it."""
        (lx, ly), (rx, ry) = face.eye_centers()
        pivot = ((lx + rx) / 2, (ly + ry) / 2)
        window = _around(pivot, side) if side else None
        rotated, forward = _rotate(source, -degrees, pivot, fill, window)
        cx, cy = _apply(forward, np.array([face.box.center]))[0]
        # The box keeps its size: it framed the face, and the face only turned about its own middle.
        half_w, half_h = face.box.width / 2, face.box.height / 2
        box = Box(cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        return rotated, Face(box, face.score, self._fit_landmarks(_rgb(rotated), box))

    def crops(self, image: Image.Image, face: Face, aspect: float) -> dict[str, tuple[Image.Image, Box]]:
        """A close-up and a head-and-shoulders framing at ``aspect`` (w/h), native size, from an aligned photo."""
        cx, cy = face.box.center
        frames = {
            "closeup": _frame(cx, cy, face.box.height / CLOSEUP_FACE_FRACTION, aspect, 0.5),
            "head_shoulders": _frame(cx, cy, face.box.height / HEAD_SHOULDERS_FACE_FRACTION, aspect,
                                     HEAD_SHOULDERS_FACE_CENTRE_Y),
        }
        return {name: aspect_crop(image, frame, aspect) for name, frame in frames.items()}

    # -- identity ------------------------------------------------------------------------------------

    def embedding(self, image: Image.Image, face: Face) -> np.ndarray:
        """dlib's 128-d identity descriptor of ``face`` (whose landmarks must be in ``image``'s coordinates)."""
        d = self._dlib
        points = d.points([d.point(int(round(x)), int(round(y))) for x, y in face.landmarks])
        shape = d.full_object_detection(_to_rect(d, face.box), points)
        return np.array(self._resnet.compute_face_descriptor(_rgb(image), shape), dtype=np.float64)


def crop_window(aspect: float) -> float:
    """The square, in face heights around the eyes, that holds both framings of crops() at ``aspect``
    (plus a margin for the eyes sitting a little above the face box's centre)."""
    frame_h = 1 / HEAD_SHOULDERS_FACE_FRACTION
    below = (1 - HEAD_SHOULDERS_FACE_CENTRE_Y) * frame_h
    above = HEAD_SHOULDERS_FACE_CENTRE_Y * frame_h
    half = max(below, above, frame_h * aspect / 2, 1 / CLOSEUP_FACE_FRACTION * max(aspect, 1) / 2)
    return 2 * (half + 0.5)


def identity_outliers(embeddings: Mapping[str, np.ndarray], threshold: float = 0.6) -> dict[str, float]:
    """Photos whose face is farther than ``threshold`` from the elementwise median face: {name: distance}."""
    if len(embeddings) < 3:
        return {}  # with two photos there is no majority to say which one is the stranger
    names = list(embeddings)
    stack = np.stack([np.asarray(embeddings[n], dtype=np.float64) for n in names])
    distances = np.linalg.norm(stack - np.median(stack, axis=0), axis=1)
    return {n: float(d) for n, d in zip(names, distances) if d > threshold}


# -- helpers -----------------------------------------------------------------------------------------


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise LoracamError(f"face analysis needs dlib: run `{INSTALL_HINT}`") from exc
    return dlib


def _default_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LoracamError(f"dlib's face models are not installed: run `{INSTALL_HINT}`")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _rgb(image: Image.Image) -> np.ndarray:
    """The photo as the contiguous uint8 RGB array dlib wants."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _resize(array: np.ndarray, scale: float) -> np.ndarray:
    h, w = array.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR)))


def _upsampled_pixels(photo: np.ndarray, upsample: int) -> float:
    scale = min(1.0, DETECT_MAX_SIDE / max(photo.shape[:2]))
    return photo.shape[0] * photo.shape[1] * (scale * 2**upsample) ** 2


def _rect_box(rect: Any) -> Box:
    """A dlib rectangle (inclusive corners) as a Box (exclusive far corner)."""
    return Box(rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)


def _from_rect(rect: Any, scale: float) -> Box:
    b = _rect_box(rect)
    return Box(b.x0 / scale, b.y0 / scale, b.x1 / scale, b.y1 / scale)


def _to_rect(dlib: Any, box: Box) -> Any:
    x0, y0 = int(round(box.x0)), int(round(box.y0))
    return dlib.rectangle(x0, y0, max(x0, int(round(box.x1)) - 1), max(y0, int(round(box.y1)) - 1))


def _around(centre: tuple[float, float], side: float) -> Box:
    return Box(centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2)


def _rotation(degrees: float, centre: tuple[float, float]) -> np.ndarray:
    """The [2, 3] affine matrix turning points by ``degrees`` (image coordinates, y down) about ``centre``."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    cx, cy = centre
    return np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]])


def _rotate(image: Image.Image, degrees: float, pivot: tuple[float, float],
            fill: tuple[int, int, int], window: Box | None = None) -> tuple[Image.Image, np.ndarray]:
    """``image`` turned by ``degrees`` about ``pivot`` on a canvas that holds all of it (or only ``window``,
    a box in turned coordinates; the pivot does not move); also the [2, 3] matrix taking photo
    coordinates to the new canvas."""
    forward = _rotation(degrees, pivot)
    w, h = image.size
    corners = _apply(forward, np.array([[0, 0], [w, 0], [0, h], [w, h]]))
    lo, hi = np.floor(corners.min(axis=0)), np.ceil(corners.max(axis=0))
    if window is not None:  # never larger than the whole turned photo
        lo = np.maximum(lo, np.floor([window.x0, window.y0]))
        hi = np.minimum(hi, np.ceil([window.x1, window.y1]))
    forward[:, 2] -= lo  # shift so the whole turned photo lies at non-negative coordinates
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]  # PIL maps output pixels back to input
    size = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
    return image.transform(size, Image.AFFINE, tuple(inverse.ravel()), resample=Image.BICUBIC, fillcolor=fill), forward


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[N, 2] points through a [2, 3] affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def _frame(cx: float, cy: float, height: float, aspect: float, face_y: float) -> Box:
    """A height x (height*aspect) frame centred on x = cx, with the face centre at ``face_y`` of its height."""
    width = height * aspect
    top = cy - face_y * height
    return Box(cx - width / 2, top, cx + width / 2, top + height)
