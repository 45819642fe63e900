"""Writing files safely: whole or not at all, and never over something that exists unless asked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from loracam.errors import LoracamError


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then publish it.

    With ``overwrite=False`` the publish is a hard link, which fails if ``path`` appeared meanwhile,
    so a concurrent writer can never be clobbered; a crash leaves at most a hidden temporary file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def writable_dir(path: Path, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check it can be written, with a message that says what to do."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LoracamError(f"the {what} {path} is a file, not a folder; choose another with -o")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoracamError(f"cannot create the {what} {path}: {exc.strerror}; choose another with -o") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LoracamError(f"the {what} {path} is not writable; choose another with -o")
    return path
