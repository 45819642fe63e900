"""A running job's heartbeat: renews its lease from a second thread, so a step that works for longer than the
lease (training: minutes to hours) keeps it, and a dead worker's job is free again within one lease.

The lease is what stops a job from running on two workers (loracam/studio/store.py): another worker may take
it only once it expired. A step renews it at its boundaries; this thread renews it every quarter of the lease
in between, from its own connection (a SQLite connection belongs to its thread). When a renewal finds the job
cancelled, or taken by another worker (this one was cut off for longer than the lease), it raises the flag
the step polls: training stops at its next step boundary with a checkpoint, and the job stops there.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass

from loracam.errors import LoracamError
from loracam.studio.store import Cancelled, JobStore


@dataclass
class StepControl:
    """What a long step polls (the trainer's Control fields: loracam/train/trainer.py)."""

    stop: bool = False
    save_now: bool = False
    sample_now: bool = False


class Heartbeat:
    def __init__(self, studio, lease, control):
        self.studio, self.lease, self.control = studio, lease, control
        self.lost: str | None = None  # "cancelled" or "taken" once a renewal said so
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{lease.job}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        store = JobStore(self.studio)
        try:
            while not self._done.wait(self.lease.seconds / 4):
                try:
                    store._renew(self.lease)
                except Cancelled:
                    self._stop("cancelled")
                    return
                except LoracamError:
                    self._stop("taken")
                    return
                except sqlite3.Error:  # a busy or briefly unreachable store: the next beat tries again
                    continue
        finally:
            store.close()

    def _stop(self, why: str) -> None:
        self.lost = why
        self.control.stop = True

    def check(self) -> None:
        """Raise in the job's own thread what the heartbeat found (called where a step reports progress)."""
        if self.lost == "cancelled":
            raise Cancelled(f"job {self.lease.job!r} was cancelled; it stopped where it was. "
                            f"`loracam studio resume {self.lease.job}` continues it")
        if self.lost == "taken":
            raise LoracamError(f"job {self.lease.job!r} was taken over by another worker (this one lost its "
                               "lease); this one stops")
