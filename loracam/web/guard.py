"""What the web server lets in and out: uploads within limits, files only from the studio folder, logins.

Kept apart from the Gradio app so every rule is a plain function with its own test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loracam.errors import LoracamError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class Limits:
    """Upload limits (a studio job needs 5-30 phone photos; a PNG dropped on Generate is one image)."""

    file_mb: float = 40.0  # per file; Gradio refuses larger ones itself (HTTP 413) with max_file_size
    files: int = 60  # photos a job
    megapixels: float = 50.0  # per image (a 108 MP phone photo is refused: downscale it first)

    @property
    def file_bytes(self) -> int:
        return int(self.file_mb * 1024 * 1024)


def check_photos(paths: list[Path], limits: Limits) -> list[Path]:
    """The uploaded photos, or a message that says which one broke which limit and what to do."""
    from PIL import Image, UnidentifiedImageError

    if not paths:
        raise LoracamError("no photos uploaded: add 5-30 photos of the subject (jpg, png or webp)")
    if len(paths) > limits.files:
        raise LoracamError(f"{len(paths)} photos uploaded; at most {limits.files} a job: pick the best ones")
    for p in paths:
        name = Path(p).name
        if Path(p).suffix.lower() not in IMAGE_SUFFIXES:
            raise LoracamError(f"{name} is not a photo loracam reads ({', '.join(IMAGE_SUFFIXES)}); remove it")
        size = Path(p).stat().st_size
        if size > limits.file_bytes:
            raise LoracamError(f"{name} is {size / 2**20:.1f} MB; at most {limits.file_mb:g} MB a photo: "
                               "save it as a JPEG or downscale it")
        try:
            with Image.open(p) as im:  # reads the header only: a decompression bomb is refused before decoding
                w, h = im.size
        except Image.DecompressionBombError:  # Pillow's own refusal (over 2x its pixel limit) before ours
            raise LoracamError(f"{name} is over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP; at most "
                               f"{limits.megapixels:g} MP a photo: downscale it") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise LoracamError(f"{name} could not be read as an image ({exc}); remove it") from None
        if w * h > limits.megapixels * 1e6:
            raise LoracamError(f"{name} is {w}x{h} ({w * h / 1e6:.0f} MP); at most {limits.megapixels:g} MP a "
                               "photo: downscale it")
    return [Path(p) for p in paths]


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` for a path the client sent, refused unless it stays inside ``root``: no absolute
    paths, no ``..``, no symlink that leads out."""
    if not relative or "\x00" in relative:
        raise LoracamError("no file named")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or ".." in rel.parts or ":" in rel.parts[0]:
        raise LoracamError(f"{relative!r} is not a path inside the studio folder")
    root = Path(root).resolve()
    path = (root / rel).resolve()
    if path != root and root not in path.parents:
        raise LoracamError(f"{relative!r} leads outside the studio folder")
    return path


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` -> (user, pass); a clear message for anything else."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise LoracamError("--auth takes USER:PASS (both non-empty), e.g. --auth me:a-long-password")
    return user, password


def check_listen(listen: bool, auth: tuple[str, str] | None) -> str:
    """The address to bind: localhost unless ``--listen``, which needs a login."""
    if listen and auth is None:
        raise LoracamError("--listen serves the studio to the whole network: it needs --auth USER:PASS too "
                           "(anyone who reaches the port could otherwise read your photos and run jobs)")
    return "0.0.0.0" if listen else "127.0.0.1"
