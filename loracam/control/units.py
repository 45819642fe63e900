"""A ControlNet unit as the user gives it, and as sd-webui-controlnet writes it into an image's infotext.

``--controlnet TYPE:SOURCE[:WEIGHT[:START:END]][:key=value ...]``, e.g. ``openpose:me.jpg``,
``openpose:standing:0.8``, ``canny:photo.png:1:0:0.6:low=50:high=150``, ``tile::0.6`` (the image itself),
``image:map.png:1:model=control_v11p_sd15_openpose``. Keys: model, resize, res, low, high, mode, union (a union
ControlNet's control type, loracam.control.union).

Infotext (one key per enabled unit, N from 0; A1111 JSON-quotes the value):
``ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Resize Mode: Crop and Resize,
Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False,
Control Mode: Balanced"``. Readers split on "," then ": ".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from loracam.control.resize import DEFAULT_RESIZE, check_mode
from loracam.errors import LoracamError

CONTROLNET_HELP = ("A ControlNet, repeatable: TYPE:SOURCE[:WEIGHT[:START:END]] with TYPE openpose (a photo, a pose "
                   "JSON or a template: loracam pose --list), canny, tile (tile:: is the image itself) or image "
                   "(a ready map); keys model=, resize=, res=, low=, high=, mode=, union= (a union model's type) may follow.")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
# the spec's key=value fields: the unit's field each sets, and how its text is read
_SPEC_KEYS = {"model": ("model", str), "resize": ("resize", str), "res": ("processor_res", int),
              "low": ("threshold_a", float), "high": ("threshold_b", float), "mode": ("mode", str),
              "union": ("union", str)}


def check_control_mode(mode: str) -> str:
    for m in CONTROL_MODES:
        if m.lower() == mode.strip().lower():
            return m
    raise LoracamError(f"unknown control mode {mode!r}; use one of: {', '.join(repr(m) for m in CONTROL_MODES)}")


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet: what steers (kind + source), how strongly, when, and with which model."""

    kind: str  # a name of loracam.control.preprocess.PREPROCESSORS: openpose, canny, tile, image
    source: str = ""  # photo, pose JSON, template name or image; "": the pass's own image (tile, detail)
    weight: float = 1.0
    start: float = 0.0  # guidance window, fractions of the sampling steps
    end: float = 1.0
    model: str = ""  # "": found by kind in the ControlNet folders; else a name, file stem, hash or path
    resize: str = DEFAULT_RESIZE
    processor_res: int = -1  # -1: the preprocessor's default (512)
    threshold_a: float = -1  # canny's low threshold (-1: 100)
    threshold_b: float = -1  # canny's high threshold (-1: 200)
    mode: str = "Balanced"
    premade: bool = False  # the source is the finished map (gen --from): no preprocessing, same module name
    union: str = ""  # a union ControlNet's control type (sd-webui-controlnet's name); "": from the kind

    def __post_init__(self):
        from loracam.control.preprocess import check_kind
        from loracam.control.union import check_type

        object.__setattr__(self, "kind", check_kind(self.kind))
        object.__setattr__(self, "union", check_type(self.union))
        object.__setattr__(self, "resize", check_mode(self.resize))
        object.__setattr__(self, "mode", check_control_mode(self.mode))
        if not math.isfinite(self.weight) or self.weight < 0:
            raise LoracamError(f"a ControlNet weight is 0 or more (got {self.weight})")
        if not 0.0 <= self.start < self.end <= 1.0:
            raise LoracamError(f"ControlNet guidance start/end need 0 <= start < end <= 1 (got {self.start}, {self.end})")

    @classmethod
    def parse(cls, spec: str, **defaults) -> "ControlUnit":
        """``TYPE:SOURCE[:WEIGHT[:START:END]][:key=value ...]`` as ``--controlnet`` takes it."""
        fields = spec.split(":")
        if len(fields) < 2:
            raise LoracamError(f"--controlnet {spec!r}: write TYPE:SOURCE[:WEIGHT[:START:END]], e.g. "
                               "openpose:photo.jpg or canny:photo.png:0.8 (tile:: uses the image itself)")
        kind, source, rest = fields[0], fields[1], fields[2:]
        named = {}
        numbers = []
        try:
            for f in rest:
                if "=" in f:
                    key, _, value = f.partition("=")
                    if key.strip() not in _SPEC_KEYS:
                        raise LoracamError(f"--controlnet {spec!r}: unknown key {key!r}; known: "
                                           f"{', '.join(_SPEC_KEYS)}")
                    field_name, read = _SPEC_KEYS[key.strip()]
                    named[field_name] = read(value.strip())
                elif f.strip():
                    numbers.append(float(f))
        except ValueError as exc:
            raise LoracamError(f"--controlnet {spec!r}: {exc}") from None
        if len(numbers) not in (0, 1, 3):
            raise LoracamError(f"--controlnet {spec!r}: after the source give WEIGHT, or WEIGHT:START:END")
        args = {**defaults, **named}
        if numbers:
            args["weight"] = numbers[0]
        if len(numbers) == 3:
            args["start"], args["end"] = numbers[1], numbers[2]
        return cls(kind=kind, source=source, **args)

    def with_weight(self, weight: float) -> "ControlUnit":
        return replace(self, weight=weight)


# ---------------------------------------------------------------------------------------------
# infotext


def from_flags(specs, control_mode: str | None = None, resize: str | None = None) -> tuple[ControlUnit, ...]:
    """``--controlnet`` values as units; ``--control-mode`` and ``--resize-mode`` apply to every unit that
    does not set its own (mode=..., resize=...)."""
    defaults = {}
    if control_mode:
        defaults["mode"] = control_mode
    if resize:
        defaults["resize"] = resize
    return tuple(ControlUnit.parse(s, **defaults) for s in specs or ())


def _num(v: float) -> str:
    return f"{v:g}"


def infotext_value(unit: ControlUnit, module: str, model_label: str, res: int, thresholds: tuple,
                   union: str = "") -> str:
    """sd-webui-controlnet's value for one unit (the caller quotes it as A1111 does); ``union``: the control type a
    union model ran with."""
    fields = {
        "Module": module, "Model": model_label, "Weight": _num(unit.weight), "Resize Mode": unit.resize,
        "Processor Res": res, "Threshold A": _num(thresholds[0]), "Threshold B": _num(thresholds[1]),
        "Guidance Start": _num(unit.start), "Guidance End": _num(unit.end), "Pixel Perfect": False,
        "Control Mode": unit.mode,
    }
    if union:
        fields["Union Control Type"] = union
    return ", ".join(f"{k}: {v}" for k, v in fields.items())


def parse_infotext_value(value: str) -> dict[str, object]:
    """A unit's fields as the extension reads them: split on "," then ": "; True/False, int, float, else text."""
    out: dict[str, object] = {}
    for item in value.split(","):
        key, sep, raw = item.strip().partition(": ")
        if not sep:
            continue
        raw = raw.strip()
        if raw in ("True", "False"):
            out[key] = raw == "True"
            continue
        for conv in (int, float):
            try:
                out[key] = conv(raw)
                break
            except ValueError:
                pass
        else:
            out[key] = raw
    return out


def units_from_infotext(params: dict[str, str]) -> list[tuple[int, dict]]:
    """(N, fields) of every ``ControlNet N`` key, in N order."""
    found = []
    for key, value in params.items():
        if key.startswith("ControlNet ") and key[len("ControlNet "):].isdigit():
            found.append((int(key[len("ControlNet "):]), parse_infotext_value(value)))
    return sorted(found)
