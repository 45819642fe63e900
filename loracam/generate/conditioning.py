"""Per-sample conditioning: AND sub-prompts x schedule entries, encoded once, picked per sampling step.

Rows of the U-Net batch at a step are laid out as [uncond of each sample] + [cond rows, sample-major],
which for plain prompts is exactly diffusers' [uncond..., cond...] layout.
Prompts of different token lengths are never padded to each other: rows are grouped by length and each
group is its own U-Net call. That is A1111's behaviour when cond and uncond lengths differ, and it keeps
an image identical whether it is rendered alone or in a batch with a longer prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from loracam.prompts import PromptEncoder, extract_networks, prompt_schedule, split_and, text_at_step

Schedule = list[tuple[int, int]]  # [(end_step, index into CondPlan.embeddings)]


@dataclass
class Rows:
    """The U-Net rows of one step: which embedding and which sample each row belongs to."""

    embedding: list[int]
    sample: list[int]
    uncond_row: list[int]  # per sample
    cond_rows: list[list[tuple[int, float]]]  # per sample: (row, AND weight)


@dataclass
class CondPlan:
    embeddings: list[torch.Tensor]  # [77*k, C] each
    uncond: list[Schedule]  # per sample
    conds: list[list[tuple[Schedule, float]]]  # per sample: AND parts
    pooled: list[torch.Tensor] | None = None  # per embedding, for families whose denoiser takes one (SDXL)

    def rows_at(self, step: int, with_uncond: bool = True) -> Rows:
        emb, smp, unc, conds = [], [], [], []
        if with_uncond:
            for s, sched in enumerate(self.uncond):
                unc.append(len(emb))
                emb.append(_pick(sched, step))
                smp.append(s)
        for s, parts in enumerate(self.conds):
            rows = []
            for sched, weight in parts:
                rows.append((len(emb), weight))
                emb.append(_pick(sched, step))
                smp.append(s)
            conds.append(rows)
        return Rows(emb, smp, unc, conds)


def _pick(sched: Schedule, step: int) -> int:
    return sched[text_at_step(sched, step)][1]  # text_at_step reads only the end steps


def build_plan(
    encoder: PromptEncoder,
    prompts: Sequence[str],
    negatives: Sequence[str],
    steps: int,
    te_keys: Sequence[tuple] | None,
    set_te_rows: Callable[[torch.Tensor], None] | None,
    zero_empty_negative: bool = False,
) -> CondPlan:
    """Schedules for every sample and one encode call for all distinct (text, LoRA text-encoder weights).

    ``te_keys[s]`` identifies sample s's text-encoder LoRA multipliers (None when all samples share
    them); ``set_te_rows`` receives the sample index of every text-encoder row before the call.
    With ``zero_empty_negative`` (SDXL) a sample whose negative prompt is empty gets zeros as its negative
    context and pooled vector, as A1111 and diffusers' force_zeros_for_empty_prompt do.
    """
    keys: dict[tuple, int] = {}
    owners: list[int] = []  # a sample whose LoRA weights encode that key

    def index(text: str, s: int, zero: bool = False) -> int:
        key = (text, te_keys[s] if te_keys else None, zero)
        if key not in keys:
            keys[key] = len(keys)
            owners.append(s)
        return keys[key]

    uncond, conds = [], []
    for s, (p, n) in enumerate(zip(prompts, negatives)):
        neg_text = extract_networks(n)[0]
        if zero_empty_negative and not neg_text.strip():
            uncond.append([(steps, index("", s, zero=True))])
        else:
            uncond.append([(end, index(t, s)) for end, t in prompt_schedule(neg_text, steps)])
        parts = []
        for sub, weight in split_and(extract_networks(p)[0]):
            parts.append(([(end, index(t, s)) for end, t in prompt_schedule(sub, steps)], weight))
        conds.append(parts)
    texts = [text for text, _, _ in keys]
    owner = torch.tensor(owners)
    on_rows = (lambda rows: set_te_rows(owner[rows])) if set_te_rows else None
    enc = encoder.encode_all(texts, on_rows=on_rows)
    contexts, pooled = list(enc.contexts), (list(enc.pooled) if enc.pooled is not None else None)
    for (_, _, zero), i in keys.items():
        if zero:
            contexts[i] = torch.zeros_like(contexts[i])
            if pooled is not None:
                pooled[i] = torch.zeros_like(pooled[i])
    return CondPlan(contexts, uncond, conds, pooled)
