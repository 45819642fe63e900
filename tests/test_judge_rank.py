"""Judging and ranking candidate images (loracam.judge.rank and its parts, the `judge` command).

Toy renders carry the toy identity, adherence and face-size numbers; skimage's astronaut (a real face) and
matplotlib's Grace Hopper carry dlib and the ONNX embedder; a tiny random CLIP carries the aesthetic predictor.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image, ImageFilter, ImageOps
from typer.testing import CliRunner

from loracam.errors import LoracamError
from loracam.generate.images import png_bytes
from loracam.judge.rank import (WEIGHTS, JudgeConfig, Models, Ranking, combined_score, judge_images,
                                relative_identity, write_ranking)
from loracam.toy import world

ASTRONAUT_FACE_CROP = (92, 0, 348, 256)  # dlib's face box is 91 px at (175, 76): 0.36 of this crop's side


def _save(path: Path, image: Image.Image, prompt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if prompt is None:
        image.save(path)
    else:
        path.write_bytes(png_bytes(image, prompt + "\nSteps: 20, Sampler: Euler, Seed: 1"))
    return path


def _doll(rng, **fixed) -> world.Doll:
    return world.sample_doll(rng, held_out=True, **fixed)


@pytest.fixture(scope="module")
def models() -> Models:
    """dlib, the probe and the locator loaded once for the whole file (the studio shares them the same way)."""
    return Models()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Reference photos of the sks face (192x288, as `toy photos` makes them) and candidates: sks and other
    faces in each framing, each PNG with its prompt in the infotext; one candidate's prompt asks for a hair
    colour it does not have, and one is an exact copy of another (a tie)."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(7)
    for i in range(5):
        doll = _doll(rng, face="sks", framing=("upper body", "close-up")[i % 2])
        _save(root / "ref" / f"photo_{i}.png", Image.fromarray(world.render(doll, (192, 288))))
    dolls = {}
    for i in range(18):
        doll = _doll(rng, framing=world.FRAMINGS[i % 3])
        dolls[f"c{i:02d}.png"] = replace(doll, face="sks") if i % 2 else doll
    for name, doll in dolls.items():
        _save(root / "cands" / name, Image.fromarray(world.render(doll)), world.tags(doll))
    wrong = dolls["c01.png"]  # sks, upper body: its prompt asks for another hair colour
    other = "pink" if wrong.hair != "pink" else "black"
    _save(root / "cands" / "c01.png", Image.fromarray(world.render(wrong)),
          world.tags(wrong).replace(f"{wrong.hair} hair", f"{other} hair"))
    _save(root / "cands" / "c04copy.png", Image.open(root / "cands" / "c04.png"), world.tags(dolls["c04.png"]))
    dolls["c04copy.png"] = dolls["c04.png"]
    return root, dolls, other


@pytest.fixture(scope="module")
def toy_ranking(toy, models) -> Ranking:
    root, _, _ = toy
    return judge_images([root / "cands"], reference=root / "ref", config=JudgeConfig(identity="toy", concept="sks"),
                        models=models)


# -- toy world: identity, face size, adherence, order ---------------------------------------------------------


def test_toy_identity_ranks_the_sks_face_above_every_other_face(toy, toy_ranking):
    _, dolls, _ = toy
    r = toy_ranking
    assert r.baseline is not None and r.baseline > 0.95 and "leave-one-out" in r.reference
    kept = [e for e in r.entries if e.kept]
    sks = [e.rank for e in kept if dolls[e.path.name].face == "sks"]
    others = [e.rank for e in kept if dolls[e.path.name].face != "sks"]
    assert len(sks) >= 4 and len(others) >= 4
    assert max(sks) < min(others), [(e.rank, e.path.name, dolls[e.path.name].face) for e in kept]
    assert all(dolls[e.path.name].face == "sks" for e in r.top(4))


def test_toy_face_size_drops_full_body_shots_with_the_reason(toy, toy_ranking):
    _, dolls, _ = toy
    for e in toy_ranking.entries:
        full = dolls[e.path.name].framing == "full body"
        assert e.kept is not full, (e.path.name, e.reason)
        if full:
            assert e.reason.startswith("face ") and e.reason.endswith("px, under 0.40 of the side")
            assert e.rank is None and e.combined is None
    kept_after_dropped = [e.kept for e in toy_ranking.entries]
    assert kept_after_dropped == sorted(kept_after_dropped, reverse=True)  # every dropped one after the kept


def test_toy_face_size_defaults_fit_what_the_locator_measures(models):
    """The toy range (0.4, 1.25) sits between full-body faces (the probe cannot tell identities there) and
    upper-body/close-up faces, with a margin each side (measured: 0.25-0.32, 0.51-0.62, 0.99-1.13)."""
    from loracam.judge.embed import TOY_FACE_SIZE

    rng = np.random.default_rng(11)
    detector = models.detector("toy")
    for framing, inside in (("full body", False), ("upper body", True), ("close-up", True)):
        images = [Image.fromarray(world.render(_doll(rng, framing=framing))) for _ in range(24)]
        sizes = [f.relative_size(im.size) for f, im in zip(detector.detect(images), images)]
        lo, hi = TOY_FACE_SIZE
        if inside:
            assert lo + 0.05 < min(sizes) and max(sizes) < hi - 0.05, (framing, min(sizes), max(sizes))
        else:
            assert max(sizes) < lo - 0.05, (framing, max(sizes))


def test_adherence_grades_only_what_the_prompt_names_and_the_framing_shows(toy, toy_ranking):
    from loracam.judge.adherence import grade, prompt_tags, requested

    prompt = "<lora:x:0.8> 1girl, close-up, (pink hair:1.2), [white background], red shoes, BREAK long_hair"
    assert prompt_tags(prompt) == ["1girl", "close-up", "pink hair", "white background", "red shoes", "long hair"]
    asked = requested(prompt)
    assert asked == {"framing": "close-up", "hair": "pink", "background": "white", "shoes": "red",
                     "hair_style": "long"}
    read = {"framing": "close-up", "hair": "black", "background": "white", "shoes": "blue", "hair_style": "long",
            "dress": "red", "pattern": "plain"}
    a = grade(asked, read)  # shoes are hidden in a close-up: 4 graded, the hair missed
    assert (a.graded, a.score, a.misses) == (4, 0.75, ("pink hair asked, black hair read",))
    assert grade(requested("1girl, masterpiece"), read).score is None  # nothing the probe reads
    _, _, other = toy
    wrong = next(e for e in toy_ranking.entries if e.path.name == "c01.png")
    assert wrong.scores["adherence"] < 1 and wrong.notes[0].startswith(f"{other} hair asked")
    assert all(e.scores["adherence"] == 1 for e in toy_ranking.entries if e.kept and e.path.name != "c01.png")
    assert not any("adherence" in e.scores or "identity" in e.scores for e in toy_ranking.entries if not e.kept)


def test_prompts_given_override_the_infotext(toy, models):
    root, dolls, _ = toy
    paths = [root / "cands" / "c02.png"]  # a close-up
    doll = dolls["c02.png"]
    other = "white" if doll.background != "white" else "blue"
    cfg = JudgeConfig(identity="toy", concept="sks")
    r = judge_images(paths, reference=root / "ref", config=cfg, prompts=[f"close-up, {other} background"],
                     models=models)
    assert r.entries[0].scores["adherence"] == 0.5
    r = judge_images(paths, reference=root / "ref", config=cfg, prompts={str(paths[0]): "close-up"}, models=models)
    assert r.entries[0].scores["adherence"] == 1.0


def test_combined_score_follows_the_documented_formula_and_ties_break_by_path(toy_ranking):
    r = toy_ranking
    kept = [e for e in r.entries if e.kept]
    for e in kept:
        s = e.scores
        assert s["identity_rel"] == pytest.approx(min(1.0, max(0.0, s["identity"] / r.baseline)))
        assert s["quality"] == pytest.approx((s["sharpness"] + s["exposure"]) / 2)
        by_hand = s["artefacts"] * (0.55 * s["identity_rel"] + 0.20 * s["adherence"] + 0.15 * s["quality"]) / 0.90
        assert e.combined == pytest.approx(by_hand, abs=1e-12)
    assert [e.rank for e in kept] == list(range(1, len(kept) + 1))
    assert all(a.combined >= b.combined for a, b in zip(kept, kept[1:]))
    names = [e.path.name for e in r.entries]
    assert names.index("c04.png") + 1 == names.index("c04copy.png")  # identical scores: by path
    assert WEIGHTS == {"identity_rel": 0.55, "adherence": 0.20, "quality": 0.15, "aesthetic_n": 0.10}
    scores = {"identity_rel": 0.5, "quality": 0.8, "artefacts": 0.5, "aesthetic": 5.5}
    assert combined_score(scores) == pytest.approx(0.5 * (0.55 * 0.5 + 0.15 * 0.8 + 0.10 * 0.5) / 0.80)
    assert relative_identity(0.9, 0.6) == 1.0 and relative_identity(0.3, 0.6) == 0.5
    assert relative_identity(-0.2, None) == 0.0


def test_garment_dataset_gives_concept_and_subject_and_skips_face_rules(tmp_path, models):
    """A prep dataset (its manifest and training crops) of the testdress: the trigger is the toy concept,
    the subject is garment, so full-body shots stay and are judged by the dress pattern."""
    rng = np.random.default_rng(3)
    ds, crops = tmp_path / "dataset", []
    for i in range(4):
        doll = _doll(rng, dress="testdress", framing="full body")
        rel = f"img/10_testdress 1girl/photo_{i}_garment.png"
        _save(ds / rel, Image.fromarray(world.render(doll)))
        crops.append({"name": f"photo_{i}.png", "status": "kept", "crops": [{"kind": "garment", "is_reg": False,
                                                                             "file": rel}]})
    (ds / "manifest.json").write_text(json.dumps({"config": {"trigger": "testdress", "subject": "garment"},
                                                 "photos": crops}))
    for i in range(6):
        doll = _doll(rng, framing=("full body", "upper body")[i % 2])
        doll = replace(doll, dress="testdress") if i < 3 else doll
        _save(tmp_path / "c" / f"{'dress' if i < 3 else 'other'}_{i}.png", Image.fromarray(world.render(doll)))
    r = judge_images([tmp_path / "c"], reference=ds, config=JudgeConfig(identity="toy"), models=models)
    assert (r.concept, r.subject) == ("testdress", "garment")
    assert all(e.kept for e in r.entries)
    assert [e.path.name.split("_")[0] for e in r.entries] == ["dress"] * 3 + ["other"] * 3


def test_models_load_once_per_call_and_a_hundred_toy_images_take_seconds(tmp_path, toy, monkeypatch):
    import time

    from loracam.toy import probe as probe_module

    loads = []
    real = probe_module.Probe.load.__func__
    monkeypatch.setattr(probe_module.Probe, "load", classmethod(lambda cls, *a: loads.append(1) or real(cls, *a)))
    root, _, _ = toy
    rng = np.random.default_rng(5)
    for i in range(100):
        doll = _doll(rng, framing=("upper body", "close-up")[i % 2])
        _save(tmp_path / f"{i:03d}.png", Image.fromarray(world.render(doll)), world.tags(doll))
    start = time.perf_counter()
    r = judge_images([tmp_path], reference=root / "ref", config=JudgeConfig(identity="toy", concept="sks"))
    took = time.perf_counter() - start
    assert len(r.entries) == 100 and loads == [1]  # identity and adherence share one probe
    assert took < 15, took  # ~1 s on one thread; the margin is for a busy machine


# -- quality -------------------------------------------------------------------------------------------------


def test_quality_blur_lowers_sharpness_noise_is_not_detail_and_black_is_broken(astronaut):
    from loracam.judge.quality import quality

    render = Image.fromarray(world.render(_doll(np.random.default_rng(2), framing="upper body")))
    for sharp in (render, astronaut):
        blurred = sharp.filter(ImageFilter.GaussianBlur(1.5))
        assert quality(blurred).sharpness < quality(sharp).sharpness - 0.2
    grain = np.random.default_rng(0).normal(128, 25, (256, 256, 3)).clip(0, 255).astype(np.uint8)
    q = quality(Image.fromarray(grain))  # the plain variance of the Laplacian would call this the sharpest
    assert q.sharpness == 0 and q.artefacts == 1
    black = quality(Image.new("RGB", (64, 96)))
    assert (black.sharpness, black.exposure, black.artefacts, black.flaw) == (0, 0, 0, "mostly pure black")
    half = np.asarray(astronaut).copy()
    half[256:] = 0
    assert quality(Image.fromarray(half)).artefacts == 0
    assert quality(astronaut).artefacts == 1  # its 11% of pure-black space is within the allowance


# -- dlib and ONNX on real faces -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(tmp_path_factory, astronaut, hopper):
    root = tmp_path_factory.mktemp("faces")
    face = astronaut.crop(ASTRONAUT_FACE_CROP)
    buf = io.BytesIO()
    face.save(buf, "JPEG", quality=30)
    _save(root / "ref" / "mirror.png", ImageOps.mirror(face))
    _save(root / "ref" / "turned.png", face.rotate(8, resample=Image.BICUBIC, fillcolor=(255, 255, 255)))
    _save(root / "ref" / "jpeg.png", Image.open(buf).convert("RGB"))
    two = Image.new("RGB", (512, 256))
    two.paste(face, (0, 0))
    two.paste(ImageOps.mirror(face), (256, 0))
    cands = {"astronaut.png": face, "blurred.png": face.filter(ImageFilter.GaussianBlur(1.5)), "two.png": two,
             "black.png": Image.new("RGB", (256, 256)), "small.png": astronaut,
             "hopper.png": hopper.resize((256, 300), Image.LANCZOS)}
    for name, image in cands.items():
        _save(root / "c" / name, image)
    return root


@pytest.fixture(scope="module")
def dlib_ranking(faces, models) -> Ranking:
    return judge_images([faces / "c"], reference=faces / "ref", config=JudgeConfig(identity="dlib"), models=models)


def test_dlib_filters_say_why_and_rank_the_person_first(dlib_ranking):
    r = {e.path.name: e for e in dlib_ranking.entries}
    assert dlib_ranking.baseline is not None and 0.3 < dlib_ranking.baseline < 1  # the 3 photos' own similarity
    assert r["two.png"].reason == "2 faces"
    assert r["black.png"].reason == "broken render: mostly pure black"
    assert r["small.png"].reason == "face 91 px, under 0.23 of the side"
    assert [e.path.name for e in dlib_ranking.top()] == ["astronaut.png", "blurred.png", "hopper.png"]
    assert r["astronaut.png"].scores["identity_rel"] == 1.0 and r["hopper.png"].scores["identity"] < 0.2
    assert r["blurred.png"].scores["sharpness"] < r["astronaut.png"].scores["sharpness"] - 0.2
    assert r["blurred.png"].scores["quality"] < r["astronaut.png"].scores["quality"]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny random face embedder in torch, exported to ONNX with a free batch size."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 32)).eval()
    path = tmp_path_factory.mktemp("onnx") / "tiny_arcface.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (torch.zeros(1, 3, 112, 112),), str(path), input_names=["data"], output_names=["emb"],
                          dynamic_axes={"data": {0: "batch"}}, dynamo=False)
    return net, path


def test_onnx_embedder_matches_its_torch_model_and_ranks(onnx_model, faces, models, astronaut):
    from loracam.judge.embed import ARCFACE_TEMPLATE, OnnxEmbedder, similarity_transform

    net, path = onnx_model
    emb = OnnxEmbedder(path)
    assert (emb.input_name, emb.side, emb.nchw) == ("data", 112, True)
    face = astronaut.crop(ASTRONAUT_FACE_CROP)
    found = models.detector("dlib").detect([face])[0]
    crop = emb.crop(face, found.face)
    assert crop.shape == (112, 112, 3)
    # aligned-ish: the five landmark points, moved by the crop's transform, land near ArcFace's template
    lm = found.face.landmarks
    points = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    m = similarity_transform(points, ARCFACE_TEMPLATE)  # [2, 3]
    moved = points @ m[:, :2].T + m[:, 2]
    assert np.abs(moved - ARCFACE_TEMPLATE).max() < 6, moved
    assert np.allclose(similarity_transform(ARCFACE_TEMPLATE * 2 + 5, ARCFACE_TEMPLATE),
                       [[0.5, 0, -2.5], [0, 0.5, -2.5]])
    crops = np.stack([crop, np.asarray(Image.fromarray(crop).transpose(Image.FLIP_LEFT_RIGHT))])
    with torch.no_grad():
        x = torch.from_numpy((crops.astype(np.float32) - 127.5) / 127.5).permute(0, 3, 1, 2)
        expected = torch.nn.functional.normalize(net(x), dim=1).numpy()
    np.testing.assert_allclose(emb.run(crops), expected, atol=1e-5)
    r = judge_images([faces / "c" / "astronaut.png", faces / "c" / "two.png"], reference=faces / "ref",
                     config=JudgeConfig(identity=f"onnx:{path}"), models=models)
    first, second = r.entries
    assert first.kept and -1 <= first.scores["identity"] <= 1 and r.baseline is not None
    assert second.reason == "2 faces"


# -- aesthetic ------------------------------------------------------------------------------------------------


def test_aesthetic_predictor_equals_a_hand_computation(tmp_path, toy, models):
    from transformers import CLIPConfig, CLIPModel

    from loracam.judge.aesthetic import AestheticPredictor

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=8),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2),
                     projection_dim=12)
    clip = CLIPModel(cfg).eval()  # its vision_config has no projection_dim: the loader must take the top one
    clip.save_pretrained(tmp_path / "clip")
    widths = [12, 32, 16, 8, 4, 1]  # the predictor's 768-1024-128-64-16-1, its input the projection width
    state = {}
    for key, (i, o) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        state[f"layers.{key}.weight"] = torch.randn(o, i) * 0.5
        state[f"layers.{key}.bias"] = torch.randn(o) * 0.1 + (5.0 if key == 7 else 0.0)
    torch.save(state, tmp_path / "mlp.pth")
    root, _, _ = toy
    images = [Image.open(p).convert("RGB") for p in sorted((root / "cands").glob("c0[0-3].png"))]
    predictor = AestheticPredictor(tmp_path / "clip", tmp_path / "mlp.pth")
    with torch.no_grad():
        e = clip.get_image_features(pixel_values=predictor.pixels(images))
        e = (e if torch.is_tensor(e) else e.pooler_output).double().numpy()
    x = e / np.linalg.norm(e, axis=1, keepdims=True)
    for key in (0, 2, 4, 6, 7):  # linear after linear: dropout is off when rating
        x = x @ state[f"layers.{key}.weight"].double().numpy().T + state[f"layers.{key}.bias"].double().numpy()
    np.testing.assert_allclose(predictor.rate(images), x[:, 0], rtol=1e-5, atol=1e-5)
    assert predictor.pixels(images).shape == (4, 3, 32, 32)
    spec = f"{tmp_path / 'clip'}:{tmp_path / 'mlp.pth'}"
    r = judge_images(sorted((root / "cands").glob("c0[0-3].png")), config=JudgeConfig(identity="none",
                     subject="object", aesthetic=spec), models=models)
    for entry in r.entries:
        s = entry.scores
        assert "identity" not in s and "adherence" not in s
        n = min(1.0, max(0.0, (s["aesthetic"] - 1) / 9))
        assert entry.combined == pytest.approx(s["artefacts"] * (0.15 * s["quality"] + 0.10 * n) / 0.25)
    assert sorted(r.entries[i].scores["aesthetic"] for i in range(4)) == pytest.approx(sorted(x[:, 0]), abs=1e-5)
    torch.save({"layers.0.weight": torch.zeros(4, 7)}, tmp_path / "bad.pth")
    with pytest.raises(LoracamError, match="lacks layers.2.weight"):
        AestheticPredictor(tmp_path / "clip", tmp_path / "bad.pth")


# -- writing --------------------------------------------------------------------------------------------------


def test_json_and_sheet_are_written_once_and_never_overwritten(tmp_path, toy_ranking):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert write_ranking(toy_ranking, out_json, out_png) == [out_json, out_png]
    data = json.loads(out_json.read_text())
    assert data["baseline"] == round(toy_ranking.baseline, 4) and "identity / baseline" in data["formula"]
    assert [e["path"] for e in data["entries"]] == [str(e.path) for e in toy_ranking.entries]
    assert data["top"] == [str(e.path) for e in toy_ranking.top(6)]
    dropped = [e for e in data["entries"] if not e["kept"]]
    assert dropped and all(e["rank"] is None and e["combined"] is None and e["reason"] for e in dropped)
    sheet = Image.open(out_png)
    assert sheet.width >= 6 * 192 and sheet.height > 3 * 192
    before = out_json.read_bytes(), out_png.read_bytes()
    with pytest.raises(LoracamError, match="already exists"):
        write_ranking(toy_ranking, out_json, out_png)
    with pytest.raises(LoracamError, match="already exists"):  # the free JSON name is not written either
        write_ranking(toy_ranking, tmp_path / "new.json", out_png)
    assert (out_json.read_bytes(), out_png.read_bytes()) == before and not (tmp_path / "new.json").exists()


def test_sheet_enlarges_toy_images_by_nearest(toy_ranking):
    from loracam.judge.sheet import cell_lines, thumbnail

    small = Image.fromarray(world.render(world.Doll()))
    big = thumbnail(small)
    assert big.size == (128, 192) and np.array_equal(np.asarray(big)[::2, ::2], np.asarray(small))
    kept = toy_ranking.entries[0]
    assert cell_lines(kept)[0][0].startswith("#1 ")
    dropped = toy_ranking.entries[-1]
    assert cell_lines(dropped)[0][0].startswith("dropped: face")


# -- the command ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    from loracam.cli_judge import COMMANDS

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    for command in COMMANDS:  # as loracam.cli registers them
        app.command()(command)

    @app.command()
    def other() -> None:  # a second command keeps `judge` a subcommand, as in the real app
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["judge", *map(str, args)])


def test_cli_ranks_writes_and_explains_the_score(cli, toy, tmp_path):
    root, _, _ = toy
    result = cli(root / "cands", "--reference", root / "ref", "--identity", "toy", "--concept", "sks", "--top", "3",
                 "--json", tmp_path / "r.json", "--sheet", tmp_path / "r.png")
    assert result.exit_code == 0, result.output
    assert "leave-one-out" in result.output and "under 0.40 of the side" in result.output
    assert "top 3: " in result.output and (tmp_path / "r.json").exists() and (tmp_path / "r.png").exists()
    help_text = " ".join(cli("--help").output.split())
    for name, w in WEIGHTS.items():
        assert f"{name} {w:.2f}" in help_text
    assert "identity / baseline" in help_text


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "no images in"),
    ("not_image", "is not a readable image"),
    ("bad_reference", "gave no usable photo"),
    ("unknown_identity", "unknown identity embedder"),
    ("missing_onnx", "does not exist; give the path of an ArcFace-style"),
    ("pixels", "these look like pixels"),
    ("no_concept", "--identity toy needs the concept"),
    ("taken_output", "already exists"),
])
def test_cli_bad_input_is_one_clear_line(cli, toy, tmp_path, case, message):
    root, _, _ = toy
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "blank").mkdir()
    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "blank" / "grey.png")
    (tmp_path / "taken.json").write_text("{}")
    cands, ref = root / "cands", root / "ref"
    args = {
        "missing": [tmp_path / "nowhere", "--reference", ref, "--identity", "toy", "--concept", "sks"],
        "empty": [tmp_path / "empty", "--reference", ref, "--identity", "toy", "--concept", "sks"],
        "not_image": [tmp_path / "notes.png", "--reference", ref, "--identity", "toy", "--concept", "sks"],
        "bad_reference": [cands, "--reference", tmp_path / "blank"],
        "unknown_identity": [cands, "--reference", ref, "--identity", "arcface"],
        "missing_onnx": [cands, "--reference", ref, "--identity", f"onnx:{tmp_path / 'no.onnx'}"],
        "pixels": [cands, "--reference", ref, "--face-size", "120:300"],
        "no_concept": [cands, "--reference", ref, "--identity", "toy"],
        "taken_output": [cands, "--reference", ref, "--identity", "toy", "--concept", "sks", "--json",
                         tmp_path / "taken.json"],
    }[case]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) <= 2
    assert (tmp_path / "taken.json").read_text() == "{}"


def test_reference_errors_name_each_photo(tmp_path, toy, models):
    root, _, _ = toy
    other = tmp_path / "others"
    rng = np.random.default_rng(9)
    for i in range(3):  # dolls without the sks face: not photos of the concept
        _save(other / f"p{i}.png", Image.fromarray(world.render(_doll(rng, framing="close-up"))))
    with pytest.raises(LoracamError, match="read as sks only 0%"):
        judge_images([root / "cands"], reference=other, config=JudgeConfig(identity="toy", concept="sks"),
                     models=models)
    with pytest.raises(LoracamError, match="pass --reference"):
        judge_images([root / "cands"], config=JudgeConfig(identity="toy", concept="sks"), models=models)
    with pytest.raises(LoracamError, match="compares faces, and a garment shows none"):
        judge_images([root / "cands"], reference=root / "ref", config=JudgeConfig(subject="garment"), models=models)
    with pytest.raises(LoracamError, match="unknown subject"):
        JudgeConfig(subject="car")
    assert math.isclose(JudgeConfig(face_size=(0.3, 1.2)).face_size[1], 1.2)


def test_dataset_reference_uses_prep_embeddings_and_identity_py_baseline(tmp_path, models):
    """A face dataset's manifest embeddings are the reference as they are; the leave-one-out baseline is the
    one loracam.judge.identity computes for checkpoint picking (one definition of "the photos' own score")."""
    from loracam.judge.embed import DlibEmbedder
    from loracam.judge.identity import IdentityScorer
    from loracam.judge.reference import load_reference

    rng = np.random.default_rng(0)
    centre = rng.normal(0, 0.1, 128)
    photos = [{"name": f"p{i}.jpg", "status": "kept", "embedding": list(centre + rng.normal(0, 0.02, 128))}
              for i in range(4)]
    photos.append({"name": "far.jpg", "status": "dropped", "embedding": list(rng.normal(0, 0.1, 128))})
    photos.append({"name": "noface.jpg", "status": "kept", "embedding": None})
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"trigger": "ohwx", "subject": "face"},
                                                        "photos": photos}))
    ref = load_reference(tmp_path, DlibEmbedder(models.detector("dlib")), models)
    assert ref.names == ("p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg") and (ref.trigger, ref.subject) == ("ohwx", "face")
    assert ref.skipped == (("noface.jpg", "no face embedding in the manifest"),)
    assert ref.baseline == pytest.approx(IdentityScorer.from_manifest(tmp_path).baseline, abs=1e-12)
    assert "4 photos; 1 skipped" in ref.describe()


def test_config_from_toml_dict_names_unknown_keys():
    from loracam.config import from_dict

    cfg = from_dict(JudgeConfig, {"identity": "toy", "concept": "sks", "face_size": [0.3, 1.2], "top": 4})
    assert cfg.face_size == (0.3, 1.2) and cfg.top == 4
    with pytest.raises(LoracamError, match="unknown key.*tpo"):
        from_dict(JudgeConfig, {"tpo": 3})
    with pytest.raises(LoracamError, match="face size range 0.5:0.2 is empty"):
        JudgeConfig(face_size=(0.5, 0.2))
