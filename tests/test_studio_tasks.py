"""One engine command as a studio job (generate, grid, tune) and the train kind: what the web UI's pages queue
and the worker runs. The job must leave the same files as the command run directly, start again cleanly after
a kill, and refuse bad options before it is queued."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loracam.config import to_dict
from loracam.errors import LoracamError
from loracam.studio.job import StudioConfig, create_job, run_job
from loracam.studio.store import JobStore
from loracam.studio.tasks import DONE, TaskConfig

REQUEST = dict(prompt="1girl, upper body, red dress", seed=77, steps=6, cfg=5.0)
AXES = ["CFG Scale=3,7", "Steps=4,6"]


def _pixels(paths):
    return [np.asarray(Image.open(p)) for p in paths]


def test_a_grid_job_gives_the_commands_cells_and_a_killed_half_is_written_again(tmp_path):
    from loracam.generate import GenRequest
    from loracam.grid import AxisSpec, GridOptions, run_grid
    from loracam.lora import LoraLibrary
    from loracam.models import ModelCache

    models = ModelCache()
    direct = run_grid(GenRequest(**REQUEST), [AxisSpec.parse(a) for a in AXES], GridOptions(), models,
                      LoraLibrary([]), tmp_path / "direct")
    store = JobStore(tmp_path / "studio")
    args = {"request": to_dict(GenRequest(**REQUEST)), "axes": AXES, "options": {}}
    create_job(store, TaskConfig(name="g", kind="grid", args=args))
    folder = run_job(store, "g", echo=lambda s: None, models=models)
    out = folder / "grid"
    cells = sorted(out.glob("*.png"))[:-1]  # the last is the grid picture
    assert len(cells) == 4 and (out / DONE).is_file()
    for a, b in zip(_pixels(cells), _pixels(direct.paths["cells"])):
        np.testing.assert_array_equal(a, b)  # same process, same ops: bit-identical
    assert store.job("g").status == "done" and store.steps("g")[0].detail["cells"] == 4

    # a run killed half-way leaves files and no mark: the next run empties the folder and writes it whole
    (out / DONE).unlink()
    (out / "99999-half.png").write_bytes(b"half")
    store.db.execute("UPDATE steps SET status='pending' WHERE job='g'")
    store.db.execute("UPDATE jobs SET status='stopped' WHERE name='g'")
    run_job(store, "g", echo=lambda s: None, models=models)
    again = sorted(out.glob("*.png"))
    assert [p.name for p in again] == [p.name for p in cells] + [sorted(direct.paths["grid"].parent.glob("*.png"))[-1].name]
    for a, b in zip(_pixels(again[:-1]), _pixels(cells)):
        np.testing.assert_array_equal(a, b)


def test_generate_and_tune_jobs_write_their_files_and_say_what_they_found(tmp_path):
    from loracam.generate import GenRequest
    from loracam.tune.run import TuneConfig

    store = JobStore(tmp_path / "studio")
    create_job(store, TaskConfig(name="gen", kind="generate", args=to_dict(GenRequest(**REQUEST, batch_size=2))))
    folder = run_job(store, "gen", echo=lambda s: None)
    images = sorted((folder / "images").glob("*.png"))
    assert [p.name for p in images] == ["00000-77.png", "00001-78.png"]
    assert "Seed: 78" in Image.open(images[1]).text["parameters"]

    import torch

    from loracam.lora.formats import random_lora, write_kohya
    from loracam.models import ModelCache

    toy = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    write_kohya(lora_dir / "testdress.safetensors", random_lora(toy.unet, toy.text_encoder, seed=0, std=0.02),
                {"loracam_trigger": "testdress", "loracam_subject": "garment"})
    prompt = "1girl, full body, testdress <lora:testdress:1>"
    tune = TuneConfig(prompt=prompt, seeds=(1000,), budget=6, neighbourhood=0, lora_dirs=(str(lora_dir),), steps=8)
    create_job(store, TaskConfig(name="t", kind="tune", args=to_dict(tune)))
    folder = run_job(store, "t", echo=lambda s: None)
    data = json.loads((folder / "tune" / "tune.json").read_text())
    assert [s["seed"] for s in data["seeds"]] == [1000] and 1 <= data["renders"] <= 6
    assert all(str(folder / "tune") in f for f in data["files"].values())  # the paths it names exist
    assert any(kind == "tune" and "seed 1000:" in m for _, kind, m in store.events("t"))


def test_bad_task_and_train_options_are_refused_before_the_job_is_queued(tmp_path):
    store = JobStore(tmp_path / "studio")
    with pytest.raises(LoracamError, match="unknown task 'render'"):
        TaskConfig(name="x", kind="render")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 96)).save(photos / "a.png")
    with pytest.raises(LoracamError, match=r"unknown key\(s\) rnak"):
        create_job(store, StudioConfig(name="t", kind="train", photos=str(photos), train_options={"rnak": 4}))
    with pytest.raises(LoracamError, match="train options output: the job sets these itself"):
        create_job(store, StudioConfig(name="t", kind="train", photos=str(photos), train_options={"output": "x"}))
    with pytest.raises(LoracamError, match="--rank must be at least 1"):
        create_job(store, StudioConfig(name="t", kind="train", photos=str(photos), train_options={"rank": 0}))
    assert store.jobs() == [] and not (tmp_path / "studio" / "t").exists()


def test_a_train_job_is_prep_and_train_with_the_users_options(tmp_path):
    from loracam.lora import read_lora
    from loracam.toy.photos import write_photos

    photos = tmp_path / "photos"
    write_photos(photos, "sks", 6, seed=3, size=(192, 288))
    store = JobStore(tmp_path / "studio")
    create_job(store, StudioConfig(name="mine", kind="train", photos=str(photos), train_steps=4,
                                   train_options={"rank": 4, "alpha": 2.0}))
    assert [s.name for s in store.steps("mine")] == ["prep", "train"]
    folder = run_job(store, "mine", echo=lambda s: None)
    lora = read_lora(folder / "lora" / "mine.safetensors")
    assert {m.dim for m in lora.modules.values()} == {4} and {m.alpha for m in lora.modules.values()} == {2.0}
    assert json.loads(lora.metadata["loracam_config"])["max_steps"] == 4


def test_a_cancel_reaches_a_training_step_through_the_heartbeat(tmp_path):
    """The heartbeat renews the lease while a step works; when it finds the job cancelled, training stops at
    its next step with a checkpoint (not at the end of the step, which may be hours away), and resume goes on."""
    import threading
    import time

    from loracam.studio.store import Cancelled
    from loracam.toy.photos import write_photos

    photos = tmp_path / "photos"
    write_photos(photos, "sks", 6, seed=3, size=(192, 288))
    store = JobStore(tmp_path / "studio")
    create_job(store, StudioConfig(name="long", kind="train", photos=str(photos), train_steps=2000,
                                   train_options={"rank": 4, "alpha": 4.0}))
    raised = []

    def work():
        local = JobStore(tmp_path / "studio")
        try:
            run_job(local, "long", echo=lambda s: None, lease_seconds=0.4)
        except Cancelled as exc:
            raised.append(exc)

    t = threading.Thread(target=work)
    t.start()
    log = tmp_path / "studio" / "long" / "lora" / "long.events.jsonl"
    deadline = time.time() + 60
    while (not log.is_file() or '"step"' not in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    at_cancel = max(json.loads(line)["step"] for line in log.read_text().splitlines() if '"event": "step"' in line)
    store.cancel("long")
    t.join(timeout=60)
    assert not t.is_alive() and raised, "the cancel did not stop the training step"
    assert store.job("long").status == "cancelled"
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"event": "step"' in line]
    # a few steps after the cancel, not the 2000: counted in steps, not seconds, so a loaded machine (which slows
    # the heartbeat and the training alike) does not fail it (it took 17 s beside two busy loops, 2 s quiet)
    assert steps[-1] - at_cancel < 200, (at_cancel, steps[-1])
    assert list((log.parent / "long.state").glob("step-*.pt"))  # stopped with a checkpoint


def _finished_or_cancelled_meanwhile(monkeypatch, tmp_path, meanwhile):
    """A second message for a job (the reapers' resends are duplicates by design) reaches a worker that reads the
    job as waiting; before it takes the lease, ``meanwhile`` changes the job from another process's connection.
    check_inputs is the call between the worker's read and its lease, so the change lands there."""
    import loracam.studio.job as job_module

    store = JobStore(tmp_path / "studio")
    args = {"request": to_dict(_small_request()), "axes": ["CFG Scale=3,7"], "options": {}}
    create_job(store, TaskConfig(name="g", kind="grid", args=args))
    store.enqueue("g")
    original = job_module.check_inputs
    calls = []

    def racing(s, name, accept_changes=False):
        if not calls:
            calls.append(name)
            other = JobStore(tmp_path / "studio")
            meanwhile(other)
            other.close()
        return original(s, name, accept_changes)

    monkeypatch.setattr(job_module, "check_inputs", racing)
    return store


def _small_request():
    from loracam.generate import GenRequest

    return GenRequest(prompt="1girl, upper body", seed=3, steps=2, cfg=5.0)


def test_a_job_finished_by_another_worker_after_the_look_is_not_taken_again(tmp_path, monkeypatch):
    from loracam.models import ModelCache

    models = ModelCache()

    def finish(other):  # the first worker runs it to the end in the meantime
        run_job(other, "g", echo=lambda s: None, models=models, who="w1@test")

    store = _finished_or_cancelled_meanwhile(monkeypatch, tmp_path, finish)
    said = []
    run_job(store, "g", echo=said.append, models=models, who="w2@test")
    workers = [m for _, kind, m in store.events("g") if kind == "worker"]
    assert len(workers) == 1 and "w1@test" in workers[0], workers  # w2 never held it
    assert store.job("g").status == "done" and store.job("g").owner is None
    assert sum(kind == "step" for _, kind, _ in store.events("g")) == 1
    assert any("already done" in s for s in said), said


def test_a_job_cancelled_after_the_look_stays_cancelled_and_runs_nothing(tmp_path, monkeypatch):
    from loracam.models import ModelCache
    from loracam.studio.store import Cancelled

    store = _finished_or_cancelled_meanwhile(monkeypatch, tmp_path, lambda other: other.cancel("g"))
    with pytest.raises(Cancelled, match="cancelled"):
        run_job(store, "g", echo=lambda s: None, models=ModelCache(), who="w2@test")
    assert store.job("g").status == "cancelled" and store.job("g").owner is None
    assert store.steps("g")[0].status == "pending" and not list((tmp_path / "studio" / "g").rglob("*.png"))
    assert not any(kind == "worker" for _, kind, _ in store.events("g"))
    # an explicit resume still runs it: the user's own `studio resume g` reads it as cancelled and means it
    store.enqueue("g")
    run_job(store, "g", echo=lambda s: None, models=ModelCache())
    assert store.job("g").status == "done"


def test_a_generate_job_on_an_sdxl_base_is_the_command_s_image(tmp_path):
    """What a worker runs for the web UI's generate page on an SDXL base (its size, both encoders, size ids): the
    image `gen` makes, bit for bit (same process, same ops)."""
    from loracam.generate import GenRequest, generate
    from loracam.models import ModelCache

    req = GenRequest(prompt="1girl, red dress", negative="ugly", base="random:tiny-sdxl", seed=5, steps=4,
                     width=64, height=64)
    models = ModelCache()
    direct = generate(req, models).images[0]
    store = JobStore(tmp_path / "studio")
    create_job(store, TaskConfig(name="xl", kind="generate", args=to_dict(req)))
    folder = run_job(store, "xl", echo=lambda s: None, models=models)
    [png] = sorted((folder / "images").glob("*.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(png)), np.asarray(direct.image))
    assert 'Model: "random:tiny-sdxl"' in Image.open(png).text["parameters"]  # A1111 quotes a value with a colon
