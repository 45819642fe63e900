"""loracam web: the guard's rules, the app through gradio_client (a toy studio job from upload to gallery),
the security refusals over HTTP, and a server killed mid-job whose job still finishes and shows.

The real-browser test is tests/test_web_browser.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loracam.errors import LoracamError
from loracam.web import guard

gradio_client = pytest.importorskip("gradio_client", reason="the web extra is not installed (pip install 'loracam[web]')")

QUICK_JOB = dict(subject="face", trigger="sks", styles=["toy-studio"], train_steps=8, per_style=2, keep=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from loracam.toy.photos import write_photos

    folder = tmp_path_factory.mktemp("web-photos")
    write_photos(folder, "sks", 6, seed=3, size=(384, 576))
    return sorted(folder.glob("*.png"))


def _stop_worker(studio: Path) -> None:
    from loracam.studio.worker import worker_pid

    pid = worker_pid(studio)
    if pid and pid > 0:
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while worker_pid(studio) is not None and time.time() < deadline:
            time.sleep(0.1)


def _client(url: str, auth=None):
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, auth=auth)


def _wait_done(client, name: str, seconds: float) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        job = client.predict(name, api_name="/job")
        if job["status"] in ("done", "stopped", "failed", "cancelled"):
            return job
        time.sleep(1)
    raise AssertionError(f"job {name} did not finish in {seconds} s: {job['summary']}")


# -- the guard's rules -------------------------------------------------------------------------------------


def test_uploads_are_checked_for_count_size_pixels_and_kind(photos, tmp_path):
    limits = guard.Limits(file_mb=1.0, files=4, megapixels=0.5)
    assert guard.check_photos(photos[:4], limits) == photos[:4]
    with pytest.raises(LoracamError, match="6 photos uploaded; at most 4"):
        guard.check_photos(photos, limits)
    with pytest.raises(LoracamError, match="no photos uploaded"):
        guard.check_photos([], limits)
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(int(1.5 * 2**20)))
    with pytest.raises(LoracamError, match=r"big.png is 1.5 MB; at most 1 MB"):
        guard.check_photos([big], limits)
    # a decompression bomb: a tiny PNG whose header says 20000x20000; refused from the header alone
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)
    assert bomb.stat().st_size < 2**20
    with pytest.raises(LoracamError, match=r"9000x9000 \(81 MP\); at most 0.5 MP"):
        guard.check_photos([bomb], limits)
    Image.new("1", (20000, 20000)).save(bomb)  # past Pillow's own bomb limit: refused as well, with our words
    with pytest.raises(LoracamError, match=r"bomb.png is over 179 MP; at most 0.5 MP"):
        guard.check_photos([bomb], limits)
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(LoracamError, match="not a photo"):
        guard.check_photos([text], limits)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(LoracamError, match="could not be read as an image"):
        guard.check_photos([broken], limits)


def test_paths_from_the_client_stay_inside_the_studio(tmp_path):
    root = tmp_path / "studio"
    (root / "job").mkdir(parents=True)
    (root / "job" / "a.png").write_bytes(b"x")
    assert guard.inside(root, "job/a.png") == (root / "job" / "a.png").resolve()
    for bad in ("../secret", "job/../../secret", "/etc/passwd", "\\etc\\passwd", "", "C:/x", "job/\x00"):
        with pytest.raises(LoracamError):
            guard.inside(root, bad)
    (tmp_path / "outside.txt").write_text("no")
    (root / "job" / "link").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(LoracamError, match="leads outside"):
        guard.inside(root, "job/link")


def test_listen_without_auth_and_a_bad_auth_are_refused_before_anything_starts(tmp_path):
    for args, message in ((["--listen"], "needs --auth USER:PASS"), (["--auth", "nopassword"], "--auth takes USER:PASS")):
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "loracam.cli", "web", "--studio", str(tmp_path / "s"), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert time.time() - t < 60
    assert not (tmp_path / "s").exists()  # refused before the studio folder or a worker was made
    assert guard.check_listen(False, None) == "127.0.0.1"
    assert guard.check_listen(True, ("u", "p")) == "0.0.0.0"


# -- the app through gradio_client -----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """The app in this process on a free localhost port, its worker in another; both stopped after."""
    from loracam.web.server import ServeConfig, launch

    studio = tmp_path / "studio"
    servers = []

    def start(**kw):
        app, url = launch(ServeConfig(studio=studio, port=free_port(), **kw), block=False, echo=lambda s: None)
        servers.append(app)
        return app, url

    start.studio = studio
    yield start
    for app in servers:
        app.close()
    _stop_worker(studio)


def test_a_studio_job_from_upload_to_gallery_through_the_api(server, photos):
    import httpx

    app, url = server()
    c = _client(url)
    assert c.predict(api_name="/jobs") == []
    # the API is the pages' actions and nothing else (gradio 6 publishes an event named "false" for api_name=False)
    endpoints = set(httpx.get(f"{url}gradio_api/info").json()["named_endpoints"])
    assert endpoints == {"/start_studio", "/start_train", "/cancel", "/resume", "/generate", "/read_png", "/grid",
                         "/tune", "/jobs", "/job", "/job_file", "/library", "/base_models"}, endpoints
    message, _ = c.predict([gradio_client.handle_file(str(p)) for p in photos], "doll", *QUICK_JOB.values(),
                           api_name="/start_studio")
    assert "doll" in message and "queued" in message
    job = _wait_done(c, "doll", 150)
    assert job["status"] == "done", job["summary"]
    assert len(job["gallery"]) == 1 and job["gallery"][0]["caption"].startswith("toy-studio #1: ")
    assert job["loss_points"] == 8  # the training curve, one point a step
    assert any(d.endswith("doll.safetensors") for d in job["downloads"])
    # the uploads were kept in the studio folder, the user's files untouched
    kept = sorted((server.studio / "uploads" / "doll").iterdir())
    assert [p.read_bytes() for p in kept] == [p.read_bytes() for p in photos]
    assert c.predict(api_name="/jobs")[0][:4] == ["doll", "portrait", "done", "6/6"]
    # a file of the job by its relative path; anything outside the studio is refused
    got = c.predict("doll", "lora/doll.safetensors", api_name="/job_file")
    assert Path(got).read_bytes() == (server.studio / "doll" / "lora" / "doll.safetensors").read_bytes()
    for bad in ("../../etc/passwd", "/etc/passwd"):
        with pytest.raises(Exception, match="studio folder"):
            c.predict("doll", bad, api_name="/job_file")
    # Gradio's own file route serves the studio folder and nothing else
    inside = httpx.get(f"{url}gradio_api/file={server.studio / 'doll' / 'gallery' / 'report.json'}")
    assert inside.status_code == 200
    for outside in ("/etc/passwd", f"{server.studio}/../outside.txt"):
        assert httpx.get(f"{url}gradio_api/file={outside}").status_code in (403, 404)
    # the same name again is refused with a message, not a traceback
    with pytest.raises(Exception, match="a job named 'doll' exists"):
        c.predict([gradio_client.handle_file(str(p)) for p in photos], "doll", *QUICK_JOB.values(),
                  api_name="/start_studio")
    _the_hobbyist_pages(c, server.studio, photos)


def _the_hobbyist_pages(c, studio: Path, photos):
    """Train, Generate, Grid and Tune on the same server: each queues a job the worker runs."""
    # Train: photos to a LoRA with the user's rank; it shows in the library (the studio's LoRAs are listed)
    c.predict([gradio_client.handle_file(str(p)) for p in photos], "mine", "face", "sks", "", "toy", 4, 4, None,
              api_name="/start_train")
    assert _wait_done(c, "mine", 120)["status"] == "done"
    rows = {r[0]: r for r in c.predict(api_name="/library")["data"]}
    assert rows["mine"][2] == "4" and rows["doll"][2] == "8"
    assert set(rows) == {"doll", "mine"}  # the checkpoints saved while training are not listed
    from loracam.web.handlers import Handlers, WebConfig

    assert Handlers(WebConfig(studio)).lora_names() == ["doll", "mine"]  # what the pickers offer
    # Generate renders in the worker, with the studio's LoRA, and says what it did (A1111's infotext)
    images, infotext, status = c.predict("1girl, close-up, sks <lora:doll:1>", "", "toy", "Euler a", 6, 5, 31, 0, 0,
                                         2, api_name="/generate")
    assert len(images) == 2 and "done" in status
    assert "Seed: 32" in infotext and 'Lora hashes: "doll: ' in infotext
    generated = status.split("`")[1]
    assert f"[{generated}] == generate" in (studio / "worker.log").read_text()  # run by the worker, not the server
    # Grid: a LoRA weight axis; the cells are named by what varies
    grid, cells, status = c.predict("1girl, close-up, sks <lora:doll:1>", "", "toy", "Euler a", 6, 5, 31, 0, 0,
                                    "lora:doll", "0,1", "Nothing", "", "Nothing", "", 0, api_name="/grid")
    assert [cell["caption"] for cell in cells] == ["<lora:doll:0>", "<lora:doll:1>"] and grid
    with pytest.raises(Exception, match="give at least one axis"):
        c.predict("x", "", "toy", "Euler a", 6, 5, 31, 0, 0, "Nothing", "", "Nothing", "", "Nothing", "", 0,
                  api_name="/grid")
    # Tune: the weights found per seed, the search's picture, its report
    with pytest.raises(Exception, match="a budget of 4 renders a seed is too small for 1 LoRA"):
        c.predict("1girl, close-up, sks <lora:doll:1>", "", "toy", 1, 4, api_name="/tune")  # said before queueing
    rows, pictures, report, status = c.predict("1girl, close-up, sks <lora:doll:1>", "", "toy", 1, 6, api_name="/tune")
    assert len(rows["data"]) == 1 and rows["data"][0][1].startswith("doll ") and "search renders" in report
    assert [p["caption"] for p in pictures][0] == "the search"
    jobs = c.predict(api_name="/jobs")
    assert {r[1] for r in jobs} == {"portrait", "train", "generate", "grid", "tune"}
    assert all(r[2] == "done" for r in jobs) and len(jobs) == 5  # the refused tune made no job
    page = Handlers(WebConfig(studio)).jobs(requests=False)  # the Jobs page, its "show requests" box unticked
    assert {r[1] for r in page} == {"portrait", "train"}


def test_the_library_lists_base_models_by_their_tensors(tmp_path):
    from safetensors.numpy import save_file

    from loracam.web import views

    import numpy as np

    z = np.zeros(1, np.float32)
    one = {"model.diffusion_model.input_blocks.0.0.weight": np.zeros((2, 2), np.float32)}
    save_file(one, str(tmp_path / "sd15.safetensors"))
    save_file({**one, "conditioner.embedders.0.x": z}, str(tmp_path / "xl.safetensors"))
    # ComfyUI's split file of a FLUX.1 transformer: no model.diffusion_model. prefix, still a base to list
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": z}, str(tmp_path / "flux1-dev.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": z}, str(tmp_path / "a-lora.safetensors"))
    save_file({"encoder.conv_in.weight": z}, str(tmp_path / "a-vae.safetensors"))
    for name, pipeline in (("folder", "StableDiffusionPipeline"), ("xl-folder", "StableDiffusionXLPipeline")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model_index.json").write_text(f'{{"_class_name": "{pipeline}"}}')
    rows = {r[0]: r for r in views.base_rows([tmp_path])}
    assert set(rows) == {"toy", "sd15", "xl", "flux1-dev", "folder", "xl-folder"}  # a LoRA, a VAE are no bases
    assert rows["sd15"][1] == "SD1.x" and rows["folder"][1] == "SD1.x (diffusers folder)"
    assert rows["xl"][1] == "SDXL" and rows["xl-folder"][1] == "SDXL (diffusers folder)"  # a base the web UI offers
    assert rows["flux1-dev"][1].startswith("not usable") and "is a FLUX.1 model" in rows["flux1-dev"][1]


def test_a_wrong_password_and_an_oversize_upload_are_refused(server, photos, tmp_path):
    import httpx

    from loracam.web.guard import Limits

    app, url = server(auth=("me", "a-long-password"), limits=Limits(file_mb=0.5), worker=False)
    assert httpx.post(f"{url}login", data={"username": "me", "password": "wrong"}).status_code in (400, 401)
    assert httpx.get(f"{url}gradio_api/info").status_code in (401, 403)
    c = _client(url, auth=("me", "a-long-password"))
    assert c.predict(api_name="/jobs") == []  # the right password gets in
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(2**20))
    with httpx.Client() as h:
        assert h.post(f"{url}login", data={"username": "me", "password": "a-long-password"}).status_code == 200
        r = h.post(f"{url}gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
        assert r.status_code == 413, r.text
        small = h.post(f"{url}gradio_api/upload", files={"files": ("p.png", photos[0].read_bytes(), "image/png")})
        assert small.status_code == 200


def _serve(studio: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loracam.cli", "web", "--port", str(port), "--studio", str(studio)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_up(url: str, seconds: float = 90):
    import httpx

    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {seconds} s")


def test_a_job_survives_a_killed_server_and_a_killed_worker(tmp_path, photos):
    """kill -9 the server mid-training: its worker goes on. kill -9 the worker too; a new server starts a new
    worker, which takes the job over at once and resumes it from its checkpoint; the job shows done."""
    from loracam.studio.store import JobStore
    from loracam.studio.worker import worker_pid

    studio, port = tmp_path / "studio", free_port()
    url = f"http://127.0.0.1:{port}/"
    first = _serve(studio, port)
    try:
        _wait_up(url)
        c = _client(url)
        c.predict([gradio_client.handle_file(str(p)) for p in photos], "k", "face", "sks", ["toy-studio"], 40, 2, 1,
                  api_name="/start_studio")
        state = studio / "k" / "lora" / "k.state"
        deadline = time.time() + 120
        while not list(state.glob("step-*.pt")) and time.time() < deadline:
            time.sleep(0.2)
        assert list(state.glob("step-*.pt")), "no checkpoint before the deadline"
        first.send_signal(signal.SIGKILL)
        first.wait()
        worker = worker_pid(studio)
        assert worker and worker > 0, "the worker died with the server"
        steps_before = len(list(state.glob("step-*.pt")))
        deadline = time.time() + 60
        while len(list(state.glob("step-*.pt"))) == steps_before and time.time() < deadline:
            time.sleep(0.2)
        assert len(list(state.glob("step-*.pt"))) > steps_before, "the job stopped with the server"
        assert not (studio / "k" / "lora" / "k.safetensors").exists(), "training ended before the kill"
        os.kill(worker, signal.SIGKILL)
        time.sleep(0.5)
        assert JobStore(studio).job("k").status == "running"  # as the killed worker left it

        second = _serve(studio, port)
        try:
            _wait_up(url)
            c = _client(url)
            job = _wait_done(c, "k", 200)
            assert job["status"] == "done", job["summary"]
            assert len(job["gallery"]) == 1
            assert worker_pid(studio) not in (None, worker)  # another worker finished it
        finally:
            second.send_signal(signal.SIGKILL)
            second.wait()
    finally:
        if first.poll() is None:
            first.kill()
        _stop_worker(studio)
    import json

    starts = [json.loads(line) for line in (studio / "k" / "lora" / "k.events.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert starts[-1]["resumed_at"] > 0  # continued from the checkpoint, not from step 0


def test_the_engine_never_imports_the_web_ui_or_the_worker_framework():
    code = ("import sys, loracam.cli, loracam.studio.job, loracam.studio.worker, loracam.studio.tasks, "
            "loracam.generate.api; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('gradio', 'gradio_client', 'celery', 'kombu', 'redis') or m.startswith('loracam.web')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
