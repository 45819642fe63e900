"""Images in and out: reading users' init images and masks, saving PNGs with infotext, never overwriting."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes, writable_dir

_NUMBERED = re.compile(r"^(\d{5,})-")


def load_image(path: str | Path, what: str, size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """Open a user's image (EXIF rotation applied, alpha on white), optionally resized to ``size``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except FileNotFoundError:
        raise LoracamError(f"{what} {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise LoracamError(f"{what} {path} is not a readable image ({exc})") from None
    if mode == "RGB" and im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    im = im.convert(mode)
    if size is not None and im.size != size:
        im = im.resize(size, Image.LANCZOS)  # A1111's default resize mode: just resize
    return im


def png_bytes(image: Image.Image, infotext: str) -> bytes:
    return png_with_text(image, {"parameters": infotext})


def png_with_text(image: Image.Image, text: dict[str, str]) -> bytes:
    """A PNG with ``text`` as its tEXt chunks (A1111's ``parameters``, ``extras``, ...)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def next_number(outdir: Path) -> int:
    """A1111's numbering: one more than the largest NNNNN- prefix in the folder."""
    numbers = [int(m.group(1)) for p in outdir.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_png(image: Image.Image, infotext: str, outdir: Path, seed: int) -> Path:
    """Save as ``NNNNN-SEED.png`` with the infotext; a name that exists is never overwritten."""
    outdir = writable_dir(Path(outdir))
    data = png_bytes(image, infotext)
    n = next_number(outdir)
    while True:
        try:
            return atomic_write_bytes(outdir / f"{n:05d}-{seed}.png", data)
        except FileExistsError:
            n += 1  # another process took this number first
