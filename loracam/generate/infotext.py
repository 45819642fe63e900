"""A1111 infotext: the ``parameters`` PNG text chunk that A1111, ComfyUI readers and civitai understand.

Layout (interop.md §7): the prompt (may span lines), an optional ``Negative prompt:`` line, then one line
of ``Key: value`` pairs joined by ", ", where a value containing ``,``, ``:`` or a newline is JSON-quoted.
A reader takes the last line as parameters only if it holds at least 3 pairs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracam.errors import LoracamError

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: Any) -> str:
    """A value as A1111 writes it: JSON-quoted only when it holds a comma, colon or newline."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative: str, params: dict[str, Any]) -> str:
    """The infotext for one image; parameters whose value is None are left out."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


@dataclass
class Infotext:
    prompt: str
    negative: str
    params: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.params.get(key, default)


def parse_infotext(text: str) -> Infotext:
    """Read an infotext back: prompt, negative prompt and the parameter pairs (values as strings)."""
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    if len(_PARAM.findall(last)) < 3:
        last = ""  # not a parameter line: it belongs to the prompt
    else:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(last):
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        params[key.strip()] = value
    return Infotext("\n".join(prompt).strip(), "\n".join(negative).strip(), params)


def parse_size(value: str) -> tuple[int, int]:
    m = _SIZE.match(value.strip())
    if not m:
        raise LoracamError(f"bad Size {value!r} in infotext; expected WIDTHxHEIGHT")
    return int(m.group(1)), int(m.group(2))


def parse_lora_hashes(value: str | None) -> dict[str, str]:
    """``"name: hash, name2: hash2"`` -> {name: hash}."""
    out = {}
    for part in (value or "").split(","):
        if ":" in part:
            name, h = part.rsplit(":", 1)
            out[name.strip()] = h.strip()
    return out


def read_png_infotext(path: Path) -> Infotext:
    """The infotext stored in a PNG's ``parameters`` chunk, with clear errors for unreadable files."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            text = im.info.get("parameters") or (getattr(im, "text", {}) or {}).get("parameters")
    except FileNotFoundError:
        raise LoracamError(f"{path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise LoracamError(f"{path} is not a readable image ({exc}); give a PNG saved by loracam or A1111") from None
    if not text:
        raise LoracamError(
            f"{path} has no generation parameters (no 'parameters' text chunk); it was not saved by "
            "loracam or A1111, or its metadata was stripped"
        )
    return parse_infotext(text)
