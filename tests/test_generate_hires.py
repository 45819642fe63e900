"""Hires fix: A1111's two passes, its infotext keys, re-rendering with `gen --from`, grid axes, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from loracam.cli import app
from loracam.generate.infotext import _PARAM

runner = CliRunner()
TINY = ["--base", "random:tiny", "--steps", "4", "--seed", "11", "--size", "64x64", "--sampler", "Euler"]


def gen(*args, out):
    r = runner.invoke(app, ["gen", *map(str, args), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return sorted(out.glob("*.png"))[-1]


def params(png) -> dict:
    last = Image.open(png).info["parameters"].splitlines()[-1]
    return {k.strip(): v.strip() for k, v in _PARAM.findall(last)}  # A1111's reader


def pixels(png) -> np.ndarray:
    return np.asarray(Image.open(png))


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    """A tiny random Real-ESRGAN compact x4 file, as users keep them in an upscaler folder."""
    from loracam.models.upscalers import import_spandrel

    import_spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("upscalers")
    torch.save({"params": Compact(num_feat=8, num_conv=2, upscale=4).state_dict()}, folder / "RealESRGAN_x4plus.pth")
    return folder


def test_latent_hires_writes_a1111_keys_and_re_renders(tmp_path):
    png = gen("1girl, red dress", *TINY, "--hires-scale", "2", out=tmp_path)
    assert Image.open(png).size == (128, 128)
    p = params(png)
    assert p["Size"] == "64x64"  # A1111 keeps the first pass's size
    assert (p["Denoising strength"], p["Hires upscale"], p["Hires upscaler"]) == ("0.7", "2", "Latent")
    assert "Hires steps" not in p and "Hires resize" not in p  # left out at their defaults, as A1111 does
    again = gen("--from", png, out=tmp_path)
    assert np.array_equal(pixels(png), pixels(again)) and params(again) == p


def test_hires_with_an_upscaler_equals_txt2img_then_upscale_then_img2img(tmp_path):
    """A1111's definition of the second pass, checked bit for bit against the commands a user would chain."""
    hires = gen("1girl, red dress", *TINY, "--hires-scale", "2", "--hires-upscaler", "Lanczos", "--denoising", "0.5",
                "--hires-steps", "6", out=tmp_path / "a")
    first = gen("1girl, red dress", *TINY, out=tmp_path / "b")
    big = tmp_path / "big.png"
    Image.open(first).resize((128, 128), Image.LANCZOS).save(big)
    chained = gen("1girl, red dress", *TINY, "--init-image", big, "--denoising", "0.5", "--size", "128x128",
                  "--steps", "6", out=tmp_path / "c")
    assert np.array_equal(pixels(hires), pixels(chained))
    p = params(hires)
    assert (p["Hires steps"], p["Hires upscaler"], p["Denoising strength"]) == ("6", "Lanczos", "0.5")


def test_model_upscalers_are_named_by_file_stem_and_found_again_in_upscaler_dir(tmp_path, x4):
    png = gen("1girl", *TINY, "--hires-resize", "96x0", "--hires-upscaler", x4 / "RealESRGAN_x4plus.pth",
              out=tmp_path)
    assert Image.open(png).size == (96, 96)
    p = params(png)
    assert p["Hires upscaler"] == "RealESRGAN_x4plus" and p["Hires resize"] == "96x0" and "Hires upscale" not in p
    r = runner.invoke(app, ["gen", "--from", str(png), "-o", str(tmp_path)])
    assert r.exit_code == 2 and "RealESRGAN_x4plus" in r.output and "--upscaler-dir" in r.output
    again = gen("--from", png, "--upscaler-dir", x4, out=tmp_path)
    assert np.array_equal(pixels(png), pixels(again))
    # A1111's own name for the same release finds the same file
    a1111 = gen("1girl", *TINY, "--hires-resize", "96x0", "--hires-upscaler", "R-ESRGAN 4x+", "--upscaler-dir", x4,
                out=tmp_path)
    assert np.array_equal(pixels(png), pixels(a1111)) and params(a1111)["Hires upscaler"] == "R-ESRGAN 4x+"


def test_grid_axes_sweep_the_hires_pass(tmp_path):
    r = runner.invoke(app, ["grid", "1girl, red dress", "--base", "random:tiny", "--steps", "4", "--size", "64x64",
                            "--seed", "3", "--hires-scale", "1.5", "--x", "Denoising=0.5,0.75", "--y",
                            "Hires steps=0,2", "-o", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    cells = sorted((tmp_path / "g").glob("*.png"))[:-1]
    assert len(cells) == 4 and all(Image.open(c).size == (96, 96) for c in cells)
    got = {(params(c)["Denoising strength"], params(c).get("Hires steps", "0")) for c in cells}
    assert got == {("0.5", "0"), ("0.75", "0"), ("0.5", "2"), ("0.75", "2")}
    r = runner.invoke(app, ["grid", "1girl", "--base", "random:tiny", "--steps", "3", "--size", "64x64",
                            "--x", "Hires steps=0,2", "-o", str(tmp_path / "h")])
    assert r.exit_code == 2 and "needs hires fix on" in r.output


def test_bad_hires_options_are_clear_errors(tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "white").save(init)
    cases = [
        (["--hires-scale", "2", "--init-image", init], "hires fix is for txt2img"),
        (["--hires-scale", "2", "--hires-upscaler", "Latent (blurry)"], "latent modes: Latent, Latent (antialiased)"),
        (["--hires-scale", "0"], "--hires-scale above 0"),
        (["--hires-scale", "2", "--hires-steps", "-1"], "--hires-steps must be 0"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["gen", "1girl", *TINY, *map(str, args), "-o", str(tmp_path / "o")])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "o").exists()
