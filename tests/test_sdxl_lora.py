"""SDXL LoRAs: sd-scripts' names (SGM U-Net, lora_te1_/lora_te2_), parity with diffusers' loader, per-sample weights,
family mismatches named."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from loracam.errors import LoracamError
from loracam.generate import Sample, Shared, render_samples
from loracam.lora import LoraLibrary, random_lora, read_lora, write_kohya
from loracam.prompts import LoraRef

SDXL_META = {"ss_base_model_version": "sdxl_base_v1-0", "modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}


@pytest.fixture()
def xl_library(tmp_path, tiny_sdxl, tiny):
    m = tiny_sdxl
    for name, seed, alpha in (("dress", 1, 2.0), ("face", 2, 8.0)):
        mods = random_lora(m.unet, m.text_encoder, dim=4, alpha=alpha, seed=seed, text_encoder_2=m.text_encoder_2,
                           std=0.2)
        write_kohya(tmp_path / f"{name}.safetensors", mods, {"ss_network_dim": "4", **SDXL_META})
    write_kohya(tmp_path / "sd1face.safetensors", random_lora(tiny.unet, tiny.text_encoder, dim=4), {})
    return LoraLibrary([tmp_path])


def px(r) -> np.ndarray:
    return np.asarray(getattr(r, "image", r), dtype=np.int16)


def test_sdxl_lora_files_use_sd_scripts_names(xl_library, tmp_path):
    lora = read_lora(tmp_path / "dress.safetensors")
    assert lora.family == "sdxl"
    names = set(lora.modules)
    assert any(n.startswith("lora_unet_input_blocks_") for n in names)
    assert any(n.startswith("lora_unet_output_blocks_") for n in names)
    assert any(n.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for n in names)
    assert any(n.startswith("lora_te2_text_model_encoder_layers_1_mlp_fc2") for n in names)
    assert not any(n.startswith(("lora_unet_down_blocks", "lora_te_")) for n in names)


@pytest.mark.filterwarnings("ignore:Already found a .peft_config.")
def test_two_sdxl_loras_render_as_diffusers_load_lora_weights_and_set_adapters(tiny_sdxl, xl_library, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from loracam.generate.samplers import build_scheduler

    refs = (LoraRef("dress", 0.8, 0.5), LoraRef("face", 0.3, 0.9))
    shared = Shared(64, 64, 3, "Euler", "Automatic")
    [mine] = render_samples(tiny_sdxl, shared, [Sample("1girl <lora:dress:0.8:0.5> <lora:face:0.3:0.9>", "lowres", 5,
                                                       7.0, refs)], xl_library)
    [plain] = render_samples(tiny_sdxl, shared, [Sample("1girl ", "lowres", 5, 7.0)], xl_library)
    m = tiny_sdxl
    parts = m.components() | {"unet": copy.deepcopy(m.unet), "text_encoder": copy.deepcopy(m.text_encoder),
                              "text_encoder_2": copy.deepcopy(m.text_encoder_2)}
    pipe = StableDiffusionXLPipeline(**parts)
    pipe.scheduler = build_scheduler(m.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    for ref in refs:
        pipe.load_lora_weights(str(tmp_path / f"{ref.name}.safetensors"), adapter_name=ref.name)
    pipe.set_adapters([r.name for r in refs], adapter_weights=[
        {"unet": r.unet, "text_encoder": r.te, "text_encoder_2": r.te} for r in refs])
    theirs = pipe("1girl ", negative_prompt="lowres", num_inference_steps=3, height=64, width=64, guidance_scale=7.0,
                  generator=torch.Generator().manual_seed(5)).images[0]
    assert np.abs(px(mine) - px(theirs)).max() <= 1
    assert np.abs(px(mine) - px(plain)).mean() > 1.0  # the LoRAs did change the image


def test_sdxl_per_sample_lora_weights_in_one_batch_equal_each_alone(tiny_sdxl, xl_library):
    shared = Shared(64, 64, 2, "Euler a", "Automatic")

    def s(w):
        return Sample(f"1girl <lora:dress:{w}>", "", 11, 7.0, (LoraRef("dress", w, w),))

    batch = render_samples(tiny_sdxl, shared, [s(0.2), s(0.9)], xl_library)
    alone = [render_samples(tiny_sdxl, shared, [s(w)], xl_library)[0] for w in (0.2, 0.9)]
    for b, a in zip(batch, alone):
        assert np.abs(px(b) - px(a)).max() <= 2
    assert np.abs(px(batch[0]) - px(batch[1])).mean() > 1.0


def test_an_sd1_lora_on_sdxl_and_an_sdxl_lora_on_sd1_name_both_families(tiny_sdxl, tiny, xl_library):
    shared = Shared(64, 64, 1, "Euler", "Automatic")
    with pytest.raises(LoracamError, match=r"sd1face.safetensors is an SD1.x LoRA; the base model is SDXL"):
        render_samples(tiny_sdxl, shared, [Sample("x", "", 1, 7.0, (LoraRef("sd1face", 1, 1),))], xl_library)
    with pytest.raises(LoracamError, match=r"dress.safetensors is an SDXL LoRA; the base model is SD1.x"):
        render_samples(tiny, shared, [Sample("x", "", 1, 7.0, (LoraRef("dress", 1, 1),))], xl_library)


def test_an_sdxl_lora_without_its_bigg_modules_is_applied_and_said_so(tiny_sdxl, tmp_path):
    m = tiny_sdxl
    mods = random_lora(m.unet, m.text_encoder, dim=4, seed=3, text_encoder_2=m.text_encoder_2)
    write_kohya(tmp_path / "half.safetensors", {k: v for k, v in mods.items() if not k.startswith("lora_te2_")},
                SDXL_META)
    warnings: list[str] = []
    render_samples(tiny_sdxl, Shared(32, 32, 1, "Euler", "Automatic"),
                   [Sample("x <lora:half:1>", "", 1, 7.0, (LoraRef("half", 1, 1),))], LoraLibrary([tmp_path]),
                   warnings=warnings)
    assert any("half.safetensors has CLIP-L text-encoder modules (lora_te1_) but none for bigG" in w for w in warnings)
    assert read_lora(tmp_path / "half.safetensors").family == "sdxl"
