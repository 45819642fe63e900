"""Photo intake: read every supported file, normalise it to RGB, and judge it before any model runs.

Nothing in the photo folder is ever written: files are opened read-only and converted in memory.
Rejections carry a reason a person can act on ("truncated file", "too small: 200x150, needs ...").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
PLUGIN_SUFFIXES = {".heic": "pillow_heif", ".heif": "pillow_heif", ".avif": "pillow_avif"}
DEFAULT_MAX_PIXELS = 80_000_000  # ~ a 10000x8000 photo; larger is almost surely a bomb or a scan


@dataclass
class Photo:
    """A readable photo, upright and in RGB, with the numbers intake judges it by."""

    name: str
    path: Path
    image: Image.Image
    source_mode: str
    rotated_by_exif: bool
    sharpness: float = 0.0
    phash: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str


def plugin_suffixes() -> set[str]:
    """HEIC/AVIF suffixes whose Pillow plugin is installed (registered on first use)."""
    found = set()
    for suffix, module in PLUGIN_SUFFIXES.items():
        try:
            mod = __import__(module)
        except ImportError:
            continue
        register = getattr(mod, "register_heif_opener", None)
        if register:
            register()
        found.add(suffix)
    return found


def list_photos(folder: Path) -> tuple[list[Path], list[Rejection]]:
    """Files directly in ``folder`` (kohya does not recurse), sorted; other files are reported."""
    ok_suffixes = SUFFIXES | plugin_suffixes()
    photos, skipped = [], []
    for p in sorted(folder.iterdir()):
        if p.is_dir() or p.name.startswith("."):
            continue
        suffix = p.suffix.lower()
        if suffix in ok_suffixes:
            photos.append(p)
        elif suffix in PLUGIN_SUFFIXES:
            skipped.append(Rejection(p.name, f"{suffix} needs the {PLUGIN_SUFFIXES[suffix]} package (pip install "
                                             f"{PLUGIN_SUFFIXES[suffix].replace('_', '-')})"))
        elif suffix not in (".txt", ".caption", ".json", ".toml"):
            skipped.append(Rejection(p.name, f"not a supported image type ({suffix or 'no extension'})"))
    return photos, skipped


def read_photo(path: Path, min_size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo | Rejection:
    """Open, check and normalise one photo, or say why it can't be used."""
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    return Rejection(name, f"over the pixel limit ({w}x{h} = {w * h / 1e6:.0f} MP > "
                                           f"{max_pixels / 1e6:.0f} MP); downscale it first")
                im.load()
                mode = im.mode
                upright = ImageOps.exif_transpose(im)
                rotated = upright.size != im.size or _orientation(im) not in (None, 1)
                rgb = to_rgb(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Rejection(name, "over the pixel limit (decompression bomb guard); downscale it first")
    except UnidentifiedImageError:
        return Rejection(name, "not an image (the file's content is not a picture, whatever its name)")
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "premature end" in text.lower():
            return Rejection(name, "truncated file (incomplete download or copy)")
        return Rejection(name, f"corrupt image ({text})")
    if rgb.width * rgb.height < min_size[0] * min_size[1] or min(rgb.size) < min(min_size):
        return Rejection(name, f"too small: {rgb.width}x{rgb.height}, needs at least {min_size[0]}x{min_size[1]}")
    photo = Photo(name, path, rgb, mode, rotated)
    photo.sharpness = sharpness(rgb)
    photo.phash = phash(rgb)
    return photo


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block must not reject a readable photo
        return None


def to_rgb(im: Image.Image) -> Image.Image:
    """CMYK, palette, 16-bit, greyscale and alpha images as 8-bit RGB (alpha composited on white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im.convert("RGB")


def sharpness(im: Image.Image, side: int = 512) -> float:
    """Variance of the Laplacian on a grey copy scaled to ``side`` px on its long side, so photos of any
    size compare (a small photo is scaled up, and fairly judged softer: it will be soft in training)."""
    import cv2

    grey = np.asarray(im.convert("L"), dtype=np.float32)
    scale = side / max(grey.shape)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=interp)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def phash(im: Image.Image) -> int:
    """64-bit perceptual hash: signs of the 8x8 lowest DCT frequencies of a 32x32 grey thumbnail
    against their median. A dozen lines with scipy, so no extra hashing package is needed."""
    from scipy.fft import dctn

    small = np.asarray(im.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    low = dctn(small, norm="ortho")[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near_duplicates(photos: list[Photo], max_distance: int = 6) -> dict[str, str]:
    """{dropped photo: the copy kept}: in each group of near-identical photos, the sharpest largest wins."""
    parent = {p.name: p.name for p in photos}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for i, a in enumerate(photos):
        for b in photos[i + 1:]:
            if hamming(a.phash, b.phash) <= max_distance:
                parent[root(b.name)] = root(a.name)
    groups: dict[str, list[Photo]] = {}
    for p in photos:
        groups.setdefault(root(p.name), []).append(p)
    dropped = {}
    for members in groups.values():
        if len(members) > 1:
            best = max(members, key=lambda p: (p.sharpness * p.image.width * p.image.height, p.name))
            dropped.update({p.name: best.name for p in members if p is not best})
    return dropped


def blurry(photos: list[Photo], relative: float = 0.25, floor: float = 15.0) -> dict[str, str]:
    """{photo: reason} for photos much softer than the set's median (or soft in absolute terms)."""
    if not photos:
        return {}
    median = float(np.median([p.sharpness for p in photos]))
    limit = max(floor, relative * median) if len(photos) >= 3 else floor
    return {p.name: f"blurry (sharpness {p.sharpness:.0f}, the set's median is {median:.0f})"
            for p in photos if p.sharpness < limit}
