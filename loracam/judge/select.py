"""Picking checkpoints: rank a training run's checkpoints by a score, pick one or several, average them.

EasyPhoto scores every checkpoint by the identity of faces it produces and averages the best ones into the
final LoRA. ``average_loras`` does that averaging exactly (see its docstring); ``pick`` chooses which.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loracam.errors import LoracamError

if TYPE_CHECKING:
    from loracam.lora.formats import LoraFile, LoraModule


@dataclass(frozen=True)
class CheckpointScore:
    """One checkpoint of a training run and its score (higher is better; nan = no signal)."""

    step: int
    path: Path
    score: float


# -- ranking and picking -------------------------------------------------------------------------------


def rank(scores: Sequence[CheckpointScore]) -> list[CheckpointScore]:
    """Best first; checkpoints without a score (nan) last; on equal scores the later (more trained) step first."""
    return sorted(scores, key=lambda c: (math.isnan(c.score), -c.score if not math.isnan(c.score) else 0.0, -c.step))


def _best(scores: Sequence[CheckpointScore], k: int) -> list[CheckpointScore]:
    return rank(scores)[:1]


def _top_k(scores: Sequence[CheckpointScore], k: int) -> list[CheckpointScore]:
    # Only checkpoints with a score: averaging in one that was never judged would be a blind pick.
    return [c for c in rank(scores) if not math.isnan(c.score)][:k]


def _last(scores: Sequence[CheckpointScore], k: int) -> list[CheckpointScore]:
    return [max(scores, key=lambda c: c.step)]


MODES: dict[str, Callable[[Sequence[CheckpointScore], int], list[CheckpointScore]]] = {
    "best": _best,
    "average-top-k": _top_k,
    "last": _last,
}


def pick(scores: Sequence[CheckpointScore], mode: str = "best", k: int = 3) -> list[CheckpointScore]:
    """The checkpoints ``mode`` chooses (best | average-top-k | last); with no score at all, the last one.

    "best" and "average-top-k" fall back to the last checkpoint when no checkpoint has a score (every
    sample lacked a face, say): the most trained one is the sensible default. ``explain`` says when.
    """
    _check(scores, mode, k)
    if mode != "last" and _no_signal(scores):
        return _last(scores, k)
    return MODES[mode](scores, k)


def explain(scores: Sequence[CheckpointScore], mode: str = "best", k: int = 3) -> str:
    """One sentence saying what ``pick`` chose with these arguments, and why (fallbacks included)."""
    chosen = pick(scores, mode, k)
    steps = ", ".join(str(c.step) for c in chosen)
    if mode != "last" and _no_signal(scores):
        return (f"no checkpoint has a score (none of the {len(scores)} gave a usable result to judge), so the "
                f"last one is used: step {steps}")
    if mode == "last":
        return f"the last checkpoint, step {steps}, as asked"
    if mode == "best":
        return f"step {steps} scored best ({chosen[0].score:.3f}) of {len(scores)} checkpoints"
    unscored = sum(math.isnan(c.score) for c in scores)
    short = f" (only {len(chosen)} had a score)" if len(chosen) < k else ""
    skipped = f"; {unscored} without a score left out" if unscored else ""
    return (f"averaging the top {len(chosen)} of {len(scores)} checkpoints{short}: steps {steps} "
            f"(scores {', '.join(f'{c.score:.3f}' for c in chosen)}){skipped}")


def _check(scores: Sequence[CheckpointScore], mode: str, k: int) -> None:
    if mode not in MODES:
        raise LoracamError(f"unknown checkpoint selection mode {mode!r}; choose one of: {', '.join(MODES)}")
    if not scores:
        raise LoracamError("no checkpoints to choose from; the training run saved none (check save_every)")
    if mode == "average-top-k" and k < 1:
        raise LoracamError(f"average-top-k needs k >= 1 checkpoints, got k={k}")


def _no_signal(scores: Sequence[CheckpointScore]) -> bool:
    return all(math.isnan(c.score) for c in scores)


def curve_text(scores: Sequence[CheckpointScore], width: int = 30) -> str:
    """A text table of score against step (step | score | bar), bars scaled between the lowest and highest score."""
    rows = sorted(scores, key=lambda c: c.step)
    finite = [c.score for c in rows if not math.isnan(c.score)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    best = rank(rows)[0] if finite else None
    step_w = max([len("step")] + [len(str(c.step)) for c in rows])
    lines = [f"{'step':>{step_w}} | {'score':>7} | bar ({lo:.3f} .. {hi:.3f})" if finite
             else f"{'step':>{step_w}} | {'score':>7} | bar"]
    for c in rows:
        if math.isnan(c.score):
            lines.append(f"{c.step:>{step_w}} | {'n/a':>7} | (no signal)")
            continue
        # One block at the lowest score keeps every scored row visible; the spread shows the differences.
        n = width if hi == lo else 1 + round((width - 1) * (c.score - lo) / (hi - lo))
        mark = "  <- best" if c is best else ""
        lines.append(f"{c.step:>{step_w}} | {c.score:>7.3f} | {'#' * n}{mark}")
    return "\n".join(lines)


# -- averaging -------------------------------------------------------------------------------------------


def average_loras(paths: Sequence[Path], out: Path, metadata: Mapping[str, str] | None = None,
                  overwrite: bool = False) -> Path:
    """Write the LoRA whose every weight delta is exactly the mean of the inputs' deltas (rank adds up).

    A module's delta is scale * up @ down (scale = alpha / dim), which is bilinear in (up, down): averaging
    the ups and the downs separately (EasyPhoto's averaging of state dicts) gives mean(up) @ mean(down),
    which is not the mean of the deltas, and since independently trained factors can differ by any
    invertible mixing of the rank axis, it can be far from any input. The exact mean is a sum of k
    products, and a sum of products is one product of the factors concatenated along the rank axis:

        mean_i(s_i * up_i @ down_i) = cat_i(up_i * s_i / k) @ cat_i(down_i)

    so each output module has down = cat(down_i) [sum dim_i, in], up = cat(up_i * s_i / k) [out, sum dim_i]
    and alpha = sum dim_i (scale 1). The result is exact, at rank sum dim_i = k * dim for one run's
    checkpoints (the file grows k times; no low-rank truncation is done, as it would not be exact).
    Inputs must have the same modules acting on the same shapes; their ranks and alphas may differ.
    """
    import torch

    from loracam.lora.formats import LoraModule, read_lora, write_kohya

    paths = [Path(p) for p in paths]
    out = Path(out)
    if not paths:
        raise LoracamError("no LoRA files to average; pass at least one checkpoint")
    if out.exists() and not overwrite:  # before reading k files, not after
        raise LoracamError(f"{out} already exists; choose another name, or allow overwriting it")
    loras = [read_lora(p) for p in paths]
    first = loras[0]
    for lora in loras[1:]:
        _check_same_modules(first, lora)
    dora = next((lora for lora in loras if lora.dora_modules), None)
    if dora is not None:  # a DoRA layer is not a low-rank sum, so no exact average of them is a LoRA file
        raise LoracamError(f"cannot average {dora.path.name}: it is a DoRA network, whose layers are not low-rank "
                           "sums; average plain LoRA checkpoints, or keep the best single one")
    k = len(loras)
    modules: dict[str, LoraModule] = {}
    for name in first.modules:
        parts = [lora.modules[name] for lora in loras]
        dtypes = {t.dtype for m in parts for t in (m.up, m.down)}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # keep fp16 files fp16
        down = torch.cat([m.down.float() for m in parts], dim=0)  # [sum dim, in(, kh, kw)]
        up = torch.cat([m.up.float() * (m.scale / k) for m in parts], dim=1)  # [out, sum dim(, 1, 1)]
        rank_ = int(down.shape[0])
        modules[name] = LoraModule(name, down.to(dtype), up.to(dtype), float(rank_))
    return write_kohya(out, modules, _metadata(first.metadata, loras, modules, out, metadata), overwrite=overwrite)


def _target_shape(m: LoraModule) -> tuple[int, ...]:
    """The shape of the weight a module changes: [out, in] or [out, in, kh, kw]."""
    return (int(m.up.shape[0]), *(int(s) for s in m.down.shape[1:]))


def _check_same_modules(first: LoraFile, other: LoraFile) -> None:
    missing = sorted(set(first.modules) - set(other.modules))
    extra = sorted(set(other.modules) - set(first.modules))
    if missing or extra:
        a, b = other.path.name, first.path.name
        what = f"lacks module {missing[0]} that {b} has" if missing else f"has module {extra[0]} that {b} lacks"
        more = len(missing) + len(extra) - 1
        raise LoracamError(f"cannot average {a} with {b}: {a} {what}" + (f" ({more} more differences)" if more else "")
                           + "; average only checkpoints of the same training run")
    for name, m in first.modules.items():
        a, b = _target_shape(m), _target_shape(other.modules[name])
        if a != b:
            raise LoracamError(
                f"cannot average {other.path.name} with {first.path.name}: module {name} changes a weight of "
                f"shape {b} in {other.path.name} but {a} in {first.path.name}; they were trained for different "
                "base models: average only checkpoints of the same training run"
            )


def _metadata(base: Mapping[str, str], loras: list[LoraFile], modules: Mapping[str, LoraModule], out: Path,
               extra: Mapping[str, str] | None) -> dict[str, str]:
    """The first input's metadata with the network shape corrected and the sources recorded; ``extra`` wins."""
    meta = {k: v for k, v in base.items() if not k.startswith("sshs_")}
    ranks = {int(m.down.shape[0]) for m in modules.values()}
    if len(ranks) == 1:
        meta["ss_network_dim"] = meta["ss_network_alpha"] = str(ranks.pop())
    else:  # a single number would be wrong for some modules
        meta.pop("ss_network_dim", None)
        meta.pop("ss_network_alpha", None)
    meta["ss_output_name"] = out.stem
    meta["loracam_average_of"] = json.dumps([lora.path.name for lora in loras])
    meta["loracam_average_method"] = "exact mean of deltas (rank concatenation)"
    meta.update(extra or {})
    return meta
