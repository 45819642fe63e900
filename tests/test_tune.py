"""loracam tune: the search on constructed cases whose answers are known, and the command on the toy base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loracam.errors import LoracamError
from loracam.tune.search import Reading, SearchConfig, check_budget, choose, min_budget, search


def judged(rule, prior=None):
    """An evaluate() from ``rule(weights) -> tuple of present flags`` (fidelity 1/0), counting renders."""
    calls = []

    def evaluate(items):
        calls.append(list(items))
        out = []
        for _, w in items:
            present = tuple(rule(w))
            out.append(Reading(tuple(float(p) for p in present), present, prior(w) if prior else None))
        return out

    evaluate.calls = calls
    return evaluate


def test_bisection_finds_each_threshold_within_its_resolution_and_the_budget():
    thresholds = (0.37, 0.52, 0.21)
    ev = judged(lambda w: [wi >= t for wi, t in zip(w, thresholds)])
    res = search([1, 2], 3, ev, SearchConfig(budget=18))
    for r in res:
        assert r.ok and r.renders <= 18
        for w, t in zip(r.weights, thresholds):
            assert t <= w <= t + 1 / 16 + 0.01, (r.weights, thresholds)
    # both seeds went through the same rounds together: one batch a round
    assert all(len({s for s, _ in batch}) == 2 for batch in ev.calls)


def test_relative_weights_lighter_others_let_a_lora_show_lighter():
    """Concept i shows when its weight beats a third of the others' sum: the combined point of a round can
    fail where each single move worked, and the search must fall back and still end on a render that worked."""
    ev = judged(lambda w: [wi >= 0.2 + (sum(w) - wi) / 3 for wi in w])  # the lightest: 0.6 each
    (r,) = search([7], 3, ev, SearchConfig(budget=18))
    assert r.ok and all(r.reading.present)
    assert all(0.6 <= w <= 0.6 + 1 / 16 for w in r.weights), r.weights  # scaling all together finds it
    tried = {t.weights for t in r.trials}
    assert r.weights in tried  # an answer is always a render that was seen


def test_a_concept_painted_over_by_a_heavy_lora_is_rescued_by_halving_that_lora():
    # LoRA 1 shows only while LoRA 0 stays at or below 0.6: at the start (1, 1) it is missing
    ev = judged(lambda w: [w[0] >= 0.3, w[1] >= 0.4 and w[0] <= 0.6])
    (r,) = search([0], 2, ev, SearchConfig(budget=12))
    assert r.ok and r.unreached == ()
    assert 0.3 <= r.weights[0] <= 0.6 and r.weights[1] >= 0.4
    assert [t.kind for t in r.trials[:3]] == ["start", "ceiling", "lighter:0"]
    assert r.weights[0] <= 0.35 and r.weights[1] <= 0.55  # then both go down together and alone


def test_loras_that_cook_each_other_at_the_start_are_found_lighter():
    """Every concept is lost while the three weigh more than 2.2 together (the toy LoRAs at 1.0 do this): the
    rescue's all-lighter renders find them, and the search goes on from there."""
    ev = judged(lambda w: [wi >= t and sum(w) <= 2.2 for wi, t in zip(w, (0.3, 0.5, 0.2))])
    (r,) = search([0], 3, ev, SearchConfig(budget=18))
    assert r.ok and r.unreached == () and all(r.reading.present)
    assert r.trials[0].kind == "start" and not any(r.trials[0].reading.present)
    assert sum(r.weights) <= 0.3 + 0.5 + 0.2 + 0.3, r.weights


def test_a_concept_that_needs_its_lora_heavy_and_the_others_light_is_found():
    """The toy dress LoRA (benchmarks/toy_tune.py, seed 1002): the dress shows only above 1.0 and only while the
    shoes LoRA stays at or below 0.5; no start, rescue or 0.7/1.0 round render has both. The explore round's
    first render (it at the ceiling, the others at 0.4) finds it, and the search lowers it from there."""
    ev = judged(lambda w: [w[0] >= 1.05 and w[1] <= 0.5, w[1] >= 0.3])
    (r,) = search([5], 2, ev, SearchConfig(budget=12))
    assert r.ok and r.unreached == () and all(r.reading.present)
    assert 1.05 <= r.weights[0] <= 1.5 and 0.3 <= r.weights[1] <= 0.5, r.weights
    assert any(t.kind == "explore" and t.weights == (1.5, 0.4) for t in r.trials)


def test_a_judge_that_never_fires_is_reported_not_reached_at_the_ceiling():
    ev = judged(lambda w: [w[0] >= 0.45, False])
    (r,) = search([3], 2, ev, SearchConfig(budget=12))
    assert r.unreached == (1,)
    assert max(t.weights[1] for t in r.trials) == 1.5  # tried at the ceiling, and said so (report_lines)
    assert 0.45 <= r.weights[0] <= 0.45 + 1 / 16 + 0.01  # the other LoRA is searched on as usual
    assert r.ok  # every reachable concept shows


def test_the_prior_decides_between_working_renders_within_its_tolerance():
    trials = []
    from loracam.tune.search import Trial

    for w, prior in (((1.0, 1.0), 0.9), ((0.5, 1.0), 0.5), ((0.6, 0.9), 0.88)):
        trials.append(Trial(w, Reading((1.0, 1.0), (True, True), prior), 0, "move"))
    weights, reading = choose(trials, lambda r: all(r.present), tolerance=0.05)
    assert weights == (0.6, 0.9)  # the lightest one whose prior is within 0.05 of the best (0.9)
    weights, _ = choose(trials, lambda r: all(r.present), tolerance=0.5)
    assert weights == (0.5, 1.0)


def test_a_budget_too_small_for_the_loras_says_what_to_give():
    assert min_budget(3) == 8
    with pytest.raises(LoracamError, match="--budget 8"):
        check_budget(7, 3)
    with pytest.raises(LoracamError, match="too small"):
        search([0], 3, judged(lambda w: [True] * 3), SearchConfig(budget=5))


def test_more_budget_buys_precision():
    thresholds = (0.37, 0.52, 0.21)
    excess = []
    for budget in (8, 12, 24):
        (r,) = search([0], 3, judged(lambda w: [wi >= t for wi, t in zip(w, thresholds)]), SearchConfig(budget=budget))
        assert r.renders <= budget and r.ok
        excess.append(sum(w - t for w, t in zip(r.weights, thresholds)))
    assert excess[0] > excess[1] > excess[2] and excess[2] < 0.05, excess


# -- the command on the toy base ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_loras(tmp_path_factory):
    """Two random LoRAs carrying the toy world's garment and shoes triggers: they draw neither, so the probe
    never sees them (the path a user meets with a LoRA that does not work)."""
    import torch

    from loracam.lora.formats import random_lora, write_kohya
    from loracam.models import ModelCache

    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    folder = tmp_path_factory.mktemp("loras")
    for i, trigger in enumerate(("testdress", "myshoes")):
        write_kohya(folder / f"{trigger}-r.safetensors", random_lora(model.unet, model.text_encoder, seed=i, std=0.02),
                    {"loracam_trigger": trigger, "loracam_subject": "garment" if i == 0 else "shoes"})
    write_kohya(folder / "style.safetensors", random_lora(model.unet, model.text_encoder, seed=9, std=0.02), {})
    return folder


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "loracam.cli", "tune", *map(str, args)], capture_output=True,
                          text=True, timeout=200)


def test_tune_on_the_toy_base_writes_renders_grid_picture_and_json(random_loras, tmp_path):
    from PIL import Image

    out = tmp_path / "tune"
    proc = _cli("1girl, full body, testdress, myshoes, white background <lora:testdress-r:0.4> <lora:myshoes-r:0.4>",
                "--lora-dir", random_loras, "--seed", 5, "--budget", 8, "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "tune.json").read_text())
    (s,) = data["seeds"]
    assert s["seed"] == 5 and s["renders"] <= 8 and data["renders"] == s["renders"]
    # a random LoRA shows nothing: both are reported, at the ceiling, in words
    assert s["not_reached"] == ["testdress-r", "myshoes-r"]
    assert "testdress-r: not reached at weight 1.5" in proc.stdout
    assert [lo["judge"] for lo in data["loras"]] == ["probe", "probe"]
    assert data["prior"] == "probe"
    renders = sorted((out / "seed-5").glob("*.png"))
    assert len(renders) == data["renders"] + data["grid_renders"]
    for t in s["trials"]:
        name = "-".join(f"{w:.2f}" for w in t["weights"]) + ".png"
        with Image.open(out / "seed-5" / name) as im:
            assert f"<lora:testdress-r:{t['weights'][0]:g}>" in im.info["parameters"]
            assert "Seed: 5" in im.info["parameters"]
    with Image.open(out / "seed-5-grid.png") as grid:
        assert "Script: X/Y/Z plot" in grid.info["parameters"] and "Y Type: LoRA" in grid.info["parameters"]
        assert grid.width > 3 * 64 and grid.height > 2 * 96  # 3 columns, a row per LoRA
    assert (out / "search.png").is_file()
    # the output folder is never reused
    again = _cli("1girl <lora:testdress-r:0.4>", "--lora-dir", random_loras, "--seed", 5, "-o", out)
    assert again.returncode != 0 and "not empty" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["1girl, full body"], "names no LoRA"),
    (["1girl <lora:style:0.5>"], "--reference style=FOLDER"),
    (["1girl <lora:testdress-r:1> <lora:myshoes-r:1>", "--budget", "6"], "--budget 7"),
    (["1girl <lora:testdress-r:1>", "--judge", "testdress-r=magic"], "unknown judge"),
    (["1girl <lora:testdress-r:1>", "--judge", "dress=probe"], "not a LoRA of the prompt"),
    (["1girl <lora:style:1>", "--judge", "style=probe"], "held-out concepts"),
])
def test_bad_input_gets_a_message_that_says_what_to_do(random_loras, tmp_path, args, message):
    proc = _cli(*args, "--lora-dir", random_loras, "--seed", 1, "-o", tmp_path / "t")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "t").exists()  # nothing written before the inputs are checked


# -- the judges ---------------------------------------------------------------------------------------------


def _tiny_clip(folder, tokenizer):
    """A tiny random CLIPModel with the SD1.5 tokenizer, saved as a user's CLIP folder would be."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2), projection_dim=12)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def test_clip_judge_scores_against_the_training_crops_own_similarity(tmp_path, tokenizer):
    """Fidelity = cosine to the crops' mean embedding / the crops' leave-one-out cosine, computed here by hand
    with the model's own forward pass; CLIPScore = 2.5 x max(cos, 0) of image and text embeddings."""
    import numpy as np
    import torch
    from PIL import Image

    from loracam.judge.clip import ClipModel
    from loracam.judge.rank import Models
    from loracam.toy import world
    from loracam.tune.judges import ClipJudge, ClipTextPrior, Context, LoraInfo

    model = _tiny_clip(tmp_path / "clip", tokenizer)
    rng = np.random.default_rng(0)
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(3):
        Image.fromarray(world.render(world.sample_doll(rng))).save(crops / f"c{i}.png")
    renders = [Image.fromarray(world.render(world.sample_doll(rng))) for _ in range(2)]
    ctx = Context(Models(), "toy", clip=str(tmp_path / "clip"))
    lora = LoraInfo("style", tmp_path / "style.safetensors", "", "style", None, crops)
    judge = ClipJudge(lora, ctx)
    clip = ClipModel(str(tmp_path / "clip"))

    def emb(images):
        with torch.no_grad():
            e = model.get_image_features(pixel_values=clip.pixels(images))
        e = (e if torch.is_tensor(e) else e.pooler_output).double().numpy()
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    ref = emb([Image.open(p).convert("RGB") for p in sorted(crops.glob("*.png"))])
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    base = np.mean([cos(ref[i], np.delete(ref, i, 0).mean(0)) for i in range(3)])
    want = np.clip([cos(e, ref.mean(0)) / base for e in emb(renders)], 0, 1)
    np.testing.assert_allclose(judge.fidelity(renders), want, rtol=1e-6)
    np.testing.assert_allclose(judge.fidelity([Image.open(crops / "c0.png").convert("RGB")]),
                               [min(1.0, cos(ref[0], ref.mean(0)) / base)], rtol=1e-6)

    prior = ClipTextPrior(ctx, "1girl, red dress")
    ids = tokenizer(["1girl, red dress"], padding=True, return_tensors="pt")
    with torch.no_grad():
        t = model.get_text_features(**ids)
    t = (t if torch.is_tensor(t) else t.pooler_output).double().numpy()[0]
    np.testing.assert_allclose(prior.prior(renders), [2.5 * max(cos(e, t), 0) for e in emb(renders)], rtol=1e-5)


def test_a_missing_clip_model_says_to_give_a_folder_and_never_downloads(tmp_path):
    from loracam.judge.clip import ClipModel

    with pytest.raises(LoracamError, match="loracam never downloads"):
        ClipModel("openai/clip-vit-nonexistent-test")
    with pytest.raises(LoracamError, match="save_pretrained"):
        ClipModel(str(tmp_path))


def test_identity_judge_tells_the_trained_face_from_another(tmp_path, astronaut, hopper):
    """dlib's descriptor against the LoRA's photos: the same face scores far above another person's."""
    from loracam.judge.rank import Models
    from loracam.tune.judges import Context, IdentityJudge, LoraInfo

    photos = tmp_path / "photos"
    photos.mkdir()
    crop = astronaut.crop((92, 0, 348, 256))
    crop.save(photos / "a.png")
    crop.transpose(0).save(photos / "b.png")  # mirrored: a second photo, so there is a baseline
    judge = IdentityJudge(LoraInfo("face", tmp_path / "face.safetensors", "", "face", None, photos),
                          Context(Models(), "sd15"))
    same, other = judge.fidelity([crop, hopper])
    assert same > 0.8 and other < 0.5 * same, (same, other)
    assert judge.threshold == 0.75


def test_dressup_starts_from_tuned_weights_and_grids_around_them(random_loras, tmp_path):
    """`studio dressup --weights-from tune.json`: the LoRAs, prompt and (median) weights come from tune; the
    first row wears them and the weight grid is them -/+0.1."""
    from PIL import Image

    tuned = {"prompt": "1girl, full body, testdress, myshoes, white background",
             "loras": [{"name": "testdress-r", "file": str(random_loras / "testdress-r.safetensors")},
                       {"name": "myshoes-r", "file": str(random_loras / "myshoes-r.safetensors")}],
             "seeds": [{"ok": True, "weights": {"testdress-r": w, "myshoes-r": v}} for w, v in
                       ((0.5, 0.3), (0.7, 0.4), (0.6, 0.9))] + [{"ok": False, "weights": {"testdress-r": 1.5,
                                                                                          "myshoes-r": 1.5}}]}
    (tmp_path / "tune.json").write_text(json.dumps(tuned))
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "dressup", "--name", "d", "--weights-from",
                           str(tmp_path / "tune.json"), "--seeds", "2", "--keep", "1", "--studio", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = tmp_path / "s" / "d"
    with Image.open(job / "seeds" / "1000.png") as im:
        text = im.info["parameters"]
    assert text.startswith(tuned["prompt"]) and "<lora:testdress-r:0.6> <lora:myshoes-r:0.4>" in text
    names = sorted(p.name for p in next((job / "weights").glob("*/")).glob("*.png"))
    weights = {tuple(float(x) for x in n[:-4].split("-")[1:]) for n in names}
    assert weights == {(a, b) for a in (0.5, 0.6, 0.7) for b in (0.3, 0.4, 0.5)}
    both = subprocess.run([sys.executable, "-m", "loracam.cli", "studio", "dressup", "--name", "e", "--weights-from",
                           str(tmp_path / "tune.json"), "--lora", str(random_loras / "style.safetensors"),
                           "--studio", str(tmp_path / "s")], capture_output=True, text=True)
    assert both.returncode == 2 and "not both" in both.stderr
