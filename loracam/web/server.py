"""Launching the web UI: the environment Gradio needs offline, the studio's worker, and the security rules."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loracam.web import guard

# Gradio phones home unless told not to (a thread calls its analytics host), and its launch() asks its own
# URL through any HTTP(S)_PROXY: both must be settled before gradio is imported (shared/docs/finish.md s6).
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


def offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ[k] = v
    local = "localhost,127.0.0.1,::1"
    for key in ("NO_PROXY", "no_proxy"):
        os.environ[key] = ",".join(x for x in (os.environ.get(key), local) if x)


@dataclass(frozen=True)
class ServeConfig:
    studio: Path
    port: int = 7860
    listen: bool = False
    auth: tuple[str, str] | None = None
    lora_dirs: tuple[Path, ...] = ()
    model_dirs: tuple[Path, ...] = ()
    limits: guard.Limits = guard.Limits()
    worker: bool = True  # start the studio's worker when none runs
    worker_poll: float = 0.1  # how often that worker looks at the queue (loracam/studio/worker.py DEFAULT_POLL)
    broker: str | None = None  # Celery workers on this Redis run the jobs (no local worker is started)


def launch(cfg: ServeConfig, block: bool = True, echo=print):
    """Start the worker (unless one serves the folder) and the server; returns (app, url) when not blocking."""
    host = guard.check_listen(cfg.listen, cfg.auth)
    offline_env()
    studio = Path(cfg.studio).resolve()
    studio.mkdir(parents=True, exist_ok=True)
    if cfg.broker:
        echo(f"jobs go to the workers on {cfg.broker} (start them with `loracam worker --broker {cfg.broker} "
             f"--studio {studio}`)")
    elif cfg.worker:
        from loracam.studio.worker import spawn, worker_pid

        pid = spawn(studio, poll=cfg.worker_poll)
        echo(f"worker: started (pid {pid}), log {studio / 'worker.log'}" if pid else
             f"worker: one already serves {studio} (pid {worker_pid(studio)})")
    from loracam.web.app import WebConfig, build_app

    app = build_app(WebConfig(studio, tuple(cfg.lora_dirs), tuple(cfg.model_dirs), cfg.limits, broker=cfg.broker))
    app.queue(default_concurrency_limit=1)
    try:
        _, url, _ = app.launch(server_name=host, server_port=cfg.port, auth=cfg.auth,
                               max_file_size=cfg.limits.file_bytes, allowed_paths=[str(studio)],
                               prevent_thread_lock=not block, quiet=not block,
                               show_error=True, inbrowser=False, share=False, footer_links=["api", "settings"])
    except OSError as exc:  # the port is taken (Gradio: "Cannot find empty port")
        from loracam.errors import LoracamError

        raise LoracamError(f"could not serve on port {cfg.port} ({exc}); is another loracam web running? "
                           "Give --port another number") from None
    return app, url
