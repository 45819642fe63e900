"""loracam: a LoRA photo studio (prepare, train, compose, grid, finish, judge)."""

from loracam.numerics import set_process_defaults as _set_process_defaults

__version__ = "0.1.0"

# Before anything loads torch: MKL reads its reproducibility mode once, at its first call (loracam.numerics).
_set_process_defaults()
