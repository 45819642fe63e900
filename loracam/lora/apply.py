"""Apply several LoRAs to a shared base model, temporarily, in two ways:

- ``fused``: merge W + sum_i m_i x scale_i x up_i @ down_i into new weight Parameters for the duration of a
  with-block (as A1111 does; fastest when every sample uses the same multipliers);
- ``per_sample``: forward hooks that add each LoRA's output with a multiplier per batch row, so one batch
  can hold samples at different LoRA weights (an X/Y/Z grid's cells, CFG's uncond/cond rows).

The base model is shared by every job and is never changed: on exit the original Parameter objects are
put back (fused) or the hooks removed (per_sample), also when the block raises.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from loracam.errors import LoracamError
from loracam.lora.formats import LoraFile, LoraModule, dora_on_output
from loracam.lora.naming import model_modules
from loracam.models.families import FAMILIES, article, short_name

COMPONENTS = ("te", "unet")
SHOWN = 5  # how many offending keys an error message lists


@dataclass
class _Patch:
    """One base layer and the LoRA modules that patch it: plain ones concatenated along the rank axis, DoRA ones
    (whose change is not a low-rank product) kept apart."""

    name: str
    component: str
    module: nn.Module
    loras: list[tuple[int, LoraModule]]  # (index of the LoRA in the stack, its module fitted to the layer)
    doras: list[tuple[int, LoraModule]] = field(default_factory=list)  # the same, for DoRA modules
    col_lora: torch.Tensor | None = None  # [D] which LoRA each rank column belongs to
    col_scale: torch.Tensor | None = None  # [D] that LoRA's alpha/dim
    signature: tuple = ()  # what the per-row factor depends on: layers that share it share the factor
    _cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = self.module.weight  # DoRA's norms are of the base layer's own weight, whatever is fused later

    def add(self, index: int, m: LoraModule) -> None:
        (self.doras if m.magnitude is not None else self.loras).append((index, m))

    def finish(self) -> None:
        """Lay out the rank columns, once every LoRA of the stack has been added."""
        dims = [torch.full((m.dim,), i, dtype=torch.long) for i, m in self.loras]
        scales = [torch.full((m.dim,), m.scale, dtype=torch.float32) for _, m in self.loras]
        self.col_lora = torch.cat(dims) if dims else torch.zeros(0, dtype=torch.long)
        self.col_scale = torch.cat(scales) if scales else torch.zeros(0)
        self.signature = (self.component, tuple((i, m.dim, m.scale) for i, m in self.loras))

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv2d)

    def tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """down [D, in(, kh, kw)] and up [out, D(, 1, 1)] of all LoRAs on this layer, cached per device/dtype."""
        key = (device, dtype)
        if key not in self._cache:
            with _normal_tensors():
                down = torch.cat([m.down for _, m in self.loras], dim=0)
                up = torch.cat([m.up for _, m in self.loras], dim=1)
                self._cache[key] = (down.to(device, dtype), up.to(device, dtype))
        return self._cache[key]

    def dora_gains(self, device: torch.device, dtype: torch.dtype) -> list[tuple]:
        """(LoRA index, module, gain, per output?, down, up) for each DoRA module: W_dora = (W + delta) x gain, the
        gain magnitude / ||W + delta|| per output row or input column ([out] or [in]); with the module's down and up,
        all on ``device`` in ``dtype`` and cached, so a forward converts nothing."""
        key = ("dora", device, dtype)
        if key not in self._cache:
            with _normal_tensors():
                out = []
                for i, m in self.doras:
                    gain, on_out = m.dora_gain(self.base)
                    out.append((i, m, gain.to(device, dtype), on_out, m.down.to(device, dtype), m.up.to(device, dtype)))
                self._cache[key] = out
        return self._cache[key]


def _normal_tensors():
    """Cached tensors are made outside inference mode, so a later autograd-tracked forward can use them."""
    return torch.inference_mode(False)


class LoraStack:
    """Several LoRAs matched to a base model's layers once, ready to apply fused or per sample."""

    @classmethod
    def for_model(cls, model, loras: Sequence[LoraFile]) -> "LoraStack":
        """A stack on a BaseModel's U-Net and every text encoder it has."""
        return cls(model.unet, model.text_encoder, loras, base_family=model.family,
                   text_encoder_2=model.text_encoder_2)

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None, loras: Sequence[LoraFile],
                 base_family: str = "sd1", text_encoder_2: nn.Module | None = None):
        self.loras = list(loras)
        self.base_family = base_family
        targets = model_modules(unet, text_encoder, text_encoder_2)
        patches: dict[str, _Patch] = {}
        for index, lora in enumerate(self.loras):
            for name, module, fitted in _match(lora, targets, base_family):
                component = targets[name][0]
                patches.setdefault(name, _Patch(name, component, module, []))
                patches[name].add(index, fitted)
        for p in patches.values():
            p.finish()
        self._patches = list(patches.values())
        self._active = False

    def __len__(self) -> int:
        return len(self.loras)

    @property
    def patched_layers(self) -> int:
        """How many base layers at least one LoRA patches."""
        return len(self._patches)

    # -----------------------------------------------------------------------------------------
    # fused

    @contextmanager
    def fused(self, te: Sequence[float], unet: Sequence[float]) -> Iterator[None]:
        """Merge every LoRA into new weight Parameters (te[i]/unet[i]: LoRA i's multipliers); restore on exit."""
        mults = {"te": self._check_mults(te, "te"), "unet": self._check_mults(unet, "unet")}
        saved: list[tuple[nn.Module, nn.Parameter]] = []
        with self._exclusive():
            try:
                for p in self._patches:
                    factor = torch.tensor(mults[p.component])[p.col_lora] * p.col_scale  # [D]
                    dora = [(mults[p.component][i], m) for i, m in p.doras]
                    if not bool(factor.any()) and not any(mult for mult, _ in dora):
                        continue  # every multiplier is 0 here: the base layer stays as it is
                    original = p.module.weight
                    merged = _merged_weight(p, original, factor, dora)
                    saved.append((p.module, original))
                    p.module.weight = nn.Parameter(merged, requires_grad=original.requires_grad)
                yield
            finally:
                for module, original in reversed(saved):
                    module.weight = original

    def _check_mults(self, mults: Sequence[float], component: str) -> list[float]:
        values = [float(m) for m in mults]
        if len(values) != len(self.loras):
            raise ValueError(f"{component} multipliers: got {len(values)} for a stack of {len(self.loras)} LoRAs")
        return values

    # -----------------------------------------------------------------------------------------
    # per sample

    @contextmanager
    def per_sample(self) -> Iterator["RowMultipliers"]:
        """Hook every patched layer to add LoRA outputs with per-row multipliers set through the yielded object."""
        ctl = RowMultipliers(len(self.loras))
        handles = []
        with self._exclusive():
            try:
                for p in self._patches:
                    handles.append(p.module.register_forward_hook(_row_hook(p, ctl), with_kwargs=True))
                yield ctl
            finally:
                for h in handles:
                    h.remove()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        # Applying the same stack twice at once would add every LoRA twice.
        if self._active:
            raise RuntimeError("this LoraStack is already applied; leave its fused()/per_sample() block first")
        self._active = True
        try:
            yield
        finally:
            self._active = False


class RowMultipliers:
    """The controller ``per_sample`` yields: which multiplier each LoRA gets on each batch row."""

    def __init__(self, n_loras: int):
        self.n_loras = n_loras
        self._rows: dict[str, torch.Tensor] = {}
        self._factors: dict[tuple, torch.Tensor] = {}

    def set_rows(self, component: str, mults: torch.Tensor) -> None:
        """Multipliers [R, L] for the next forward calls of "te" or "unet": row r gives LoRA i mults[r, i]."""
        if component not in COMPONENTS:
            raise ValueError(f"component must be 'te' or 'unet', not {component!r}")
        with _normal_tensors():
            mults = torch.as_tensor(mults).detach().to("cpu", torch.float32).clone()
        if mults.ndim != 2 or mults.shape[1] != self.n_loras:
            raise ValueError(
                f"{component} multipliers must have shape [rows, {self.n_loras}], not {tuple(mults.shape)}"
            )
        self._rows[component] = mults
        self._factors = {k: v for k, v in self._factors.items() if k[0][0] != component}

    def rows(self, component: str) -> torch.Tensor:
        """[R, L]: the multipliers set for ``component``."""
        rows = self._rows.get(component)
        if rows is None:
            raise RuntimeError(f"per_sample: call set_rows({component!r}, mults) before running the model")
        return rows

    def factor(self, patch: _Patch, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[R, D]: each row's multiplier x scale for each rank column of ``patch``, cached until set_rows."""
        key = (patch.signature, device, dtype)
        cached = self._factors.get(key)
        if cached is None:
            rows = self.rows(patch.component)
            with _normal_tensors():
                cached = (rows[:, patch.col_lora] * patch.col_scale).to(device, dtype)
            self._factors[key] = cached
        return cached


def _row_hook(p: _Patch, ctl: RowMultipliers):
    """A forward hook adding sum_i mults[row, i] x scale_i x up_i(down_i(x)) to the layer's output, and each DoRA
    module's mults[row, j] x (W_dora_j - W) x."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]
        rows = ctl.rows(p.component)
        if x.shape[0] != rows.shape[0]:
            raise ValueError(
                f"per_sample: {p.component} got a batch of {x.shape[0]} rows at {p.name}, but set_rows gave "
                f"{rows.shape[0]}; set one multiplier row per batch row (CFG doubles the U-Net batch)"
            )
        extra = _dora_rows(p, module, x, out, rows) if p.doras else None
        if p.loras:
            out = out + _lora_rows(p, module, x, ctl.factor(p, x.device, x.dtype))
        return out if extra is None else out + extra

    return hook


def _lora_rows(p: _Patch, module: nn.Module, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """sum_i f[row, column] x up(down(x)) over the plain LoRAs' rank columns."""
    down, up = p.tensors(x.device, x.dtype)
    if p.is_conv:
        h = F.conv2d(x, down, None, module.stride, module.padding, module.dilation)  # [R, D, H', W']
        return F.conv2d(h * f[:, :, None, None], up)
    h = F.linear(x, down)  # [R, ..., D]
    f = f.view(f.shape[0], *([1] * (h.ndim - 2)), f.shape[1])
    return F.linear(h * f, up)


def _dora_rows(p: _Patch, module: nn.Module, x: torch.Tensor, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """sum_j rows[r, j] x (W_dora_j - W) x without forming W_dora (no full-size weight per DoRA is kept):
    W_dora = (W + d) x g, so per output row (W_dora - W) x = (g - 1) (W x) + g (d x), and per input column
    (W_dora - W) x = W ((g - 1) x) + d (g x), the one extra base-layer product of the input-axis kind."""
    conv = p.is_conv
    channel = 1 if conv else -1  # where a layer's in/out channels sit in x and in its output

    def along(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = [1] * like.ndim
        shape[channel] = -1
        return v.view(shape)

    def low_rank(m: LoraModule, down: torch.Tensor, up: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if conv:
            return F.conv2d(F.conv2d(h, down, None, module.stride, module.padding, module.dilation), up) * m.scale
        return F.linear(F.linear(h, down), up) * m.scale

    def base(h: torch.Tensor) -> torch.Tensor:
        w = p.base.to(h.dtype)
        if conv:
            return F.conv2d(h, w, None, module.stride, module.padding, module.dilation, module.groups)
        return F.linear(h, w)

    plain = out if module.bias is None else out - along(module.bias.to(out.dtype), out)  # W x
    total = torch.zeros_like(out)
    for i, m, gain, on_out, down, up in p.dora_gains(x.device, x.dtype):
        if on_out:
            change = along(gain - 1, out) * plain + along(gain, out) * low_rank(m, down, up, x)
        else:
            change = base(x * along(gain - 1, x)) + low_rank(m, down, up, x * along(gain, x))
        total = total + rows[:, i].to(out.device, out.dtype).view(-1, *[1] * (out.ndim - 1)) * change
    return total


def _merged_weight(p: _Patch, weight: torch.Tensor, factor: torch.Tensor,
                   dora: list[tuple[float, LoraModule]] = ()) -> torch.Tensor:
    """W + sum of the LoRAs' deltas (plain, and mult x (W_dora - W) for DoRA modules, each against the base
    weight, so the order of the stack does not matter), computed in fp32 and cast back to the weight's dtype."""
    total = weight.detach().float()
    if p.loras:
        down, up = p.tensors(weight.device, torch.float32)
        delta = (up.flatten(1) * factor.to(weight.device)) @ down.flatten(1)  # [out, in*kh*kw]
        total = total + delta.reshape(weight.shape)
    for mult, m in dora:
        if mult:
            total = total + mult * m.dora_delta(p.base.to(weight.device)).reshape(weight.shape)
    return total.to(weight.dtype)


# ---------------------------------------------------------------------------------------------
# matching a LoRA's modules to the base's layers


def _match(lora: LoraFile, targets: dict[str, tuple[str, nn.Module]],
           base_family: str) -> list[tuple[str, nn.Module, LoraModule]]:
    """(kohya name, base layer, LoRA module fitted to it) for every module, or a LoracamError that says why not."""
    _check_family(lora, base_family)
    missing = [name for name in lora.modules if name not in targets]
    if missing:
        raise LoracamError(
            f"{lora.path.name}: {len(missing)} of its {len(lora.modules)} modules match no layer of the base "
            f"model: {_listing(missing)}. It was made for another model architecture, or uses names loracam "
            "does not know"
        )
    matched, misfits = [], []
    for name, m in lora.modules.items():
        module = targets[name][1]
        fitted = _fit(m, module)
        if fitted is None:
            misfits.append(f"{name} (LoRA {_io(m)}, layer {_layer_io(module)})")
        else:
            matched.append((name, module, fitted))
    if misfits:
        raise LoracamError(
            f"{lora.path.name} does not fit the base model's layer shapes: {_listing(misfits)}. It was trained "
            f"for another base ({_family_text(lora.family)}); use it with that base"
        )
    return matched


def _check_family(lora: LoraFile, base_family: str) -> None:
    if lora.family in ("unknown", base_family):
        return
    raise LoracamError(
        f"{lora.path.name} is {article(lora.family)} {short_name(lora.family)} LoRA; the base model is "
        f"{short_name(base_family)}. Use a LoRA made for this base, or switch the base"
    )


def _fit(m: LoraModule, module: nn.Module) -> LoraModule | None:
    """``m`` shaped for the layer (a 1x1 conv takes [dim, in] LoRAs and vice versa); None if it cannot fit."""
    w = module.weight.shape
    down, up = m.down, m.up
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            return None
        if down.ndim == 2 and tuple(w[2:]) == (1, 1):
            down, up = down[:, :, None, None], up[:, :, None, None]
        elif down.ndim == 2 and down.shape[1] == w[1:].numel():  # a LoHa conv: [D, in x kh x kw], flattened
            down, up = down.reshape(down.shape[0], *w[1:]), up[:, :, None, None]
        if down.ndim != 4 or tuple(down.shape[1:]) != tuple(w[1:]) or up.shape[0] != w[0]:
            return None
    else:
        if down.ndim == 4 and tuple(down.shape[2:]) == (1, 1):
            down, up = down.flatten(1), up.flatten(1)
        if down.ndim != 2 or down.shape[1] != w[1] or up.shape[0] != w[0]:
            return None
    if m.magnitude is not None and m.magnitude.numel() != w[0 if dora_on_output(m.magnitude, w) else 1]:
        return None
    return replace(m, down=down, up=up) if (down is not m.down or up is not m.up) else m


def _io(m: LoraModule) -> str:
    kernel = "x".join(map(str, m.down.shape[2:]))
    return f"{m.down.shape[1]}->{m.up.shape[0]}" + (f" {kernel}" if kernel else "")


def _layer_io(module: nn.Module) -> str:
    w = module.weight.shape
    kernel = "x".join(map(str, w[2:]))
    return f"{w[1]}->{w[0]}" + (f" {kernel}" if kernel else "")


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _family_text(family: str) -> str:
    return short_name(family) if family in FAMILIES else "a model of another size"
