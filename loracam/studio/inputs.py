"""What a job was started from, fingerprinted, so a resumed job can say what changed instead of mixing.

Photos: each file's name, size and sha256 (a phone photo hashes in milliseconds, and renaming or
re-saving one is a change the user should hear about). The base model: its resolved reference and, for a
file, its size and the sha256 of its first and last MiB (a 2-4 GB checkpoint is not read whole on every
resume; replacing it with another model changes its size or its ends); for the built-in toy model and
diffusers folders, the sha256 of their weight files (a few MB for the toy).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from loracam.errors import LoracamError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".heic", ".heif", ".avif", ".tif", ".tiff"}
EDGE = 1 << 20


def photos_fingerprint(folder: Path) -> dict[str, str]:
    """name -> "size:sha256" of every photo file in ``folder`` (not recursive, as prep reads it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoracamError(f"the photos folder {folder} does not exist (or is not a folder)")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES:
            out[p.name] = f"{p.stat().st_size}:{_sha256(p)}"
    return out


def base_fingerprint(base: str) -> dict[str, str]:
    """What identifies the base model ``base`` (a path, a folder, ``toy`` or another built-in name)."""
    from loracam.models.loader import TOY_DIR

    path = TOY_DIR if base == "toy" else Path(base).expanduser()
    if path.is_file():
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(EDGE)
            f.seek(max(0, size - EDGE))
            tail = f.read(EDGE)
        return {"base": base, "size": str(size), "edges": hashlib.sha256(head + tail).hexdigest()}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
        digest = hashlib.sha256()
        for p in files:
            digest.update(str(p.relative_to(path)).encode() + b"\0" + _sha256(p).encode())
        return {"base": base, "files": str(len(files)), "sha256": digest.hexdigest()}
    return {"base": base}  # a hub id or random:*: its name is all there is to compare


def photo_changes(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """What changed between two photo fingerprints, as phrases (empty: nothing)."""
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    edited = sorted(n for n in set(now) & set(before) if now[n] != before[n])
    out = []
    for what, names in (("added", added), ("removed", removed), ("changed", edited)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            out.append(f"{what}: {shown}")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
