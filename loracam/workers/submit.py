"""Submitting a job: record it in the store's queue (the truth), then, when there is a broker, tell it (the
Celery workers run it); without one the studio's own worker takes it from the store."""

from __future__ import annotations

import os

from loracam.errors import LoracamError
from loracam.workers import BROKER_ENV


def broker_url(flag: str | None = None) -> str | None:
    """The broker to submit to: --broker, else $LORACAM_BROKER; None: jobs run locally (the default)."""
    url = flag or os.environ.get(BROKER_ENV) or None
    if url and not url.startswith(("redis://", "rediss://")):
        raise LoracamError(f"broker {url!r}: loracam's workers use Redis; give redis://HOST:6379/0")
    return url


def enqueue(store, name: str, broker: str) -> None:
    """Queue the job in the store and send it to the workers; a broker that cannot be reached is said, and the
    job stays queued in the store (the next `loracam studio resume NAME --broker ...` sends it again)."""
    from kombu.exceptions import OperationalError

    from loracam.workers.app import make_app, send

    store.enqueue(name)
    try:
        send(make_app(broker), str(store.studio), name, retry_policy={"max_retries": 2, "interval_start": 0,
                                                                      "interval_step": 1})
    except OperationalError as exc:
        raise LoracamError(f"could not reach the broker {broker} ({exc}); job {name!r} is recorded and queued in "
                           f"{store.studio}: start Redis, then `loracam studio resume {name} --broker {broker}` "
                           "sends it") from None
    store.event(name, "sent", f"sent to the workers on {broker}")


def queue_job(store, name: str, broker: str | None) -> None:
    """Queue a recorded job for the studio's worker, or send it to the Celery workers when there is a broker."""
    if broker:
        enqueue(store, name, broker)
    else:
        store.enqueue(name)


def submit_task(store, kind: str, args: dict, broker: str | None) -> str:
    """One engine command (loracam/studio/tasks.py) as a new job, queued or sent; returns the job's name."""
    from loracam.studio.job import create_job
    from loracam.studio.tasks import TaskConfig, task_name

    name = task_name(kind)
    create_job(store, TaskConfig(name=name, kind=kind, args=args))
    queue_job(store, name, broker)
    return name
