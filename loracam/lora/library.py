"""The LoRA folders a user has: find a LoRA by the name a prompt uses, load it once, hash it as A1111 does."""

from __future__ import annotations

import difflib
import json
import struct
from pathlib import Path
from typing import Sequence

from loracam.errors import LoracamError
from loracam.lora.formats import LORA_SUFFIXES, PICKLE_SUFFIXES, LoraFile, read_lora
from loracam.models.hashing import HashCache

_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on a header


class LoraLibrary:
    """LoRA files under some folders (searched recursively, in folder order), by stem or ss_output_name alias."""

    def __init__(self, dirs: Sequence[Path], hash_cache: HashCache | None = None):
        self.dirs = [Path(d).expanduser() for d in dirs]
        self.hash_cache = hash_cache if hash_cache is not None else HashCache(None)
        self._loaded: dict[tuple, LoraFile] = {}
        self._aliases: dict[tuple, str | None] = {}

    def files(self) -> list[Path]:
        """Every .safetensors file under the folders, sorted within each folder; listed afresh on each call."""
        out: list[Path] = []
        for d in self.dirs:
            if d.is_dir():
                out.extend(sorted(p for p in d.rglob("*") if p.suffix.lower() in LORA_SUFFIXES and p.is_file()))
        return out

    def names(self) -> list[str]:
        """The names prompts can use: every file stem, and every alias that differs from its stem."""
        names: list[str] = []
        for p in self.files():
            for n in (p.stem, self._alias(p)):
                if n and n not in names:
                    names.append(n)
        return names

    def find(self, name: str) -> Path:
        """The file a prompt's ``<lora:NAME>`` means: a file stem first, then an ss_output_name alias."""
        name = name.removesuffix(".safetensors")
        files = self.files()
        for p in files:
            if p.stem == name:
                return p
        for p in files:
            if self._alias(p) == name:
                return p
        raise self._not_found(name, files)

    def load(self, name: str) -> LoraFile:
        """The LoRA ``name`` names, read once per file version (path, size, mtime)."""
        path = self.find(name)
        key = _version(path)
        if key not in self._loaded:
            self._loaded[key] = read_lora(path)
        return self._loaded[key]

    def short_hash(self, name: str) -> str:
        """First 12 hex of the file's addnet hash (sha256 of the body), as A1111's "Lora hashes" shows."""
        return self.hash_cache.addnet_hash(self.find(name))[:12]

    def _alias(self, path: Path) -> str | None:
        key = _version(path)
        if key not in self._aliases:
            self._aliases[key] = _read_alias(path)
        return self._aliases[key]

    def _not_found(self, name: str, files: list[Path]) -> LoracamError:
        if not self.dirs:
            return LoracamError(
                f"LoRA {name!r} is in the prompt but no LoRA folder was given: pass --lora-dir with the folder "
                f"that holds {name}.safetensors"
            )
        where = ", ".join(str(d) for d in self.dirs)
        missing = [str(d) for d in self.dirs if not d.is_dir()]
        if not files:
            hint = f" ({', '.join(missing)} does not exist)" if missing else ""
            return LoracamError(
                f"LoRA {name!r} not found: there are no .safetensors LoRA files in {where}{hint}; put your LoRA "
                "files there or pass another folder with --lora-dir"
            )
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        msg = f"LoRA {name!r} not found in {where}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" Available: {', '.join(names[:30])}" + (f" and {len(names) - 30} more" if len(names) > 30 else "")
        pickles = [p.name for d in self.dirs if d.is_dir() for p in d.rglob(f"{name}.*")
                   if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            msg += f". {pickles[0]} is a pickle file, which loracam does not load: use a .safetensors version"
        return LoracamError(msg)


def _version(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_alias(path: Path) -> str | None:
    """A file's ss_output_name, from its safetensors header alone; None when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > _MAX_HEADER:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None  # a damaged file is reported when it is loaded, not while looking for another one
    alias = (header.get("__metadata__") or {}).get("ss_output_name", "")
    return (alias.strip() or None) if isinstance(alias, str) else None
