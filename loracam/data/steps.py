"""kohya sd-scripts' step arithmetic, regularization balancing included (interop.md §2-3).

The numbers a user needs before training: how many samples an epoch holds, how many batches that
makes per bucket, and how many optimizer steps the run will take. The trainer prints these and they
equal sd-scripts' for the same dataset and settings.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One image as the step arithmetic sees it: its bucket and its folder's repeat count."""

    key: str
    bucket: tuple[int, int]
    repeats: int
    is_reg: bool = False


@dataclass
class StepPlan:
    train_samples: int  # images x repeats
    reg_samples: int  # after balancing
    reg_repeats: dict[str, int]  # reg image -> repeats actually used (absent: never used)
    batches_per_epoch: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    bucket_counts: dict[tuple[int, int], int] = field(default_factory=dict)  # samples per bucket
    unused_reg: int = 0

    def summary(self, n_train_images: int, train_repeats: str, batch: int) -> str:
        """e.g. "20 images x 10 repeats + 20 reg (balanced to 200), batch 1, 10 epochs = 4000 steps"."""
        reg = f" + {len(self.reg_repeats) + self.unused_reg} reg (balanced to {self.reg_samples})" if (
            self.reg_repeats or self.unused_reg) else ""
        return (f"{n_train_images} images x {train_repeats} repeats{reg}, batch {batch}, "
                f"{self.epochs} epochs = {self.total_steps} steps")


def balance_reg(train: list[Item], reg: list[Item]) -> dict[str, int]:
    """sd-scripts' rule: reg images in order with their repeats until the train sample count is reached;
    if they fall short, repeats go up one at a time round-robin. Images past the target are never used."""
    target = sum(i.repeats for i in train)
    used: dict[str, int] = {}
    if not reg or target == 0:
        return used
    n, first = 0, True
    while n < target:
        for item in reg:
            if first:
                used[item.key] = item.repeats
                n += item.repeats
            else:
                used[item.key] += 1
                n += 1
            if n >= target:
                break
        first = False
    return used


def plan_steps(items: list[Item], batch_size: int = 1, epochs: int | None = None,
               max_steps: int = 1600, grad_accum: int = 1, processes: int = 1) -> StepPlan:
    """Steps for a dataset; ``epochs`` (max_train_epochs) wins over ``max_steps`` as in sd-scripts."""
    train = [i for i in items if not i.is_reg]
    reg = [i for i in items if i.is_reg]
    reg_used = balance_reg(train, reg)
    counts: Counter = Counter()
    for i in train:
        counts[i.bucket] += i.repeats
    for i in reg:
        if i.key in reg_used:
            counts[i.bucket] += reg_used[i.key]
    batches = sum(math.ceil(n / batch_size) for n in counts.values())
    per_epoch = math.ceil(batches / processes / grad_accum)
    if epochs is not None:
        total = epochs * per_epoch
    else:
        total = max_steps
        epochs = math.ceil(total / per_epoch) if per_epoch else 0
    return StepPlan(
        train_samples=sum(i.repeats for i in train), reg_samples=sum(reg_used.values()),
        reg_repeats=reg_used, batches_per_epoch=batches, steps_per_epoch=per_epoch, epochs=epochs,
        total_steps=total, bucket_counts=dict(sorted(counts.items())), unused_reg=len(reg) - len(reg_used),
    )
