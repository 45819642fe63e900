"""The trainer end to end on the tiny model: steps, files, resume (also after kill -9), failures."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from loracam.cli import app
from loracam.errors import LoracamError
from loracam.lora import read_lora
from loracam.train import Control, TrainConfig, train
from loracam.train.events import read_events

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny kohya dataset: 4 training images (2 buckets) with captions and 3 reg images."""
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    train_dir, reg_dir = root / "img" / "5_sks cat", root / "reg" / "1_cat"
    train_dir.mkdir(parents=True)
    reg_dir.mkdir(parents=True)
    for i in range(4):
        size = (64, 64) if i < 3 else (64, 128)
        a = rng.integers(0, 255, (size[1], size[0], 3)).astype("uint8")
        a[16:48, 16:48] = [200, 30, 30]
        Image.fromarray(a).save(train_dir / f"{i}.png")
        (train_dir / f"{i}.txt").write_text("sks, red square, noise")
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3)).astype("uint8")).save(reg_dir / f"r{i}.png")
    return root


@contextmanager
def stopping_after(step: int | None, control: Control):
    """Within the block the trainer asks ``control`` to stop once optimizer step ``step`` is done (None: the first),
    as a UI's stop button would."""
    import loracam.train.trainer as trainer

    real = trainer._Run._at_step

    def stop(self, pos, *a, **k):
        real(self, pos, *a, **k)
        if step is None or pos.step == step:
            control.stop = True

    trainer._Run._at_step = stop
    try:
        yield
    finally:
        trainer._Run._at_step = real


def cfg(dataset: Path, out: Path, **kw) -> TrainConfig:
    base = dict(dataset=str(dataset), output=str(out), base="random:tiny", max_steps=6, resolution=(64, 64),
                rank=4, alpha=2.0, lr=1e-3, seed=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def tensors(path: Path) -> dict:
    return load_file(str(path))


def test_run_writes_a_kohya_lora_with_metadata_events_and_previews(dataset, tmp_path):
    said: list[str] = []
    out = tmp_path / "mylora.safetensors"
    res = train(cfg(dataset, out, save_every_steps=2, preview_every=3, preview_prompts=("sks, red square",)),
                echo=said.append, progress=False)
    assert said[0] == "steps: 4 images x 5 repeats + 3 reg (balanced to 20), batch 1, 1 epochs = 6 steps"
    assert res.steps == 6
    steps = [e["step"] for e in read_events(out.with_name("mylora.events.jsonl")) if e["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in res.checkpoints] == ["mylora-step00000002.safetensors", "mylora-step00000004.safetensors"]
    lora = read_lora(out)
    # no preset: sd-scripts' default trains the text encoder too (the tiny model: 192 U-Net + 4 layers x 6)
    assert len(lora.modules) == 192 + 24 and all(m.dim == 4 and m.alpha == 2.0 for m in lora.modules.values())
    meta = lora.metadata
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2" and meta["ss_steps"] == "6"
    assert meta["ss_num_train_images"] == "20" and meta["ss_num_reg_images"] == "3"
    assert json.loads(meta["ss_tag_frequency"])["5_sks cat"]["sks"] == 4
    assert meta["sshs_model_hash"] and meta["ss_output_name"] == "mylora" and meta["loracam_recommended_weight"]
    previews = sorted(out.with_name("mylora.previews").glob("*.png"))
    assert len(previews) == 2 and "Training step: 3" in Image.open(previews[0]).info["parameters"]
    saved = json.loads(out.with_name("mylora.config.json").read_text())
    assert saved["config"]["rank"] == 4 and saved["plan"]["total_steps"] == 6


def test_stop_and_resume_equals_an_uninterrupted_run(dataset, tmp_path):
    ref = tmp_path / "ref.safetensors"
    train(cfg(dataset, ref, grad_accum=2, max_steps=5, train_text_encoder=True), echo=lambda s: None, progress=False)
    out = tmp_path / "cut.safetensors"
    control = Control()
    with stopping_after(2, control):
        first = train(cfg(dataset, out, grad_accum=2, max_steps=5, train_text_encoder=True), echo=lambda s: None,
                      control=control, progress=False)
    assert first.stopped_early and first.steps == 2 and not out.exists()
    train(cfg(dataset, out, grad_accum=2, max_steps=5, train_text_encoder=True, resume=True), echo=lambda s: None,
          progress=False)
    a, b = tensors(ref), tensors(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def killed_at_step(args: list[str], out: Path, step: int) -> Path:
    """``python -m loracam.train ARGS`` (writing ``out``) killed with SIGKILL once its events log ``step``; its
    events file. The run starts as a user's would: without the MKL setting this process got from importing
    loracam, so an exact resume also shows that `python -m loracam.train` asks MKL for reproducible results."""
    env = {**{k: v for k, v in os.environ.items() if k != "MKL_CBWR"}, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "loracam.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = out.with_name(out.stem + ".events.jsonl")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if events.exists() and any(e.get("step", 0) >= step for e in read_events(events)):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "the run finished before it could be killed; the test proves nothing"
    return events


def test_resume_after_kill_9_equals_an_uninterrupted_run(dataset, tmp_path):
    ref = tmp_path / "ref.safetensors"
    train(cfg(dataset, ref, max_steps=10), echo=lambda s: None, progress=False)
    out = tmp_path / "killed.safetensors"
    events = killed_at_step([str(dataset), "--base", "random:tiny", "-o", str(out), "--max-steps", "10",
                             "--resolution", "64x64", "--rank", "4", "--alpha", "2", "--lr", "1e-3", "--seed", "3",
                             "--device", "cpu", "--save-every", "1"], out, 5)
    train(cfg(dataset, out, max_steps=10, resume=True, save_every_steps=1), echo=lambda s: None, progress=False)
    a, b = tensors(ref), tensors(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    starts = [e for e in read_events(events) if e["event"] == "start"]
    assert starts[-1]["resumed_at"] >= 4


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    import loracam.train.trainer as trainer

    real, calls = trainer.diffusion_loss, []

    def nan_on_third(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(trainer, "diffusion_loss", nan_on_third)
    out = tmp_path / "nan.safetensors"
    with pytest.raises(LoracamError, match="loss became nan at step 3.*learning rate.*last good checkpoint is"):
        train(cfg(dataset, out, save_every_steps=2), echo=lambda s: None, progress=False)
    assert not out.exists() and len(read_lora(tmp_path / "nan-step00000002.safetensors").modules) == 192 + 24


def test_full_disk_keeps_the_earlier_checkpoint(dataset, tmp_path, monkeypatch):
    import loracam.io as io
    import loracam.lora.formats as formats

    real, calls = formats.atomic_write_bytes, []

    def second_write_fills_the_disk(path, data, **kw):
        calls.append(path)
        if len(calls) == 2:  # the step-4 checkpoint: written for real until the disk "fills up"
            def writer(tmp):
                Path(tmp).write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return io.atomic_write(path, writer, **kw)
        return real(path, data, **kw)

    monkeypatch.setattr(formats, "atomic_write_bytes", second_write_fills_the_disk)
    out = tmp_path / "full.safetensors"
    with pytest.raises(LoracamError, match="disk is full.*--resume"):
        train(cfg(dataset, out, save_every_steps=2), echo=lambda s: None, progress=False)
    assert read_lora(tmp_path / "full-step00000002.safetensors").modules
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "full-step00000004.safetensors").exists()


def test_foreign_resume_state_and_finished_runs_are_refused(dataset, tmp_path):
    out = tmp_path / "a.safetensors"
    control = Control(stop=False)
    with stopping_after(None, control):
        train(cfg(dataset, out, save_every_steps=1), echo=lambda s: None, control=control, progress=False)
    with pytest.raises(LoracamError, match="belongs to another run"):
        train(cfg(dataset, out, rank=8, resume=True), echo=lambda s: None, progress=False)
    train(cfg(dataset, out, resume=True), echo=lambda s: None, progress=False)
    with pytest.raises(LoracamError, match="that run finished"):
        train(cfg(dataset, out, resume=True), echo=lambda s: None, progress=False)
    with pytest.raises(LoracamError, match="already exists"):
        train(cfg(dataset, out), echo=lambda s: None, progress=False)


def test_select_best_and_average_by_identity(dataset, tmp_path, monkeypatch):
    import loracam.train.preview as preview
    from loracam.judge.select import CheckpointScore

    scores = {2: 0.4, 4: 0.9, 6: 0.5}
    monkeypatch.setattr(preview, "identity_score", lambda run, step, path: CheckpointScore(step, path, scores[step]))
    out = tmp_path / "best.safetensors"
    res = train(cfg(dataset, out, save_every_steps=2, select="best"), echo=lambda s: None, progress=False)
    assert res.selected == "step 4"
    assert out.read_bytes() == (tmp_path / "best-step00000004.safetensors").read_bytes()
    avg = tmp_path / "avg.safetensors"
    res = train(cfg(dataset, avg, save_every_steps=2, select="average-top-k", select_k=2), echo=lambda s: None,
                progress=False)
    assert res.selected == "average of steps 4, 6"
    assert all(m.dim == 8 for m in read_lora(avg).modules.values())  # two rank-4 deltas, exactly


def test_full_finetune_writes_a_single_file_and_a_diffusers_folder(dataset, tmp_path):
    from loracam.models import LoadOptions, load_base

    out = tmp_path / "tuned.safetensors"
    train(cfg(dataset, out, full=True, max_steps=2, lr=1e-4), echo=lambda s: None, progress=False)
    cpu = LoadOptions(torch.device("cpu"), torch.float32)
    tuned, folder, base = load_base(str(out), cpu), load_base(str(tmp_path / "tuned"), cpu), load_base("random:tiny", cpu)
    w = "down_blocks.0.resnets.0.conv1.weight"
    assert not torch.equal(tuned.unet.state_dict()[w], base.unet.state_dict()[w])
    assert torch.equal(tuned.unet.state_dict()[w], folder.unet.state_dict()[w])


@pytest.mark.parametrize("args,message", [
    (["train", "/nonexistent", "--base", "random:tiny", "-o", "{tmp}/x.safetensors"], "not found"),
    (["train", "{empty}", "--base", "random:tiny", "-o", "{tmp}/x.safetensors"], "no"),
    (["train", "{ds}", "--base", "random:tiny", "-o", "{tmp}/x.safetensors", "--optimizer", "Adam9"], "unknown optimizer"),
    (["train", "{ds}", "--base", "random:tiny", "-o", "{tmp}/x.safetensors", "--lr-scheduler", "zigzag"], "unknown learning-rate"),
    (["train", "{ds}", "--base", "{tmp}/missing.safetensors", "-o", "{tmp}/x.safetensors"], "not found"),
    (["train", "{ds}", "--base", "random:tiny", "-o", "{tmp}/x.ckpt"], ".safetensors"),
    (["train", "{ds}", "--base", "random:tiny", "-o", "{tmp}/x.safetensors", "--subject", "car"], "unknown subject"),
])
def test_cli_bad_input(dataset, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [a.format(tmp=tmp_path, ds=dataset, empty=empty) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_one_step_on_full_size_sd15_gives_kohyas_264_modules(tmp_path):
    from safetensors import safe_open

    folder = tmp_path / "ds" / "img" / "1_sks"
    folder.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3)).astype("uint8")).save(folder / "a.png")
    out = tmp_path / "sd15.safetensors"
    # no options: sd-scripts' defaults train the text encoder too, so a default LoRA has kohya's 264 modules
    train(TrainConfig(dataset=str(tmp_path / "ds"), output=str(out), base="random:sd15", max_steps=1,
                      resolution=(128, 128), device="cpu"), echo=lambda s: None, progress=False)
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
    assert len(keys) == 792
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    assert len(modules) == 264
    assert sum(m.startswith("lora_unet_") for m in modules) == 192
    assert "lora_te_text_model_encoder_layers_11_mlp_fc2" in modules
    assert "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k" in modules


def test_two_processes_share_the_steps(dataset, tmp_path):
    """torchrun sets what accelerate's multi-GPU launcher sets; on CPU the processes talk over gloo."""
    from loracam.train.data import DataConfig, TrainData

    out = tmp_path / "ddp.safetensors"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "loracam.train",
            str(dataset), "--base", "random:tiny", "-o", str(out), "--epochs", "1", "--resolution", "64x64",
            "--rank", "4", "--alpha", "2", "--lr", "1e-3", "--device", "cpu", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = TrainData(dataset, DataConfig(resolution=(64, 64), batch_size=4), seed=0)
    single, double = data.plan(1, 0, 1, 1), data.plan(1, 0, 1, 2)
    assert single.batches_per_epoch % 2 == 1, "an odd batch count exercises the even top-up"
    assert double.total_steps == -(-single.batches_per_epoch // 2)
    steps = [e["step"] for e in read_events(out.with_name("ddp.events.jsonl")) if e["event"] == "step"]
    assert steps == list(range(1, double.total_steps + 1))
    assert "2 processes" in done.stdout and done.stdout.count("wrote ") == 1
    assert len(read_lora(out).modules) == 192 + 24


def test_identity_selection_without_faces_keeps_the_last_and_says_why(dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    rng = np.random.default_rng(5)
    photos = [{"name": f"p{i}.jpg", "status": "kept", "embedding": rng.normal(0, 0.1, 128).tolist()} for i in range(3)]
    (ds / "manifest.json").write_text(json.dumps({
        "loracam_manifest": 1, "photos": photos,
        "config": {"subject": "face", "trigger": "sks", "class_word": "cat", "resolution": [64, 64]}}))
    said: list[str] = []
    out = tmp_path / "face.safetensors"
    res = train(cfg(ds, out, save_every_steps=3, select="best", identity_images=2), echo=said.append,
                progress=False)
    assert res.selected == "step 6" and all(s.score != s.score for s in res.scores)  # nan: no face in noise
    assert any("last" in line for line in said)
    assert out.read_bytes() == (tmp_path / "face-step00000006.safetensors").read_bytes()


def test_gradient_checkpointing_trains_the_same_lora(dataset, tmp_path):
    plain, ckpt = tmp_path / "plain.safetensors", tmp_path / "ckpt.safetensors"
    train(cfg(dataset, plain, max_steps=3, train_text_encoder=True), echo=lambda s: None, progress=False)
    train(cfg(dataset, ckpt, max_steps=3, train_text_encoder=True, gradient_checkpointing=True),
          echo=lambda s: None, progress=False)
    a, b = tensors(plain), tensors(ckpt)
    assert any(k.startswith("lora_te_") for k in a)
    # the recomputed forward runs the very kernels on the very inputs: checkpointing saves memory, not bits
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_presets_learning_rates_are_scaled_for_the_toy_base_only_where_the_user_gave_none():
    from loracam.models import preset_lr_scale
    from loracam.train.config import PRESETS, resolve

    assert preset_lr_scale(None) == preset_lr_scale("toy") == 20.0
    assert preset_lr_scale("random:tiny") == 1.0
    garment = PRESETS["garment"]
    r = resolve(TrainConfig(subject="garment"), 20.0)
    assert (r.cfg.lr, r.te_lr) == pytest.approx((garment.lr * 20, garment.te_lr * 20))
    r = resolve(TrainConfig(subject="garment", lr=3e-4), 20.0)  # the user's rate is theirs
    assert (r.cfg.lr, r.te_lr) == pytest.approx((3e-4, garment.te_lr * 20))
    r = resolve(TrainConfig(subject="garment", lr=3e-4, te_lr=1e-5), 20.0)
    assert (r.cfg.lr, r.te_lr) == pytest.approx((3e-4, 1e-5))
    r = resolve(TrainConfig(subject="face"), 20.0)  # a frozen text encoder stays frozen
    assert r.te_lr is None and r.cfg.lr == pytest.approx(PRESETS["face"].lr * 20)
    assert resolve(TrainConfig(subject="garment")).cfg.lr == garment.lr


def test_without_a_preset_the_text_encoder_trains_at_the_unet_rate_as_in_sd_scripts():
    from loracam.train.config import resolve

    r = resolve(TrainConfig())
    assert r.train_text_encoder and r.te_lr == r.cfg.lr == 1e-4  # sd-scripts: text_encoder_lr = learning_rate
    r = resolve(TrainConfig(lr=3e-4))
    assert r.te_lr == 3e-4 and r.lr_scale == 1.0
    r = resolve(TrainConfig(), 20.0)  # the toy base's scale reaches both through the U-Net's rate
    assert r.te_lr == r.cfg.lr == pytest.approx(2e-3) and r.lr_scale == 20.0
    assert resolve(TrainConfig(lr=3e-4), 20.0).te_lr == 3e-4
    assert not resolve(TrainConfig(train_text_encoder=False)).train_text_encoder
    assert not resolve(TrainConfig(full=True)).train_text_encoder  # fine_tune.py trains the U-Net unless asked
    r = resolve(TrainConfig(subject="face", lr=3e-4, train_text_encoder=True), 20.0)  # from the user's rate: unscaled
    assert r.te_lr == pytest.approx(1.5e-4) and r.lr_scale == 1.0


def test_a_lora_on_the_default_toy_base_trains_at_its_rates_and_says_so(dataset, tmp_path):
    out, lines = tmp_path / "t.safetensors", []
    train(cfg(dataset, out, base=None, lr=None, subject="garment", max_steps=1), echo=lines.append, progress=False)
    saved = json.loads(out.with_name("t.config.json").read_text())["config"]
    assert saved["lr"] == pytest.approx(2e-3) and saved["te_lr"] == pytest.approx(1e-3)
    said = [s for s in lines if s.startswith("learning rate:")]
    assert said and "x20" in said[0] and "--lr 0.002, --te-lr 0.001" in said[0]
    lines.clear()
    train(cfg(dataset, tmp_path / "u.safetensors", base=None, lr=4e-4, te_lr=1e-4, subject="garment", max_steps=1),
          echo=lines.append, progress=False)
    assert not any(s.startswith("learning rate:") for s in lines)
