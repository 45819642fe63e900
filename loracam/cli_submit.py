"""`--broker` on `loracam train`, `grid` and `tune`: the command recorded as a job of the studio and sent to
the Celery workers (loracam/workers) instead of run here; its files go to the job's folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

BROKER_HELP = ("Send this to the Celery workers on this Redis (`loracam worker`) instead of running it here; its "
               "files go to the job's folder in --studio (default: $LORACAM_BROKER; unset: run here).")
STUDIO_HELP = "With --broker: the studio folder the workers share (the job and its files)."


def broker_option():
    return typer.Option(None, "--broker", help=BROKER_HELP)


def studio_option():
    return typer.Option(Path("studio"), "--studio", help=STUDIO_HELP)


def sent_to_workers(kind: str, args: dict, studio: Path, broker: Optional[str]) -> bool:
    """With a broker: record the command as a job, send it, say where its files will be; True. Else False."""
    from loracam.workers.submit import broker_url

    url = broker_url(broker)
    if not url:
        return False
    from loracam.studio.store import JobStore
    from loracam.workers.submit import submit_task

    store = JobStore(studio)
    name = submit_task(store, kind, args, url)
    typer.echo(f"sent {kind} job {name!r} to the workers on {url}; its files: {store.studio.resolve() / name}; "
               f"`loracam studio status {name} --studio {studio}` follows it")
    return True
