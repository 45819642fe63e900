"""``loracam upscale``: A1111's Extras tab on files: upscale PNGs, keep their metadata, add an ``extras`` chunk.

The output keeps every text chunk of the source (``parameters`` above all, so `gen --from` and civitai still
read the generation) and adds ``extras`` with A1111's Postprocess keys (scripts/postprocessing_upscale.py):
``Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN 4x+`` or ``Postprocess upscale to: 2048x3072``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from loracam.errors import LoracamError
from loracam.generate.upscale import Notes, TileProgress, Upscaler, target_size
from loracam.generate.images import png_with_text
from loracam.generate.infotext import quote
from loracam.io import atomic_write_bytes, writable_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_OUTPUT_PIXELS = 200_000_000  # the grid's limit: beyond it PNG encoders and viewers struggle


@dataclass(frozen=True)
class Upscaled:
    source: Path
    output: Path
    size: tuple[int, int]


def image_files(inputs: Sequence[Path]) -> list[Path]:
    """The images named, folders expanded (sorted, not recursive); a clear error for what is not there."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise LoracamError(f"{p} does not exist")
    if not out:
        raise LoracamError(f"no images in {', '.join(map(str, inputs))} ({', '.join(IMAGE_SUFFIXES)})")
    return out


def open_source(path: Path) -> tuple[Image.Image, dict[str, str]]:
    """The image as RGB and its text chunks; a clear error for a file that is not one, or is too large."""
    try:
        with Image.open(path) as im:
            im.load()
            text = dict(getattr(im, "text", {}) or {})
            return im.convert("RGB"), text
    except Image.DecompressionBombError:
        raise LoracamError(f"{path.name} is over the pixel limit ({Image.MAX_IMAGE_PIXELS:,} pixels); "
                           "nothing was written") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise LoracamError(f"{path.name} is not a readable image ({exc})") from None


def extras_text(upscaler: Upscaler, scale: float | None, resize: tuple[int, int] | None) -> str:
    """A1111's Postprocess keys, as its Extras tab writes them."""
    params = ({"Postprocess upscale to": f"{resize[0]}x{resize[1]}"} if resize else
              {"Postprocess upscale by": f"{scale:g}"})
    params["Postprocess upscaler"] = upscaler.name
    return ", ".join(f"{k}: {quote(v)}" for k, v in params.items())


def save_free(folder: Path, stem: str, image: Image.Image, text: dict[str, str]) -> Path:
    """The image as ``stem.png``, else ``stem-1.png``, ``stem-2.png``, ...: an existing file is never replaced,
    not even one another process writes meanwhile."""
    data, n = png_with_text(image, text), 0
    while True:
        path = folder / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
        if not path.exists():
            try:
                return atomic_write_bytes(path, data)
            except FileExistsError:
                pass  # another process took the name meanwhile
        n += 1


def upscale_files(inputs: Sequence[Path], upscaler: Upscaler, output: Path, scale: float | None = 4.0,
                  resize: tuple[int, int] | None = None, notes: Notes | None = None,
                  progress: Callable[[Path], TileProgress | None] | None = None, force: bool = False
                  ) -> list[Upscaled]:
    """Upscale every image into ``output``; sources are read first, so a bad one stops before any write."""
    files = image_files(inputs)
    sources = [(f, *open_source(f)) for f in files]
    sizes = [target_size(im.size, scale, resize) for _, im, _ in sources]
    too_big = [f.name for (f, _, _), s in zip(sources, sizes) if s[0] * s[1] > MAX_OUTPUT_PIXELS]
    if too_big and not force:
        raise LoracamError(f"{too_big[0]} would become more than {MAX_OUTPUT_PIXELS // 1_000_000} MP; "
                           "use a smaller --scale, or --force")
    out_dir = writable_dir(output)
    done = []
    for (path, image, text), size in zip(sources, sizes):
        big = upscaler.upscale(image, size, notes, progress(path) if progress else None)
        chunks = {**text, "extras": extras_text(upscaler, scale, size if resize else None)}
        done.append(Upscaled(path, save_free(out_dir, path.stem, big, chunks), big.size))
    return done

