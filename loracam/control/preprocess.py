"""Control maps from what the user gives: a name -> preprocessor table (openpose, canny, tile, image).

Each preprocessor works at its processor resolution (the source's short side scaled to 512 unless given,
A1111's "Processor Res"), then the map is brought to the render size by the unit's resize mode, and the
user is told when that changed the aspect. The module names are sd-webui-controlnet's, so an infotext reads
the same in A1111.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from loracam.control.resize import fit, processor_size
from loracam.errors import LoracamError

DEFAULT_RES = 512
CANNY_LOW, CANNY_HIGH = 100, 200


@dataclass(frozen=True)
class ControlMap:
    """A preprocessed map at the render size, and what the infotext says of how it was made."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    module: str  # sd-webui-controlnet's module name
    res: int  # processor resolution (-1 when none applies)
    thresholds: tuple[float, float] = (-1, -1)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preprocessor:
    module: str  # the name the infotext records
    keyword: str  # how a matching model file is recognised by its name (control_v11p_sd15_openpose)
    make: Callable  # (unit, source, own_image) -> (map at processor size, res, thresholds)
    needs_source: bool = True  # False: an empty source means the pass's own image


def _load_rgb(path: str, what: str) -> np.ndarray:
    from loracam.generate.images import load_image

    return np.asarray(load_image(path, what).convert("RGB"))


def no_source(unit) -> LoracamError:
    """The error for a unit without a source where its pass has no image of its own to steer by."""
    return LoracamError(f"the {unit.kind} ControlNet has no source: give one ({unit.kind}:IMAGE), or use it "
                        "where there is an image of its own (img2img, hires fix, a detail pass)")


def _source_image(unit, own: Image.Image | None) -> np.ndarray:
    if unit.source:
        return _load_rgb(unit.source, f"the {unit.kind} ControlNet's image")
    if own is None:
        raise no_source(unit)
    return np.asarray(own.convert("RGB"))


def _openpose(unit, own):
    from loracam.control.openpose import Pose

    src = unit.source
    if not src and own is not None:  # a detail pass's crop, or img2img's own image: detect on it
        return _pose_of_photo(Image.fromarray(np.asarray(own.convert("RGB"))), unit, "the image")
    path = Path(src)
    if path.suffix.lower() == ".json":
        pose = Pose.load(path)
        return pose.draw(), -1, (-1, -1)
    if path.exists():
        from loracam.generate.images import load_image

        return _pose_of_photo(load_image(src, "the openpose ControlNet's photo"), unit, src)
    from loracam.control.templates import load_template

    try:
        pose = load_template(src)
    except LoracamError as exc:
        raise LoracamError(f"openpose source {src!r} is neither a file nor a pose template: {exc}") from None
    return pose.draw(), -1, (-1, -1)


def _pose_of_photo(photo: Image.Image, unit, name: str):
    from loracam.control.photo import pose_from_photo

    res = unit.processor_res if unit.processor_res > 0 else DEFAULT_RES
    work = photo.resize(processor_size(photo.size, res), Image.LANCZOS)
    pose = pose_from_photo(work, where=name)
    return pose.draw(work.size), res, (-1, -1)


def _canny(unit, own):
    import cv2

    rgb = _source_image(unit, own)
    res = unit.processor_res if unit.processor_res > 0 else DEFAULT_RES
    low = unit.threshold_a if unit.threshold_a >= 0 else CANNY_LOW
    high = unit.threshold_b if unit.threshold_b >= 0 else CANNY_HIGH
    if low > high:
        raise LoracamError(f"canny thresholds: low {low:g} is above high {high:g}")
    w, h = processor_size((rgb.shape[1], rgb.shape[0]), res)
    work = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if w * h < rgb.shape[0] * rgb.shape[1]
                      else cv2.INTER_CUBIC)
    edges = cv2.Canny(work, low, high)
    return np.repeat(edges[..., None], 3, axis=2), res, (low, high)


def _tile(unit, own):
    # tile_resample at its default rate 1: the image itself, fitted to the render size like any map
    return _source_image(unit, own), -1, (-1, -1)


def _image(unit, own):
    return _source_image(unit, own), -1, (-1, -1)


PREPROCESSORS: dict[str, Preprocessor] = {
    "openpose": Preprocessor("openpose", "openpose", _openpose),
    "canny": Preprocessor("canny", "canny", _canny),
    "tile": Preprocessor("tile_resample", "tile", _tile, needs_source=False),
    "image": Preprocessor("none", "", _image),
}


def check_source(unit) -> None:
    """Fail before any model loads when a unit's source cannot be what it says (a missing file, an unknown
    template); the map itself is made later, at each pass's size."""
    if not unit.source or unit.premade:
        return
    path = Path(unit.source)
    if path.exists():
        return
    if unit.kind == "openpose" and not path.suffix:
        from loracam.control.templates import load_template

        try:
            load_template(unit.source)
        except LoracamError as exc:
            raise LoracamError(f"openpose source {unit.source!r} is neither a file nor a pose template: {exc}") from None
        return
    raise LoracamError(f"the {unit.kind} ControlNet's source {unit.source} is not found; give an existing "
                       f"{'photo, pose JSON or template name' if unit.kind == 'openpose' else 'image'}")


def check_kind(kind: str) -> str:
    k = kind.strip().lower()
    if k not in PREPROCESSORS:
        raise LoracamError(f"unknown ControlNet type {kind!r}; use one of: {', '.join(PREPROCESSORS)}")
    return k


def control_map(unit, size: tuple[int, int], own: Image.Image | None = None) -> ControlMap:
    """The unit's map at the render ``size`` (width, height); ``own`` is the pass's own image, if any."""
    return fitted(unit, preprocessed(unit, own), size)


def preprocessed(unit, own: Image.Image | None = None) -> tuple:
    """(map at the processor's size, processor res, thresholds): what does not depend on the render size, so
    a pass at another size (hires fix) fits the same map instead of detecting a photo's pose again."""
    if unit.premade:  # a map saved beside an earlier render: the infotext's settings, no preprocessing
        return _image(unit, own)[0], unit.processor_res, (unit.threshold_a, unit.threshold_b)
    return PREPROCESSORS[unit.kind].make(unit, own)


def fitted(unit, made: tuple, size: tuple[int, int]) -> ControlMap:
    """A ``preprocessed`` map brought to the render ``size`` by the unit's resize mode, said when it changed."""
    raw, res, thresholds = made
    notes = []
    h, w = raw.shape[:2]
    if abs((w / h) / (size[0] / size[1]) - 1) > 0.01:  # another aspect: the resize mode decides, and we say so
        how = {"Crop and Resize": "cropped to fit", "Resize and Fill": "padded with black",
               "Just Resize": "stretched"}[unit.resize]
        notes.append(f"the {unit.kind} control image is {w}x{h}, the render {size[0]}x{size[1]}: another aspect, "
                     f"so it was {how} ({unit.resize}; :resize=... picks another mode)")
    return ControlMap(fit(raw, size, unit.resize), PREPROCESSORS[unit.kind].module, res, thresholds, tuple(notes))
