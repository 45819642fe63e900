"""Writing files safely: whole or not at all, and never over something that exists unless asked."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from loracam.errors import LoracamError


class DiskFull(LoracamError):
    """A write failed because the disk (or the user's quota) is full; nothing was published."""

    def __init__(self, path: Path):
        super().__init__(f"the disk is full: {Path(path).name} could not be written (nothing was replaced); "
                         "free some space and try again")
        self.path = Path(path)


def atomic_write(path: Path, write: Callable[[str], None], *, overwrite: bool = False,
                 mode: int | None = None) -> Path:
    """Have ``write(tmp_path)`` produce the file under a temporary name in the same folder, then publish it.

    With ``overwrite=False`` the publish is a hard link, which fails with FileExistsError if ``path``
    appeared meanwhile, so a concurrent writer is never clobbered; a crash leaves at most a hidden
    temporary file. ``write`` gets a path rather than bytes so large files are never held in memory twice.
    The file gets ``mode``, by default what the user's umask gives a new file (not mkstemp's private 0600,
    nor that of a file ``write`` replaced with its own temporary one, as safetensors does).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, new_mode() if mode is None else mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it, and put it back at once
    os.umask(mask)
    return mask


def new_mode(folder: bool = False) -> int:
    """The permissions a file (or folder) created now would get from the user's umask."""
    return (0o777 if folder else 0o666) & ~umask()


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """``atomic_write`` for data already in memory."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=overwrite)


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


def check_writable_dir(path: Path, what: str = "output folder") -> Path:
    """Fail early if ``path`` could not be used as an output folder, without creating anything yet."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise LoracamError(f"the {what} {path} is a file, not a folder; choose another with -o")
        if not os.access(path, os.W_OK | os.X_OK):
            raise LoracamError(f"the {what} {path} is not writable; choose another with -o")
        return path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise LoracamError(f"cannot create the {what} {path}: {parent} is not a writable folder; choose another with -o")
    return path
