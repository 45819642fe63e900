"""`loracam prep` end to end: decisions with reasons, kohya layout, manifest, and nothing lost or half-written."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import matplotlib
import pytest
from PIL import Image, ImageFilter
from skimage import data
from typer.testing import CliRunner

from loracam.cli import app
from loracam.data.config import PrepConfig
from loracam.data.prep import Analyzers, prepare
from loracam.errors import LoracamError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

runner = CliRunner()


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def face_photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    a = Image.fromarray(data.astronaut())
    a.save(d / "astro.jpg", quality=95)
    a.transpose(Image.FLIP_LEFT_RIGHT).save(d / "astro_mirror.png")
    a.rotate(15, expand=True).save(d / "astro_tilt.jpg")
    a.resize((420, 420)).save(d / "astro_copy.jpg")
    a.filter(ImageFilter.GaussianBlur(4)).rotate(-8).save(d / "astro_blurry.jpg")
    Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").save(d / "grace.jpg")
    Image.fromarray(data.chelsea()).save(d / "cat.png")
    (d / "broken.jpg").write_bytes((d / "astro.jpg").read_bytes()[:5000])
    (d / "readme.pdf").write_bytes(b"%PDF-1.4")
    return d


@pytest.fixture(scope="module")
def analyzers():
    return Analyzers(PrepConfig())


def test_face_dataset(face_photos, tmp_path, analyzers):
    before = digest(face_photos)
    cfg = PrepConfig(subject="face", trigger="sks", class_word="woman", resolution=(512, 512))
    res = prepare(face_photos, tmp_path / "ds", cfg, analyzers)
    out = tmp_path / "ds"
    status = {r.name: (r.status, r.reason) for r in res.records}
    assert status["astro.jpg"][0] == status["astro_mirror.png"][0] == status["astro_tilt.jpg"][0] == "kept"
    assert status["astro_copy.jpg"][1].startswith("near-duplicate of astro.jpg")
    assert status["astro_blurry.jpg"][1].startswith("blurry")
    assert status["cat.png"][1] == "no face found"
    assert status["grace.jpg"][1].startswith("may be someone else")
    assert status["broken.jpg"][1].startswith("truncated")
    assert "not a supported image type" in status["readme.pdf"][1]
    files = sorted(p.name for p in (out / "img" / "10_sks woman").iterdir())
    assert "astro_tilt_closeup.png" in files and "astro_tilt_closeup.txt" in files and len(files) == 12
    assert (out / "img" / "10_sks woman" / "astro_closeup.txt").read_text() == "sks, a photo of a woman\n"
    manifest = json.loads((out / "manifest.json").read_text())
    astro = next(p for p in manifest["photos"] if p["name"] == "astro.jpg")
    assert len(astro["embedding"]) == 128 and len(astro["face"]["landmarks"]) == 68 and astro["sharpness"] > 0
    assert all(c["bucket"] == list(Image.open(out / c["file"]).size) for c in astro["crops"])
    assert manifest["steps"]["total_steps"] == 6 * 10 * 10
    cfg_toml = tomllib.loads((out / "dataset.toml").read_text())
    assert cfg_toml["datasets"][0]["subsets"][0]["image_dir"] == str(out / "img" / "10_sks woman")
    assert Image.open(out / "contact_sheet.png").height > 1000
    assert "6 images x 10 repeats, batch 1, 10 epochs = 600 steps" in " ".join(res.summary)
    assert digest(face_photos) == before  # the photo folder is never touched


def test_keep_overrides_a_flag(face_photos, tmp_path, analyzers):
    cfg = PrepConfig(subject="face", trigger="sks", class_word="woman", resolution=(512, 512), keep=("grace.jpg",))
    res = prepare(face_photos, tmp_path / "ds", cfg, analyzers)
    rec = next(r for r in res.records if r.name == "grace.jpg")
    assert rec.status == "kept" and "may be someone else" in rec.notes[0] and "kept because you asked" in rec.notes[0]
    assert (tmp_path / "ds" / "img" / "10_sks woman" / "grace_closeup.png").exists()


@pytest.fixture()
def garment_photos(tmp_path) -> tuple[Path, Path]:
    d = tmp_path / "garment_photos"
    d.mkdir()
    a = Image.fromarray(data.astronaut()).resize((600, 900))
    a.save(d / "p1.jpg")
    a.transpose(Image.FLIP_LEFT_RIGHT).save(d / "p2.jpg")
    Image.fromarray(data.chelsea()).resize((600, 900)).save(d / "p3_nobox.jpg")  # no person: pose fails
    boxes = {name: {"garment": [150, 380, 450, 830], "full_body": [60, 20, 540, 890], "shoes": [200, 450, 500, 900]}
             for name in ("p1.jpg", "p2.jpg")}
    bf = tmp_path / "boxes.json"
    bf.write_text(json.dumps(boxes))
    return d, bf


def test_garment_with_reg_and_boxes(garment_photos, tmp_path, analyzers):
    photos, boxes = garment_photos
    cfg = PrepConfig(subject="garment", trigger="testdress", class_word="dress", reg=True, boxes=boxes,
                     keep=("p3_nobox.jpg",))  # an upscaled cat is soft; keep it to reach the pose step
    res = prepare(photos, tmp_path / "ds", cfg, analyzers)
    out = tmp_path / "ds"
    assert sorted(p.name for p in (out / "img" / "10_testdress dress").glob("*.png")) == ["p1_garment.png", "p2_garment.png"]
    assert sorted(p.name for p in (out / "reg" / "1_dress").glob("*.png")) == ["p1_full_body.png", "p2_full_body.png"]
    assert (out / "img" / "10_testdress dress" / "p1_garment.txt").read_text() == "testdress, dress\n"
    assert (out / "reg" / "1_dress" / "p1_full_body.txt").read_text() == "dress\n"
    for p in (out / "img" / "10_testdress dress").glob("*.png"):
        w, h = Image.open(p).size
        assert w * 3 == h * 2  # every crop keeps the 2:3 ratio
    rec = next(r for r in res.records if r.name == "p3_nobox.jpg")
    assert rec.status == "dropped" and "garment not found" in rec.reason and "--boxes" in rec.reason
    assert "2 images x 10 repeats + 2 reg (balanced to 20)" in " ".join(res.summary)
    toml = tomllib.loads((out / "dataset.toml").read_text())
    assert [s.get("is_reg", False) for s in toml["datasets"][0]["subsets"]] == [False, True]


def test_small_shoe_crops_stay_256x384(garment_photos, tmp_path, analyzers):
    photos, boxes = garment_photos
    cfg = PrepConfig(subject="shoes", trigger="myshoes", class_word="shoes", boxes=boxes)
    old = os.umask(0o027)  # a user who keeps files from others: the dataset must follow that, not mkdtemp's 0700
    try:
        prepare(photos, tmp_path / "ds", cfg, analyzers)
    finally:
        os.umask(old)
    sizes = {Image.open(p).size for p in (tmp_path / "ds" / "img" / "10_myshoes shoes").glob("*.png")}
    assert sizes == {(256, 384)}
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "ds") == 0o750 and mode(tmp_path / "ds" / "img") == 0o750
    assert mode(tmp_path / "ds" / "manifest.json") == mode(tmp_path / "ds" / "report.md") == 0o640


def test_nothing_usable_is_a_clear_error_and_writes_nothing(tmp_path, analyzers):
    photos = tmp_path / "p"
    photos.mkdir()
    Image.fromarray(data.chelsea()).save(photos / "cat.png")
    (photos / "notes.jpg").write_text("text, not a photo")
    with pytest.raises(LoracamError) as err:
        prepare(photos, tmp_path / "ds", PrepConfig(subject="face", resolution=(256, 256)), analyzers)
    msg = str(err.value)
    assert "nothing was written" in msg and "cat.png: no face found" in msg and "notes.jpg: not an image" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no dataset, no leftover temp folder


def test_existing_dataset_needs_force_and_is_kept_aside(face_photos, tmp_path, analyzers):
    cfg = PrepConfig(subject="face", trigger="sks", class_word="woman", resolution=(512, 512))
    prepare(face_photos, tmp_path / "ds", cfg, analyzers)
    with pytest.raises(LoracamError, match="already holds a loracam dataset.*--force"):
        prepare(face_photos, tmp_path / "ds", cfg, analyzers)
    prepare(face_photos, tmp_path / "ds", PrepConfig(**{**cfg.__dict__, "force": True}), analyzers)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("ds.replaced-")]
    assert len(aside) == 1 and (aside[0] / "manifest.json").exists() and (tmp_path / "ds" / "manifest.json").exists()


def test_output_inside_the_photo_folder_is_refused(face_photos, analyzers):
    with pytest.raises(LoracamError, match="must not be inside the photo folder"):
        prepare(face_photos, face_photos / "ds", PrepConfig(), analyzers)


def test_cli_prep_import_and_tags(face_photos, tmp_path):
    out = tmp_path / "ds"
    r = runner.invoke(app, ["prep", str(face_photos), "-o", str(out), "--subject", "face", "--trigger", "sks",
                            "--class", "woman", "--resolution", "512x512"])
    assert r.exit_code == 0, r.output
    assert "600 steps" in r.output and "dropped cat.png: no face found" in r.output
    r = runner.invoke(app, ["prep", "--import", str(out), "-o", str(tmp_path / "imp")])
    assert r.exit_code == 0, r.output
    imported = json.loads((tmp_path / "imp" / "manifest.json").read_text())
    assert imported["steps"]["total_steps"] == 600 and imported["subsets"][0]["class_text"] == "sks woman"
    r = runner.invoke(app, ["tags", str(out), "--add", "smile", "--trigger-first", "sks"])
    assert r.exit_code == 0, r.output
    assert (out / "img" / "10_sks woman" / "astro_closeup.txt").read_text() == "sks, a photo of a woman, smile\n"
    r = runner.invoke(app, ["tags", str(out), "--report"])
    assert "smile" in r.output


@pytest.mark.parametrize("args,message", [
    (["prep", "/nonexistent/photos", "-o", "X"], "photo folder not found"),
    (["prep", "{photos}", "-o", "{tmp}/ds", "--subject", "car"], "must be one of 'face', 'person'"),
    (["prep", "{photos}", "-o", "{tmp}/ds", "--resolution", "500x700"], "multiples of 64"),
    (["prep", "{photos}", "-o", "{tmp}/ds", "--trigger", "a,b"], "without commas"),
    (["prep", "{photos}"], "-o DATASET_DIR"),
    (["prep", "--import", "{photos}"], "holds no kohya training images"),
])
def test_cli_prep_bad_input(face_photos, tmp_path, args, message):
    args = [a.format(photos=face_photos, tmp=tmp_path) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_import_reads_kohya_folders(tmp_path):
    root = tmp_path / "kohya"
    (root / "img" / "5_testdress dress").mkdir(parents=True)
    (root / "img" / "0_ignored").mkdir()
    (root / "reg" / "1_dress").mkdir(parents=True)
    im = Image.new("RGB", (256, 384), "red")
    for i in range(3):
        im.save(root / "img" / "5_testdress dress" / f"{i}.png")
        im.save(root / "reg" / "1_dress" / f"r{i}.png")
    (root / "img" / "5_testdress dress" / "0.caption").write_text("testdress, red dress\nsecond line ignored")
    from loracam.data.importer import import_kohya

    m = import_kohya(root, resolution=(512, 768))
    train = m["subsets"][0]
    assert train["images"][0]["caption"] == "testdress, red dress" and train["images"][1]["caption"] == "testdress dress"
    assert train["without_caption"] == 2 and any("0_ignored" in s for s in m["skipped"])
    assert m["steps"]["train_samples"] == 15 and m["steps"]["reg_samples"] == 15
    assert m["steps"]["buckets"] == [[256, 384, 30]]


def test_tagger_captions_through_prep(tmp_path):
    """--tagger wd14 with a model folder: tags follow the trigger; ratings never reach a caption."""
    from test_data_tagging import build_tagger_model, write_tags_csv

    model = tmp_path / "wd14"
    model.mkdir()
    build_tagger_model(model / "model.onnx")
    write_tags_csv(model / "selected_tags.csv")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = __import__("numpy").random.default_rng(0)
    for i in range(3):  # noisy red photos: sharp to intake, distinct to the duplicate check, red to the tagger
        a = rng.integers(0, 90, (400, 400, 3)).astype("uint8")
        a[..., 0] = rng.integers(180, 255, (400, 400))
        Image.fromarray(a).save(photos / f"cup{i}.png")
    cfg = PrepConfig(subject="object", trigger="mycup", class_word="cup", resolution=(256, 256),
                     tagger="wd14", tagger_model=str(model))
    prepare(photos, tmp_path / "ds", cfg)
    caption = (tmp_path / "ds" / "img" / "10_mycup cup" / "cup0_whole.txt").read_text().strip()
    tags = caption.split(", ")
    assert tags[0] == "mycup" and "red dress" in tags and "general" not in tags and "blue background" not in tags
