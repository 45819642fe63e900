"""``loracam worker``: a Celery worker on a Redis broker that runs the studio's jobs (loracam/workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from loracam.cli_util import user_errors

BROKER_HELP = "The Redis broker, redis://HOST:6379/0 (default: $LORACAM_BROKER)."


@user_errors
def worker(
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
    studio: Path = typer.Option(Path("studio"), "--studio", help="The studio folder every worker and the web UI "
                                "share (its job store and job folders; a mounted path on every machine)."),
    gpu: Optional[int] = typer.Option(None, "--gpu", help="The GPU this worker uses (one worker a GPU)."),
    queues: str = typer.Option("loracam", "--queues", help="Comma-separated queues to take jobs from."),
    lease: float = typer.Option(30.0, "--lease", help="Seconds a dead worker's job waits before another worker "
                                "takes it over (the running job renews it every quarter of this)."),
    name: Optional[str] = typer.Option(None, "--name", help="This worker's name (default loracam-gpuN-PID@host)."),
):
    """Run studio, train, generate, grid and tune jobs sent through the broker, one at a time, until stopped.
    A job whose worker died is taken over by another after --lease seconds and resumes from its checkpoint."""
    from loracam.errors import LoracamError
    from loracam.workers.submit import broker_url

    url = broker_url(broker)
    if url is None:
        raise LoracamError("give the broker: --broker redis://HOST:6379/0 or LORACAM_BROKER (without one, "
                           "`loracam studio worker` runs a studio's jobs on this machine)")
    if lease < 2:
        raise LoracamError(f"--lease {lease:g}: at least 2 seconds (the job renews it every quarter)")
    try:
        from loracam.workers.worker import WorkerConfig, serve
    except ImportError as exc:
        raise LoracamError(f"the workers need celery and redis ({exc}): pip install 'loracam[workers]'") from None
    serve(WorkerConfig(broker=url, studio=studio, gpu=gpu, queues=tuple(q for q in queues.split(",") if q),
                       lease=lease, name=name))


COMMANDS = [worker]
