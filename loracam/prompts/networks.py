"""Extra-network tags: ``<lora:NAME>``, ``<lora:NAME:W>``, ``<lora:NAME:TE:UNET>``, ``te=``/``unet=``.

All ``<word:...>`` tags are removed from the text before encoding, as A1111 does; ``lora`` (and its
old alias ``lyco``) become LoraRefs, other kinds are reported so the caller can warn.
Multiplier rules follow A1111: the second positional is the text-encoder weight (default 1), the third
the U-Net weight (default: the text-encoder weight), and ``te=``/``unet=`` override them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loracam.errors import LoracamError

_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class LoraRef:
    """One LoRA named in a prompt, with its text-encoder and U-Net multipliers."""

    name: str
    te: float = 1.0
    unet: float = 1.0

    def tag(self) -> str:
        """The tag as A1111 writes it (one weight when both are equal)."""
        if self.te == self.unet:
            return f"<lora:{self.name}:{_fmt(self.te)}>"
        return f"<lora:{self.name}:{_fmt(self.te)}:{_fmt(self.unet)}>"


def _fmt(x: float) -> str:
    return f"{x:g}"


def _number(value: str, tag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise LoracamError(f"bad weight {value!r} in {tag}: write a number, e.g. <lora:name:0.6>") from None


def _lora_ref(items: list[str], tag: str) -> LoraRef:
    positional = [x for x in items if "=" not in x]
    named = dict(x.split("=", 1) for x in items if "=" in x)
    unknown = set(named) - {"te", "unet", "dyn"}
    if unknown:
        raise LoracamError(f"unknown option {', '.join(sorted(unknown))} in {tag}; use te= or unet=")
    name = positional[0].strip() if positional else ""
    if not name:
        raise LoracamError(f"{tag} names no LoRA; write <lora:NAME:WEIGHT>")
    te = _number(positional[1], tag) if len(positional) > 1 else 1.0
    te = _number(named["te"], tag) if "te" in named else te
    unet = _number(positional[2], tag) if len(positional) > 2 else te
    unet = _number(named["unet"], tag) if "unet" in named else unet
    return LoraRef(name, te, unet)


def extract_networks(prompt: str) -> tuple[str, list[LoraRef], list[str]]:
    """Remove every ``<kind:...>`` tag; return (text, LoRA refs in order, other tags ignored)."""
    loras: list[LoraRef] = []
    others: list[str] = []

    def take(m: re.Match) -> str:
        kind, args = m.group(1), m.group(2)
        if kind in LORA_KINDS:
            loras.append(_lora_ref(args.split(":"), m.group(0)))
        else:
            others.append(m.group(0))
        return ""

    return _TAG.sub(take, prompt), loras, others
