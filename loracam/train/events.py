"""The training event log (JSONL, one object a line; the web UI will read it) and the progress bar."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class EventLog:
    """Appends events to ``path``; each line is flushed, so a killed run leaves at most one partial line."""

    def __init__(self, path: Path | None):
        self.path = path
        self._f = open(path, "a", encoding="utf-8") if path else None
        self.t0 = time.time()

    def write(self, kind: str, **fields) -> None:
        if self._f is None:
            return
        rec = {"event": kind, "time": round(time.time(), 3), "elapsed": round(time.time() - self.t0, 3), **fields}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()


def read_events(path: Path) -> list[dict]:
    """Every complete event in a log (a torn last line from a killed run is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class Progress:
    """tqdm over optimizer steps with loss, learning rate, it/s and ETA (tqdm's own)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
