"""ControlNet guidance inside loracam's sampling loop: residuals for the U-Net's skip connections.

Per U-Net call and unit: skip the unit outside its guidance window (sd-webui-controlnet's rule: off when
the step's fraction i/N is below start or above end); run the ControlNet on the rows it steers; scale its
outputs by the unit's weight (per sample, so a grid over weights still renders in one batch) and, for the
two non-balanced control modes, by A1111's soft weights 0.825^(K-1-k) for output k of K (the middle
block's 1.0); "ControlNet is more important" steers the conditional rows only (diffusers' guess mode).
Several units add up. Rows of the unconditional half under that mode get no residual at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from loracam.control.union import TYPES, type_index
from loracam.errors import LoracamError

SOFT_BASE = 0.825  # A1111's soft-injection base (10^(-1/12) = 0.8254 is diffusers' guess-mode step)
COND_ONLY = "ControlNet is more important"


def soft_scales(n: int, mode: str) -> list[float]:
    """The factor on each of a ControlNet's ``n`` outputs (the middle block's last) for a control mode."""
    if mode == "Balanced":
        return [1.0] * n
    return [SOFT_BASE ** (n - 1 - k) for k in range(n)]


def active(unit, frac: float) -> bool:
    """Whether a unit steers the step at fraction ``frac`` (= i/N) of the pass."""
    return unit.start <= frac <= unit.end


def map_tensor(image: np.ndarray, device, dtype) -> torch.Tensor:
    """[1, 3, H, W] in 0..1, the input ControlNets are trained on (not -1..1)."""
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(device, dtype)


@dataclass
class Steer:
    """One unit ready for a pass: its net, its map as a tensor and its weight per sample."""

    unit: object
    net: torch.nn.Module
    cond: torch.Tensor  # [1, 3, H, W], or one map per sample [samples, 3, H, W]
    weights: torch.Tensor  # [samples]
    union: int | None = None  # a union ControlNet's control type index (loracam.control.union)

    def run(self, x: torch.Tensor, t, ctx: torch.Tensor, cond: torch.Tensor, extra: dict):
        """(down, mid) residuals of the net at unit strength on rows ``x``."""
        if self.union is None:
            return self.net(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, conditioning_scale=1.0,
                            return_dict=False, **extra)
        # diffusers' union pipeline: a one-hot type per row and the type's index; one map, so no inner scaling
        kinds = torch.zeros(x.shape[0], self.net.config.num_control_type, device=x.device, dtype=x.dtype)
        kinds[:, self.union] = 1
        return self.net(x, t, encoder_hidden_states=ctx, controlnet_cond=[cond], control_type=kinds,
                        control_type_idx=[self.union], conditioning_scale=[1.0], return_dict=False, **extra)


class Guidance:
    """The residuals of every unit for one sampling pass."""

    def __init__(self, steers: Sequence[Steer]):
        self.steers = list(steers)

    def residuals(self, x: torch.Tensor, t, ctx: torch.Tensor, samples: torch.Tensor, uncond: torch.Tensor,
                  frac: float, added: dict | None = None):
        """(down residuals, mid residual) for U-Net rows ``x`` [rows, 4, h, w] or (None, None).

        ``samples`` [rows] is each row's sample, ``uncond`` [rows] bool marks the unconditional rows; ``added`` is
        the rows' SDXL conditioning (pooled text, size ids), which an SDXL ControlNet takes as its U-Net does."""
        down_sum = mid_sum = None
        for s in self.steers:
            if not active(s.unit, frac):
                continue
            rows = torch.arange(x.shape[0], device=x.device)
            if s.unit.mode == COND_ONLY:
                rows = rows[~uncond]
            if len(rows) == 0:
                continue
            w = s.weights.to(x.device)[samples[rows]]
            if not bool((w != 0).any()):
                continue
            cond = s.cond.expand(len(rows), -1, -1, -1) if s.cond.shape[0] == 1 else s.cond[samples[rows]]
            extra = {"added_cond_kwargs": {k: v[rows] for k, v in added.items()}} if added is not None else {}
            down, mid = s.run(x[rows], t, ctx[rows], cond, extra)
            scales = soft_scales(len(down) + 1, s.unit.mode)
            if down_sum is None:
                down_sum = [torch.zeros((x.shape[0],) + tuple(d.shape[1:]), device=x.device, dtype=d.dtype) for d in down]
                mid_sum = torch.zeros((x.shape[0],) + tuple(mid.shape[1:]), device=x.device, dtype=mid.dtype)
            ww = w.to(mid.dtype).view(-1, 1, 1, 1)
            for k, d in enumerate(down):
                down_sum[k][rows] += d * (ww * scales[k])
            mid_sum[rows] += mid * (ww * scales[-1])
        return down_sum, mid_sum


class Control:
    """The ControlNet units of one render: their nets (loaded once) and their maps at each pass's size."""

    def __init__(self, units, library, model):
        from loracam.control.preprocess import PREPROCESSORS, check_source

        for u in units:
            check_source(u)
        self.units = tuple(units)
        self.model = model
        self.files = [library.find(u, PREPROCESSORS[u.kind].keyword, model.name) for u in self.units]
        self.nets = [library.load(f, model.device, model.dtype, model.unet.config) for f in self.files]
        for f, net in zip(self.files, self.nets):
            _check_factor(net, model.vae_scale_factor, f.name)
        self.union = [type_index(u, net.config.num_control_type, f.name) if _is_union(net) else None
                      for u, f, net in zip(self.units, self.files, self.nets)]
        self._maps: dict = {}  # (size, id of the own image) -> (that image, its maps): the entry keeps the id valid
        self._latest: dict = {}  # size -> the maps last made at it (what the infotext describes)
        self._made: dict = {}  # unit index -> its source preprocessed (photo poses, edges): size-independent
        self.notes: list[str] = []

    def needs_own_image(self) -> bool:
        return any(not u.source for u in self.units)

    def maps(self, size: tuple[int, int], own: Image.Image | None = None) -> list:
        """Each unit's ControlMap at ``size``; made once per size and own image."""
        key = (tuple(size), id(own) if own is not None and self.needs_own_image() else None)
        if key not in self._maps:
            # None: a unit that steers by the pass's own image, where the pass has none (a hires first pass)
            made = [self._map(i, size, own) if u.source or own is not None else None for i, u in enumerate(self.units)]
            for m in made:
                self.notes += [n for n in (m.notes if m else ()) if n not in self.notes]
            self._maps[key] = (own, made)
        self._latest[tuple(size)] = self._maps[key][1]
        return self._maps[key][1]

    def _map(self, i: int, size: tuple[int, int], own):
        """Unit i's map at ``size``; a unit with its own source is preprocessed once, whatever the sizes."""
        from loracam.control.preprocess import fitted, preprocessed

        u = self.units[i]
        if not u.source:
            return fitted(u, preprocessed(u, own), size)
        if i not in self._made:
            self._made[i] = preprocessed(u)
        return fitted(u, self._made[i], size)

    def guidance(self, size: tuple[int, int], samples, own=None, skip_own: bool = False) -> Guidance:
        """The pass's guidance at ``size``. ``own`` is the pass's own image (img2img's), or one per sample (the
        enlarged first passes of hires fix); ``skip_own`` leaves out the units that would steer by it (a hires
        first pass has none yet: its tile unit steers the second pass)."""
        from loracam.control.preprocess import no_source

        owns = own if isinstance(own, list) else [own]
        keep = [i for i, u in enumerate(self.units) if u.source or not skip_own]
        per = [self.maps(size, o) for o in owns]  # made (and cached) even when no unit is kept: the infotext reads them
        steers = []
        for i in keep:
            u, net = self.units[i], self.nets[i]
            if per[0][i] is None:
                raise no_source(u)
            ims = [p[i].image for p in per] if len(per) > 1 and not u.source else [per[0][i].image]
            cond = torch.cat([map_tensor(im, self.model.device, self.model.dtype) for im in ims])
            w = torch.tensor([s.control_weights[i] if s.control_weights else u.weight for s in samples],
                             dtype=torch.float32)
            steers.append(Steer(u, net, cond, w, self.union[i]))
        return Guidance(steers)

    def infotext(self, sample, size: tuple[int, int]) -> dict:
        """sd-webui-controlnet's ``ControlNet N`` keys for one sample."""
        from loracam.control.preprocess import PREPROCESSORS
        from loracam.control.units import infotext_value

        out = {}
        for i, (u, f, m) in enumerate(zip(self.units, self.files, self._latest[tuple(size)])):
            weighted = u.with_weight(sample.control_weights[i]) if sample.control_weights else u
            module, res, thresholds = (m.module, m.res, m.thresholds) if m else (PREPROCESSORS[u.kind].module, -1, (-1, -1))
            union = TYPES[self.union[i]] if self.union[i] is not None else ""
            out[f"ControlNet {i}"] = infotext_value(weighted, module, f.label, res, thresholds, union)
        return out


def _is_union(net) -> bool:
    return "num_control_type" in net.config


def _check_factor(net, factor: int, name: str) -> None:
    """The hint encoder must shrink the map to the latents' size: 2 ** (its stages - 1) == the VAE's factor."""
    stages = len(net.config.conditioning_embedding_out_channels)
    if 2 ** (stages - 1) != factor:
        raise LoracamError(f"{name} shrinks its control map {2 ** (stages - 1)}x, this base's VAE {factor}x: "
                           "use a ControlNet made for this base")
