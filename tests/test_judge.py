"""Judging: identity similarity on real faces, ranking and picking checkpoints, exact LoRA averaging."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageOps
from safetensors import safe_open

from loracam.errors import LoracamError
from loracam.judge import (CheckpointScore, IdentityScorer, average_loras, curve_text, explain, pick, rank,
                           similarity)
from loracam.lora import LoraModule, read_lora, write_kohya
from rounding import delta_bound

# Measured (dlib HOG + ResNet, reference = 3 astronaut variants): astronaut images 0.82-0.84, Grace Hopper
# -0.11 to -0.08, baseline 0.67. The thresholds below keep a wide margin from those numbers.
SAME_MIN = 0.6
OTHER_MAX = 0.2


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())


@pytest.fixture(scope="module")
def reference(analyzer, astronaut) -> np.ndarray:
    """[3, 128]: the astronaut mirrored, turned 8 degrees, and recompressed, as prep would embed them."""
    variants = [ImageOps.mirror(astronaut), astronaut.rotate(8, resample=Image.BICUBIC, fillcolor=(255, 255, 255)),
                _jpeg(astronaut, 30)]
    embs = []
    for image in variants:
        found = analyzer.find(image)
        assert found.face is not None, found.reason
        embs.append(analyzer.embedding(image, found.face))
    return np.stack(embs)


@pytest.fixture(scope="module")
def scorer(reference, analyzer) -> IdentityScorer:
    return IdentityScorer(reference, analyzer)


# -- identity --------------------------------------------------------------------------------------------


def test_similarity_mapping_is_one_at_zero_and_zero_at_dlib_threshold():
    assert similarity(0.0) == 1.0
    assert similarity(0.6) == pytest.approx(0.0)
    assert similarity(0.9) < 0 < similarity(0.3) < 1
    d = np.linspace(0, 1.5, 16)
    assert np.all(np.diff(similarity(d)) < 0)  # monotone: farther is always less similar


def test_the_person_scores_near_one_and_someone_else_below_threshold(scorer, astronaut, hopper):
    same = scorer.score([astronaut, astronaut.resize((384, 384), Image.LANCZOS), astronaut.crop((100, 0, 400, 300))])
    other = scorer.score([hopper, ImageOps.mirror(hopper), _jpeg(hopper, 40)])
    print(f"\nastronaut {same.per_image} -> {same.score:.3f}; grace {other.per_image} -> {other.score:.3f}; "
          f"baseline {same.baseline:.3f}")
    assert same.faces_found == same.images == 3 and other.faces_found == 3
    assert all(s > SAME_MIN for s in same.per_image)
    assert all(s < OTHER_MAX for s in other.per_image)
    assert min(same.per_image) > max(other.per_image)
    assert same.score == pytest.approx(np.mean(same.per_image))


def test_an_image_without_a_face_is_none_and_leaves_the_mean_alone(scorer, astronaut, cat):
    alone = scorer.score([astronaut])
    mixed = scorer.score([astronaut, cat])
    assert mixed.per_image[0] == pytest.approx(alone.per_image[0]) and mixed.per_image[1] is None
    assert mixed.faces_found == 1 and mixed.images == 2
    assert mixed.score == pytest.approx(alone.score)
    assert mixed.reasons == [None, "no face found"]
    assert "1 of 2 images" in mixed.describe()


def test_no_face_anywhere_is_nan_not_zero(scorer, cat):
    result = scorer.score([cat, cat])
    assert math.isnan(result.score)
    assert result.faces_found == 0 and result.images == 2 and result.per_image == [None, None]
    assert "no usable face in any of 2 images" in result.describe()
    assert math.isnan(scorer.score([]).score)


def test_baseline_is_leave_one_out_similarity_of_the_reference(reference, analyzer, scorer):
    expected = np.mean([1 - np.linalg.norm(reference[i] - np.delete(reference, i, axis=0).mean(axis=0)) / 0.6
                        for i in range(3)])
    assert scorer.baseline == pytest.approx(expected)
    assert 0 < scorer.baseline < 1  # genuine photos differ, but are the same person
    # two photos of one face as reference: each against the other
    pair = IdentityScorer(reference[:2], analyzer)
    assert pair.baseline == pytest.approx(1 - np.linalg.norm(reference[0] - reference[1]) / 0.6)
    assert IdentityScorer(reference[:1], analyzer).baseline is None


def test_bad_reference_is_a_clear_error():
    with pytest.raises(LoracamError, match="no reference face"):
        IdentityScorer(np.zeros((0, 128)))
    with pytest.raises(LoracamError, match=r"\[N, 128\]"):
        IdentityScorer(np.zeros(128))
    with pytest.raises(LoracamError, match="NaN"):
        IdentityScorer(np.full((2, 128), np.nan))


def test_analyzer_loads_only_when_first_needed(reference, analyzer, astronaut, monkeypatch):
    import loracam.data.faces as faces

    made = []
    monkeypatch.setattr(faces, "FaceAnalyzer", lambda: made.append(1) or analyzer)
    lazy = IdentityScorer(reference)
    assert made == []
    lazy.score([astronaut])
    lazy.score([astronaut])
    assert made == [1]


def test_scorer_from_prep_manifest(tmp_path, reference, analyzer):
    photos = [{"name": f"{i}.jpg", "status": "kept", "embedding": list(map(float, e))} for i, e in enumerate(reference)]
    photos.append({"name": "x.jpg", "status": "dropped", "embedding": [9.0] * 128})
    (tmp_path / "manifest.json").write_text(json.dumps({"photos": photos}))
    loaded = IdentityScorer.from_manifest(tmp_path, analyzer)
    assert np.allclose(loaded.reference, reference)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "manifest.json").write_text(json.dumps({"photos": photos[-1:]}))
    with pytest.raises(LoracamError, match="no face embeddings"):
        IdentityScorer.from_manifest(tmp_path / "empty")


# -- rank and pick ---------------------------------------------------------------------------------------


def _c(step: int, score: float) -> CheckpointScore:
    return CheckpointScore(step, Path(f"run-{step:06d}.safetensors"), score)


RUN = [_c(100, 0.40), _c(200, 0.70), _c(300, math.nan), _c(400, 0.70), _c(500, 0.55), _c(600, 0.20)]


def test_rank_best_first_nan_last_ties_to_later_step():
    assert [c.step for c in rank(RUN)] == [400, 200, 500, 100, 600, 300]
    assert [c.step for c in rank(list(reversed(RUN)))] == [400, 200, 500, 100, 600, 300]  # order-free
    assert [c.step for c in rank([_c(1, math.nan), _c(2, math.nan)])] == [2, 1]


def test_pick_modes():
    assert [c.step for c in pick(RUN)] == [400]
    assert [c.step for c in pick(RUN, "best")] == [400]
    assert [c.step for c in pick(RUN, "average-top-k", k=3)] == [400, 200, 500]
    assert [c.step for c in pick(RUN, "last")] == [600]
    # k beyond the scored checkpoints: the unscored one is never averaged in
    assert [c.step for c in pick(RUN, "average-top-k", k=10)] == [400, 200, 500, 100, 600]
    assert "1 without a score left out" in explain(RUN, "average-top-k", k=3)
    assert "step 400 scored best (0.700)" in explain(RUN, "best")


def test_unknown_mode_lists_the_modes_and_bad_inputs_are_clear():
    with pytest.raises(LoracamError, match="best, average-top-k, last"):
        pick(RUN, "median")
    with pytest.raises(LoracamError, match="no checkpoints"):
        pick([], "best")
    with pytest.raises(LoracamError, match="k >= 1"):
        pick(RUN, "average-top-k", k=0)


def test_all_nan_falls_back_to_last_and_says_so():
    blind = [_c(300, math.nan), _c(100, math.nan), _c(200, math.nan)]
    assert [c.step for c in pick(blind, "best")] == [300]
    assert [c.step for c in pick(blind, "average-top-k")] == [300]
    text = explain(blind, "best")
    assert "no checkpoint has a score" in text and "step 300" in text
    assert "no checkpoint has a score" not in explain(RUN, "best")


def test_curve_text_table():
    text = curve_text(RUN)
    print("\n" + text)
    lines = text.splitlines()
    assert lines[0].startswith("step |") and len(lines) == 1 + len(RUN)
    body = {int(line.split("|")[0]): line for line in lines[1:]}
    bars = {step: line.split("|")[2].strip().split(" ")[0] for step, line in body.items()}
    assert "n/a" in body[300] and "#" not in body[300]
    assert len(bars[400]) == len(bars[200]) == 30 and len(bars[600]) == 1
    assert len(bars[600]) < len(bars[100]) < len(bars[500]) < len(bars[400])
    assert "best" in body[400] and "best" not in body[200]
    assert "n/a" in curve_text([_c(1, math.nan)])


# -- averaging LoRAs -------------------------------------------------------------------------------------

LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"


def _lora(seed: int, alpha: float, dim: int = 2, conv_in: int = 4) -> dict[str, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    return {
        LINEAR: LoraModule(LINEAR, torch.randn(dim, 6, generator=g), torch.randn(5, dim, generator=g), alpha),
        CONV: LoraModule(CONV, torch.randn(dim, conv_in, 3, 3, generator=g), torch.randn(3, dim, 1, 1, generator=g),
                         alpha),
    }


@pytest.fixture
def two_loras(tmp_path) -> tuple[Path, Path, dict, dict]:
    a, b = _lora(1, alpha=1.0), _lora(2, alpha=4.0)
    pa = write_kohya(tmp_path / "a.safetensors", a, {"ss_network_dim": "2", "ss_output_name": "run"})
    pb = write_kohya(tmp_path / "b.safetensors", b, {"ss_network_dim": "2", "ss_output_name": "run"})
    return pa, pb, a, b


def test_average_is_the_exact_mean_of_the_deltas(tmp_path, two_loras):
    pa, pb, a, b = two_loras
    out = average_loras([pa, pb], tmp_path / "avg.safetensors", {"note": "top-2"})
    avg = read_lora(out)
    assert set(avg.modules) == {LINEAR, CONV}
    for name in (LINEAR, CONV):
        expected = (a[name].delta() + b[name].delta()) / 2
        got = avg.modules[name].delta()
        assert got.shape == expected.shape
        assert ((got - expected).abs() <= delta_bound(a[name], b[name])).all(), name
        assert avg.modules[name].dim == 4 and avg.modules[name].alpha == 4.0
        # the naive average of up and down separately is not the mean, which is why it is not done
        naive = LoraModule(name, (a[name].down + b[name].down) / 2, (a[name].up + b[name].up) / 2, 2.5).delta()
        assert (naive - expected).abs().max() > 1e-2
    assert avg.metadata["note"] == "top-2"
    assert avg.metadata["ss_network_dim"] == "4" and avg.metadata["ss_output_name"] == "avg"
    assert json.loads(avg.metadata["loracam_average_of"]) == ["a.safetensors", "b.safetensors"]
    with safe_open(str(out), framework="pt") as f:  # plain kohya keys, alpha stored
        assert float(f.get_tensor(f"{LINEAR}.alpha")) == 4.0


def test_average_of_mismatched_loras_names_file_and_module(tmp_path, two_loras):
    pa, _, _, _ = two_loras
    fewer = _lora(3, 1.0)
    del fewer[CONV]
    pc = write_kohya(tmp_path / "c.safetensors", fewer, {})
    with pytest.raises(LoracamError, match=f"c.safetensors lacks module {CONV}"):
        average_loras([pa, pc], tmp_path / "x.safetensors")
    other_base = write_kohya(tmp_path / "d.safetensors", _lora(4, 1.0, conv_in=8), {})
    with pytest.raises(LoracamError, match=f"d.safetensors.*module {CONV}"):
        average_loras([pa, other_base], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(LoracamError, match="no LoRA files"):
        average_loras([], tmp_path / "x.safetensors")


def test_average_never_overwrites_unless_asked(tmp_path, two_loras):
    pa, pb, a, b = two_loras
    target = tmp_path / "final.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(LoracamError, match="already exists"):
        average_loras([pa, pb], target)
    assert target.read_bytes() == b"precious"
    average_loras([pa, pb], target, overwrite=True)
    expected = (a[LINEAR].delta() + b[LINEAR].delta()) / 2
    assert ((read_lora(target).modules[LINEAR].delta() - expected).abs() <= delta_bound(a[LINEAR], b[LINEAR])).all()
