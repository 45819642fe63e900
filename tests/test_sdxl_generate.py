"""SDXL generation: the same images as diffusers' StableDiffusionXLPipeline, A1111's prompt rules on two encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loracam.generate import Sample, Shared
from loracam.generate.engine import render
from loracam.generate.samplers import build_scheduler


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def _diffusers(model, sampler: str, prompt: str, negative: str | None, seed: int, size=(64, 64), steps=3, cfg=7.0):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**model.components())
    pipe.scheduler = build_scheduler(model.scheduler_config, sampler, "Automatic")
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, negative_prompt=negative, num_inference_steps=steps, width=size[0], height=size[1],
                guidance_scale=cfg, generator=torch.Generator().manual_seed(seed)).images[0]


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Euler a"])
def test_sdxl_matches_diffusers_pipeline_with_a_negative_prompt(tiny_sdxl, sampler):
    [mine] = render(tiny_sdxl, Shared(64, 64, 3, sampler, "Automatic"), [Sample("a photo of a cat", "ugly", 123, 7.0)])
    ref = _diffusers(tiny_sdxl, sampler, "a photo of a cat", "ugly", 123)
    assert np.abs(px(mine) - px(ref)).max() <= 1


def test_an_empty_negative_is_zeros_as_diffusers_and_a1111_give_it(tiny_sdxl):
    """force_zeros_for_empty_prompt: diffusers without a negative prompt, A1111 with an empty one, zero the negative
    context and pooled vector; encoding "" instead gives another image."""
    shared = Shared(64, 48, 3, "Euler", "Automatic")
    [mine] = render(tiny_sdxl, shared, [Sample("a photo of a cat", "", 7, 6.0)])
    ref = _diffusers(tiny_sdxl, "Euler", "a photo of a cat", None, 7, size=(64, 48), cfg=6.0)
    encoded_empty = _diffusers(tiny_sdxl, "Euler", "a photo of a cat", "", 7, size=(64, 48), cfg=6.0)
    assert np.abs(px(mine) - px(ref)).max() <= 1
    assert np.abs(px(mine) - px(encoded_empty)).max() > 1


def test_sdxl_conditioning_pads_bigg_with_its_pad_token_and_pools_the_first_chunk(tiny_sdxl):
    """Both encoders' hidden states match diffusers' encode_prompt on a plain prompt; a prompt of two chunks keeps
    the first chunk's pooled vector (A1111), and BREAK makes the context twice as long."""
    from diffusers import StableDiffusionXLPipeline

    from loracam.prompts import encoder_for

    enc = encoder_for(tiny_sdxl)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl.components())
    with torch.inference_mode():
        ctx, _, pooled, _ = pipe.encode_prompt("a red dress", do_classifier_free_guidance=False)
        got = enc.encode_all(["a red dress", "a red dress BREAK on a beach"])
    assert got.contexts[0].shape == (77, 80) and got.contexts[1].shape == (154, 80)
    assert torch.allclose(got.contexts[0], ctx[0], atol=1e-6)
    assert torch.allclose(got.pooled[0], pooled[0], atol=1e-6)
    assert torch.allclose(got.pooled[1], pooled[0], atol=1e-6)  # the first chunk is "a red dress" in both
    assert torch.allclose(got.contexts[1][:77], ctx[0], atol=1e-6)


def test_sdxl_emphasis_changes_the_context_and_clip_skip_follows_a1111(tiny_sdxl):
    from loracam.prompts import SDXLPromptEncoder, encoder_for

    plain, emph = encoder_for(tiny_sdxl).encode_all(["a red dress", "a (red:1.5) dress"]).contexts
    assert not torch.allclose(plain, emph)
    m = tiny_sdxl
    skip = lambda n: SDXLPromptEncoder(m.tokenizer, m.text_encoder, m.tokenizer_2, m.text_encoder_2, n)
    one, two, three = (skip(n).encode(["a red dress"])[0] for n in (1, 2, 3))
    assert torch.equal(one, two)  # A1111 leaves SDXL alone at clip skip 1 and 2
    assert not torch.equal(two[:, :32], three[:, :32]) and torch.equal(two[:, 32:], three[:, 32:])  # bigG never


def test_sdxl_renders_a_batch_as_each_image_alone(tiny_sdxl):
    shared = Shared(64, 64, 2, "Euler a", "Automatic")
    samples = [Sample("a cat", "", 1, 5.0), Sample("a dog on a (beach:1.2)", "ugly", 2, 7.0)]
    both = render(tiny_sdxl, shared, samples)
    alone = [render(tiny_sdxl, shared, [s])[0] for s in samples]
    for a, b in zip(both, alone):
        assert np.abs(px(a) - px(b)).max() <= 1


# ---------------------------------------------------------------------------------------------
# the other stages on an SDXL base


def test_sdxl_img2img_matches_diffusers_sdxl_img2img_pipeline(tiny_sdxl, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    from loracam.generate.engine import InitImages, encode_image

    rng = np.random.default_rng(1)
    init = Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8"))
    shared = Shared(64, 64, 4, "Euler", "Automatic", denoising=0.5)
    [mine] = render(tiny_sdxl, shared, [Sample("a red dress", "ugly", 9, 7.0)], init=InitImages(image=init))
    pipe = StableDiffusionXLImg2ImgPipeline(**tiny_sdxl.components(), requires_aesthetics_score=False)
    pipe.scheduler = build_scheduler(tiny_sdxl.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    # diffusers samples the init latents from the VAE's distribution, loracam (as A1111) takes its mean: give
    # diffusers loracam's latents (a 4-channel "image" is taken as latents), so the rest must agree exactly
    with torch.inference_mode():
        latents = encode_image(tiny_sdxl, init)
    ref = pipe("a red dress", image=latents, strength=0.5, negative_prompt="ugly", num_inference_steps=4,
               guidance_scale=7.0, generator=torch.Generator().manual_seed(9)).images[0]
    assert np.abs(px(mine) - px(ref)).max() <= 1


def test_a_9_channel_sdxl_inpainting_model_inpaints_and_keeps_the_outside(tmp_path):
    from PIL import Image

    from loracam.generate import GenRequest, generate
    from loracam.models import LoadOptions, ModelCache, load_base, tiny_sdxl_configs
    from loracam.models.loader import build_random_sdxl, _finish
    from loracam.models.ldm import save_single_file

    configs = tiny_sdxl_configs()
    configs["unet"]["in_channels"] = 9
    opts = LoadOptions(torch.device("cpu"), torch.float32)
    model = _finish("inp", "inp", build_random_sdxl(configs), configs["scheduler"], opts, family="sdxl")
    path = save_single_file(model, tmp_path / "xlInpainting.safetensors")
    loaded = load_base(str(path), opts)
    assert loaded.is_inpainting and loaded.family == "sdxl"
    rng = np.random.default_rng(2)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / "photo.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    [r] = generate(GenRequest(prompt="a hat", base=str(path), steps=3, seed=1, device="cpu", precision="fp32",
                              width=64, height=64,
                              init_image=str(tmp_path / "photo.png"), mask=str(tmp_path / "mask.png"), mask_blur=0),
                   ModelCache()).images
    out, src = px(r.image), px(Image.open(tmp_path / "photo.png"))
    assert np.abs(out[:8] - src[:8]).max() == 0  # outside the mask: the photo, untouched
    assert np.abs(out[20:44, 20:44] - src[20:44, 20:44]).mean() > 5  # inside: repainted


def test_sdxl_hires_fix_and_a_grid_of_lora_weights(tmp_path, tiny_sdxl):
    from loracam.generate import GenRequest, generate
    from loracam.grid import AxisSpec, GridOptions, run_grid
    from loracam.lora import LoraLibrary, random_lora, write_kohya
    from loracam.models import ModelCache

    models = ModelCache()
    hires = generate(GenRequest(prompt="1girl", base="random:tiny-sdxl", steps=2, seed=3, device="cpu",
                                precision="fp32", width=32, height=32, hires_scale=2.0), models).images[0]
    assert hires.image.size == (64, 64) and "Hires upscale: 2" in hires.infotext
    m = tiny_sdxl
    write_kohya(tmp_path / "dress.safetensors", random_lora(m.unet, m.text_encoder, dim=4, seed=1, std=0.2,
                                                            text_encoder_2=m.text_encoder_2), {})
    req = GenRequest(prompt="1girl <lora:dress:0.5>", base="random:tiny-sdxl", steps=2, seed=7, device="cpu",
                     precision="fp32", width=32, height=32)
    res = run_grid(req, [AxisSpec.parse("lora:dress=0,0.8")], GridOptions(batch_size=4), models,
                   LoraLibrary([tmp_path]), tmp_path / "grid")
    a, b = (px(c.image) for c in res.cells[0][0])
    assert res.rendered == 2 and np.abs(a - b).mean() > 1


def test_sdxl_detail_pass_and_gen_from_re_render_the_same_image(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from loracam.cli import app

    m = np.zeros((64, 64), np.uint8)
    m[20:36, 24:40] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    args = ["--base", "random:tiny-sdxl", "--steps", "3", "--seed", "21", "--size", "64x64", "--sampler", "Euler"]
    runner = CliRunner()
    r = runner.invoke(app, ["gen", "1girl", *args, "--detail", f"mask:{tmp_path / 'mask.png'}", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    [png] = sorted((tmp_path / "o").glob("*.png"))
    text = Image.open(png).info["parameters"]
    assert "ADetailer model: " in text and "mask:" in text
    r = runner.invoke(app, ["gen", "--from", str(png), "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    a, b = sorted((tmp_path / "o").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
