"""What the judge reads: the image files (folders expanded), the images, and each image's prompt.

A prompt is the caller's (a list in file order, or a mapping from path to prompt) or else the image's own A1111
infotext; an image with neither simply has no prompt adherence to check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from loracam.errors import LoracamError


def collect_images(items: Sequence[Path]) -> list[Path]:
    """Image files, folders expanded to the images directly in them (sorted); missing or empty is an error."""
    from loracam.data.intake import list_photos

    if not items:
        raise LoracamError("no images to judge; pass image files or folders of them")
    out: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise LoracamError(f"{item} does not exist; pass image files or folders of them")
        if item.is_dir():
            found, _ = list_photos(item)
            if not found:
                raise LoracamError(f"no images in {item} (PNG, JPEG, WebP or BMP); pass the folder the images "
                                   "were saved to")
            out += found
        else:
            out.append(item)
    return list(dict.fromkeys(out))  # a file named twice is judged once


def load_images(paths: Sequence[Path]) -> list[Image.Image]:
    """Each file as RGB (EXIF rotation applied); a file that is not an image is an error naming it."""
    from loracam.generate.images import load_image

    return [load_image(p, "image") for p in paths]


def image_prompts(files: Sequence[Path], prompts=None) -> list[str | None]:
    """Each image's prompt: the given one, else the infotext's (None when the image has neither)."""
    if prompts is None:
        given: list[str | None] = [None] * len(files)
    elif isinstance(prompts, Mapping):
        given = [prompts.get(str(p), prompts.get(p)) for p in files]  # type: ignore[call-overload]
    else:
        given = list(prompts)
        if len(given) != len(files):
            raise LoracamError(f"{len(given)} prompts for {len(files)} images; give one per image (None to read "
                               "the image's infotext)")
    return [g if g is not None else _infotext_prompt(p) for g, p in zip(given, files)]


def _infotext_prompt(path: Path) -> str | None:
    from loracam.generate.infotext import parse_infotext

    with Image.open(path) as im:
        im.load()  # PNG text chunks after the image data are read with it
        text = im.info.get("parameters")
    return parse_infotext(text).prompt if isinstance(text, str) and text.strip() else None
