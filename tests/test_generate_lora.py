"""LoRAs in generation: per-sample weights in one batch, parity with diffusers' loader, base untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loracam.generate import Sample, Shared, render_samples
from loracam.lora import LoraLibrary, random_lora, write_kohya
from loracam.prompts import LoraRef


@pytest.fixture()
def library(tmp_path, tiny):
    for name, seed, alpha in (("dress", 1, 2.0), ("face", 2, 8.0)):
        mods = random_lora(tiny.unet, tiny.text_encoder, dim=4, alpha=alpha, seed=seed)
        write_kohya(tmp_path / f"{name}.safetensors", mods, {"ss_network_dim": "4", "ss_network_alpha": str(alpha)})
    return LoraLibrary([tmp_path])


def px(r) -> np.ndarray:
    return np.asarray(r.image, dtype=np.int16)


def sample(weight: float, seed: int = 11) -> Sample:
    return Sample(f"1girl <lora:dress:{weight}>", "", seed, 7.0, (LoraRef("dress", weight, weight),))


def test_batch_with_weights_02_06_equals_two_single_renders(tiny, library):
    shared = Shared(64, 64, 4, "Euler a", "Automatic")
    batch = render_samples(tiny, shared, [sample(0.2), sample(0.6)], library)
    alone = [render_samples(tiny, shared, [sample(w)], library)[0] for w in (0.2, 0.6)]
    for b, a in zip(batch, alone):
        assert np.abs(px(b) - px(a)).max() <= 2
    # and the weight really mattered
    assert np.abs(px(batch[0]) - px(batch[1])).mean() > 1.0
    assert batch[0].infotext.startswith("1girl <lora:dress:0.2>") and "Lora hashes: \"dress: " in batch[0].infotext


@pytest.mark.filterwarnings("ignore:Already found a .peft_config.")
def test_same_images_as_diffusers_lora_loader(tiny, library, tmp_path):
    from diffusers import StableDiffusionPipeline

    from loracam.generate.samplers import build_scheduler

    refs = (LoraRef("dress", 0.8, 0.5), LoraRef("face", 0.3, 0.9))
    prompt = "1girl <lora:dress:0.8:0.5> <lora:face:0.3:0.9>"
    shared = Shared(64, 64, 4, "Euler", "Automatic")
    [mine] = render_samples(tiny, shared, [Sample(prompt, "", 5, 7.0, refs)], library)

    import copy

    # diffusers' loader injects PEFT layers into the model it is given: give it copies
    parts = tiny.components() | {"unet": copy.deepcopy(tiny.unet), "text_encoder": copy.deepcopy(tiny.text_encoder)}
    pipe = StableDiffusionPipeline(**parts)
    pipe.scheduler = build_scheduler(tiny.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    for ref in refs:
        pipe.load_lora_weights(str(tmp_path / f"{ref.name}.safetensors"), adapter_name=ref.name)
    pipe.set_adapters([r.name for r in refs], adapter_weights=[{"unet": r.unet, "text_encoder": r.te} for r in refs])
    theirs = pipe("1girl ", num_inference_steps=4, height=64, width=64, guidance_scale=7.0,
                  generator=torch.Generator().manual_seed(5)).images[0]
    diff = np.abs(px(mine) - np.asarray(theirs, dtype=np.int16))
    assert diff.max() <= 1, diff.max()


def test_base_is_exactly_restored(tiny, library):
    params = {n: (p, p.detach().clone()) for n, p in
              list(tiny.unet.named_parameters()) + list(tiny.text_encoder.named_parameters())}
    shared = Shared(64, 64, 2, "Euler", "Automatic")
    render_samples(tiny, shared, [sample(0.2), sample(0.9)], library)  # per-sample hooks
    render_samples(tiny, shared, [sample(0.7)], library)  # fused
    now = dict(list(tiny.unet.named_parameters()) + list(tiny.text_encoder.named_parameters()))
    for name, (obj, value) in params.items():
        assert now[name] is obj and torch.equal(now[name], value), name
    assert not any(m._forward_hooks for m in tiny.unet.modules())
