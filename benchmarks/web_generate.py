"""What a Generate request costs for going through the worker (results: results/web_generate.json).

`python benchmarks/web_generate.py [--reps N] [--steps S] [--worker-polls 1.0,0.1]`

The web UI's Generate page records a job and waits for the studio's worker to render it (one process holds
the model), where it used to render in the server. This measures the price: the same toy txt2img request
(DPM++ 2M, S steps, 64x96, one image) timed N times through `loracam web` with gradio_client (the worker's
model warm after a first request), against the same request rendered in one process on a warm model (what
the server did before). The difference is the job's bookkeeping and the two polls: the worker looks at the
queue every --worker-polls seconds (1.0 s before this was measured, 0.1 s since), the page at its job every
0.1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # this process and the worker it starts: one thread each, same work per core
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

PROMPT = "1girl, upper body, red dress, white background"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker-polls", default="1.0,0.1", help="worker poll settings to measure (1.0: before)")
    args = ap.parse_args()
    import torch

    from loracam.generate import GenRequest
    from loracam.generate.api import generate
    from loracam.lora import LoraLibrary
    from loracam.models import ModelCache
    from loracam.web.handlers import WebConfig

    torch.set_num_threads(1)
    ui = {float(p): through_ui(float(p), args.reps, args.steps) for p in args.worker_polls.split(",")}
    models, library = ModelCache(), LoraLibrary([])
    req = GenRequest(prompt=PROMPT, steps=args.steps, cfg=7.0, seed=1234)
    generate(req, models, library)  # warm
    direct = []
    for _ in range(args.reps):
        t = time.perf_counter()
        generate(req, models, library)
        direct.append(time.perf_counter() - t)
    direct_med = statistics.median(direct)
    write_result("web_generate", {
        "request": {"prompt": PROMPT, "steps": args.steps, "size": "64x96", "images": 1}, "reps": args.reps,
        "page_poll_seconds": WebConfig(Path(".")).follow_seconds,
        "direct_seconds": [round(x, 3) for x in direct], "direct_median": round(direct_med, 3),
        "through_the_worker": [{"worker_poll_seconds": p, "ui_seconds": [round(x, 3) for x in times],
                                "ui_median": round(statistics.median(times), 3),
                                "added_median_seconds": round(statistics.median(times) - direct_med, 3)}
                               for p, times in ui.items()],
    })
    return 0


def through_ui(poll: float, reps: int, steps: int) -> list[float]:
    from gradio_client import Client

    from loracam.web.server import ServeConfig, launch

    studio = Path(tempfile.mkdtemp(prefix="web-generate-")) / "studio"
    app, url = launch(ServeConfig(studio=studio, port=_free_port(), worker_poll=poll), block=False,
                      echo=lambda s: None)
    times = []
    try:
        client = Client(url, verbose=False, analytics_enabled=False)
        fields = (PROMPT, "", "toy", "DPM++ 2M", steps, 7, 1234, 0, 0, 1)
        client.predict(*fields, api_name="/generate")  # warm-up: the worker imports the engine, loads the base
        for _ in range(reps):
            t = time.perf_counter()
            client.predict(*fields, api_name="/generate")
            times.append(time.perf_counter() - t)
    finally:
        app.close()
        _stop(studio)
    return times


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(studio: Path) -> None:
    import signal

    from loracam.studio.worker import worker_pid

    pid = worker_pid(studio)
    if pid and pid > 0:
        os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(main())
