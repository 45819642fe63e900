"""X/Y/Z axis types by their A1111 names: what one value of an axis changes in a grid cell (interop.md §9).

An axis is read from a type name (A1111's, case-insensitive, or a short alias such as "cfg") and a value
line in A1111's syntax (grid/values.py). ``AXIS_TYPES`` is the table of types; ``parse_axis`` looks the name
up, parses and checks every value, and applies each one to the base cell once so that a bad value fails
before anything renders.

LoRA axes (A1111 has none of its own; it sweeps LoRA weights with Prompt S/R or the AddNet extension):
- ``lora:NAME`` sets both multipliers of every ``<lora:NAME...>`` tag, ``lora:NAME.te`` the text-encoder
  one, ``lora:NAME.unet`` the U-Net one. Names match case-insensitively and keep the prompt's spelling.
- A LoRA in neither the prompt nor the negative prompt is added as a tag at the end of the prompt:
  ``lora:NAME`` at the value for both parts, ``.te`` / ``.unet`` at the value for that part and 0 for the other.
- ``AddNet Weight N`` / ``AddNet UNet Weight N`` / ``AddNet TEnc Weight N`` address the Nth LoRA tag of the
  prompt (1-based), as the AddNet extension addressed its Nth model slot; it is an error if there is none.
- Every LoRA axis rewrites the visible tag, so the cell's prompt, and the infotext written from it, reproduce
  the weights; the cell's LoraRefs are always re-read from its tags (prompt first, then negative prompt).

Legend text follows A1111: ``Label: value`` for most types, the bare value for Sampler, Prompt S/R and
Checkpoint name (without folder or extension), the phrases joined by ", " for Prompt order. Whole floats print
without ".0" ("CFG Scale: 7"), where A1111 prints "7.0". LoRA axes are labelled by the LoRA ("testdress
weight: 0.6", "testdress UNet weight: 0.6"), AddNet axes too, with the name of the Nth tag of the base prompt.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Callable

from loracam.errors import LoracamError
from loracam.generate.hires import HiresFix
from loracam.generate.samplers import ALIASES, SAMPLERS, SCHEDULES, parse_sampler
from loracam.grid.values import parse_values
from loracam.prompts.networks import LoraRef, extract_networks

if TYPE_CHECKING:
    from loracam.generate.request import GenRequest, Sample, Shared

MAX_ORDER_PHRASES = 7  # Prompt order makes n! cells: 7 phrases are 5,040 already
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_LORA_TAG = re.compile(r"<(lora|lyco):([^>]+)>")


@dataclass(frozen=True)
class Cell:
    """What one grid cell renders; the grid engine turns it into a generate Sample and Shared."""

    prompt: str
    negative: str
    seed: int
    cfg: float
    steps: int
    sampler: str
    schedule: str
    width: int
    height: int
    clip_skip: int = 1
    denoising: float | None = None  # set for img2img / inpaint
    base: str | None = None  # None: the built-in toy model
    loras: tuple[LoraRef, ...] = ()  # left empty: read from the tags of prompt, then negative
    hires: HiresFix | None = None
    control: tuple = ()  # ControlNet units (loracam.control.units.ControlUnit), shared by a batch
    control_weights: tuple[float, ...] = ()  # per unit, this cell's own; (): the units' weights

    def shared(self) -> "Shared":
        """What this cell must share with the others of its batch."""
        from loracam.generate.request import Shared

        return Shared(self.width, self.height, self.steps, self.sampler, self.schedule, self.clip_skip, self.denoising,
                      hires=self.hires, control=self.control)

    def sample(self) -> "Sample":
        """What this cell may have of its own inside a batch (ControlNet weights too: they scale rows)."""
        from loracam.generate.request import Sample

        return Sample(self.prompt, self.negative, self.seed, self.cfg, self.loras, self.control_weights)

    def __post_init__(self):
        if not self.loras:
            object.__setattr__(self, "loras", _loras_of(self.prompt, self.negative))

    @classmethod
    def from_request(cls, req: GenRequest) -> Cell:
        """The base cell of a GenRequest whose size is known (see generate.request.with_native_size)."""
        if req.width is None or req.height is None:
            raise ValueError("resolve the request's size first (generate.request.with_native_size)")
        sampler, schedule = parse_sampler(req.sampler, req.schedule)
        return cls(req.prompt, req.negative, req.seed, req.cfg, req.steps, sampler, schedule, req.width,
                   req.height, req.clip_skip, req.strength if req.init_image else None, req.base, hires=req.hires)


@dataclass(frozen=True)
class Axis:
    """One axis of a grid: its type, legend label, values, and how a value changes a cell."""

    kind: str  # canonical A1111 name: "CFG Scale", "lora:testdress", "AddNet Weight 2"
    label: str  # how the legend names it: "CFG Scale", "testdress weight"
    values: tuple
    applier: Callable[[Cell, Any], Cell] | None = field(repr=False, compare=False, default=None)
    shows: Callable[[Any], str] | None = field(repr=False, compare=False, default=None)  # None: plain text
    labelled: bool = True  # False: the legend shows the bare value, as A1111 does for samplers

    def apply(self, cell: Cell, value: Any) -> Cell:
        """The cell with this axis set to value."""
        return self.applier(cell, value)

    def format(self, value: Any) -> str:
        """Legend text of a value, A1111-style: "CFG Scale: 7"."""
        text = (self.shows or _show)(value)
        return f"{self.label}: {text}" if self.labelled else text


@dataclass(frozen=True)
class AxisType:
    """One row of AXIS_TYPES: the value kind and how to build the axis from its parsed values."""

    name: str  # canonical A1111 name, or a template: "lora:NAME", "AddNet Weight N"
    value_kind: str  # how grid.values.parse_values reads the value line: "int", "float" or "str"
    build: Callable[[str, tuple[str, ...], list, Cell | None], Axis]  # (kind, pattern groups, values, base)
    aliases: tuple[str, ...] = ()
    pattern: str | None = None  # templates: a regex over the written name; its groups go to build
    canonical: str | None = None  # templates: the kind written back, str.format()ted with the groups

    def kind(self, groups: tuple[str, ...]) -> str:
        return self.canonical.format(*groups) if self.canonical else self.name


# --- values: checks and legend text ------------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, float):
        text = repr(round(value, 8) + 0.0)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def _seed(v: int) -> int:
    if not -1 <= v < 2**32:
        raise LoracamError(f"seed {v} is out of range; use -1 (random) or 0 to {2**32 - 1}")
    return v


def _at_least_1(what: str) -> Callable[[int], int]:
    def check(v: int) -> int:
        if v < 1:
            raise LoracamError(f"{what} counts from 1 (got {v})")
        return v

    return check


def _strength(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise LoracamError(f"denoising strength must be between 0 and 1 (got {_show(v)})")
    return v


def _any(v: Any) -> Any:
    return v


def _sampler(v: str) -> str:
    """Canonical spelling; a legacy combined name keeps its schedule ("DPM++ 2M Karras")."""
    sampler, schedule = parse_sampler(v)
    plain = v.strip().casefold() in {s.casefold() for s in SAMPLERS} or v.strip().lower() in ALIASES
    return sampler if plain else f"{sampler} {schedule}"


def _schedule(v: str) -> str:
    found = {s.casefold(): s for s in SCHEDULES}.get(v.strip().casefold())
    if found is None:
        raise LoracamError(f"unknown schedule type {v!r}; valid types: {', '.join(SCHEDULES)}")
    return found


def _size(v: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\s*[x×]\s*(\d+)", v.strip(), re.IGNORECASE)
    if m is None:
        raise LoracamError(f"size {v!r} is not WIDTHxHEIGHT; write e.g. 512x768")
    w, h = int(m[1]), int(m[2])
    for name, x in (("width", w), ("height", h)):
        if x < 8 or x % 8:
            raise LoracamError(f"{name} {x} in size {v!r} is not a positive multiple of 8; "
                               f"try {max(8, round(x / 8) * 8)}")
    return w, h


def _show_size(v: tuple[int, int]) -> str:
    return f"{v[0]}x{v[1]}"


def _show_checkpoint(v: str) -> str:
    name = PurePath(v).name or v
    return next((name[: -len(s)] for s in _CHECKPOINT_SUFFIXES if name.lower().endswith(s)), name)


# --- applying a value ------------------------------------------------------------------------------------


def _loras_of(prompt: str, negative: str) -> tuple[LoraRef, ...]:
    return tuple(extract_networks(prompt)[1] + extract_networks(negative)[1])


def _with_text(cell: Cell, prompt: str, negative: str) -> Cell:
    """The cell with new prompt texts; its LoraRefs follow the tags."""
    return replace(cell, prompt=prompt, negative=negative, loras=_loras_of(prompt, negative))


def _set(name: str, cell: Cell, value: Any) -> Cell:
    return replace(cell, **{name: value})


def _set_denoising(cell: Cell, value: float) -> Cell:
    """A1111's Denoising axis: the hires pass's strength when hires fix is on, else img2img's."""
    if cell.hires is not None:
        return replace(cell, hires=replace(cell.hires, denoising=value))
    return replace(cell, denoising=value)


def _set_hires(name: str, cell: Cell, value: Any) -> Cell:
    if cell.hires is None:
        raise LoracamError(f"a Hires {name} axis needs hires fix on: add --hires-scale or --hires-resize")
    return replace(cell, hires=replace(cell.hires, **{name: value}))


def _set_control_weight(cell: Cell, value: float) -> Cell:
    """sd-webui-controlnet's "[ControlNet] Weight" axis: the first unit's weight, per cell (so it batches)."""
    if not cell.control:
        raise LoracamError("a [ControlNet] Weight axis needs a ControlNet: give --controlnet TYPE:SOURCE")
    if value < 0:
        raise LoracamError(f"a ControlNet weight is 0 or more (got {value:g})")
    weights = list(cell.control_weights or (u.weight for u in cell.control))
    weights[0] = float(value)
    return replace(cell, control_weights=tuple(weights))


def _hires_steps(v: int) -> int:
    if v < 0:
        raise LoracamError(f"hires steps are 0 (as the first pass) or more (got {v})")
    return v


def _set_size(cell: Cell, value: tuple[int, int]) -> Cell:
    return replace(cell, width=value[0], height=value[1])


def _set_sampler(cell: Cell, value: str) -> Cell:
    sampler, schedule = parse_sampler(value)
    # A plain sampler name keeps the cell's schedule type, as in A1111; a combined one sets it.
    return replace(cell, sampler=sampler, schedule=cell.schedule if value == sampler else schedule)


def _search_replace(search: str, cell: Cell, value: str) -> Cell:
    return _with_text(cell, cell.prompt.replace(search, value), cell.negative.replace(search, value))


def _reorder(cell: Cell, order: tuple[str, ...]) -> Cell:
    """Put the phrases into the prompt's phrase slots in the given order (A1111's Prompt order)."""
    slots = sorted((_find_phrase(cell.prompt, p), p) for p in order)
    pieces, last, previous = [], 0, ""
    for start, phrase in slots:
        if start < last:
            raise LoracamError(f"the phrases {previous!r} and {phrase!r} overlap in the prompt; "
                               f"list phrases that do not")
        pieces.append(cell.prompt[last:start])
        last, previous = start + len(phrase), phrase
    prompt = "".join(piece + phrase for piece, phrase in zip(pieces, order)) + cell.prompt[last:]
    return _with_text(cell, prompt, cell.negative)


def _find_phrase(prompt: str, phrase: str) -> int:
    at = prompt.find(phrase)
    if at < 0:
        raise LoracamError(f"{phrase!r} is not in the prompt; Prompt order reorders phrases the prompt contains")
    return at


def _tag_text(m: re.Match, ref: LoraRef) -> str:
    """ref's tag, keeping the written kind (lora/lyco) and options other than te=/unet= (dyn=)."""
    extra = [x for x in m[2].split(":") if "=" in x and x.split("=", 1)[0].strip() not in ("te", "unet")]
    text = f"<{m[1]}:" + ref.tag()[len("<lora:"):]
    return text[:-1] + "".join(":" + x for x in extra) + ">"


def _retag(text: str, picked: Callable[[int, LoraRef], bool], change: Callable[[LoraRef], LoraRef]) -> tuple[str, int]:
    """text with the LoRA tags that picked(index, ref) selects rewritten; and how many there were."""
    index, hits = itertools.count(), 0

    def sub(m: re.Match) -> str:
        nonlocal hits
        ref = extract_networks(m[0])[1][0]
        if not picked(next(index), ref):
            return m[0]
        hits += 1
        return _tag_text(m, change(ref))

    return _LORA_TAG.sub(sub, text), hits


def _add_tag(prompt: str, tag: str) -> str:
    return f"{prompt} {tag}" if prompt and not prompt[-1].isspace() else prompt + tag


@dataclass(frozen=True)
class _Part:
    """Which multipliers of a LoRA an axis sets, and how a LoRA missing from the prompt is added."""

    label: str
    set: Callable[[LoraRef, float], LoraRef]
    new: Callable[[str, float], LoraRef]


_PARTS = {
    "both": _Part("weight", lambda r, w: replace(r, te=w, unet=w), lambda n, w: LoraRef(n, w, w)),
    "te": _Part("TEnc weight", lambda r, w: replace(r, te=w), lambda n, w: LoraRef(n, w, 0.0)),
    "unet": _Part("UNet weight", lambda r, w: replace(r, unet=w), lambda n, w: LoraRef(n, 0.0, w)),
}


def _set_lora(name: str, part: _Part, cell: Cell, weight: float) -> Cell:
    def same(_: int, ref: LoraRef) -> bool:
        return ref.name.casefold() == name.casefold()

    prompt, in_prompt = _retag(cell.prompt, same, lambda r: part.set(r, weight))
    negative, in_negative = _retag(cell.negative, same, lambda r: part.set(r, weight))
    if not in_prompt + in_negative:
        prompt = _add_tag(prompt, part.new(name, weight).tag())
    return _with_text(cell, prompt, negative)


def _set_nth_lora(n: int, part: _Part, cell: Cell, weight: float) -> Cell:
    prompt, hits = _retag(cell.prompt, lambda i, _: i == n - 1, lambda r: part.set(r, weight))
    if not hits:
        raise LoracamError(_too_few_tags(n, cell.prompt))
    return _with_text(cell, prompt, cell.negative)


def _too_few_tags(n: int, prompt: str) -> str:
    have = len(extract_networks(prompt)[1])
    return (f"AddNet axes address the Nth <lora:...> tag of the prompt, and the prompt has {have}, not {n}; "
            f"add the tag to the prompt or use a lora:NAME axis")


# --- building axes ---------------------------------------------------------------------------------


def _field_type(name: str, value_kind: str, apply: Callable[[Cell, Any], Cell], check: Callable = _any,
                aliases: tuple[str, ...] = (), shows: Callable[[Any], str] = _show, labelled: bool = True) -> AxisType:
    """A type whose values are checked one by one and applied as they are."""

    def build(kind: str, groups: tuple[str, ...], values: list, base: Cell | None) -> Axis:
        return Axis(kind, name, tuple(check(v) for v in values), apply, shows, labelled)

    return AxisType(name, value_kind, build, aliases)


def _build_search_replace(kind: str, groups: tuple[str, ...], values: list, base: Cell | None) -> Axis:
    search = values[0]
    if base is not None and search not in base.prompt and search not in base.negative:
        raise LoracamError(f"the first value {search!r} is the text to replace, and neither the prompt nor the "
                           f"negative prompt contains it; start the list with a piece of the prompt")
    return Axis(kind, "Prompt S/R", tuple(values), partial(_search_replace, search), _show, labelled=False)


def _build_order(kind: str, groups: tuple[str, ...], values: list, base: Cell | None) -> Axis:
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise LoracamError(f"{', '.join(map(repr, twice))} listed twice; list each phrase once")
    if len(values) > MAX_ORDER_PHRASES:
        raise LoracamError(f"{len(values)} phrases make {math.factorial(len(values)):,} orders; "
                           f"list at most {MAX_ORDER_PHRASES}")
    return Axis(kind, "Prompt order", tuple(itertools.permutations(values)), _reorder, ", ".join, labelled=False)


def _lora_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise LoracamError("a LoRA axis names no LoRA; write lora:NAME, e.g. lora:testdress")
    return name


def _lora_type(suffix: str, part: str) -> AxisType:
    def build(kind: str, groups: tuple[str, ...], values: list, base: Cell | None) -> Axis:
        name = _lora_name(groups[0])
        spelled = [r.name for r in (base.loras if base is not None else ()) if r.name.casefold() == name.casefold()]
        name = spelled[0] if spelled else name  # the legend spells it as the prompt does
        return Axis(kind, f"{name} {_PARTS[part].label}", tuple(values), partial(_set_lora, name, _PARTS[part]))

    # the plain form must not swallow a .te / .unet suffix
    tail = re.escape(suffix) if suffix else r"(?<!\.te)(?<!\.unet)"
    return AxisType(f"lora:NAME{suffix}", "float", build, pattern=rf"lora:([^:<>]*?){tail}",
                    canonical="lora:{}" + suffix)


def _addnet_type(title: str, part: str) -> AxisType:
    def build(kind: str, groups: tuple[str, ...], values: list, base: Cell | None) -> Axis:
        n = int(groups[0])
        if n < 1:
            raise LoracamError("AddNet axes count LoRA tags from 1; write e.g. AddNet Weight 1")
        refs = extract_networks(base.prompt)[1] if base is not None else []
        if base is not None and len(refs) < n:
            raise LoracamError(_too_few_tags(n, base.prompt))
        label = f"{refs[n - 1].name} {_PARTS[part].label}" if refs else kind
        return Axis(kind, label, tuple(values), partial(_set_nth_lora, n, _PARTS[part]))

    words = title.split()
    return AxisType(f"{title} N", "float", build, pattern=r"\s+".join(map(re.escape, words)) + r"\s*(\d+)",
                    canonical=title + " {}")


def _table(*types: AxisType) -> dict[str, AxisType]:
    return {t.name: t for t in types}


AXIS_TYPES: dict[str, AxisType] = _table(
    _field_type("Seed", "int", partial(_set, "seed"), _seed, ("seeds",)),
    _field_type("Steps", "int", partial(_set, "steps"), _at_least_1("steps"), ("step",)),
    _field_type("CFG Scale", "float", partial(_set, "cfg"), aliases=("cfg", "guidance", "scale")),
    _field_type("Sampler", "str", _set_sampler, _sampler, ("sampler name",), labelled=False),
    _field_type("Schedule type", "str", partial(_set, "schedule"), _schedule, ("schedule", "scheduler")),
    AxisType("Prompt S/R", "str", _build_search_replace, ("s/r", "sr", "prompt sr", "search replace")),
    AxisType("Prompt order", "str", _build_order, ("order",)),
    _field_type("Clip skip", "int", partial(_set, "clip_skip"), _at_least_1("clip skip"), ("clipskip",)),
    _field_type("Size", "str", _set_size, _size, ("resolution",), _show_size),
    _field_type("Denoising", "float", _set_denoising, _strength, ("denoising strength", "denoise", "strength")),
    _field_type("Hires steps", "int", partial(_set_hires, "steps"), _hires_steps, ("hires step",)),
    _field_type("Hires upscaler", "str", partial(_set_hires, "upscaler"), aliases=("hires upscale model",)),
    _field_type("[ControlNet] Weight", "float", _set_control_weight, aliases=("controlnet weight", "cn weight")),
    _field_type("Checkpoint name", "str", partial(_set, "base"), aliases=("checkpoint", "ckpt", "model", "base"),
                shows=_show_checkpoint, labelled=False),
    _lora_type("", "both"),
    _lora_type(".te", "te"),
    _lora_type(".unet", "unet"),
    _addnet_type("AddNet Weight", "both"),
    _addnet_type("AddNet UNet Weight", "unet"),
    _addnet_type("AddNet TEnc Weight", "te"),
)


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


_BY_NAME = {_norm(n): t for t in AXIS_TYPES.values() if t.pattern is None for n in (t.name, *t.aliases)}


def _valid_types() -> str:
    return "; ".join(t.name + (f" ({', '.join(t.aliases)})" if t.aliases else "") for t in AXIS_TYPES.values())


def find_axis_type(kind: str) -> tuple[AxisType, tuple[str, ...]]:
    """The table row for a written axis type name, and the groups its template captured."""
    found = _BY_NAME.get(_norm(kind))
    if found is not None:
        return found, ()
    for t in AXIS_TYPES.values():
        m = t.pattern and re.fullmatch(t.pattern, kind.strip(), re.IGNORECASE)
        if m:
            return t, tuple(g.strip() for g in m.groups())
    raise LoracamError(f"unknown axis type {kind!r}; valid types (short names in brackets): {_valid_types()}")


def parse_axis(kind: str, values_text: str, base_cell: Cell) -> Axis:
    """An axis from its A1111 type name and value line, every value checked against the base cell."""
    spec, groups = find_axis_type(kind)
    canonical = spec.kind(groups)
    try:
        axis = spec.build(canonical, groups, parse_values(values_text, spec.value_kind), base_cell)
        for value in axis.values:  # fail now, not halfway through a grid
            axis.apply(base_cell, value)
    except LoracamError as e:
        raise LoracamError(f"{canonical} axis: {e}") from None
    return axis


def seed_row(n: int, rng: random.Random) -> Axis:
    """A Seed axis of n distinct random seeds: the seed-exploration shortcut."""
    if n < 1:
        raise LoracamError(f"a seed row needs at least 1 seed (got {n})")
    seeds = rng.sample(range(2**32 - 1), n)
    return AXIS_TYPES["Seed"].build("Seed", (), seeds, None)
