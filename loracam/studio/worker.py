"""The studio's local worker: runs the jobs queued in a studio folder, one at a time, in its own process
(studio and train jobs, and the web UI's generate, grid and tune requests: loracam/studio/tasks.py), with one
model cache for all of them, so the base stays loaded from one job to the next.

The web UI (and ``loracam studio run --queue``) only record a job and put it in the store's queue; this process
runs it. So a job outlives the process that asked for it: kill the web server, and the worker goes on; kill
the worker too, and the next one (``loracam web`` starts one when none is running) takes the job over at
once (its owner is a dead process of this host, the store's lease rule) and resumes it from its first
unfinished step.

One worker a studio folder (one GPU): it holds an exclusive lock on ``worker.lock`` while it lives; a second
one started for the same folder says so and exits. The lock is the kernel's (flock), so it is released by a
killed process as well as by one that exits.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from loracam.errors import LoracamError
from loracam.studio.store import JobStore

LOCK_NAME = "worker.lock"
# Seconds between looks at the queue. Each is one SQLite read: at 0.1 s an idle worker uses 0.2% of a core,
# and a Generate request waits 0.05 s on average to be picked up (1 s made the page's toy render 1.3 s
# slower than rendering in the server: benchmarks/results/web_generate.json).
DEFAULT_POLL = 0.1
LOG_NAME = "worker.log"


class WorkerLock:
    """The studio folder's worker lock; ``held`` is False when another live process has it."""

    def __init__(self, studio: Path):
        self.path = Path(studio) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.held = True
        except BlockingIOError:
            self.held = False
            return
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.held:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            self.held = False
        os.close(self.fd)


def worker_pid(studio: Path) -> int | None:
    """The pid of the worker serving ``studio``, or None when none holds the lock."""
    lock = WorkerLock(studio)
    try:
        if lock.held:
            return None
        text = (Path(studio) / LOCK_NAME).read_text().strip()
        return int(text) if text.isdigit() else -1
    finally:
        lock.release()


def serve(studio: Path, echo: Callable[[str], None] = print, poll: float = DEFAULT_POLL, idle_exit: float | None = None,
          max_jobs: int | None = None) -> int:
    """Run queued jobs until stopped (SIGTERM/SIGINT), idle for ``idle_exit`` seconds, or ``max_jobs`` ran.
    Returns how many jobs it ran; 0 at once when another worker serves the folder."""
    from loracam.models import HashCache, ModelCache, default_cache_path
    from loracam.studio.job import run_job

    lock = WorkerLock(studio)
    if not lock.held:
        echo(f"a worker already serves {studio} (pid {worker_pid(studio)}); this one exits")
        lock.release()
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does: the job is left queued for the next worker
    store = JobStore(studio)
    models = ModelCache(HashCache(default_cache_path()))  # one for every job: the base stays loaded between them
    ran, idle_since = 0, time.monotonic()
    echo(f"worker {os.getpid()} serves {Path(studio).resolve()}")
    try:
        while max_jobs is None or ran < max_jobs:
            name = store.next_queued()
            if name is None:
                if idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
                time.sleep(poll)
                continue
            echo(f"== job {name}")
            try:
                run_job(store, name, echo=lambda s, n=name: echo(f"[{n}] {s}"), models=models, who="the studio's worker")
            except LoracamError as exc:  # recorded in the store (stopped, cancelled): the next job runs
                echo(f"[{name}] {exc}")
            # done, cancelled or stopped by an error the user must fix: off the queue (Resume puts it back).
            # An interrupted worker never gets here: its job stays queued and the next worker resumes it.
            store.dequeue(name)
            ran += 1
            idle_since = time.monotonic()
    except KeyboardInterrupt:
        running = store.next_queued()
        echo("worker stopping" + (f"; job {running!r} stays queued: the next worker resumes it" if running else ""))
    finally:
        store.close()
        lock.release()
    return ran


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def spawn(studio: Path, python: str | None = None, poll: float = DEFAULT_POLL) -> int | None:
    """Start a worker for ``studio`` in its own session (it survives whoever started it), logging to
    ``worker.log``; returns its pid, or None when one already serves the folder."""
    if worker_pid(studio) is not None:
        return None
    log = open(Path(studio) / LOG_NAME, "ab")
    proc = subprocess.Popen([python or sys.executable, "-m", "loracam.cli", "studio", "worker", "--studio",
                             str(Path(studio).resolve()), "--poll", str(poll)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    return proc.pid
