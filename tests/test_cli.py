"""The command line: re-rendering from infotext, prompt/info output, and every bad input's message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from loracam.cli import app
from loracam.lora import random_lora, write_kohya

runner = CliRunner()


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture()
def lora_dir(tmp_path, tiny):
    d = tmp_path / "loras"
    d.mkdir()
    write_kohya(d / "testdress_v1.safetensors", random_lora(tiny.unet, tiny.text_encoder, dim=4, alpha=2, seed=1),
                {"ss_output_name": "testdress", "ss_network_dim": "4", "ss_network_alpha": "2"})
    return d


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_gen_then_from_reproduces_the_image(tmp_path, lora_dir):
    out = tmp_path / "out"
    r = run("gen", "1girl, (red dress:1.2) <lora:testdress:0.7:0.4>", "--negative", "lowres", "--base",
            "random:tiny", "--lora-dir", lora_dir, "--steps", "4", "--seed", "77", "--sampler", "Euler a",
            "--clip-skip", "2", "-o", out)
    assert r.exit_code == 0, r.output
    [first] = sorted(out.glob("*.png"))
    info = Image.open(first).info["parameters"]
    assert "Lora hashes: \"testdress: " in info and "Seed: 77" in info and "Clip skip: 2" in info
    r = run("gen", "--from", first, "--lora-dir", lora_dir, "-o", out)
    assert r.exit_code == 0, r.output
    second = sorted(out.glob("*.png"))[1]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    assert Image.open(second).info["parameters"] == info


def test_prompt_json():
    r = run("prompt", "a (cat:1.3) <lora:x:0.5:0.2> [red|blue] BREAK b", "--steps", "4", "--json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert set(data) == {"text", "loras", "attention", "schedule", "tokens", "chunks", "notes"}
    assert data["notes"] == []  # SD1.x: the syntax does what A1111's does
    assert data["loras"] == [{"name": "x", "te": 0.5, "unet": 0.2}]
    assert ["cat", 1.3] in data["attention"] and ["BREAK", -1] in data["attention"]
    assert [row[0] for row in data["schedule"]] == [1, 2, 3, 4]
    assert data["chunks"] == 2


def test_info_on_png_and_lora(tmp_path, lora_dir):
    out = tmp_path / "o"
    assert run("gen", "cat", "--base", "random:tiny", "--steps", "2", "--seed", "1", "-o", out).exit_code == 0
    r = run("info", next(out.glob("*.png")), "--json")
    assert json.loads(r.output)["parameters"]["Seed"] == "1"
    r = run("info", lora_dir / "testdress_v1.safetensors", "--json")
    data = json.loads(r.output)
    assert (data["kind"], data["name"], data["dim"], data["alpha"], data["family"]) == ("lora", "testdress", 4, 2.0, "sd1")
    assert len(data["hash"]) == 12


def _sdxl_lora(path: Path):
    from safetensors.torch import save_file

    save_file({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
               "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, 4),
               "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4)}, str(path))


def _bad_inputs(tmp_path: Path, lora_dir: Path):
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _sdxl_lora(lora_dir / "xl_style.safetensors")
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, tmp_path / "old.ckpt")
    (tmp_path / "junk.safetensors").write_bytes(b"hello, this is not a model")
    (tmp_path / "notimage.png").write_text("just text")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    (tmp_path / "afile").write_text("x")
    base = ["--base", "random:tiny", "--steps", "2", "--lora-dir", str(lora_dir), "-o", str(tmp_path / "o")]
    return [
        (["gen", "cat", "--sampler", "Euler z", *base], "unknown sampler 'Euler z'; valid samplers: DPM++ 2M"),
        (["gen", "cat", "--size", "100x64", *base], "width 100 is not a positive multiple of 8"),
        (["gen", "cat", "--size", "big", *base], "WIDTHxHEIGHT"),
        (["gen", "cat <lora:nope:0.5>", *base], "nope"),
        (["gen", "cat <lora:broken:0.5>", *base], "broken.safetensors"),
        (["gen", "cat <lora:xl_style:0.5>", *base], "SDXL"),
        (["gen", "cat", "--base", str(tmp_path / "missing.safetensors")], "not found"),
        (["gen", "cat", "--base", str(tmp_path / "junk.safetensors")], "damaged"),
        (["gen", "cat", "--base", str(tmp_path / "old.ckpt")], "--allow-pickle"),
        (["gen", "--from", str(tmp_path / "notimage.png")], "not a readable image"),
        (["gen", "--from", str(tmp_path / "plain.png")], "no generation parameters"),
        (["gen", "--from", str(tmp_path / "nothere.png")], "does not exist"),
        (["gen", "cat", "--base", "random:tiny", "-o", str(tmp_path / "afile")], "is a file"),
        (["gen", "cat", "--base", "random:tiny", "-o", str(tmp_path / "afile" / "sub")], "cannot create"),
        (["gen", "cat", "--base", "random:tiny", "--schedule", "Karras", "--sampler", "Euler a"], "not available for Euler a"),
        (["info", str(tmp_path / "notimage.png")], "not a readable image"),
    ]


def test_bad_inputs_give_clear_errors_and_lose_nothing(tmp_path, lora_dir):
    cases = _bad_inputs(tmp_path, lora_dir)
    before = snapshot(lora_dir)
    for args, message in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), args
        assert "error:" in r.output and message in r.output, (args, r.output)
    assert snapshot(lora_dir) == before
    assert (tmp_path / "afile").read_text() == "x"


def test_config_file_and_unknown_keys(tmp_path):
    cfg = tmp_path / "gen.toml"
    cfg.write_text('prompt = "a cat"\nbase = "random:tiny"\nsteps = 2\nseed = 9\n')
    r = run("gen", "--config", cfg, "--seed", "10", "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "Seed: 10" in Image.open(next((tmp_path / "o").glob("*.png"))).info["parameters"]
    cfg.write_text('prompt = "a cat"\nstepz = 2\n')
    r = runner.invoke(app, ["gen", "--config", str(cfg)])
    assert r.exit_code == 2 and "unknown key(s) stepz" in r.output


def test_from_finds_the_checkpoint_by_hash_in_ckpt_dir(tmp_path, tiny):
    from loracam.models.ldm import save_single_file

    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    save_single_file(tiny, ckpts / "mymodel.safetensors")
    out = tmp_path / "out"
    assert run("gen", "cat", "--base", ckpts / "mymodel.safetensors", "--steps", "3", "--seed", "4", "-o", out).exit_code == 0
    [first] = sorted(out.glob("*.png"))
    info = Image.open(first).info["parameters"]
    assert "Model: mymodel" in info and "Model hash: " in info
    (ckpts / "mymodel.safetensors").rename(ckpts / "renamed.safetensors")  # found by hash, not by name
    r = run("gen", "--from", first, "--ckpt-dir", ckpts, "-o", out)
    assert r.exit_code == 0, r.output
    second = sorted(out.glob("*.png"))[1]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))
    r = runner.invoke(app, ["gen", "--from", str(first), "-o", str(out)])
    assert r.exit_code == 2 and "pass --base PATH" in r.output


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_get_the_permissions_of_the_users_umask(tmp_path, mask):
    import os
    import stat

    from safetensors.torch import save_file

    from loracam.io import atomic_write, atomic_write_bytes

    old = os.umask(mask)
    try:
        path = atomic_write_bytes(tmp_path / "image.png", b"png")
        # safetensors replaces the file it is given with its own private temporary: still the umask's mode
        tensors = atomic_write(tmp_path / "x.safetensors", lambda tmp: save_file({"a": torch.zeros(2)}, tmp))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not the private 0600 of its temporary file
    assert stat.S_IMODE(tensors.stat().st_mode) == 0o666 & ~mask


def test_atomic_write_reports_a_full_disk_and_leaves_nothing(tmp_path):
    import errno

    from loracam.io import DiskFull, atomic_write

    (tmp_path / "old.bin").write_bytes(b"keep me")

    def writer(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match="disk is full"):
        atomic_write(tmp_path / "old.bin", writer, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old.bin"] and (tmp_path / "old.bin").read_bytes() == b"keep me"
