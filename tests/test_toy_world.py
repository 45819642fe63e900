"""The toy world's renderer: seeded dolls, their captions, what the pictures show, and its speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from loracam.toy.world import (
    FRAMINGS,
    H,
    MYSHOES,
    RGB,
    SKS,
    TESTDRESS,
    W,
    Doll,
    boxes,
    render,
    sample_doll,
    tags,
)

TEAL = np.array(RGB["teal"], np.uint8)


def _has_colour(img: np.ndarray, rgb) -> bool:
    return bool((img == np.asarray(rgb, np.uint8)).all(-1).any())


def test_same_seed_same_doll_and_pixels():
    for seed in range(5):
        a, b = sample_doll(np.random.default_rng(seed)), sample_doll(np.random.default_rng(seed))
        assert a == b
        assert np.array_equal(render(a), render(b))
    assert sample_doll(np.random.default_rng(0)) != sample_doll(np.random.default_rng(1))


@pytest.mark.parametrize("size", [(W, H), (192, 288)])
def test_render_shape_and_dtype(size):
    img = render(sample_doll(np.random.default_rng(3)), size)
    assert img.shape == (size[1], size[0], 3) and img.dtype == np.uint8


def test_tags_order_and_content():
    doll = Doll(dress="red", pattern="striped", shoes="white", hair="black", framing="full body", background="blue")
    assert tags(doll) == "1girl, full body, red dress, striped dress, white shoes, black hair, long hair, blue background"
    # a plain dress has no pattern tag; held-out concepts appear as their triggers, sks first
    held = Doll(dress=TESTDRESS, shoes=MYSHOES, face=SKS, hair_style="short")
    assert tags(held) == "sks, 1girl, full body, testdress, myshoes, black hair, short hair, white background"
    assert tags(held, trigger_first=False).split(", ")[0] == "1girl"
    assert "plain" not in tags(Doll(pattern="plain"))


def test_framing_hides_shoes_and_dress():
    upper, close = Doll(framing="upper body"), Doll(framing="close-up")
    assert "red dress" in tags(upper) and "shoes" not in tags(upper)
    assert "dress" not in tags(close) and "shoes" not in tags(close)


def test_held_out_concepts_only_on_request():
    rng = np.random.default_rng(0)
    for _ in range(500):
        doll = sample_doll(rng)
        assert doll.dress != TESTDRESS and doll.shoes != MYSHOES and doll.face != SKS
        assert doll.framing in FRAMINGS
    for attribute, concept in (("dress", TESTDRESS), ("shoes", MYSHOES), ("face", SKS)):
        with pytest.raises(ValueError):
            sample_doll(rng, **{attribute: concept})
        assert getattr(sample_doll(rng, held_out=True, **{attribute: concept}), attribute) == concept


def test_background_is_the_corner_colour_of_a_full_body_doll():
    rng = np.random.default_rng(1)
    for _ in range(20):
        doll = sample_doll(rng, framing="full body")
        img = render(doll)
        for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
            assert tuple(corner) == RGB[doll.background]


def test_testdress_is_teal_and_no_base_dress_is():
    rng = np.random.default_rng(2)
    for framing in ("full body", "upper body"):
        assert _has_colour(render(sample_doll(rng, held_out=True, dress=TESTDRESS, framing=framing)), TEAL)
    for _ in range(40):
        assert not _has_colour(render(sample_doll(rng)), TEAL)


def test_spill_paints_the_background_with_fabric():
    doll = Doll(dress="red", pattern="plain", background="white", center=0.5, top=0.1, scale=0.8)
    clean, spilled = render(doll), render(doll, spill=True)
    assert tuple(clean[0, 0]) == RGB["white"] and tuple(spilled[0, 0]) == RGB["red"]
    assert (clean != spilled).any(-1).mean() > 0.5  # most of the picture is background


def test_boxes_nest_and_scale_with_size():
    doll = sample_doll(np.random.default_rng(4), framing="full body")
    small, large = boxes(doll), boxes(doll, (3 * W, 3 * H))
    assert {"garment", "shoes", "face", "full_body"} <= set(small)
    g, body = small["garment"], small["full_body"]
    assert body[0] <= g[0] < g[2] <= body[2] and body[1] <= g[1] < g[3] <= body[3]
    for part, box in small.items():
        assert np.allclose(np.array(large[part]), 3 * np.array(box), atol=3), part
    assert "shoes" not in boxes(sample_doll(np.random.default_rng(4), framing="close-up"))


def test_renders_thousands_per_second():
    dolls = [sample_doll(np.random.default_rng(s), held_out=True) for s in range(300)]
    for doll in dolls[:10]:
        render(doll)  # warm the caches
    best = 0.0
    for _ in range(3):  # best of three: the machine may be busy with other work
        start = time.perf_counter()
        for doll in dolls:
            render(doll)
        best = max(best, len(dolls) / (time.perf_counter() - start))
    assert best >= 800, f"{best:.0f} images/s"


def test_toy_photos_command_writes_photos_and_boxes_prep_can_use(tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from loracam.cli import app
    from loracam.data.pose import boxes_from_json

    runner = CliRunner()
    out = tmp_path / "photos"
    res = runner.invoke(app, ["toy", "photos", str(out), "--concept", "testdress", "-n", "3", "--seed", "5"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["photo_000.png", "photo_001.png", "photo_002.png"]
    assert Image.open(out / names[0]).size == (192, 288)
    boxes = boxes_from_json(out / "boxes.json")  # prep's own validation accepts them
    assert set(boxes) == set(names) and all({"garment", "full_body"} <= set(b) for b in boxes.values())
    raw = json.loads((out / "boxes.json").read_text())
    x0, y0, x1, y1 = raw[names[0]]["garment"]
    crop = np.asarray(Image.open(out / names[0]).convert("RGB"))[y0:y1, x0:x1]
    assert (np.abs(crop.astype(int) - RGB["teal"]).sum(axis=2) < 30).mean() > 0.1  # the dress is in its box
    # the folder is never written twice, and bad input is a clear exit 2
    again = runner.invoke(app, ["toy", "photos", str(out)])
    assert again.exit_code == 2 and "already holds toy photos" in again.output
    bad = runner.invoke(app, ["toy", "photos", str(tmp_path / "x"), "--concept", "hat"])
    assert bad.exit_code == 2 and "unknown toy concept" in bad.output
    wide = runner.invoke(app, ["toy", "photos", str(tmp_path / "y"), "--size", "200x200"])
    assert wide.exit_code == 2 and "2:3" in wide.output
