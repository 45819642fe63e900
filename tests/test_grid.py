"""X/Y/Z grids: batched cells equal single renders, seeds, the cell cache, files, and bad input."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from loracam.cli import app
from loracam.errors import LoracamError
from loracam.generate import GenRequest, Sample, Shared, render_samples
from loracam.generate.infotext import parse_infotext
from loracam.grid import AxisSpec, GridOptions, run_grid
from loracam.lora import LoraLibrary, random_lora, write_kohya

runner = CliRunner()


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("loras")
    for name, seed in (("testdress", 1), ("myshoes", 2)):
        write_kohya(d / f"{name}.safetensors", random_lora(tiny.unet, tiny.text_encoder, dim=4, alpha=4, seed=seed, std=0.2), {})
    return d


def req(**kw) -> GenRequest:
    base = dict(prompt="1girl <lora:testdress:0.4> <lora:myshoes:0.4>", base="random:tiny", steps=4, seed=77,
                sampler="Euler a", device="cpu")
    return GenRequest(**{**base, **kw})


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def test_batched_cells_equal_single_renders(models, lora_dir, tmp_path, tiny):
    lib = LoraLibrary([lora_dir])
    specs = [AxisSpec.parse("lora:testdress=0.2-0.6 [3]"), AxisSpec.parse("CFG Scale=5,9")]
    res = run_grid(req(), specs, GridOptions(batch_size=8), models, lib, tmp_path)
    assert res.rendered == 6
    for row in res.cells[0]:
        for cell in row:
            info = parse_infotext(cell.infotext)
            from loracam.prompts import extract_networks

            _, loras, _ = extract_networks(info.prompt)
            shared = Shared(64, 64, 4, "Euler a", "Automatic")
            [alone] = render_samples(tiny, shared, [Sample(info.prompt, "", cell.seed, float(info.params["CFG scale"]),
                                                           tuple(loras))], lib)
            assert np.abs(px(alone.image) - px(cell.image)).max() <= 2
    # the axes really changed the images
    assert np.abs(px(res.cells[0][0][0].image) - px(res.cells[0][0][2].image)).mean() > 1


def test_unchanged_cells_come_from_the_cache(models, lora_dir, tmp_path):
    lib = LoraLibrary([lora_dir])
    first = run_grid(req(), [AxisSpec.parse("lora:myshoes=0.3,0.5"), AxisSpec.parse("CFG Scale=7,8")],
                     GridOptions(), models, lib, tmp_path)
    again = run_grid(req(), [AxisSpec.parse("lora:myshoes=0.3,0.5"), AxisSpec.parse("CFG Scale=7,9")],
                     GridOptions(), models, lib, tmp_path)
    assert first.rendered == 4 and again.rendered == 2
    assert np.array_equal(px(first.cells[0][0][1].image), px(again.cells[0][0][1].image))
    # nothing was overwritten: two grids and eight cells, each with its own number
    assert len(list(tmp_path.glob("*.png"))) == 2 * (4 + 1)


def test_seeds(models, lora_dir, tmp_path):
    lib = LoraLibrary([lora_dir])
    cfg = AxisSpec.parse("CFG Scale=5,6,7")
    same = run_grid(req(seed=-1), [cfg], GridOptions(), models, lib, tmp_path / "a")
    assert len({c.seed for c in same.cells[0][0]}) == 1  # -1 resolved once for the whole grid
    kept = run_grid(req(seed=-1), [cfg], GridOptions(keep_random_seeds=True), models, lib, tmp_path / "b")
    assert len({c.seed for c in kept.cells[0][0]}) == 3
    varied = run_grid(req(seed=100), [cfg], GridOptions(vary_seeds="x"), models, lib, tmp_path / "c")
    assert [c.seed for c in varied.cells[0][0]] == [100, 101, 102]
    row = run_grid(req(seed=-1), [None], GridOptions(), models, lib, tmp_path / "d", seeds=4)
    seeds = [c.seed for c in row.cells[0][0]]
    assert len(set(seeds)) == 4
    assert f"Seed: {seeds[2]}" in row.cells[0][0][2].infotext


def test_grid_png_infotext_and_cells_rerender_with_gen_from(models, lora_dir, tmp_path):
    lib = LoraLibrary([lora_dir])
    res = run_grid(req(), [AxisSpec.parse("lora:testdress=0.3,0.6")], GridOptions(), models, lib, tmp_path)
    info = parse_infotext(Image.open(res.paths["grid"]).info["parameters"])
    assert info.params["Script"] == "X/Y/Z plot" and info.params["X Type"] == "lora:testdress"
    assert info.params["X Values"] == "0.3,0.6"
    cell_png = res.paths["cells"][1]
    assert "<lora:testdress:0.6>" in Image.open(cell_png).info["parameters"]
    r = runner.invoke(app, ["gen", "--from", str(cell_png), "--lora-dir", str(lora_dir), "-o", str(tmp_path / "re")])
    assert r.exit_code == 0, r.output
    again = next((tmp_path / "re").glob("*.png"))
    assert np.abs(px(Image.open(again).convert("RGB")) - px(Image.open(cell_png).convert("RGB"))).max() <= 2


def test_size_guard_names_the_numbers(models, lora_dir, tmp_path):
    lib = LoraLibrary([lora_dir])
    with pytest.raises(LoracamError, match="grid too large: .* cells of 1024x1024"):
        run_grid(req(width=1024, height=1024), [AxisSpec.parse("Seed=1-200")], GridOptions(), models, lib, tmp_path)
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("axis,message", [
    ("Colour=1,2", "unknown axis type"),
    ("Steps=1-", "1-"),
    ("lora:nope=0.2,0.4", "nope"),
    ("CFG Scale=", "no values given"),
    ("Prompt S/R=cowboy,knight", "cowboy"),
    ("no equals sign", "TYPE=VALUES"),
])
def test_bad_axes(lora_dir, tmp_path, axis, message):
    r = runner.invoke(app, ["grid", "1girl <lora:testdress:0.4>", "--x", axis, "--base", "random:tiny", "--steps",
                            "2", "--lora-dir", str(lora_dir), "-o", str(tmp_path / "g")])
    assert r.exit_code == 2 and message.lower() in r.output.lower() and "Traceback" not in r.output, r.output
    assert not (tmp_path / "g").exists() or not list((tmp_path / "g").glob("*.png"))
