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
