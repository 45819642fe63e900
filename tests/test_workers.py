"""Celery workers on a real Redis (Debian's redis-server, started on a free port by the tests): jobs sent by the
CLI's path run on two workers; a worker killed while it trains has its job finished by the other with the same
LoRA, tensor for tensor, as an uninterrupted run; Redis killed and restarted mid-run loses nothing; 20 queued
grid jobs all finish, none twice."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("celery", reason="the workers extra is not installed (pip install 'loracam[workers]')")
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="no redis-server on this machine: `make setup` installs "
                                                        "Debian's (apt-get install redis-server) where it can")

# Seconds. A dead worker's job is sent again within half of it; a live worker's heartbeat renews it every quarter,
# so a worker starved of the CPU for over three quarters of it (6 s) loses its job to the other worker, which is
# the mechanism at work (a hung worker is taken over), and these tests' "run by one worker" would then fail. 8 s
# keeps them true beside two busy loops on 2 cores (30 runs: benchmarks/README.md) at ~4 s more per test than 4 s.
LEASE = 8.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A redis-server of the test's own: localhost, a free port, an append-only file synced at every write (a
    kill -9 loses nothing, as a broker for long jobs should be configured: README, deployment)."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                                      "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                      "--daemonize", "no", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not answer in 20 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_server(tmp_path):
    folder = tmp_path / "redis"
    folder.mkdir()
    server = Redis(folder)
    server.start()
    yield server
    server.kill()


class Workers:
    def __init__(self, url: str, studio: Path, logs: Path):
        self.url, self.studio, self.logs, self.procs = url, studio, logs, {}

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "loracam.cli", "worker", "--broker", self.url, "--studio",
                                 str(self.studio), "--lease", str(LEASE), "--name", f"{name}@test"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        log.close()
        self.procs[name] = proc
        return proc

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.time() + seconds
        for name in self.procs:
            while b" ready." not in (self.logs / f"{name}.log").read_bytes():
                assert self.procs[name].poll() is None, (self.logs / f"{name}.log").read_text()
                assert time.time() < deadline, f"worker {name} not ready in {seconds} s"
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(redis_server, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    w = Workers(redis_server.url, tmp_path / "studio", logs)
    yield w
    w.stop()


def _send(studio: Path, url: str, cfg) -> None:
    from loracam.studio.job import create_job
    from loracam.studio.store import JobStore
    from loracam.workers.submit import enqueue

    store = JobStore(studio)
    create_job(store, cfg)
    enqueue(store, cfg.name, url)
    store.close()


def _wait_all_done(studio: Path, names: list[str], seconds: float, logs: Path) -> None:
    from loracam.studio.store import JobStore

    store = JobStore(studio)
    deadline = time.time() + seconds
    while time.time() < deadline:
        status = {n: store.job(n).status for n in names}
        if all(s == "done" for s in status.values()):
            store.close()
            return
        assert not any(s in ("stopped", "failed", "cancelled") for s in status.values()), status
        time.sleep(0.3)
    tails = "\n".join(p.read_text()[-3000:] for p in logs.glob("*.log"))
    raise AssertionError(f"not all done in {seconds} s: {status}\n{tails}")


def _grid(name: str, seed: int):
    from loracam.config import to_dict
    from loracam.generate import GenRequest
    from loracam.studio.tasks import TaskConfig

    request = to_dict(GenRequest(prompt="1girl, upper body, red dress", seed=seed, steps=4, cfg=5.0))
    return TaskConfig(name=name, kind="grid", args={"request": request, "axes": ["CFG Scale=3,7"], "options": {}})


def test_a_killed_workers_training_is_finished_by_the_other_with_the_same_lora(workers, tmp_path):
    from safetensors.torch import load_file

    from loracam.studio.job import StudioConfig
    from loracam.studio.store import JobStore
    from loracam.toy.photos import write_photos

    photos = tmp_path / "photos"
    write_photos(photos, "sks", 6, seed=3, size=(192, 288))
    studio = workers.studio
    train = dict(kind="train", photos=str(photos), train_steps=40, train_options={"rank": 4, "alpha": 4.0})
    w1, w2 = workers.start("w1"), workers.start("w2")
    workers.wait_ready()
    for name in ("a", "b"):
        _send(studio, workers.url, StudioConfig(name=name, **train))
    for i in range(2):
        _send(studio, workers.url, _grid(f"g{i}", 10 + i))

    # kill -9 the worker that trains b once b has a checkpoint (a and b train side by side, one on each)
    state, store = studio / "b" / "lora" / "b.state", JobStore(studio)
    deadline = time.time() + 90
    while not list(state.glob("step-*.pt")) and time.time() < deadline:
        time.sleep(0.1)
    assert list(state.glob("step-*.pt")), "no checkpoint of b in 90 s"
    pid = int(store.job("b").owner.rpartition(":")[2])
    victim = next(n for n, p in workers.procs.items() if p.pid == pid)
    from loracam.web.views import jobs_table

    row = next(r for r in jobs_table(store) if r[0] == "b")
    assert row[2] == "running" and row[5].startswith(f"{victim}@test ("), row  # the Jobs page names the worker
    workers.procs[victim].send_signal(signal.SIGKILL)
    workers.procs[victim].wait()
    assert not (studio / "b" / "lora" / "b.safetensors").exists(), "b finished before the kill"

    _wait_all_done(studio, ["a", "b", "g0", "g1"], 150, workers.logs)
    a, b = load_file(studio / "a" / "lora" / "a.safetensors"), load_file(studio / "b" / "lora" / "b.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert (a[key] == b[key]).all(), key  # resumed on another worker = uninterrupted, tensor for tensor
    events = store.events("b")
    runners = [m for _, kind, m in events if kind == "worker"]
    assert len(runners) == 2 and victim in runners[0] and victim not in runners[1], runners
    assert any(kind == "reaper" for _, kind, _ in events)  # sent again by the survivor's reaper, not by Redis
    import json

    starts = [json.loads(line) for line in (studio / "b" / "lora" / "b.events.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert starts[-1]["resumed_at"] > 0  # from the checkpoint, not from step 0
    assert store.queued() == []


def test_twenty_grid_jobs_finish_once_each_through_a_redis_that_restarts_empty(workers, redis_server):
    from loracam.studio.store import JobStore

    studio = workers.studio
    workers.start("w1")
    workers.start("w2")
    names = [f"grid{i:02d}" for i in range(18)]
    for i, name in enumerate(names):  # sent before the workers are up: they wait in Redis
        _send(studio, workers.url, _grid(name, 100 + i))
    # the web UI's path (a Grid page request) and the CLI's (`studio resume NAME --broker`: a recorded job sent)
    from loracam.studio.job import create_job
    from loracam.web.handlers import Handlers, WebConfig

    names.append(Handlers(WebConfig(studio, broker=workers.url)).submit("grid", _grid("x", 118).args))
    store = JobStore(studio)
    create_job(store, _grid("grid19", 119))
    cli = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "resume", "grid19", "--studio", str(studio),
                          "--broker", workers.url], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "sent 'grid19' to the workers" in cli.stdout, cli.stdout + cli.stderr
    names.append("grid19")
    workers.wait_ready()
    deadline = time.time() + 90
    while sum(store.job(n).status == "done" for n in names) < 4 and time.time() < deadline:
        time.sleep(0.1)
    done_before = sum(store.job(n).status == "done" for n in names)
    assert 4 <= done_before < 20, done_before
    redis_server.kill()  # kill -9 mid-run, and worse: its data gone (the queued messages with it)
    shutil.rmtree(redis_server.folder)
    redis_server.folder.mkdir()
    time.sleep(1.0)
    redis_server.start()  # empty: the workers' reapers find the store's queued jobs missing there, send them again

    _wait_all_done(studio, names, 150, workers.logs)
    for name in names:
        events = store.events(name)
        assert sum(kind == "step" for _, kind, _ in events) == 1, (name, events)  # its one step done once
        assert sum(kind == "worker" for _, kind, _ in events) == 1, (name, events)  # run once, by one worker
        assert len(list((studio / name / "grid").glob("*.png"))) == 3  # 2 cells and the grid, written once
    assert store.queued() == []
    resent = [n for n in names if any(kind == "reaper" and "not in the broker" in m for _, kind, m in store.events(n))]
    assert resent, "no job was sent again after Redis came back empty"  # the store is the truth
    ran = {m.split(" ")[2] for n in names for _, kind, m in store.events(n) if kind == "worker"}
    assert ran == {"w1@test", "w2@test"}  # both workers took jobs
    status = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "status", "grid19", "--studio",
                             str(studio)], capture_output=True, text=True, timeout=120)
    assert "last worker: run by w" in status.stdout, status.stdout  # which worker ran it



def test_a_broker_that_cannot_be_reached_is_said_and_the_job_stays_queued(tmp_path):
    from loracam.studio.store import JobStore

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "resume", "g", "--studio", str(tmp_path),
                           "--broker", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no job named 'g'" in proc.stderr  # nothing to send: said, nothing made
    from loracam.studio.job import create_job

    store = JobStore(tmp_path)
    create_job(store, _grid("g", 1))
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "resume", "g", "--studio", str(tmp_path),
                           "--broker", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"could not reach the broker {url}" in proc.stderr and "is recorded and queued" in proc.stderr
    assert store.job("g").status == "queued" and store.queued() == ["g"]  # kept: resume sends it later
    bad = subprocess.run([sys.executable, "-m", "loracam.cli", "worker", "--broker", "http://x"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "give redis://HOST:6379/0" in bad.stderr


def test_the_reaper_sends_again_a_job_whose_lease_expired_on_another_machine(tmp_path, monkeypatch):
    """Across machines the lease's expiry is the only sign of a dead worker (its pid cannot be looked up)."""
    import threading

    from loracam.studio.job import create_job
    from loracam.studio.store import JobStore
    from loracam.workers import app as celery_app
    from loracam.workers.worker import WorkerConfig, reap

    store = JobStore(tmp_path)
    for name in ("expired", "alive"):
        create_job(store, _grid(name, 1))
        store.enqueue(name)
    now = time.time()
    store.db.execute("UPDATE jobs SET status='running', owner='gpu-box-7:4242', lease_until=? WHERE name='expired'",
                     (now - 1,))
    store.db.execute("UPDATE jobs SET status='running', owner='gpu-box-8:4242', lease_until=? WHERE name='alive'",
                     (now + 600,))
    sent = []
    monkeypatch.setattr(celery_app, "send", lambda app, studio, name, queue: sent.append((studio, name, queue)))
    stop = threading.Event()
    t = threading.Thread(target=reap, args=(None, tmp_path, WorkerConfig("redis://x", tmp_path, lease=2.0), stop))
    t.start()
    time.sleep(2.5)  # two rounds (every half lease): sent once, not once a round
    stop.set()
    t.join()
    assert sent == [(str(tmp_path), "expired", "loracam")]
    assert any(kind == "reaper" and "gpu-box-7:4242" in m for _, kind, m in store.events("expired"))


def test_train_grid_and_tune_commands_with_a_broker_send_jobs_that_run_anywhere(redis_server, tmp_path):
    """`loracam train/grid/tune --broker`: the command is recorded as a job (its relative paths made absolute:
    a worker runs it from another folder) and sent; run here (as a worker would), it leaves the command's files
    in the job's folder."""
    from loracam.studio.job import run_job
    from loracam.studio.store import JobStore
    from loracam.toy.photos import write_photos

    write_photos(tmp_path / "data" / "img" / "1_sks 1girl", "sks", 4, seed=3, size=(64, 96))

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "loracam.cli", *args, "--broker", redis_server.url, "--studio",
                               "studio"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0 and "sent " in proc.stdout, proc.stdout + proc.stderr
        return proc.stdout.split("'")[1]  # the job's name

    store = JobStore(tmp_path / "studio")
    trained = cli("train", "data", "--max-steps", "2", "--resolution", "64x96", "--rank", "2")
    assert store.job(trained).config["args"]["dataset"] == str(tmp_path / "data")
    folder = run_job(store, trained, echo=lambda s: None)
    lora = folder / "lora" / f"{trained}.safetensors"
    assert lora.is_file()
    gridded = cli("grid", "1girl, upper body", "--x", "CFG Scale=3,7", "--steps", "3", "--seed", "5")
    assert len(list((run_job(store, gridded, echo=lambda s: None) / "grid").glob("*.png"))) == 3
    import torch

    from loracam.lora.formats import random_lora, write_kohya
    from loracam.models import ModelCache

    toy = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    (tmp_path / "loras").mkdir()
    write_kohya(tmp_path / "loras" / "testdress.safetensors", random_lora(toy.unet, toy.text_encoder, seed=0, std=0.02),
                {"loracam_trigger": "testdress", "loracam_subject": "garment"})
    tuned = cli("tune", "1girl, full body, testdress <lora:testdress:1>", "-o", "unused", "--seed", "5", "--budget",
                "6", "--steps", "3", "--lora-dir", "loras", "--neighbourhood", "0")
    assert (run_job(store, tuned, echo=lambda s: None) / "tune" / "tune.json").is_file()
    assert not (tmp_path / "unused").exists()  # with a broker the files go to the job's folder


def test_the_reaper_resends_queued_jobs_only_when_the_broker_has_none_waiting(tmp_path, monkeypatch):
    import threading

    from loracam.studio.job import create_job
    from loracam.studio.store import JobStore
    from loracam.workers import app as celery_app
    from loracam.workers import worker

    store = JobStore(tmp_path)
    create_job(store, _grid("waiting", 1))
    store.enqueue("waiting")
    store.db.execute("UPDATE queue SET submitted=?", (time.time() - 60,))  # queued a minute ago
    sent = []
    monkeypatch.setattr(celery_app, "send", lambda app, studio, name, queue: sent.append(name))
    for waiting_in_redis, expected in ((3, []), (0, ["waiting"])):
        monkeypatch.setattr(worker, "broker_queue_size", lambda app, queue, n=waiting_in_redis: n)
        stop = threading.Event()
        t = threading.Thread(target=worker.reap, args=(None, tmp_path, worker.WorkerConfig("redis://x", tmp_path,
                                                                                          lease=2.0), stop))
        t.start()
        time.sleep(1.5)
        stop.set()
        t.join()
        assert sent == expected, (waiting_in_redis, sent)
