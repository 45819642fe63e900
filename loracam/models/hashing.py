"""File hashes as A1111 shows them, computed once per file version and remembered on disk.

- checkpoint "Model hash": first 10 hex of sha256 of the whole file;
- LoRA "Lora hashes" (sd-scripts' ``sshs_model_hash``, A1111's "addnet" hash): sha256 of a safetensors
  file's bytes after its header, first 12 hex shown.
Hashing a 4 GB checkpoint takes seconds, so results are kept in a JSON file keyed by absolute path and
invalidated by size or modification time, like A1111's cache.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from pathlib import Path

from loracam.io import atomic_write_bytes

_CHUNK = 1 << 20


def sha256_file(path: Path, offset: int = 0) -> str:
    """Full sha256 hex of ``path`` from byte ``offset`` on."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def safetensors_body_offset(path: Path) -> int:
    """Byte offset where a safetensors file's tensor data starts (8-byte length + JSON header)."""
    with open(path, "rb") as f:
        raw = f.read(8)
    if len(raw) < 8:
        raise ValueError(f"{path} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", raw)
    return 8 + n


class HashCache:
    """sha256 values remembered per file (path, size, mtime) in a JSON file; safe to share in a process."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if path is not None and path.exists():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._data = {}  # a damaged cache only costs re-hashing

    def _get(self, file: Path, kind: str, compute) -> str:
        file = file.resolve()
        st = file.stat()
        key = str(file)
        with self._lock:
            entry = self._data.get(key)
            if entry and entry.get("size") == st.st_size and entry.get("mtime") == st.st_mtime:
                if kind in entry:
                    return entry[kind]
            else:
                entry = {"size": st.st_size, "mtime": st.st_mtime}
        value = compute(file)
        with self._lock:
            entry[kind] = value
            self._data[key] = entry
            self._save()
        return value

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self._data, indent=1).encode(), overwrite=True)
        except OSError:
            pass  # a read-only cache dir must not stop generation; hashes are recomputed next time

    def sha256(self, file: Path) -> str:
        """sha256 of the whole file (A1111's checkpoint hash; shown as its first 10 hex)."""
        return self._get(file, "sha256", sha256_file)

    def addnet_hash(self, file: Path) -> str:
        """sha256 of a safetensors file's body (sd-scripts' sshs_model_hash, A1111's LoRA hash)."""
        return self._get(file, "addnet", lambda f: sha256_file(f, safetensors_body_offset(f)))


def default_cache_path() -> Path:
    """Where loracam keeps its hash cache: $LORACAM_HOME or ~/.cache/loracam."""
    home = os.environ.get("LORACAM_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "loracam"
    return base / "hashes.json"
