"""loracam: a LoRA photo studio (prepare, train, compose, grid, finish, judge)."""

__version__ = "0.1.0"
