"""Generation: parity with diffusers, A1111 seeds, prompt scheduling at the U-Net, CFG, img2img, inpaint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loracam.errors import LoracamError
from loracam.generate import SAMPLERS, GenRequest, Sample, Shared, generate, parse_sampler
from loracam.generate.engine import InitImages, _guide, render
from loracam.generate.conditioning import Rows
from loracam.generate.samplers import build_scheduler
from loracam.prompts import PromptEncoder


def px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_matches_diffusers_pipeline(tiny, sampler):
    from diffusers import StableDiffusionPipeline

    shared = Shared(64, 64, 3, sampler, "Automatic")
    [mine] = render(tiny, shared, [Sample("a photo of a cat", "ugly", 123, 7.0)])
    pipe = StableDiffusionPipeline(**tiny.components())
    pipe.scheduler = build_scheduler(tiny.scheduler_config, sampler, "Automatic")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a photo of a cat", negative_prompt="ugly", num_inference_steps=3, height=64, width=64,
               guidance_scale=7.0, generator=torch.Generator().manual_seed(123)).images[0]
    assert np.abs(px(mine) - px(ref)).max() <= 1


def test_karras_schedule_changes_the_image(tiny):
    a = render(tiny, Shared(64, 64, 4, "Euler", "Automatic"), [Sample("cat", "", 1, 7.0)])[0]
    b = render(tiny, Shared(64, 64, 4, "Euler", "Karras"), [Sample("cat", "", 1, 7.0)])[0]
    assert np.abs(px(a) - px(b)).max() > 0


@pytest.mark.parametrize("name,expected", [
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("Euler a", ("Euler a", "Automatic")),
    ("euler A", ("Euler a", "Automatic")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("k_dpmpp_2m", ("DPM++ 2M", "Automatic")),
])
def test_sampler_names(name, expected):
    assert parse_sampler(name) == expected


def test_unknown_sampler_lists_valid_ones():
    with pytest.raises(LoracamError, match="valid samplers: DPM\\+\\+ 2M.*Euler a"):
        parse_sampler("Euler z")
    with pytest.raises(LoracamError, match="not available for Euler a"):
        build_scheduler({}, "Euler a", "Karras")


@pytest.mark.parametrize("kw,msg", [
    (dict(width=100), "multiple of 8"), (dict(height=0), "multiple of 8"), (dict(steps=0), "steps"),
    (dict(sampler="nope"), "unknown sampler"), (dict(mask="m.png"), "init image"),
    (dict(seed=-5), "seed"), (dict(denoising=1.5), "denoising"),
])
def test_bad_requests(kw, msg):
    with pytest.raises(LoracamError, match=msg):
        GenRequest(prompt="x", **kw)


def test_seeds_follow_a1111(models):
    res = generate(GenRequest(prompt="cat", base="random:tiny", steps=3, seed=100, batch_size=3), models)
    assert [r.seed for r in res.images] == [100, 101, 102]
    assert "Seed: 101," in res.images[1].infotext
    [alone] = generate(GenRequest(prompt="cat", base="random:tiny", steps=3, seed=101), models).images
    assert np.abs(px(alone.image) - px(res.images[1].image)).max() <= 2  # batched vs alone: float noise
    count = generate(GenRequest(prompt="cat", base="random:tiny", steps=3, seed=100, batch_count=2), models)
    assert [r.seed for r in count.images] == [100, 101]


def test_random_seed_is_resolved_and_recorded(models):
    a = generate(GenRequest(prompt="cat", base="random:tiny", steps=2), models).images[0]
    b = generate(GenRequest(prompt="cat", base="random:tiny", steps=2), models).images[0]
    assert a.seed != b.seed and a.seed >= 0 and f"Seed: {a.seed}," in a.infotext


class Recorder:
    """Wraps the U-Net to record the text conditioning of every call."""

    def __init__(self, model, monkeypatch):
        self.calls = []
        unet = model.unet
        real = unet.forward

        def forward(x, t, encoder_hidden_states=None, **kw):
            self.calls.append(encoder_hidden_states.detach().clone())
            return real(x, t, encoder_hidden_states=encoder_hidden_states, **kw)

        monkeypatch.setattr(unet, "forward", forward)


def _enc(model, text):
    with torch.no_grad():
        return PromptEncoder(model.tokenizer, model.text_encoder).encode([text])[0]


def test_scheduled_prompt_switches_conditioning_at_the_right_step(tiny, monkeypatch):
    rec = Recorder(tiny, monkeypatch)
    render(tiny, Shared(64, 64, 4, "Euler", "Automatic"), [Sample("[cat:dog:2]", "", 1, 7.0)])
    cat, dog, empty = _enc(tiny, "cat"), _enc(tiny, "dog"), _enc(tiny, "")
    assert len(rec.calls) == 4
    for i, ctx in enumerate(rec.calls):  # rows: [uncond, cond]
        assert torch.equal(ctx[0], empty)
        assert torch.equal(ctx[1], cat if i <= 2 else dog), f"step {i}"


def test_alternation_switches_every_step(tiny, monkeypatch):
    rec = Recorder(tiny, monkeypatch)
    render(tiny, Shared(64, 64, 4, "Euler", "Automatic"), [Sample("[cat|dog]", "", 1, 7.0)])
    cat, dog = _enc(tiny, "cat"), _enc(tiny, "dog")
    # A1111 step s (1-based) uses option (s-1) % 2; 0-based sampling step i uses entry i, then i+1...
    expected = [cat, cat, dog, cat]
    assert all(torch.equal(c[1], e) for c, e in zip(rec.calls, expected))


def test_and_runs_each_part_and_long_prompts_are_not_padded(tiny, monkeypatch):
    rec = Recorder(tiny, monkeypatch)
    long = " ".join(["cat"] * 80)
    render(tiny, Shared(64, 64, 2, "Euler", "Automatic"), [Sample(f"dog AND {long}:0.5", "", 1, 7.0)])
    shapes = sorted(tuple(c.shape) for c in rec.calls[:2])
    # uncond + "dog" at 77 tokens in one call, the 154-token part in its own call
    assert shapes == [(1, 154, 32), (2, 77, 32)]


def test_guidance_formula_with_and_weights():
    eps = torch.tensor([[0.0], [1.0], [3.0]]).view(3, 1, 1, 1)  # rows: uncond, cond a, cond b
    rows = Rows([0, 1, 2], [0, 0, 0], [0], [[(1, 1.0), (2, 0.5)]])
    out = _guide(eps, rows, torch.tensor([2.0]), use_uncond=True)
    assert out.flatten().tolist() == [0 + (1 - 0) * 2.0 + (3 - 0) * 0.5 * 2.0]


def test_per_sample_cfg_in_one_batch_equals_singles(tiny):
    shared = Shared(64, 64, 3, "Euler a", "Automatic")
    batch = render(tiny, shared, [Sample("cat", "", 5, 3.0), Sample("dog", "blur", 6, 9.0)])
    alone = [render(tiny, shared, [Sample("cat", "", 5, 3.0)])[0], render(tiny, shared, [Sample("dog", "blur", 6, 9.0)])[0]]
    for a, b in zip(batch, alone):
        assert np.abs(px(a) - px(b)).max() <= 2


def test_img2img_runs_denoising_times_steps(tiny):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    calls = []
    shared = Shared(64, 64, 10, "Euler", "Automatic", denoising=0.3)
    [out] = render(tiny, shared, [Sample("cat", "", 1, 7.0)], init=InitImages(init),
                   progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (3, 3)
    [txt] = render(tiny, Shared(64, 64, 10, "Euler", "Automatic"), [Sample("cat", "", 1, 7.0)])
    assert np.abs(px(out) - px(init)).mean() < np.abs(px(txt) - px(init)).mean()
    with pytest.raises(LoracamError, match="runs no step"):
        render(tiny, Shared(64, 64, 10, "Euler", "Automatic", denoising=0.05), [Sample("c", "", 1, 7.0)],
               init=InitImages(init))


def _mask():
    m = np.zeros((64, 64), dtype=np.uint8)
    m[16:48, 16:48] = 255
    return Image.fromarray(m, "L")


def test_inpainting_keeps_pixels_outside_the_mask(tiny):
    init = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    shared = Shared(64, 64, 6, "Euler a", "Automatic", denoising=1.0, mask_blur=2)
    [out] = render(tiny, shared, [Sample("cat", "", 1, 7.0)], init=InitImages(init, _mask()))
    a, b = px(out), px(init)
    outside = np.ones((64, 64), bool)
    outside[8:56, 8:56] = False  # beyond the blur radius
    assert np.array_equal(a[outside], b[outside])
    assert np.abs(a[24:40, 24:40] - b[24:40, 24:40]).mean() > 10


def test_nine_channel_inpainting_model(tmp_path):
    from loracam.models import build_random, tiny_configs
    from loracam.models.base import BaseModel

    cfg = tiny_configs()
    cfg["unet"] = cfg["unet"] | {"in_channels": 9}
    unet, vae, te, tok = build_random(cfg)
    model = BaseModel("inpaint-tiny", "x", "sd1", unet, vae, te, tok, cfg["scheduler"], torch.device("cpu"), torch.float32)
    assert model.is_inpainting
    init = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    shared = Shared(64, 64, 3, "Euler", "Automatic", denoising=1.0)
    [out] = render(model, shared, [Sample("cat", "", 1, 7.0)], init=InitImages(init, _mask()))
    assert out.size == (64, 64)


def test_infotext_of_a_generated_image(models):
    [r] = generate(GenRequest(prompt="a (cat:1.2), red", negative="blurry", base="random:tiny", steps=3,
                              seed=7, sampler="DPM++ 2M Karras", clip_skip=2, cfg=6.5), models).images
    lines = r.infotext.split("\n")
    assert lines[0] == "a (cat:1.2), red" and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 7, "
                               "Size: 64x64, Model: \"random:tiny\", Clip skip: 2, Version: loracam")


def test_saved_files_are_never_overwritten(models, tmp_path):
    res = generate(GenRequest(prompt="cat", base="random:tiny", steps=2, seed=3), models)
    (tmp_path / "00000-3.png").write_bytes(b"the user's own file")
    paths = res.save(tmp_path) + res.save(tmp_path)
    assert [p.name for p in paths] == ["00001-3.png", "00002-3.png"]
    assert (tmp_path / "00000-3.png").read_bytes() == b"the user's own file"
    assert Image.open(paths[0]).info["parameters"] == res.images[0].infotext
