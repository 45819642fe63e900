"""Prompt adherence: the share of the attributes a prompt asks for that the image shows.

``ADHERENCE`` (name -> builder): ``toy`` reads toy-world images with the probe (framing, dress colour, dress
pattern, shoes, hair colour and style, background) and compares with the booru tags of the image's prompt;
``none`` gives no adherence term (a real-world judge of text against image is for later).

Only attributes the prompt names count: "red dress" asks for the colour, not for a plain dress, and a prompt
without a hair tag is not marked down for any hair. An attribute the asked framing hides (shoes in an
upper-body shot, the dress in a close-up; the probe's own framing when the prompt names none) is not graded
either: the picture cannot show it. The trigger words of held-out concepts are identity's business except
``testdress`` and ``myshoes``, which name a pattern and shoes the probe reads like any other.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from loracam.toy import world

_WEIGHT = re.compile(r":\s*[+-]?[\d.]+\s*$")


def prompt_tags(prompt: str) -> list[str]:
    """A prompt's tags: network tags removed, emphasis dropped, BREAK and AND as separators, lower case."""
    from loracam.prompts import extract_networks

    text = extract_networks(prompt)[0]
    text = re.sub(r"\bBREAK\b|\bAND\b", ",", text)
    out = []
    for part in text.split(","):
        tag = part.strip().strip("()[]{}").strip()
        tag = _WEIGHT.sub("", tag).strip("()[] ").lower()
        tag = re.sub(r"\s+", " ", tag.replace("_", " "))
        if tag:
            out.append(tag)
    return out


def _table() -> dict[str, tuple[str, str]]:
    """tag -> (probe attribute, class) for every tag the toy world's prompts use."""
    table: dict[str, tuple[str, str]] = {}
    for framing in world.FRAMINGS:
        table[framing] = ("framing", framing)
    table["closeup"] = table["close up"] = ("framing", "close-up")
    for colour in world.DRESS_COLOURS:
        table[f"{colour} dress"] = ("dress", colour)
    for pattern, tag in world.PATTERNS.items():
        if tag:
            table[tag] = ("pattern", pattern)
    table[world.TESTDRESS] = ("pattern", world.TESTDRESS)
    for colour in world.SHOE_COLOURS:
        table[f"{colour} shoes"] = ("shoes", colour)
    table[world.MYSHOES] = ("shoes", world.MYSHOES)
    for colour in world.HAIR_COLOURS:
        table[f"{colour} hair"] = ("hair", colour)
    for style in world.HAIR_STYLES:
        table[f"{style} hair"] = ("hair_style", style)
    for colour in world.BACKGROUNDS:
        table[f"{colour} background"] = ("background", colour)
    return table


TAGS = _table()
_TAG_OF = {av: tag for tag, av in reversed(list(TAGS.items()))}  # the first tag listed for each class wins


def requested(prompt: str) -> dict[str, str]:
    """The attributes a prompt asks for: {attribute: class}; a later tag for the same attribute wins."""
    return dict(TAGS[t] for t in prompt_tags(prompt) if t in TAGS)


def _shown(attribute: str, framing: str) -> bool:
    """Whether a picture in ``framing`` shows ``attribute`` at all."""
    doll = world.Doll(framing=framing)
    return {"dress": doll.shows_dress, "pattern": doll.shows_dress, "shoes": doll.shows_shoes}.get(attribute, True)


@dataclass(frozen=True)
class Adherence:
    """One image's adherence: the share of graded attributes read as asked, and what was missed."""

    score: float | None  # None: the prompt asks for nothing the judge can read
    graded: int
    misses: tuple[str, ...]  # "pink hair asked, black read"


def grade(asked: dict[str, str], read: dict[str, str]) -> Adherence:
    """Compare a prompt's requests with one probe reading."""
    framing = asked.get("framing", read["framing"])
    graded = {a: v for a, v in asked.items() if _shown(a, framing)}
    if not graded:
        return Adherence(None, 0, ())
    misses = tuple(f"{_name(a, v)} asked, {_name(a, read[a])} read" for a, v in graded.items() if read[a] != v)
    return Adherence(1 - len(misses) / len(graded), len(graded), misses)


def _name(attribute: str, value: str) -> str:
    """The tag that asks for ``value`` ("pink hair", "plaid dress"), or the class name if no tag does."""
    return _TAG_OF.get((attribute, value), value)


class ToyAdherence:
    """The probe reads every image once; each image is graded against its own prompt."""

    name = "toy"

    def __init__(self, probe) -> None:
        self.probe = probe

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str | None]) -> list[Adherence | None]:
        idx = [i for i, p in enumerate(prompts) if p]
        out: list[Adherence | None] = [None] * len(images)
        if idx:
            reads = self.probe.read([images[i] for i in idx])
            for i, read in zip(idx, reads):
                out[i] = grade(requested(prompts[i] or ""), read)
        return out


# name -> builder(models); None: no adherence term
ADHERENCE: dict[str, Callable[[Any], Any] | None] = {
    "toy": lambda models: ToyAdherence(models.probe()),
    "none": None,
}
