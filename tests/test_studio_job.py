"""The studio job on the toy world: it runs end to end, resumes after kill -9 without redoing finished work,
and refuses bad input with a message (changed photos, a vanished folder, a typo'd style, a held lease)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from loracam.errors import LoracamError
from loracam.io import DiskFull
from loracam.studio.job import StudioConfig, create_job, run_job
from loracam.studio.store import JobStore
from loracam.toy.photos import write_photos

STYLES = ("toy-studio", "toy-garden")
QUICK = dict(styles=STYLES, per_style=4, keep=2, train_steps=24, batch_size=4)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sks-photos")
    write_photos(folder, "sks", 6, seed=3, size=(384, 576))
    return folder


def _config(photos, name="doll", **kw):
    return StudioConfig(name=name, photos=str(photos), subject="face", **{**QUICK, **kw})


def _steps(store, name):
    return {s.name: s.status for s in store.steps(name)}


def test_a_job_runs_end_to_end_through_a_full_disk_and_says_what_it_kept(photos, tmp_path, monkeypatch):
    """The whole job; on the way the disk fills while candidates are written: the job stops at the last good
    step with the message, keeps what it wrote, and resume finishes without rendering those again."""
    import loracam.studio.portrait as portrait
    from PIL import Image

    store = JobStore(tmp_path / "studio")
    create_job(store, _config(photos))
    real, calls = portrait._save, []

    def full(path, rendered):
        calls.append(path)
        if len(calls) == 3:
            raise DiskFull(path)
        real(path, rendered)

    monkeypatch.setattr(portrait, "_save", full)
    with pytest.raises(LoracamError, match="stopped at step render: the disk is full.*studio resume doll"):
        run_job(store, "doll", echo=lambda s: None)
    steps = _steps(store, "doll")
    assert steps["prep"] == steps["train"] == "done" and steps["render"] == "failed"
    made = sorted((tmp_path / "studio" / "doll" / "candidates" / "toy-studio").glob("*.png"))
    assert [p.name for p in made] == ["000-1000.png", "001-1001.png"]  # the files written before it stand
    stamp = made[0].stat().st_mtime_ns
    monkeypatch.setattr(portrait, "_save", real)

    folder = run_job(store, "doll", echo=lambda s: None)
    assert set(_steps(store, "doll").values()) == {"done"} and store.job("doll").status == "done"
    assert made[0].stat().st_mtime_ns == stamp  # kept, not rendered again
    for style in STYLES:
        cands = sorted((folder / "candidates" / style).glob("*.png"))
        assert [p.name for p in cands] == ["000-1000.png", "001-1001.png", "002-1002.png", "003-1003.png"]
        ranking = json.loads((folder / "judge" / style / "ranking.json").read_text())
        kept = sorted(e["rank"] for e in ranking["entries"] if e.get("rank") is not None)
        assert kept[:2] == [1, 2]
        finals = sorted((folder / "final" / style).glob("*.png"))
        assert len(finals) == 2
        with Image.open(finals[0]) as im:  # toy styles upscale 4x, keeping the infotext and adding Extras keys
            assert im.size == (256, 384)
            assert "Postprocess upscaler: toy-4x" in im.info["extras"] and "Seed: " in im.info["parameters"]
    report = json.loads((folder / "gallery" / "report.json").read_text())
    assert set(report["probe"]["styles"]) == set(STYLES)
    assert all(v["n"] == 2 for v in report["probe"]["styles"].values())
    html = (folder / "gallery" / "index.html").read_text()
    assert "final/toy-studio/" in html and "training.png" in html and "judge/toy-garden/sheet.png" in html
    assert (folder / "gallery" / "training.png").is_file()
    kinds = {(step, kind) for step, _, kind in store.artefacts("doll")}
    assert {("prep", "dataset"), ("train", "lora"), ("render", "candidate"), ("judge", "ranking"), ("upscale", "final"),
            ("gallery", "gallery")} <= kinds
    assert len(store.artefacts("doll", "upscale")) == 4 and len(store.artefacts("doll", "render")) == 8
    again = []
    run_job(store, "doll", echo=again.append)
    assert any("already done" in line for line in again)


def test_kill_9_in_training_then_changed_photos_then_resume_from_the_checkpoint(photos, tmp_path):
    """kill -9 while the CLI trains; the photos then change and vanish: resume refuses, saying what changed;
    with --accept-changes it goes on from the training checkpoint (prep, done before, is not redone)."""
    mine = tmp_path / "photos"
    shutil.copytree(photos, mine)
    studio = tmp_path / "studio"
    cmd = [sys.executable, "-m", "loracam.cli", "studio", "run", str(mine), "--name", "k", "--studio", str(studio),
           "--styles", ",".join(STYLES), "--per-style", "4", "--keep", "2", "--train-steps", "40",
           "--batch-size", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lora_dir = studio / "k" / "lora"
    deadline = time.time() + 240
    # a checkpoint is its LoRA file and then its resume state: kill once the state is there
    while not list(lora_dir.glob("k.state/step-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(lora_dir.glob("k.state/step-*.pt")), "no checkpoint was written before the deadline"
    assert not (lora_dir / "k.safetensors").exists(), "training finished before the kill; the test proves nothing"
    store = JobStore(studio)
    assert _steps(store, "k")["prep"] == "done" and _steps(store, "k")["train"] == "running"
    manifest = (studio / "k" / "dataset" / "manifest.json").stat().st_mtime_ns

    (mine / "photo_001.png").write_bytes((mine / "photo_002.png").read_bytes())
    (mine / "photo_005.png").unlink()
    with pytest.raises(LoracamError, match=r"photos in .* changed \(removed: photo_005.png; changed: photo_001.png\)"):
        run_job(store, "k", echo=lambda s: None)
    shutil.rmtree(mine)
    with pytest.raises(LoracamError, match="photos folder .* is gone.*--accept-changes"):
        run_job(store, "k", echo=lambda s: None)
    assert _steps(store, "k")["train"] == "running"  # untouched by the refusals

    run_job(store, "k", echo=lambda s: None, accept_changes=True, stop_after="train")  # the rest: the test above
    assert _steps(store, "k")["train"] == "done" and (lora_dir / "k.safetensors").is_file()
    assert any(k == "accepted" for _, k, _ in store.events("k"))
    assert (studio / "k" / "dataset" / "manifest.json").stat().st_mtime_ns == manifest  # prep not redone
    starts = [json.loads(line) for line in (lora_dir / "k.events.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert starts[0]["resumed_at"] == 0 and starts[-1]["resumed_at"] >= 10  # continued from the checkpoint


def test_bad_styles_and_held_jobs_are_refused_clearly(photos, tmp_path):
    store = JobStore(tmp_path / "studio")
    with pytest.raises(LoracamError, match="unknown style 'toy-stuido'.*toy-studio"):
        create_job(store, _config(photos, styles=("toy-stuido",)))
    with pytest.raises(LoracamError, match="written for a sd15 base"):
        create_job(store, _config(photos, styles=("studio",)))
    assert store.jobs() == []
    create_job(store, _config(photos, name="h"))
    other = JobStore(tmp_path / "studio")
    other.acquire("h", owner=f"{os.uname().nodename}:{os.getppid()}")
    with pytest.raises(LoracamError, match="being run by another process"):
        run_job(store, "h", echo=lambda s: None)
    assert set(_steps(store, "h").values()) == {"pending"}


def test_the_cli_reports_a_missing_photos_folder_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "run", str(tmp_path / "nope"), "--name", "x",
                           "--studio", str(tmp_path / "s")], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_dressup_picks_seeds_then_the_lightest_weights_that_show_every_lora(tmp_path):
    """The NGA workflow as a job, with two random LoRAs named as the toy world's garment and shoes (what they
    draw does not matter here: the test recomputes the probe's verdicts and checks the job's choices)."""
    import torch

    from loracam.lora.formats import random_lora, write_kohya
    from loracam.models import ModelCache
    from loracam.studio.probe_report import read_files
    from loracam.toy.judge import shows

    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    loras = []
    for i, trigger in enumerate(("testdress", "myshoes")):
        path = tmp_path / "loras" / f"{trigger}-lora.safetensors"
        path.parent.mkdir(exist_ok=True)
        write_kohya(path, random_lora(model.unet, model.text_encoder, seed=i, std=0.02),
                    {"loracam_trigger": trigger, "loracam_recommended_weight": "0.8"})
        loras.append(str(path))
    store = JobStore(tmp_path / "studio")
    create_job(store, StudioConfig(name="dress", kind="dressup", subject="garment", loras=tuple(loras), seeds=4, keep=2))
    folder = run_job(store, "dress", echo=lambda s: None)
    assert set(_steps(store, "dress").values()) == {"done"}
    picked = json.loads((folder / "seeds" / "picked.json").read_text())
    best = sorted(picked["scores"].items(), key=lambda kv: (-kv[1], int(kv[0])))
    assert picked["picked"] == [int(s) for s, _ in best[:2]]
    chosen = json.loads((folder / "weights" / "chosen.json").read_text())
    assert sorted(map(int, chosen)) == sorted(picked["picked"])
    for seed, c in chosen.items():
        cells = sorted((folder / "weights" / seed).glob("*.png"))
        assert len(cells) == 9  # 0.6/0.8/1.0 for each of the two LoRAs
        reads = read_files(cells)
        score = {p.name: (shows(r, "testdress") + shows(r, "myshoes")) / 2 for p, r in zip(cells, reads)}
        top = max(score.values())
        assert score[c["file"]] == top
        assert sum(c["weights"]) == min(sum(float(x) for x in n[:-4].split("-")[1:]) for n, s in score.items() if s == top)
        assert (folder / "weights" / f"{seed}-grid.png").is_file()
        from PIL import Image

        with Image.open(folder / "final" / c["file"]) as im:
            assert im.size == (256, 384) and "toy-4x" in im.info["extras"]
            assert "<lora:testdress-lora:" in im.info["parameters"]
    assert "seed" in (folder / "gallery" / "index.html").read_text()


def test_a_job_from_a_newer_loracam_is_refused_and_the_cli_lists_status_and_cancels(photos, tmp_path):
    import sqlite3

    from typer.testing import CliRunner

    from loracam.cli import app

    studio = tmp_path / "studio"
    store = JobStore(studio)
    create_job(store, _config(photos, name="n"))
    create_job(store, _config(photos, name="old"))
    runner = CliRunner()
    listed = runner.invoke(app, ["studio", "list", "--studio", str(studio)])
    assert listed.exit_code == 0 and "n " in listed.output and "0/6 steps" in listed.output
    status = runner.invoke(app, ["studio", "status", "old", "--studio", str(studio)])
    assert status.exit_code == 0 and "prep" in status.output and "pending" in status.output
    cancelled = runner.invoke(app, ["studio", "cancel", "old", "--studio", str(studio)])
    assert cancelled.exit_code == 0 and store.job("old").status == "cancelled"
    missing = runner.invoke(app, ["studio", "status", "nope", "--studio", str(studio)])
    assert missing.exit_code == 2 and "no job named 'nope'" in missing.output
    db = sqlite3.connect(studio / "jobs.sqlite")
    db.execute("UPDATE jobs SET version = version + 1 WHERE name = 'n'")
    db.commit()
    db.close()
    with pytest.raises(LoracamError, match="newer loracam.*upgrade"):
        run_job(store, "n", echo=lambda s: None)
    assert set(_steps(store, "n").values()) == {"pending"}


def test_prep_finds_toy_faces_and_flags_another_doll(photos, tmp_path):
    """prep --face-model toy: close-up crops at the toy size around each doll's face, captioned with the toy's
    close-up framing; a photo of another doll is dropped as 'may be someone else', like dlib's outliers."""
    from PIL import Image

    from loracam.data.config import PrepConfig
    from loracam.data.prep import prepare

    mine = tmp_path / "photos"
    shutil.copytree(photos, mine)
    write_photos(tmp_path / "other", "none", 1, seed=11, size=(384, 576))
    shutil.copy(tmp_path / "other" / "photo_000.png", mine / "stranger.png")
    cfg = PrepConfig(subject="face", trigger="sks", class_word="1girl", class_phrase="1girl, close-up",
                     resolution=(64, 96), face_model="toy", keep=())
    result = prepare(mine, tmp_path / "ds", cfg)
    by_name = {r.name: r for r in result.records}
    assert by_name["stranger.png"].status == "dropped" and "someone else" in by_name["stranger.png"].reason
    kept = [r for r in result.records if r.status == "kept"]
    assert len(kept) >= 4 and all(len(r.embedding) == 7 for r in kept)  # the probe's face classes
    crops = sorted((tmp_path / "ds" / "img").glob("*/*.png"))
    assert len(crops) == len(kept) and all(Image.open(c).size == (64, 96) for c in crops)
    assert {c.with_suffix(".txt").read_text().strip() for c in crops} == {"sks, 1girl, close-up"}


def test_a_changed_base_model_stops_a_resume(photos, tmp_path):
    from loracam.models.loader import TOY_DIR

    base = tmp_path / "base"
    shutil.copytree(TOY_DIR, base)
    store = JobStore(tmp_path / "studio")
    create_job(store, _config(photos, name="b", base=str(base), styles=("studio",)))
    config = base / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("}", ', "edited": 1}', 1))
    with pytest.raises(LoracamError, match="base model .* is not the one the job began with"):
        run_job(store, "b", echo=lambda s: None)
    assert set(_steps(store, "b").values()) == {"pending"}


def test_a_real_base_job_takes_the_dlib_path_and_survives_a_judge_that_keeps_nothing(astronaut, tmp_path):
    """The path real models take (dlib prep and identity, an sd15 style from the user's folder, a real
    upscaler name), on random:tiny: its renders hold no face, so the judge drops every candidate and says
    why, and the job still ends with a gallery that shows that instead of failing."""
    from PIL import ImageOps

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate((astronaut, ImageOps.mirror(astronaut), astronaut.rotate(4))):
        im.save(photos / f"me_{i}.jpg", quality=92)
    styles = tmp_path / "styles"
    styles.mkdir()
    (styles / "tiny-studio.toml").write_text(
        'version = 1\nbase = "sd15"\nsubjects = ["face"]\nprompt = "{trigger}, a photo of a {class}, studio"\n'
        'sampler = "Euler"\nsteps = 2\ncfg = 7\nsize = "64x64"\ncandidates = 3\n[upscale]\nmodel = "lanczos"\n'
        'scale = 2\n')
    store = JobStore(tmp_path / "studio")
    create_job(store, StudioConfig(name="real", photos=str(photos), subject="face", class_word="woman",
                                   base="random:tiny", styles=("tiny-studio",), style_dirs=(str(styles),),
                                   per_style=3, keep=2, train_steps=2))
    folder = run_job(store, "real", echo=lambda s: None)
    assert set(_steps(store, "real").values()) == {"done"}
    manifest = json.loads((folder / "dataset" / "manifest.json").read_text())
    assert sum(p["status"] == "kept" for p in manifest["photos"]) == 3
    assert all(len(p["embedding"]) == 128 for p in manifest["photos"])  # dlib's descriptor
    ranking = json.loads((folder / "judge" / "tiny-studio" / "ranking.json").read_text())
    assert ranking["baseline"] is not None and all(not e["kept"] and e["reason"] for e in ranking["entries"])
    assert list((folder / "final" / "tiny-studio").glob("*.png")) == []
    assert "kept 0 of 3" in (folder / "gallery" / "index.html").read_text()
