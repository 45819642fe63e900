"""Detail passes: ADetailer's masks and crops, pixels outside the blurred mask untouched, its infotext keys,
`gen --from` and `loracam detail` re-rendering them, detectors on real photos, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from loracam.cli import app
from loracam.errors import LoracamError
from loracam.finish import masks
from loracam.finish.detail import DetailPass, from_infotext, infotext, part, select
from loracam.finish.detect import Detection, Detectors, resolve
from loracam.generate.infotext import _PARAM

runner = CliRunner()
TINY = ["--base", "random:tiny", "--steps", "4", "--seed", "21", "--size", "64x64", "--sampler", "Euler"]


def params(png) -> dict:
    """The parameter line as A1111's reader takes it: pairs by its pattern, quoted values unquoted."""
    last = Image.open(png).info["parameters"].splitlines()[-1]
    return {k.strip(): json.loads(v) if v.startswith('"') else v.strip() for k, v in _PARAM.findall(last)}


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture()
def square_mask(tmp_path):
    m = np.zeros((64, 64), np.uint8)
    m[20:36, 24:40] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(m).save(path)
    return path


def test_masks_follow_adetailer_and_a1111():
    m = masks.box_mask((10, 8), (2.5, 1, 5, 3))
    assert m.sum() // 255 == 3 * 2 and m[1, 2] == 255 and m[3, 2] == 0
    up = masks.offset(m, 1, 1)  # right 1, up 1
    assert up[0, 3] == 255 and up[2, 3] == 0 and up[0, 6] == 0 and up[0, 5] == 255
    assert masks.dilate_erode(m, 3).sum() > m.sum() > masks.dilate_erode(m, -2).sum()
    assert masks.dilate_erode(m, 0) is m
    soft = masks.blur(masks.box_mask((64, 64), (30, 30, 34, 34)), 2)
    assert soft[32, 32] > 0 and soft[32, 32 + 2 * int(2.5 * 2 + 0.5) + 2] == 0  # A1111's kernel reach
    # padding 4 around 30..34, then widened to a 1:2 aspect inside the image
    x0, y0, x1, y1 = masks.crop_region(masks.box_mask((64, 64), (30, 30, 34, 34)), 4, (32, 64))
    assert (x1 - x0) * 2 == (y1 - y0) and x0 <= 26 and x1 >= 38 and 0 <= y0 and y1 <= 64
    assert masks.crop_region(masks.box_mask((64, 64), (0, 0, 64, 4)), 2, (64, 64)) == (0, 0, 64, 64)
    assert masks.crop_region(np.zeros((8, 8), np.uint8), 2, (8, 8)) is None


def test_selection_prompts_and_pixel_defaults():
    p = DetailPass("face", confidence=0.5, top_k=1, max_ratio=0.5)
    found = [Detection((0, 0, 10, 10), 0.9), Detection((0, 0, 20, 20), 0.6), Detection((0, 0, 5, 5), 0.2),
             Detection((0, 0, 60, 60), 0.99)]
    assert [d.box for d in select(found, p, (64, 64))] == [(0, 0, 20, 20)]  # 60x60 is over half the image
    assert part("", "own prompt", 0) == "own prompt"
    assert [part("a [SEP] b, [PROMPT]", "own", j) for j in range(3)] == ["a", "b, own", "b, own"]
    assert DetailPass("face").scaled((64, 96)).padding == 4 and DetailPass("face").scaled((512, 768)).padding == 32
    assert DetailPass("face", padding=9).scaled((64, 96)).padding == 9
    assert DetailPass.parse("mask:m.png:red dress, <lora:x:1>").detector == "mask:m.png"
    assert DetailPass.parse("face:a girl: smiling").prompt == "a girl: smiling"
    assert resolve("face", "toy") == "toy-face" and resolve("Face") == "face" and resolve("mask:a:b.png") == "mask:a:b.png"
    with pytest.raises(LoracamError, match="unknown detector 'hands'; use one of face, person"):
        DetailPass("hands")


def test_a_pass_changes_only_what_its_blurred_mask_covers(tmp_path, square_mask):
    plain = run("gen", "1girl, red dress", *TINY, "-o", tmp_path / "a")
    detailed = run("gen", "1girl, red dress", *TINY, "--detail", f"mask:{square_mask}:a blue hat",
                   "--detail-denoising", "0.6", "-o", tmp_path / "b")
    a = np.asarray(Image.open(sorted((tmp_path / "a").glob("*.png"))[0])).astype(int)
    png = sorted((tmp_path / "b").glob("*.png"))[0]
    b = np.asarray(Image.open(png)).astype(int)
    p = DetailPass("mask:x").scaled((64, 64))  # 64 px: blur 1, dilate 1, padding 4
    shape = masks.dilate_erode(np.asarray(Image.open(square_mask)), p.dilate_erode)
    soft = masks.blur(shape, p.mask_blur)
    assert np.array_equal(a[soft == 0], b[soft == 0])  # bit for bit outside
    assert np.abs(a[20:36, 24:40] - b[20:36, 24:40]).mean() > 2  # and repainted inside
    got = params(png)
    assert got["ADetailer model"] == f"mask:{square_mask}" and got["ADetailer prompt"] == "a blue hat"
    assert (got["ADetailer denoising strength"], got["ADetailer mask blur"], got["ADetailer inpaint padding"],
            got["ADetailer dilate erode"], got["ADetailer inpaint only masked"]) == ("0.6", "1", "4", "1", "True")
    assert "ADetailer negative prompt" not in got and "ADetailer mask only top k" not in got  # defaults omitted
    assert list(got)[-1] == "Version"
    del plain


def test_two_passes_have_suffixes_and_gen_from_re_renders_them(tmp_path, square_mask):
    other = tmp_path / "other.png"
    m = np.zeros((64, 64), np.uint8)
    m[40:56, 8:24] = 255
    Image.fromarray(m).save(other)
    run("gen", "1girl", *TINY, "--detail", f"mask:{square_mask}", "--detail", f"mask:{other}:green",
        "-o", tmp_path / "o")
    [png] = sorted((tmp_path / "o").glob("*.png"))
    got = params(png)
    assert got["ADetailer model 2nd"] == f"mask:{other}" and got["ADetailer prompt 2nd"] == "green"
    assert "ADetailer prompt" not in got  # the first pass used the image's own prompt
    assert [p.detector for p in from_infotext(got)] == [f"mask:{square_mask}", f"mask:{other}"]
    run("gen", "--from", png, "-o", tmp_path / "o")
    a, b = sorted((tmp_path / "o").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) and params(b) == got


def test_detail_command_equals_detailing_during_gen_and_notes_empty_finds(tmp_path, square_mask):
    run("gen", "1girl, red dress", *TINY, "-o", tmp_path / "plain")
    run("gen", "1girl, red dress", *TINY, "--detail", f"mask:{square_mask}", "-o", tmp_path / "during")
    [plain] = (tmp_path / "plain").glob("*.png")
    r = run("detail", plain, "--detail", f"mask:{square_mask}", "-o", tmp_path / "after")
    [after] = (tmp_path / "after").glob("*.png")
    [during] = (tmp_path / "during").glob("*.png")
    assert after.name == plain.name and np.array_equal(np.asarray(Image.open(after)), np.asarray(Image.open(during)))
    assert params(after) == params(during)
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 0).save(blank)
    r = run("detail", plain, "--detail", f"mask:{blank}", "-o", tmp_path / "none")
    assert "nothing found" in r.output
    [same] = (tmp_path / "none").glob("*.png")
    assert np.array_equal(np.asarray(Image.open(same)), np.asarray(Image.open(plain)))


def test_detail_after_hires_is_the_same_during_gen_and_after_it(tmp_path):
    # the passes work at the hires size with the first pass's steps (ADetailer takes p.steps), whether they
    # run inside gen or later on the PNG
    m = np.zeros((128, 128), np.uint8)
    m[40:72, 48:80] = 255
    Image.fromarray(m).save(tmp_path / "big.png")
    hires = ["--hires-scale", "2", "--hires-steps", "6", "--denoising", "0.5"]
    run("gen", "1girl", *TINY, *hires, "-o", tmp_path / "plain")
    run("gen", "1girl", *TINY, *hires, "--detail", f"mask:{tmp_path / 'big.png'}", "-o", tmp_path / "during")
    [plain], [during] = (tmp_path / "plain").glob("*.png"), (tmp_path / "during").glob("*.png")
    run("detail", plain, "--detail", f"mask:{tmp_path / 'big.png'}", "-o", tmp_path / "after")
    [after] = (tmp_path / "after").glob("*.png")
    assert Image.open(during).size == (128, 128) and params(after) == params(during)
    assert np.array_equal(np.asarray(Image.open(after)), np.asarray(Image.open(during)))


def test_detectors_find_a_real_face_and_a_person(astronaut, hopper):
    d = Detectors()
    [face] = [f for f in d.detect("face", astronaut, 0.5)]
    x0, y0, x1, y1 = face.box
    assert 150 < (x0 + x1) / 2 < 280 and 40 < (y0 + y1) / 2 < 160 and face.score > 0.5  # the astronaut's face
    person = d.detect("person", hopper, 0.3)
    assert len(person) == 1 and person[0].box[3] - person[0].box[1] > hopper.height / 3


def test_bad_detail_input_is_a_clear_error_that_writes_nothing(tmp_path, square_mask):
    run("gen", "1girl", *TINY, "-o", tmp_path / "in")
    wrong = tmp_path / "wrong.png"
    Image.new("L", (32, 32), 255).save(wrong)
    bare = tmp_path / "bare"
    bare.mkdir()
    Image.new("RGB", (64, 64), "white").save(bare / "photo.png")
    cases = [
        (["detail", tmp_path / "in", "--detail", "hands"], "unknown detector 'hands'"),
        (["detail", tmp_path / "in", "--detail", f"mask:{wrong}"], "mask wrong.png is 32x32 but the image is 64x64"),
        (["detail", bare, "--detail", "face"], "photo.png has no generation parameters (no infotext); give --prompt"),
        (["gen", "1girl", *TINY, "--detail", "elbows"], "unknown detector 'elbows'"),
    ]
    for args, message in cases:
        r = runner.invoke(app, [str(a) for a in args] + ["-o", str(tmp_path / "out")])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_infotext_keys_read_back_including_legacy_names():
    p = DetailPass("face", prompt="a, b", negative="ugly", top_k=2, x_offset=3, y_offset=-2, inpaint_size=(64, 96),
                   steps=9, cfg=5.0).scaled((64, 96))
    keys = infotext(p, "toy-face", 1)
    assert all(k.endswith(" 2nd") for k in keys)
    back = from_infotext({k.replace(" 2nd", ""): str(v) for k, v in keys.items()} | {"ADetailer model": "toy-face"})
    assert back[0].prompt == "a, b" and back[0].top_k == 2 and back[0].inpaint_size == (64, 96)
    assert (back[0].steps, back[0].cfg, back[0].x_offset, back[0].y_offset) == (9, 5.0, 3, -2)
    legacy = from_infotext({"ADetailer model": "face_yolov8n.pt", "ADetailer dilate/erode": "8",
                            "ADetailer mask only top k largest": "1"})
    assert legacy[0].dilate_erode == 8 and legacy[0].top_k == 1


def test_a_config_file_sets_each_pass_on_its_own(tmp_path, square_mask):
    config = tmp_path / "gen.toml"
    config.write_text(f'''prompt = "1girl, red dress"
base = "random:tiny"
steps = 4
seed = 21
width = 64
height = 64

[[detail]]
detector = "mask:{square_mask}"
prompt = "a blue hat"
denoising = 0.5
padding = 6

[[detail]]
detector = "mask:{square_mask}"
negative = "ugly"
mask_blur = 2
''')
    run("gen", "--config", config, "-o", tmp_path / "o")
    [png] = (tmp_path / "o").glob("*.png")
    got = params(png)
    assert (got["ADetailer prompt"], got["ADetailer denoising strength"], got["ADetailer inpaint padding"]) == (
        "a blue hat", "0.5", "6")
    assert (got["ADetailer negative prompt 2nd"], got["ADetailer mask blur 2nd"]) == ("ugly", "2")
    config.write_text(config.read_text() + 'paddding = 3\n')
    r = runner.invoke(app, ["gen", "--config", str(config), "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown key(s) paddding" in r.output
