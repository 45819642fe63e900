"""`loracam worker --broker redis://...`: a Celery worker that runs studio jobs, and its reaper.

One worker a GPU (``--gpu N`` sets CUDA_VISIBLE_DEVICES before torch is imported). The job store and the job
folders live in the studio folder every worker mounts (README: deployment); the broker only says "run job
NAME". The task is ``run_job`` itself (loracam/studio/job.py): a job that is done, cancelled or held by
another live worker is dropped, anything else runs or resumes from its first unfinished step.

The reaper: a thread that, every half lease, looks for queued jobs whose runner died (its lease expired, or it
was a process of this host that is gone) and sends them again, so another worker takes them over in seconds
and resumes them from their checkpoint, instead of after Redis' visibility timeout; and, when the broker's
queue is empty while the store still has jobs waiting, sends those again too (their messages were lost: a
Redis restarted without its append-only file). The store is the truth; the broker only carries reminders.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from loracam.errors import LoracamError

log = logging.getLogger("loracam.worker")


@dataclass(frozen=True)
class WorkerConfig:
    broker: str
    studio: Path
    gpu: int | None = None
    queues: tuple[str, ...] = ("loracam",)
    lease: float = 30.0  # seconds without a heartbeat before another worker may take a job over
    name: str | None = None  # Celery's node name; default loracam-gpuN@host

    @property
    def node(self) -> str:
        return self.name or f"loracam{'' if self.gpu is None else f'-gpu{self.gpu}'}-{os.getpid()}@{socket.gethostname()}"


def serve(cfg: WorkerConfig) -> None:
    """Run the Celery worker until it is stopped (SIGTERM: warm shutdown, the running job finishes first)."""
    if cfg.gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(cfg.gpu)  # before anything imports torch's CUDA
    from loracam.studio.store import JobStore
    from loracam.workers.app import make_app

    studio = Path(cfg.studio).resolve()
    JobStore(studio).close()  # a wrong folder fails now, with the store's message
    app = make_app(cfg.broker)
    state = _State(cfg, studio)
    app.task(name="loracam.run_job", acks_late=True, reject_on_worker_lost=True)(state.run)
    stop = threading.Event()
    reaper = threading.Thread(target=reap, args=(app, studio, cfg, stop), name="reaper", daemon=True)
    reaper.start()
    try:
        app.worker_main(["worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1", "-Q",
                         ",".join(cfg.queues), "-n", cfg.node, "--without-gossip", "--without-mingle",
                         "--without-heartbeat", "--loglevel=INFO"])
    finally:
        stop.set()


class _State:
    """What the task keeps between jobs: the model cache (the base stays loaded) and the settings."""

    def __init__(self, cfg: WorkerConfig, studio: Path):
        self.cfg, self.studio, self._models = cfg, studio, None

    @property
    def models(self):
        if self._models is None:
            from loracam.models import HashCache, ModelCache, default_cache_path

            self._models = ModelCache(HashCache(default_cache_path()))
        return self._models

    def run(self, studio: str, name: str) -> str:
        from loracam.studio.job import run_job
        from loracam.studio.store import Held, JobStore

        if Path(studio).resolve() != self.studio:
            log.error("job %s is of studio %s; this worker serves %s: dropped", name, studio, self.studio)
            return "other studio"
        store = JobStore(self.studio)
        try:
            job = store.job(name)
            if job.status in ("done", "cancelled"):
                store.dequeue(name)
                return f"already {job.status}"
            try:
                run_job(store, name, echo=lambda s: log.info("[%s] %s", name, s), models=self.models,
                        lease_seconds=self.cfg.lease, who=self.cfg.node)
            except Held as exc:  # another live worker runs it: this message is a duplicate
                log.info("[%s] %s", name, exc)
                return "held elsewhere"
            except LoracamError as exc:  # stopped or cancelled, and recorded in the store
                log.warning("[%s] %s", name, exc)
            store.dequeue(name)
            return store.job(name).status
        except LoracamError as exc:  # no such job (a store emptied by hand): nothing to run
            log.error("[%s] %s", name, exc)
            return "unknown job"
        finally:
            store.close()


def reap(app, studio: Path, cfg: WorkerConfig, stop: threading.Event) -> None:
    """Every half lease, send again (each at most once a lease; other workers' reapers may too: the duplicates
    are dropped by the lease) the queued jobs whose runner died, and, when the broker's queue is empty, the
    queued jobs nobody runs: a Redis that restarted without its data lost their messages."""
    from loracam.studio.store import JobStore

    sent: dict[str, float] = {}
    while not stop.wait(max(0.5, cfg.lease / 2)):
        try:
            store = JobStore(studio)
        except LoracamError as exc:
            log.error("reaper: %s", exc)
            continue
        try:
            _reap_once(app, store, studio, cfg, sent)
        except Exception as exc:  # a busy store, a broker reconnecting: the next round tries again
            log.warning("reaper: %s", exc)
        finally:
            store.close()


def _reap_once(app, store, studio: Path, cfg: WorkerConfig, sent: dict[str, float]) -> None:
    from loracam.studio.store import dead_owner

    now = time.time()
    since = store.queued_since()
    lost: list = []
    for name in store.queued():
        job = store.job(name)
        if now - max(sent.get(name, 0), since.get(name, 0)) < cfg.lease:
            continue  # sent a moment ago: its message may still be on its way
        if job.status == "running" and dead_owner(job, now):
            why = f"its worker {job.owner} is gone (lease expired or process dead)"
        elif job.status == "queued":
            lost.append(job)
            continue
        else:
            continue
        _resend(app, store, studio, cfg, name, why, sent, now)
    if lost and broker_queue_size(app, cfg.queues[0]) == 0:  # queued here, nothing waiting there: lost
        for job in lost:
            _resend(app, store, studio, cfg, job.name, "its message is not in the broker (a Redis restarted "
                    "without its data?)", sent, now)


def _resend(app, store, studio, cfg, name: str, why: str, sent: dict[str, float], now: float) -> None:
    from loracam.workers.app import send

    send(app, str(studio), name, cfg.queues[0])
    sent[name] = now
    store.event(name, "reaper", f"{why}; sent again by {cfg.node}")
    log.warning("reaper: job %s sent again: %s", name, why)


def broker_queue_size(app, queue: str) -> int | None:
    """Messages waiting in the broker's queue (not those a worker holds); None when it cannot be asked."""
    from kombu.exceptions import ChannelError

    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            try:
                return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:  # not declared: a Redis restarted empty has no queue at all
                return 0
    except Exception as exc:  # the broker is away: nothing is decided this round
        log.warning("reaper: could not ask the broker for queue %s: %s", queue, exc)
        return None
