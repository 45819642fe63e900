"""``loracam web``: the studio in a browser (loracam/web; gradio is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loracam.cli_util import user_errors


@user_errors
def web(
    port: int = typer.Option(7860, "--port", help="The port to serve on."),
    listen: bool = typer.Option(False, "--listen", help="Serve to the network (0.0.0.0), not only this machine; "
                                                        "needs --auth."),
    auth: Optional[str] = typer.Option(None, "--auth", help="USER:PASS: the login the pages ask for."),
    studio: Path = typer.Option(Path("studio"), "--studio-dir", "--studio", help="The studio folder: its job store "
                                "and jobs; the only folder the server serves files from."),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir", help="LoRA folders for Generate, Grid, Tune and "
                                                  "Library (the LoRAs the studio trains are always there)."),
    model_dir: Optional[List[Path]] = typer.Option(None, "--model-dir", help="Folders of base checkpoints "
                                                   "(.safetensors, diffusers folders), A1111's models/Stable-diffusion."),
    max_file_mb: float = typer.Option(40.0, "--max-file-mb", help="Largest upload, per file."),
    max_files: int = typer.Option(60, "--max-files", help="Most photos a job."),
    max_megapixels: float = typer.Option(50.0, "--max-megapixels", help="Largest photo, in megapixels."),
    broker: Optional[str] = typer.Option(None, "--broker", help="Send jobs to the Celery workers on this Redis "
                                         "(`loracam worker`; default: $LORACAM_BROKER; unset: the studio's own worker)."),
    no_worker: bool = typer.Option(False, "--no-worker", help="Do not start the studio's worker (run "
                                   "`loracam studio worker` yourself)."),
):
    """The web UI: the studio job from photos to gallery, Train, Generate, Grid, Tune, the job queue and the library.
    Jobs run in the studio's worker process: they go on when the server stops, and a restarted server shows them."""
    from loracam.web.guard import Limits, check_listen, parse_auth
    from loracam.workers.submit import broker_url

    creds = parse_auth(auth)
    check_listen(listen, creds)  # before importing gradio: a refused start is instant
    try:
        from loracam.web.server import ServeConfig, launch
    except ImportError as exc:
        from loracam.errors import LoracamError

        raise LoracamError(f"the web UI needs gradio ({exc}): pip install 'loracam[web]'") from None
    launch(ServeConfig(studio=studio, port=port, listen=listen, auth=creds, lora_dirs=tuple(lora_dir or ()),
                       model_dirs=tuple(model_dir or ()),
                       limits=Limits(max_file_mb, max_files, max_megapixels), worker=not no_worker,
                       broker=broker_url(broker)),
           echo=typer.echo)


COMMANDS = [web]
