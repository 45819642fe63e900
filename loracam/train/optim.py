"""Optimizers and learning-rate schedules by name (tables, not if-chains)."""

from __future__ import annotations

from typing import Callable

import torch

from loracam.errors import LoracamError


def _adamw(groups, weight_decay: float):
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def _adamw8bit(groups, weight_decay: float):
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise LoracamError("AdamW8bit needs bitsandbytes (pip install bitsandbytes; CUDA only)") from None
    return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)


def _prodigy(groups, weight_decay: float):
    try:
        from prodigyopt import Prodigy
    except ImportError:
        raise LoracamError("Prodigy needs prodigyopt (pip install prodigyopt); use --lr 1 with it") from None
    return Prodigy(groups, weight_decay=weight_decay)


def _adafactor(groups, weight_decay: float):
    """transformers' Adafactor at the given rates, as sd-scripts' SDXL docs run it (scale_parameter, relative_step
    and warmup_init off): factored second moments, about half AdamW's optimizer memory."""
    from transformers.optimization import Adafactor

    return Adafactor(groups, scale_parameter=False, relative_step=False, warmup_init=False,
                     weight_decay=weight_decay)


def _sgd(groups, weight_decay: float):
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable] = {"AdamW": _adamw, "AdamW8bit": _adamw8bit, "Adafactor": _adafactor,
                                   "Prodigy": _prodigy, "SGD": _sgd}
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial")


def make_optimizer(name: str, groups: list[dict], weight_decay: float):
    key = {k.lower(): k for k in OPTIMIZERS}.get(name.lower())
    if key is None:
        raise LoracamError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key](groups, weight_decay)


def make_scheduler(name: str, optimizer, warmup_steps: int, total_steps: int):
    """diffusers' schedules (the ones kohya offers), stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    if name not in SCHEDULERS:
        raise LoracamError(f"unknown learning-rate schedule {name!r}; use one of {', '.join(SCHEDULERS)}")
    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def check_names(optimizer: str, scheduler: str) -> None:
    """Fail before any model loads."""
    if optimizer.lower() not in {k.lower() for k in OPTIMIZERS}:
        raise LoracamError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if scheduler not in SCHEDULERS:
        raise LoracamError(f"unknown learning-rate schedule {scheduler!r}; use one of {', '.join(SCHEDULERS)}")
