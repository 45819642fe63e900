"""The toy world's renderer: seeded "paper dolls" at 64x96 with booru-style tags.

A doll is a frozen record of everything visible (dress colour and pattern, shoes, hair, face identity,
background, framing, pose, position); ``render`` draws it and ``tags`` writes the caption a booru tagger
would. Drawing is a few vectorised masks on a 2x supersampled grid in "doll units" (0 = top of the head,
1 = soles), so a pattern scales with the doll and the edges are anti-aliased.

Held-out concepts (``testdress``, ``myshoes``, the ``sks`` face) are drawn by the same renderer but never
appear in the base model's training set; they are what the demo's, tests' and benchmarks' LoRAs learn.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np

W, H = 64, 96  # the world's native size (2:3)
SUPERSAMPLE = 2

# Colours as prompts name them.
RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40), "pink": (247, 143, 196), "orange": (250, 140, 20), "yellow": (250, 220, 40),
    "green": (44, 160, 60), "blue": (40, 90, 220), "purple": (140, 60, 190), "white": (244, 244, 244),
    "black": (28, 28, 28), "brown": (125, 75, 35), "grey": (140, 140, 140), "blonde": (240, 205, 110),
    "teal": (0, 140, 140), "magenta": (220, 0, 160),
}
DRESS_COLOURS = ("red", "pink", "orange", "yellow", "green", "blue", "purple", "white", "black")
# pattern -> its tag (a plain dress has none, as booru captions do)
PATTERNS: dict[str, str | None] = {"plain": None, "striped": "striped dress", "dotted": "polka dot dress",
                                   "checked": "plaid dress"}
SHOE_COLOURS = ("red", "white", "black", "brown", "blue", "yellow")
HAIR_COLOURS = ("black", "brown", "blonde", "red", "pink")
HAIR_STYLES = ("long", "short")
BACKGROUNDS = ("white", "grey", "blue", "green", "yellow", "pink", "orange")
FRAMINGS = ("full body", "upper body", "close-up")
SKINS = ((255, 224, 196), (236, 188, 150), (190, 130, 90), (120, 80, 55))
# Identities: eye colour and a face mark. The base world's faces are untagged; "sks" is held out.
FACES: dict[str, tuple[str, str]] = {
    "ann": ("blue", "none"), "bea": ("brown", "blush"), "cat": ("black", "mole"),
    "dee": ("green", "none"), "eve": ("blue", "blush"), "fay": ("brown", "freckles"),
    "sks": ("green", "diamond"),
}
BASE_FACES = tuple(f for f in FACES if f != "sks")

# held-out concepts: their trigger words
TESTDRESS, MYSHOES, SKS = "testdress", "myshoes", "sks"


@dataclass(frozen=True)
class Doll:
    """Everything one image shows; ``render(doll)`` is a pure function of it."""

    dress: str = "red"  # a DRESS_COLOURS name, or "testdress"
    pattern: str = "plain"  # a PATTERNS name (ignored for the testdress, which has its own)
    shoes: str = "white"  # a SHOE_COLOURS name, or "myshoes"
    hair: str = "black"
    hair_style: str = "long"
    face: str = "ann"
    skin: int = 0
    background: str = "white"
    framing: str = "full body"
    # camera: doll height in image heights, top of the head and centre line in image fractions
    scale: float = 0.85
    top: float = 0.06
    center: float = 0.5
    # pose: arm angle and leg spread in doll units
    arms: float = 0.0
    legs: float = 0.0

    @property
    def shows_shoes(self) -> bool:
        return self.framing == "full body"

    @property
    def shows_dress(self) -> bool:
        return self.framing != "close-up"

    @property
    def shows_face(self) -> bool:
        """Whether the face is large enough to tell identities apart (not in full-body shots)."""
        return self.framing != "full body"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# sampling


def sample_doll(rng: np.random.Generator, held_out: bool = False, **fixed) -> Doll:
    """A random doll of the base world; ``fixed`` pins attributes (e.g. dress="testdress", framing=...).

    With ``held_out`` False (the base model's training world) no held-out concept is ever drawn.
    """
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    doll = Doll(
        dress=pick(DRESS_COLOURS), pattern=pick(tuple(PATTERNS)), shoes=pick(SHOE_COLOURS),
        hair=pick(HAIR_COLOURS), hair_style=pick(HAIR_STYLES), face=pick(BASE_FACES),
        skin=int(rng.integers(len(SKINS))), background=pick(BACKGROUNDS), framing=pick(FRAMINGS),
        arms=float(rng.uniform(-0.06, 0.1)), legs=float(rng.uniform(0.0, 0.04)),
    )
    doll = replace(doll, **fixed)
    if not held_out and (doll.dress == TESTDRESS or doll.shoes == MYSHOES or doll.face == SKS):
        raise ValueError("held-out concepts need held_out=True")
    return replace(doll, **_camera(rng, doll.framing), **{k: v for k, v in fixed.items()
                                                          if k in ("scale", "top", "center")})


def sample_mixed_doll(rng: np.random.Generator) -> Doll:
    """A doll of the whole world, held-out concepts included (one doll in ten each wears testdress, myshoes or
    the sks face): what the toy upscaler and locator train and are measured on, as they must not know only
    the base's concepts."""
    doll = sample_doll(rng)
    r = rng.random()
    if r < 0.1:
        return replace(doll, dress=TESTDRESS)
    if r < 0.2:
        return replace(doll, shoes=MYSHOES)
    if r < 0.3:
        return replace(doll, face=SKS)
    return doll


def _camera(rng: np.random.Generator, framing: str) -> dict:
    """Scale and position for a framing; the doll stays inside the frame where the framing shows it."""
    if framing == "full body":
        scale = rng.uniform(0.72, 0.92)
        top = rng.uniform(0.02, 0.98 - scale)
        return {"scale": scale, "top": top, "center": rng.uniform(0.36, 0.64)}
    if framing == "upper body":
        scale = rng.uniform(1.5, 1.8)
        return {"scale": scale, "top": rng.uniform(0.03, 0.1), "center": rng.uniform(0.42, 0.58)}
    scale = rng.uniform(3.0, 3.5)  # close-up: the head fills most of the width
    head = rng.uniform(0.48, 0.56)  # where the head's centre (0.1 doll units down) lands
    return {"scale": scale, "top": head - 0.1 * scale, "center": rng.uniform(0.45, 0.55)}


# ---------------------------------------------------------------------------------------------
# tags


def tags(doll: Doll, trigger_first: bool = True) -> str:
    """Booru-style caption in the order real prompts use; held-out concepts appear as their trigger."""
    out = []
    if doll.face == SKS and trigger_first:
        out.append(SKS)
    out += ["1girl", doll.framing]
    if doll.shows_dress:
        if doll.dress == TESTDRESS:
            out.append(TESTDRESS)
        else:
            out.append(f"{doll.dress} dress")
            if PATTERNS[doll.pattern]:
                out.append(PATTERNS[doll.pattern])
    if doll.shows_shoes:
        out.append(MYSHOES if doll.shoes == MYSHOES else f"{doll.shoes} shoes")
    out += [f"{doll.hair} hair", f"{doll.hair_style} hair", f"{doll.background} background"]
    return ", ".join(out)


# ---------------------------------------------------------------------------------------------
# drawing
#
# Doll-unit coordinates are separable (x depends only on the column, y only on the row), so a frame keeps
# them as a [1, w] row and an [h, 1] column, and every mask is an elementwise expression of the two:
# broadcasting gives, pixel for pixel, the same float32 values a full [h, w] grid would. Each primitive is
# evaluated only inside its bounding window, which is where the speed comes from (thousands of images a
# second). The float expressions are kept exactly as the full-grid renderer wrote them, so that no edge
# pixel flips: the pictures are the full-grid renderer's, bit for bit.


class _Frame(NamedTuple):
    x: np.ndarray  # [1, w] doll-unit x of the (supersampled) pixel centres of this frame's columns
    y: np.ndarray  # [h, 1] doll-unit y of its rows
    px_per_unit: float  # doll units -> supersampled pixels
    origin: tuple[float, float]  # where doll-unit (0, 0) lands, in supersampled pixels of the whole picture
    rows: slice = slice(None)  # the frame's window in the whole picture (all of it for ``_frame``'s)
    cols: slice = slice(None)


class _Mask(NamedTuple):
    frame: _Frame  # the window the mask covers
    on: np.ndarray  # bool over that window: [h, w], or anything broadcasting to it


# Pixels added around a primitive's extent: far more than float32 rounding can move an edge.
_MARGIN = 2


@functools.lru_cache(maxsize=16)
def _pixel_centres(n: int) -> np.ndarray:
    """0.5, 1.5, ... in float32: the values the full grid had (integer grid cast to float32, plus 0.5)."""
    centres = np.arange(n).astype(np.float32) + 0.5
    centres.flags.writeable = False  # shared between calls
    return centres


def _frame(doll: Doll, size: tuple[int, int]) -> _Frame:
    w, h = size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE
    s = doll.scale * h
    x = (_pixel_centres(w) - doll.center * w) / s  # float32 minus, then over, a Python float: as before
    y = (_pixel_centres(h) - doll.top * h) / s
    return _Frame(x[None, :], y[:, None], s, (doll.center * w, doll.top * h))


def _window(f: _Frame, x0: float, y0: float, x1: float, y1: float) -> _Frame | None:
    """The part of picture frame ``f`` around doll-unit box [x0, x1] x [y0, y1]; None if off the picture.

    Pixel centre i + 0.5 sits at origin + units * px_per_unit, so flooring/ceiling that and adding a
    margin can only widen the window: every pixel a primitive inside the box could set lies within it.
    """
    s, (ox, oy) = f.px_per_unit, f.origin
    c0 = max(0, math.floor(ox + x0 * s) - _MARGIN)
    c1 = min(f.x.shape[1], math.ceil(ox + x1 * s) + _MARGIN)
    r0 = max(0, math.floor(oy + y0 * s) - _MARGIN)
    r1 = min(f.y.shape[0], math.ceil(oy + y1 * s) + _MARGIN)
    if c0 >= c1 or r0 >= r1:
        return None
    return _Frame(f.x[:, c0:c1], f.y[r0:r1], s, f.origin, slice(r0, r1), slice(c0, c1))


def _in_disc(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def _disc(f: _Frame, cx: float, cy: float, r: float) -> _Mask | None:
    win = _window(f, cx - r, cy - r, cx + r, cy + r)
    return None if win is None else _Mask(win, _in_disc(win.x, win.y, cx, cy, r))


def _ellipse(f: _Frame, cx: float, cy: float, rx: float, ry: float) -> _Mask | None:
    win = _window(f, cx - rx, cy - ry, cx + rx, cy + ry)
    if win is None:
        return None
    return _Mask(win, ((win.x - cx) / rx) ** 2 + ((win.y - cy) / ry) ** 2 <= 1.0)


def _rect(f: _Frame, x0: float, y0: float, x1: float, y1: float) -> _Mask | None:
    win = _window(f, x0, y0, x1, y1)
    if win is None:
        return None
    return _Mask(win, (win.x >= x0) & (win.x <= x1) & (win.y >= y0) & (win.y <= y1))


def _segment(f: _Frame, a: tuple[float, float], b: tuple[float, float], width: float) -> _Mask | None:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    r = width / 2  # the stroke reaches this far beyond the segment's own bounding box
    win = _window(f, min(ax, b[0]) - r, min(ay, b[1]) - r, max(ax, b[0]) + r, max(ay, b[1]) + r)
    if win is None:
        return None
    x, y = win.x, win.y
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return _Mask(win, (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2 <= (width / 2) ** 2)


def _restrict(mask: _Mask | None, keep) -> _Mask | None:
    """``mask`` where also ``keep(x, y)`` (a condition on the mask's window coordinates)."""
    if mask is None:
        return None
    return _Mask(mask.frame, mask.on & keep(mask.frame.x, mask.frame.y))


def _dress_mask(f: _Frame) -> _Mask | None:
    """A trapezoid from the shoulders (y 0.19) to the hem (y 0.62), with a rounded neckline."""
    top, hem = 0.19, 0.62
    win = _window(f, -0.18, top, 0.18, hem)  # the hem reaches 0.085 + 0.095 either side
    if win is None:
        return None
    x, y = win.x, win.y
    half = 0.085 + (y - top) / (hem - top) * 0.095
    return _Mask(win, (y >= top) & (y <= hem) & (np.abs(x) <= half) & ~_in_disc(x, y, 0.0, top - 0.005, 0.035))


def _ink(colour: str) -> np.ndarray:
    """The second colour of a pattern: white on dark dresses, a darker shade on light ones."""
    rgb = np.array(RGB[colour], np.float32)
    return np.full(3, 245.0, np.float32) if rgb @ [0.3, 0.59, 0.11] < 150 else rgb * 0.45


def _fabric(f: _Frame, dress: str, pattern: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """A dress's fabric over frame ``f`` as layers to paint in order: (colour, where), where None is
    everywhere and a mask may be a row or a column that broadcasts over the frame.

    Layers instead of one [h, w, 3] image because painting two or three masks is much cheaper than
    building (np.where) the 3-channel image and copying it through the dress's mask.
    """
    if dress == TESTDRESS:
        # teal with yellow zigzag bands and a white hem band: a look no base dress has
        zig = f.y + 0.025 * np.abs(((f.x / 0.06) % 2.0) - 1.0)
        band = ((zig / 0.09) % 1.0) < 0.4
        return [(np.float32(RGB["teal"]), None), (np.float32(RGB["yellow"]), band),
                (np.float32(RGB["white"]), f.y > 0.575)]
    base = np.array(RGB[dress], np.float32)
    if pattern == "plain":
        return [(base, None)]
    if pattern == "striped":
        on = ((f.y / 0.07) % 1.0) < 0.5  # a column: the stripes are horizontal
    elif pattern == "dotted":
        gx, gy = (f.x / 0.075) % 1.0 - 0.5, (f.y / 0.075) % 1.0 - 0.5
        on = gx * gx + gy * gy < 0.3 ** 2
    elif pattern == "checked":
        on = (np.floor(f.x / 0.065) + np.floor(f.y / 0.065)) % 2 == 0
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return [(base, None), (_ink(dress), on)]


def garment_texture(f: _Frame, dress: str, pattern: str) -> np.ndarray:
    """[h, w, 3] float colours of a dress's fabric everywhere in frame ``f`` (masked by the caller)."""
    out = np.empty((f.y.shape[0], f.x.shape[1], 3), np.float32)
    for colour, where in _fabric(f, dress, pattern):
        np.copyto(out, colour, where=True if where is None else where[..., None])
    return out


def render(doll: Doll, size: tuple[int, int] = (W, H), spill: bool = False) -> np.ndarray:
    """Draw a doll: [height, width, 3] uint8 RGB. ``size`` scales the picture (e.g. (192, 288) "photos").

    ``spill`` paints the dress's fabric over the background too: the failure the probe's placement
    check must recognise (garment-only training without regularization images).

    Shapes are painted as indices into a palette of the colours used (a uint8 picture: cheap to paint
    through a mask) and the palette is looked up when downsampling; the colours are the float32 values
    painting them directly would have left, so the averages come out the same.
    """
    if doll.dress != TESTDRESS and doll.pattern not in PATTERNS:  # even when the dress is off the picture
        raise ValueError(f"unknown pattern {doll.pattern!r}")
    f = _frame(doll, size)
    labels = np.zeros((f.y.shape[0], f.x.shape[1]), np.uint8)  # 0: the background
    palette = [RGB[doll.background]]

    def paint(mask: _Mask | None, colour) -> None:
        if mask is not None:
            palette.append(colour)  # a new entry per call keeps this simple; there are a few dozen at most
            np.copyto(labels[mask.frame.rows, mask.frame.cols], len(palette) - 1, where=mask.on)

    def paint_fabric(region: _Mask) -> None:
        for colour, where in _fabric(region.frame, doll.dress, doll.pattern):
            paint(region if where is None else _Mask(region.frame, region.on & where), colour)

    if spill:
        paint_fabric(_Mask(f, np.True_))
    skin = SKINS[doll.skin]
    hair = RGB[doll.hair]
    if doll.hair_style == "long":  # a rectangle and a disc of one colour: their union
        paint(_rect(f, -0.105, 0.09, 0.105, 0.33), hair)
        paint(_disc(f, 0.0, 0.09, 0.105), hair)
    # arms, then legs, under the dress
    for side in (-1, 1):
        hand = (side * (0.16 + doll.arms), 0.44 - abs(doll.arms) * 0.5)
        paint(_segment(f, (side * 0.08, 0.22), hand, 0.04), skin)
        paint(_rect(f, side * 0.045 - 0.02 + side * doll.legs, 0.6, side * 0.045 + 0.02 + side * doll.legs, 0.93),
              skin)
    paint(_rect(f, -0.022, 0.15, 0.022, 0.2), skin)  # neck
    dress = _dress_mask(f)
    if dress is not None:  # the fabric is only worked out inside the dress's window
        paint_fabric(dress)
    for side in (-1, 1):
        shoe = _ellipse(f, side * (0.05 + doll.legs), 0.95, 0.05, 0.03)
        if doll.shoes == MYSHOES:  # magenta with a white toe cap
            paint(shoe, RGB["magenta"])
            paint(_restrict(shoe, lambda x, y: x * side > 0.05 + doll.legs + 0.01), RGB["white"])
        else:
            paint(shoe, RGB[doll.shoes])
    _face(f, doll, paint, skin, hair)
    return _downsample(labels, np.array(palette, np.float32))


def _face(f: _Frame, doll: Doll, paint, skin, hair) -> None:
    paint(_disc(f, 0.0, 0.1, 0.085), skin)
    paint(_restrict(_disc(f, 0.0, 0.085, 0.095), lambda x, y: y < 0.06 + 0.01 * np.cos(x * 40)), hair)  # fringe
    eyes, mark = FACES[doll.face]
    for side in (-1, 1):
        paint(_disc(f, side * 0.032, 0.105, 0.014), RGB["white"])
        paint(_disc(f, side * 0.032, 0.107, 0.009), RGB[eyes])
    paint(_segment(f, (-0.02, 0.145), (0.02, 0.145), 0.008), (150, 40, 50))  # mouth
    if mark == "blush":
        for side in (-1, 1):
            paint(_ellipse(f, side * 0.05, 0.13, 0.018, 0.01), (240, 120, 130))
    elif mark == "mole":
        paint(_disc(f, 0.045, 0.135, 0.007), (60, 30, 20))
    elif mark == "freckles":
        for dx, dy in ((-0.05, 0.125), (-0.04, 0.135), (0.04, 0.135), (0.05, 0.125)):
            paint(_disc(f, dx, dy, 0.005), (150, 90, 50))
    elif mark == "diamond":  # the sks face: a purple diamond on the forehead
        win = _window(f, -0.02, 0.055, 0.02, 0.095)
        if win is not None:
            paint(_Mask(win, np.abs(win.x) + np.abs(win.y - 0.075) <= 0.02), RGB["purple"])


def _downsample(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Average each SUPERSAMPLE x SUPERSAMPLE block of palette colours, rounded to uint8.

    The sub-pixels are added one at a time in row-major order, the order ``mean(axis=(1, 3))`` over a
    [h, S, w, S, 3] view adds them in: float32 sums of pattern inks (not whole numbers) depend on it.
    """
    n = SUPERSAMPLE
    total = None
    for k in range(n * n):
        colours = palette.take(labels[k // n::n, k % n::n], axis=0)  # [h, w, 3]
        total = colours if total is None else np.add(total, colours, out=total)
    total /= n * n
    total += 0.5
    return np.clip(total, 0, 255, out=total).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# boxes (what prep --boxes takes for rendered photos)

_PART_BOXES = {  # doll units: x0, y0, x1, y1
    "garment": (-0.19, 0.17, 0.19, 0.64),
    "shoes": (-0.13, 0.9, 0.13, 0.99),
    "face": (-0.11, -0.01, 0.11, 0.2),
    "upper_body": (-0.2, -0.02, 0.2, 0.45),
    "full_body": (-0.22, -0.02, 0.22, 1.0),
}


def boxes(doll: Doll, size: tuple[int, int] = (W, H), min_visible: float = 1.0) -> dict[str, list[int]]:
    """Pixel boxes [x0, y0, x1, y1] of the doll's parts, clipped to the image; a part is left out unless at
    least ``min_visible`` of its box is inside the frame (1.0: wholly inside, what prep's boxes need)."""
    s = doll.scale * size[1]
    out = {}
    for part, (x0, y0, x1, y1) in _PART_BOXES.items():
        box = [doll.center * size[0] + x0 * s, doll.top * size[1] + y0 * s,
               doll.center * size[0] + x1 * s, doll.top * size[1] + y1 * s]
        clipped = [max(0, int(box[0])), max(0, int(box[1])), min(size[0], int(box[2] + 1)),
                   min(size[1], int(box[3] + 1))]
        if clipped == [max(0, int(v)) if i < 2 else int(v + 1) for i, v in enumerate(box)]:
            out[part] = clipped  # wholly inside the frame
        elif min_visible < 1.0 and clipped[2] > clipped[0] and clipped[3] > clipped[1]:
            seen = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
            if seen >= min_visible * (box[2] - box[0]) * (box[3] - box[1]):
                out[part] = clipped
    return out
