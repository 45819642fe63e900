"""Checkpoints and resume states: written atomically, found again after a crash, refused if foreign.

A checkpoint is a usable LoRA file (kohya naming: ``NAME-step00000100.safetensors``) plus a resume state
(``NAME.state/step-00000100.pt``: trainable tensors, optimizer and scheduler states, the position in the
data, and a fingerprint of the run). Randomness in a run is derived from (seed, epoch, step), so the
position is all a resumed run needs to continue exactly as an uninterrupted one would.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from loracam.errors import LoracamError
from loracam.io import DiskFull, atomic_write

_STATE = re.compile(r"^step-(\d{8})\.pt$")


@dataclass(frozen=True)
class Position:
    """Where a run stands: optimizer steps done, and the next micro-batch (epoch, index in the epoch)."""

    step: int
    epoch: int
    batch: int
    micro: int  # micro-batches done in all


def fingerprint(parts: dict) -> str:
    """A short hash of what makes two runs the same run (base, dataset, network, data order settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_dir(output: Path) -> Path:
    return output.with_name(output.stem + ".state")


def checkpoint_path(output: Path, step: int | None = None, epoch: int | None = None) -> Path:
    """kohya's names: NAME-step00000100.safetensors, or NAME-000003.safetensors for epoch 3."""
    tag = f"step{step:08d}" if step is not None else f"{epoch:06d}"
    return output.with_name(f"{output.stem}-{tag}{output.suffix}")


def save_state(output: Path, pos: Position, fp: str, trainable: dict, optimizer, scheduler, keep: int) -> Path:
    """Write the resume state for ``pos`` atomically, then prune all but the newest ``keep``."""
    folder = state_dir(output)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{pos.step:08d}.pt"
    payload = {
        "loracam_state": 1, "fingerprint": fp, "position": pos.__dict__,
        "trainable": {k: v.detach().cpu() for k, v in trainable.items()},
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
    }
    disk_guard(lambda: atomic_write(path, lambda tmp: torch.save(payload, tmp), overwrite=True), path)
    for old in sorted(states(folder))[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def states(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step-*.pt") if _STATE.match(p.name)) if folder.is_dir() else []


def load_latest(output: Path, fp: str) -> dict | None:
    """The newest resume state of this run, or None; a state of another run is an error."""
    found = states(state_dir(output))
    if not found:
        return None
    path = found[-1]
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LoracamError(f"the resume state {path} cannot be read ({exc}); delete it to use the one before") from None
    if payload.get("fingerprint") != fp:
        raise LoracamError(
            f"the resume state in {path.parent} belongs to another run (different base model, dataset or network "
            "settings); resume with the same settings, or choose another -o to start fresh"
        )
    return payload


def disk_guard(write, path: Path):
    """Run a write; a full disk becomes a message naming what is safe and what to do."""
    full = LoracamError(f"the disk is full: {path.name} could not be written. Earlier checkpoints are intact; "
                        "free some space and run the same command with --resume")
    try:
        return write()
    except DiskFull:
        raise full from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise full from None
        raise
