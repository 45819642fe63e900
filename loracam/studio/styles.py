"""Style presets: versioned TOML files that say how the studio renders a subject in one look.

A preset holds a prompt with ``{trigger}`` and ``{class}`` (per-subject overrides in ``[prompts]``), the
sampler settings, and optional ``[lora]``, ``[control]``, ``[detail]``, ``[upscale]`` and (toy world only)
``[expect]`` tables. Shipped presets live in ``styles/`` beside this file; a user's folders add to them,
and a user file with a shipped name replaces the shipped one (the listing says so). The schema and an
example are in ``styles/README.md``.

Every value is checked when the file is read, so a typo or an impossible value fails before anything
renders, with the file and the key in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from loracam.config import from_dict, read_toml
from loracam.errors import LoracamError

STYLE_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "styles"
SUBJECTS = ("face", "person", "pet", "garment", "shoes")
BASE_KINDS = ("sd15", "sdxl", "toy")
PLACEHOLDERS = ("trigger", "class")
# what loracam.toy.probe reads and [expect] may name (the probe's heads, less face identity and spill)
EXPECT_KEYS = ("framing", "dress", "pattern", "shoes", "hair", "hair_style", "background")
# file suffixes that make a [lora] name, [upscale] model or ControlNet source a path rather than a name
_PATH_SUFFIXES = {".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".json", ".png", ".jpg", ".jpeg", ".webp"}
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")  # {name}; dynamic-prompt {a|b} groups are left alone
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NOT_IN_FILES = ("source", "overrides")  # StylePreset fields loracam sets, never a file


# ---------------------------------------------------------------------------------------------
# the tables of a preset


@dataclass(frozen=True)
class SubjectPrompts:
    """``[prompts]``: a prompt per subject that replaces the preset's ``prompt`` for that subject."""

    face: str = ""
    person: str = ""
    pet: str = ""
    garment: str = ""
    shoes: str = ""


@dataclass(frozen=True)
class StyleLora:
    """``[lora]``: a style LoRA added to every render (a file stem found in the LoRA folders, or a path)."""

    name: str = ""
    weight: float = 0.8

    def __post_init__(self):
        if not self.name.strip():
            raise LoracamError("[lora] needs a name: a LoRA file's stem (found in --lora-dir) or its path")
        _check_weight("[lora] weight", self.weight)

    def tag(self) -> str:
        """The A1111 prompt tag, e.g. ``<lora:film_grain:0.6>``."""
        return f"<lora:{Path(self.name).stem if _is_path(self.name) else self.name}:{self.weight:g}>"


@dataclass(frozen=True)
class StyleControl:
    """``[control]``: an OpenPose ``pose`` (a template name or an OpenPose JSON file) with weight/start/end,
    or ``spec``, a whole ``--controlnet`` spec (which carries its own weight and window)."""

    pose: str = ""
    spec: str = ""
    weight: float | None = None  # None: 1
    start: float | None = None  # None: 0
    end: float | None = None  # None: 1

    def __post_init__(self):
        if bool(self.pose.strip()) == bool(self.spec.strip()):
            raise LoracamError("[control] needs one of pose (a template name, `loracam pose --list`, or an "
                               "OpenPose JSON file) or spec (a --controlnet spec such as openpose:standing:0.8)")
        if self.spec and any(v is not None for v in (self.weight, self.start, self.end)):
            raise LoracamError(f"[control] spec {self.spec!r} carries its own weight and start/end "
                               "(TYPE:SOURCE:WEIGHT:START:END); drop weight/start/end from the table")
        if self.pose and not _is_path(self.pose):
            from loracam.control.templates import canonical_name

            try:
                canonical_name(self.pose)
            except LoracamError as exc:
                raise LoracamError(f"[control] pose: {exc}") from None
        unit = self.unit()  # the unit's own checks: kind, window, spec syntax
        _check_weight("[control] weight", unit.weight)

    def unit(self):
        """The ControlNet unit (loracam.control.units.ControlUnit) this table describes."""
        from loracam.control.units import ControlUnit

        try:
            if self.spec:
                return ControlUnit.parse(self.spec)
            return ControlUnit(kind="openpose", source=self.pose, weight=_or(self.weight, 1.0),
                               start=_or(self.start, 0.0), end=_or(self.end, 1.0))
        except LoracamError as exc:
            raise LoracamError(f"[control] {exc}") from None


@dataclass(frozen=True)
class StyleDetail:
    """``[detail]``: detail passes as ``--detail`` takes them (``face``, ``face:PROMPT``, ``garment``...)."""

    passes: tuple[str, ...] = ()
    denoising: float = 0.4
    confidence: float = 0.3

    def __post_init__(self):
        self.to_passes()  # unknown detectors and out-of-range numbers fail now

    def to_passes(self) -> tuple:
        """The passes as loracam.finish.detail.DetailPass objects (empty: no detail pass)."""
        from loracam.finish.detail import DetailPass

        try:
            return tuple(DetailPass.parse(s, denoising=self.denoising, confidence=self.confidence)
                         for s in self.passes)
        except LoracamError as exc:
            raise LoracamError(f"[detail] {exc}") from None


@dataclass(frozen=True)
class StyleUpscale:
    """``[upscale]``: an upscaler by name (``toy-4x``, ``lanczos``, A1111's ``R-ESRGAN 4x+``, a file stem in
    the upscaler folders) or path, and the factor."""

    model: str = ""
    scale: float = 2.0

    def __post_init__(self):
        if not self.model.strip():
            raise LoracamError("[upscale] needs a model: an upscaler name such as R-ESRGAN 4x+, toy-4x, "
                               "lanczos, or a model file")
        if not (math.isfinite(self.scale) and 1.0 <= self.scale <= 8.0):
            raise LoracamError(f"[upscale] scale must be between 1 and 8 (got {self.scale:g})")


@dataclass(frozen=True)
class ExpectAttrs:
    """Attributes the toy probe should read in a good image; "" means not checked. Values are the toy
    world's names (loracam.toy.world): framing "close-up", background "white", hair "black", ..."""

    framing: str = ""
    dress: str = ""
    pattern: str = ""
    shoes: str = ""
    hair: str = ""
    hair_style: str = ""
    background: str = ""

    def __post_init__(self):
        tables = expect_tags()
        for key in EXPECT_KEYS:
            value = getattr(self, key)
            if value and value not in tables[key]:
                raise LoracamError(f"[expect] {key} = {value!r} is not a toy-world value; use one of: "
                                   f"{', '.join(tables[key])}")

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in EXPECT_KEYS if getattr(self, k)}


@dataclass(frozen=True)
class ExpectBySubject:
    """``[expect.subject.<subject>]``: what differs per subject (a face is read on close-ups, a garment on
    upper-body shots)."""

    face: ExpectAttrs | None = None
    person: ExpectAttrs | None = None
    pet: ExpectAttrs | None = None
    garment: ExpectAttrs | None = None
    shoes: ExpectAttrs | None = None


@dataclass(frozen=True)
class Expect(ExpectAttrs):
    """``[expect]`` (toy world only, for the quality benchmark): attributes for every subject, plus
    ``[expect.subject.<subject>]`` tables that add to or replace them for one subject."""

    subject: ExpectBySubject = field(default_factory=ExpectBySubject)

    def for_subject(self, subject: str) -> dict[str, str]:
        own = getattr(self.subject, subject)
        return {**self.as_dict(), **(own.as_dict() if own else {})}


# ---------------------------------------------------------------------------------------------
# the preset


@dataclass(frozen=True)
class StylePreset:
    """One style: what to prompt, how to sample, and how to finish, for the subjects it ``suits``."""

    version: int
    name: str
    description: str = ""
    base: Literal["sd15", "sdxl", "toy"] = "sd15"  # the kind of base model the prompt is written for
    subjects: tuple[str, ...] = ("face", "person")
    prompt: str = ""  # with {trigger} and {class}
    negative: str = ""
    sampler: str = "DPM++ 2M"  # A1111's name; legacy "DPM++ 2M Karras" is split into sampler + schedule
    schedule: str = "Automatic"
    steps: int = 30
    cfg: float = 7.0
    size: Any = (512, 768)  # "WxH" or [w, h] in a file; always (w, h) once loaded
    candidates: int = 8  # images rendered per subject in this style
    clip_skip: int = 1
    prompts: SubjectPrompts = field(default_factory=SubjectPrompts)
    lora: StyleLora | None = None
    control: StyleControl | None = None
    detail: StyleDetail | None = None
    upscale: StyleUpscale | None = None
    expect: Expect | None = None
    source: Path | None = field(default=None, compare=False)  # the file it was read from (None: built in code)
    overrides: Path | None = field(default=None, compare=False)  # the earlier file of the same name it replaces

    def __post_init__(self):
        _check_version(self.version, "this style preset")
        if not _NAME.match(self.name or ""):
            raise LoracamError(f"style name {self.name!r}: use letters, digits, '-', '_' or '.', starting with a "
                               "letter or digit (the name is what --style takes)")
        object.__setattr__(self, "size", _parse_size(self.size))
        self._check_sampling()
        self._check_subjects()
        self._check_prompts()
        if self.expect is not None:
            self._check_expect()

    # -- checks -------------------------------------------------------------------------------

    def _check_sampling(self) -> None:
        from loracam.generate.samplers import parse_sampler

        sampler, schedule = parse_sampler(self.sampler, self.schedule)
        object.__setattr__(self, "sampler", sampler)
        object.__setattr__(self, "schedule", schedule)
        for key, value, low, high in (("steps", self.steps, 1, 150), ("candidates", self.candidates, 1, 64),
                                      ("clip_skip", self.clip_skip, 1, 12)):
            if not low <= value <= high:
                raise LoracamError(f"{key} must be between {low} and {high} (got {value})")
        if not (math.isfinite(self.cfg) and 1.0 <= self.cfg <= 30.0):
            raise LoracamError(f"cfg must be between 1 and 30 (got {self.cfg:g})")

    def _check_subjects(self) -> None:
        if not self.subjects:
            raise LoracamError(f"subjects is empty; list what the style is for, among: {', '.join(SUBJECTS)}")
        for s in self.subjects:
            if s not in SUBJECTS:
                raise LoracamError(f"unknown subject {s!r} in subjects{_did_you_mean(s, SUBJECTS)}; "
                                   f"use some of: {', '.join(SUBJECTS)}")
        if len(set(self.subjects)) != len(self.subjects):
            raise LoracamError(f"subjects lists a subject twice: {', '.join(self.subjects)}")
        extra = [s for s in SUBJECTS if getattr(self.prompts, s) and s not in self.subjects]
        if extra:
            raise LoracamError(f"[prompts] has a prompt for {', '.join(extra)}, which subjects does not list "
                               f"({', '.join(self.subjects)}): add it there or drop the prompt")

    def _check_prompts(self) -> None:
        for s in self.subjects:
            template = self.template(s)
            where = f"[prompts] {s}" if getattr(self.prompts, s) else "prompt"
            if not template.strip():
                raise LoracamError(f"no prompt for {s}: set prompt, or {s} in [prompts]")
            unknown = [p for p in _PLACEHOLDER.findall(template) if p not in PLACEHOLDERS]
            if unknown:
                raise LoracamError(f"{where} has an unknown placeholder {{{unknown[0]}}}; the placeholders are "
                                   "{trigger} (the LoRA's trigger word) and {class} (its class word)")
            if "{trigger}" not in template:
                raise LoracamError(f"{where} has no {{trigger}}: without the trigger word the LoRA's subject "
                                   f"would not be asked for ({template!r})")
        if _PLACEHOLDER.search(self.negative):
            raise LoracamError("negative takes no placeholders: the trigger and class belong in the prompt")

    def _check_expect(self) -> None:
        if self.base != "toy":
            raise LoracamError('[expect] is for toy-world presets (base = "toy"): it is what the toy probe '
                               "should read, and the probe reads only toy-world images")
        extra = [s for s in SUBJECTS if getattr(self.expect.subject, s) and s not in self.subjects]
        if extra:
            raise LoracamError(f"[expect.subject] has {', '.join(extra)}, which subjects does not list")
        tables = expect_tags()
        for s in self.subjects:
            tags = {t.strip().lower() for t in self.template(s).split(",")}
            for key, value in self.expect_for(s).items():
                want = tables[key][value]
                if want is None or value in _HELD_OUT:  # untagged (plain) or the LoRA's own {trigger}
                    continue
                others = sorted(t for t in tables[key].values() if t and t != want and t in tags)
                if want not in tags or others:
                    missing = [f"does not name {want!r}"] if want not in tags else []
                    said = [f"names {', '.join(others)}"] if others else []
                    raise LoracamError(f"[expect] {key} = {value!r} for {s}, but its prompt "
                                       f"{' and '.join(missing + said)}: the probe would score images against "
                                       "what was not asked for")

    # -- use ----------------------------------------------------------------------------------

    def suits(self, subject: str) -> bool:
        """Whether the style is written for ``subject`` (face, person, pet, garment, shoes)."""
        return subject in self.subjects

    def template(self, subject: str) -> str:
        """The unfilled prompt for ``subject``: its ``[prompts]`` entry, else ``prompt``."""
        if subject not in SUBJECTS:
            raise LoracamError(f"unknown subject {subject!r}{_did_you_mean(subject, SUBJECTS)}; "
                               f"use one of: {', '.join(SUBJECTS)}")
        return getattr(self.prompts, subject) or self.prompt

    def prompt_for(self, subject: str, trigger: str, class_word: str) -> str:
        """The prompt for ``subject`` with {trigger} and {class} filled in."""
        template = self.template(subject)  # an unknown subject is named as such, not as unsuited
        if not self.suits(subject):
            raise LoracamError(f"style {self.name} is for {', '.join(self.subjects)}, not {subject}; "
                               f"`loracam studio styles` lists the styles")
        values = {"trigger": trigger.strip(), "class": class_word.strip()}

        def fill(m: re.Match) -> str:
            key = m.group(1)
            if key not in values:
                raise LoracamError(f"style {self.name}: unknown placeholder {{{key}}} in its prompt; the "
                                   "placeholders are {trigger} and {class}")
            if not values[key]:
                raise LoracamError(f"style {self.name}'s prompt for {subject} needs the {key} word "
                                   f"({'e.g. sks' if key == 'trigger' else 'e.g. woman, dog, dress'})")
            return values[key]

        text = _PLACEHOLDER.sub(fill, template)
        return re.sub(r"[ \t]+", " ", text).strip()

    def expect_for(self, subject: str) -> dict[str, str]:
        """What the toy probe should read in a good image of ``subject`` ({} when the preset has no [expect])."""
        return self.expect.for_subject(subject) if self.expect is not None else {}

    def summary(self) -> str:
        """Size, sampler and steps on one line: ``512x768, DPM++ 2M Karras, 30 steps, CFG 7, 8 candidates``."""
        schedule = "" if self.schedule == "Automatic" else f" {self.schedule}"
        return (f"{self.size[0]}x{self.size[1]}, {self.sampler}{schedule}, {self.steps} steps, CFG {self.cfg:g}, "
                f"{self.candidates} candidates")


# ---------------------------------------------------------------------------------------------
# reading files


def load_style(path: str | Path) -> StylePreset:
    """Read one style preset file; every problem is a LoracamError that names the file (and the key)."""
    path = Path(path)
    where = str(path)
    data = read_toml(path, "style preset")
    # the version first: a newer file's new keys would otherwise read as typos
    if "version" not in data:
        raise LoracamError(f"{where}: no version key; a style preset starts with `version = {STYLE_VERSION}`")
    _check_version(data["version"], where)
    _check_keys(StylePreset, data, where)
    data.setdefault("name", path.stem)
    try:
        preset = from_dict(StylePreset, data, where=where)
        preset = _with_paths(preset, path.parent.resolve())
    except LoracamError as exc:
        text = str(exc)
        raise LoracamError(text if text.startswith(where) else f"{where}: {text}") from None
    return replace(preset, source=path)


def find_styles(dirs: typing.Iterable[str | Path] = (), shipped: bool = True) -> dict[str, StylePreset]:
    """The shipped presets, then each folder's ``*.toml`` in order; a later file with an earlier name replaces
    it (``overrides`` says which file). Two files of one name in one folder are an error."""
    folders = ([SHIPPED_DIR] if shipped else []) + [Path(d).expanduser() for d in dirs]
    styles: dict[str, StylePreset] = {}
    for folder in folders:
        if folder.is_file() and folder.suffix == ".toml":
            files = [folder]
        elif folder.is_dir():
            files = sorted(folder.glob("*.toml"))
        else:
            raise LoracamError(f"style folder not found: {folder} (give a folder of .toml style presets)")
        here: dict[str, Path] = {}
        for f in files:
            preset = load_style(f)
            if preset.name in here:
                raise LoracamError(f"{here[preset.name]} and {f} both define the style {preset.name!r}; rename one "
                                   "(its name key, or the file when it has none)")
            here[preset.name] = f
            earlier = styles.get(preset.name)
            styles[preset.name] = replace(preset, overrides=earlier.source if earlier else None)
    return dict(sorted(styles.items()))


def get_style(styles: dict[str, StylePreset], name: str) -> StylePreset:
    """The style called ``name``, or an error that lists the styles (and the likely one for a typo)."""
    if name in styles:
        return styles[name]
    raise LoracamError(f"no style called {name!r}{_did_you_mean(name, list(styles))}; the styles are: "
                       f"{', '.join(styles)} (`loracam studio styles` describes them)")


def list_styles(styles: dict[str, StylePreset], base_kind: str | None = None) -> str:
    """What ``loracam studio styles`` prints: per style its name, base, subjects, settings, description, file."""
    if base_kind is not None and base_kind not in BASE_KINDS:
        raise LoracamError(f"unknown base kind {base_kind!r}; use one of: {', '.join(BASE_KINDS)}")
    shown = [p for p in styles.values() if base_kind is None or p.base == base_kind]
    if not shown:
        return f"no styles{f' for {base_kind} bases' if base_kind else ''}"
    lines = []
    for p in shown:
        lines.append(f"{p.name}  [{p.base}: {', '.join(p.subjects)}]  {p.summary()}")
        if p.description.strip():
            lines.append(f"    {p.description.strip().splitlines()[0]}")
        lines.append(f"    from {_origin(p)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# helpers


_HELD_OUT = ("testdress", "myshoes")  # toy concepts a prompt names through {trigger}


def expect_tags() -> dict[str, dict[str, str | None]]:
    """Per [expect] key, each toy-world value and the prompt tag that asks for it (None: no tag, e.g. a
    plain dress). The values are the probe's classes."""
    from loracam.toy import world

    return {
        "framing": {f: f for f in world.FRAMINGS},
        "dress": {c: f"{c} dress" for c in world.DRESS_COLOURS},
        "pattern": {**world.PATTERNS, world.TESTDRESS: world.TESTDRESS},
        "shoes": {**{c: f"{c} shoes" for c in world.SHOE_COLOURS}, world.MYSHOES: world.MYSHOES},
        "hair": {c: f"{c} hair" for c in world.HAIR_COLOURS},
        "hair_style": {s: f"{s} hair" for s in world.HAIR_STYLES},
        "background": {c: f"{c} background" for c in world.BACKGROUNDS},
    }


def _origin(p: StylePreset) -> str:
    if p.source is None:
        return "code"
    shipped = p.source.resolve().parent == SHIPPED_DIR
    where = "shipped" if shipped else str(p.source)
    if p.overrides is not None:
        was = "the shipped one" if p.overrides.resolve().parent == SHIPPED_DIR else str(p.overrides)
        where += f" (overrides {was})"
    return where


def _check_version(version: Any, where: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LoracamError(f"{where}: version must be a whole number such as {STYLE_VERSION} (got {version!r})")
    if version > STYLE_VERSION:
        raise LoracamError(f"{where} is a version {version} style preset, written by a newer loracam; this one "
                           f"reads version {STYLE_VERSION}: upgrade loracam (pip install -U loracam)")


def _check_keys(cls: type, data: dict, where: str, table: str = "") -> None:
    """Unknown keys in ``data`` (and its tables) are errors naming the key, the likely one and the valid ones."""
    if not isinstance(data, dict):
        return  # from_dict reports the wrong type with the key's name
    valid = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_IN_FILES]
    unknown = [k for k in data if k not in valid]
    if unknown:
        named = ", ".join(f"{k!r}{_did_you_mean(k, valid)}" for k in unknown)
        inside = f" in [{table}]" if table else ""
        raise LoracamError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {named}{inside}; "
                           f"valid keys{inside} are: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        sub = _dataclass_in(hints[key])
        if sub is not None:
            _check_keys(sub, value, where, f"{table}.{key}" if table else key)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass in an annotation (``X`` or ``X | None``), else None."""
    for t in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(t):
            return t
    return None


def _did_you_mean(word: str, options: typing.Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _parse_size(size: Any) -> tuple[int, int]:
    """``"512x768"`` or ``[512, 768]`` as (w, h): positive multiples of 8, up to 2048."""
    try:
        if isinstance(size, str):
            w, h = (int(v) for v in size.lower().split("x"))
        elif isinstance(size, (list, tuple)) and not any(isinstance(v, bool) for v in size):
            w, h = (int(v) if float(v) == int(v) else None for v in size)  # type: ignore[misc]
        else:
            raise ValueError
        if w is None or h is None:
            raise ValueError
    except (ValueError, TypeError):
        raise LoracamError(f'size {size!r}: write "WIDTHxHEIGHT" or [WIDTH, HEIGHT], e.g. "512x768"') from None
    if not (0 < w <= 2048 and 0 < h <= 2048) or w % 8 or h % 8:
        raise LoracamError(f"size {w}x{h}: both sides must be multiples of 8 between 8 and 2048 "
                           "(the VAE works in 8-pixel cells), e.g. 512x768")
    return w, h


def _check_weight(what: str, weight: float) -> None:
    if not (math.isfinite(weight) and 0.0 <= weight <= 2.0):
        raise LoracamError(f"{what} must be between 0 and 2 (got {weight:g})")


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _is_path(text: str) -> bool:
    """A file reference rather than a name: it has a file suffix loracam reads, or a folder in it."""
    return Path(text).suffix.lower() in _PATH_SUFFIXES or "/" in text or "\\" in text


def _resolve(text: str, folder: Path, what: str) -> str:
    """A path in a style file, relative to that file's folder; it must exist."""
    path = Path(text).expanduser()
    path = path if path.is_absolute() else folder / path
    if not path.exists():
        raise LoracamError(f"{what} {text!r} not found (a path in a style file is relative to the file): {path}")
    return str(path)


def _with_paths(preset: StylePreset, folder: Path) -> StylePreset:
    """The preset with its file references made absolute against ``folder`` and checked to exist."""
    changes: dict[str, Any] = {}
    if preset.lora is not None and _is_path(preset.lora.name):
        changes["lora"] = replace(preset.lora, name=_resolve(preset.lora.name, folder, "[lora] name"))
    if preset.upscale is not None and _is_path(preset.upscale.model):
        changes["upscale"] = replace(preset.upscale, model=_resolve(preset.upscale.model, folder, "[upscale] model"))
    c = preset.control
    if c is not None and c.pose and _is_path(c.pose):
        changes["control"] = replace(c, pose=_resolve(c.pose, folder, "[control] pose"))
    elif c is not None and c.spec:
        kind, source, *rest = c.spec.split(":")
        if source and _is_path(source):
            spec = ":".join([kind, _resolve(source, folder, "[control] spec's source"), *rest])
            changes["control"] = replace(c, spec=spec)
    return replace(preset, **changes) if changes else preset
