"""Toy jobs through Celery workers on Redis: throughput with one worker and with two (results/worker_throughput.json).

`python benchmarks/worker_throughput.py [--train N] [--grids N] [--steps S]`

A real redis-server (a free port, append-only file) and `loracam worker` processes; the same batch of toy
jobs each time (N train jobs of S steps from 6 toy photos, N grid jobs of 4 cells), sent once the workers are
ready, timed until the store says all are done. Three set-ups: one worker on one thread, one worker on two
threads, two workers on one thread each. On this 2-core machine two workers can at best double one
single-threaded worker, and they compete with one two-threaded worker for the same two cores: the number says
how well jobs fill the cores, not what a second GPU would add (there, each worker has its own).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    import redis

    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(folder), "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            if redis.Redis(port=port).ping():
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.exceptions.RedisError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def run(setup: str, workers: int, threads: int, args, photos: Path, work: Path) -> dict:
    from loracam.config import to_dict
    from loracam.generate import GenRequest
    from loracam.studio.job import StudioConfig, create_job
    from loracam.studio.store import JobStore
    from loracam.studio.tasks import TaskConfig
    from loracam.workers.submit import enqueue

    folder = work / setup
    (folder / "redis").mkdir(parents=True)
    redis_proc, url = start_redis(folder / "redis")
    studio = folder / "studio"
    procs = []
    try:
        for i in range(workers):
            log = open(folder / f"w{i}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "loracam.cli", "worker", "--broker", url, "--studio",
                                           str(studio), "--name", f"w{i}@bench"], stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "OMP_NUM_THREADS": str(threads)}))
        for i in range(workers):
            while b" ready." not in (folder / f"w{i}.log").read_bytes():
                time.sleep(0.2)
        store = JobStore(studio)
        jobs = [StudioConfig(name=f"t{i}", kind="train", photos=str(photos), train_steps=args.steps,
                             train_options={"rank": 4, "alpha": 4.0}) for i in range(args.train)]
        request = lambda seed: to_dict(GenRequest(prompt="1girl, upper body, red dress", seed=seed, steps=20))  # noqa: E731
        jobs += [TaskConfig(name=f"g{i}", kind="grid", args={"request": request(100 + i), "axes": ["CFG Scale=3,5,7,9"],
                                                             "options": {}}) for i in range(args.grids)]
        t = time.perf_counter()
        for cfg in jobs:
            create_job(store, cfg)
            enqueue(store, cfg.name, url)
        while not all(store.job(cfg.name).status == "done" for cfg in jobs):
            bad = [cfg.name for cfg in jobs if store.job(cfg.name).status in ("stopped", "failed", "cancelled")]
            if bad:
                raise SystemExit(f"{setup}: jobs {bad} did not finish")
            time.sleep(0.2)
        seconds = time.perf_counter() - t
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        redis_proc.kill()
    return {"setup": setup, "workers": workers, "threads_each": threads, "jobs": len(jobs), "seconds": round(seconds, 1),
            "jobs_per_minute": round(60 * len(jobs) / seconds, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=4)
    ap.add_argument("--grids", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("needs redis-server (make setup installs Debian's)")
    from loracam.toy.photos import write_photos

    work = Path(tempfile.mkdtemp(prefix="worker-throughput-"))
    photos = work / "photos"
    write_photos(photos, "sks", 6, seed=3, size=(192, 288))
    rows = [run("1 worker x 1 thread", 1, 1, args, photos, work),
            run("1 worker x 2 threads", 1, 2, args, photos, work),
            run("2 workers x 1 thread", 2, 1, args, photos, work)]
    for r in rows:
        print(r, flush=True)
    base = rows[0]["seconds"]
    write_result("worker_throughput", {
        "batch": {"train_jobs": args.train, "train_steps": args.steps, "grid_jobs": args.grids, "grid_cells": 4},
        "runs": rows, "speedup_two_workers_over_one": round(base / rows[2]["seconds"], 2),
        "two_workers_over_one_two_threaded": round(rows[1]["seconds"] / rows[2]["seconds"], 2),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
