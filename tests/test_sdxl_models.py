"""SDXL bases: single files (A1111/civitai layout) and diffusers folders load offline and render the same; v-pred
markers; a truncated or incomplete file is a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loracam.errors import LoracamError
from loracam.generate import Sample, Shared
from loracam.generate.engine import render
from loracam.models import LoadOptions, load_base
from loracam.models.ldm import save_single_file


def opts(**kw) -> LoadOptions:
    return LoadOptions(torch.device("cpu"), torch.float32, **kw)


@pytest.fixture(scope="module")
def xl_file(tmp_path_factory, tiny_sdxl):
    return save_single_file(tiny_sdxl, tmp_path_factory.mktemp("xl") / "tinyXL.safetensors")


def _img(model):
    [im] = render(model, Shared(64, 64, 2, "Euler", "Automatic"), [Sample("1girl, red dress", "lowres", 3, 7.0)])
    return np.asarray(im, dtype=np.int16)


def test_an_sdxl_single_file_loads_back_and_renders_the_same(tiny_sdxl, xl_file):
    keys = load_file(xl_file)
    assert "conditioner.embedders.1.model.ln_final.weight" in keys  # Stability's layout, as civitai's files
    assert "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    model = load_base(str(xl_file), opts())
    assert model.family == "sdxl" and model.text_encoder_2 is not None and model.name == "tinyXL"
    assert model.tokenizer_2.pad_token == "!" and model.tokenizer.pad_token == "<|endoftext|>"
    assert np.abs(_img(model) - _img(tiny_sdxl)).max() == 0


def test_v_pred_and_ztsnr_markers_set_the_schedule_and_an_override_wins(tmp_path, xl_file):
    state = load_file(xl_file)
    from safetensors import safe_open

    with safe_open(str(xl_file), framework="pt") as f:
        meta = f.metadata()
    save_file(state | {"v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}, tmp_path / "noobXL.safetensors", meta)
    model = load_base(str(tmp_path / "noobXL.safetensors"), opts())
    assert model.prediction_type == "v_prediction" and model.scheduler_config["rescale_betas_zero_snr"] is True
    plain = load_base(str(xl_file), opts())
    assert plain.prediction_type == "epsilon" and not plain.scheduler_config.get("rescale_betas_zero_snr")
    forced = load_base(str(xl_file), opts(prediction="v_prediction+ztsnr"))
    assert forced.prediction_type == "v_prediction" and forced.scheduler_config["rescale_betas_zero_snr"] is True
    assert np.abs(_img(forced) - _img(plain)).max() > 0
    with pytest.raises(LoracamError, match="unknown prediction 'v'; use epsilon, v_prediction"):
        load_base(str(xl_file), opts(prediction="v"))


def test_a_truncated_sdxl_file_and_one_without_its_bigg_encoder_are_clear_errors(tmp_path, xl_file):
    data = xl_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoracamError, match="damaged or incomplete: download it again"):
        load_base(str(tmp_path / "cut.safetensors"), opts())
    from safetensors import safe_open

    with safe_open(str(xl_file), framework="pt") as f:
        meta = f.metadata()
    state = {k: v for k, v in load_file(xl_file).items() if not k.startswith("conditioner.embedders.1.model.transformer")}
    save_file(state, tmp_path / "nobigg.safetensors", meta)
    with pytest.raises(LoracamError, match=r"lacks \d+ of the \d+ weights of an SDXL model .*bigG text encoder"):
        load_base(str(tmp_path / "nobigg.safetensors"), opts())


def test_random_sdxl_refs_and_the_sdxl_folder_load(tmp_path):
    from test_families import _tiny_sdxl_folder

    _tiny_sdxl_folder(tmp_path / "tiny-sdxl")
    model = load_base(str(tmp_path / "tiny-sdxl"), opts())
    assert model.family == "sdxl" and model.spec.short == "SDXL"
    assert model.unet.config.addition_embed_type == "text_time"
    with pytest.raises(LoracamError, match="random:tiny-sdxl, random:sdxl"):
        load_base("random:sdxl-nope", opts())


def test_a_separate_vae_replaces_the_bases_and_is_named_in_the_infotext(tmp_path):
    from diffusers import AutoencoderKL

    from loracam.generate import GenRequest, generate
    from loracam.models import HashCache, ModelCache, tiny_sdxl_configs
    from loracam.models.ldm import VAE_PREFIX, vae_to_ldm

    torch.manual_seed(5)
    vae = AutoencoderKL.from_config(tiny_sdxl_configs()["vae"])
    ldm = {k[len(VAE_PREFIX):]: v.contiguous() for k, v in vae_to_ldm(vae).items()}  # a VAE file has no prefix
    save_file(ldm, tmp_path / "xlVaeFix.safetensors")
    models = ModelCache(HashCache(tmp_path / "hashes.json"))
    req = dict(prompt="1girl", base="random:tiny-sdxl", steps=2, seed=1, device="cpu", precision="fp32")
    plain = generate(GenRequest(**req), models).images[0]
    fixed = generate(GenRequest(**req, vae=str(tmp_path / "xlVaeFix.safetensors")), models).images[0]
    assert "VAE: xlVaeFix.safetensors" in fixed.infotext and "VAE hash: " in fixed.infotext
    assert "VAE" not in plain.infotext
    assert np.abs(np.asarray(fixed.image, np.int16) - np.asarray(plain.image, np.int16)).max() > 0
    with pytest.raises(LoracamError, match="--vae nothing.safetensors: no such file"):
        generate(GenRequest(**req, vae="nothing.safetensors"), models)


def test_a_vae_that_overflows_in_half_precision_is_decoded_in_fp32_and_says_so(tiny_sdxl):
    import copy

    from loracam.generate.engine import decode

    model = copy.copy(tiny_sdxl)
    model.extra = {}
    model.vae = copy.deepcopy(tiny_sdxl.vae).to(torch.float16)
    model.dtype = torch.float16
    with torch.no_grad():
        model.vae.decoder.conv_in.weight.mul_(1e5)  # activations beyond fp16's range (65504): inf, then NaN
    z = torch.randn(1, 4, 8, 8)
    out = decode(model, z)
    assert torch.isfinite(out).all()
    assert "decoded in fp32" in model.extra["vae_upcast_note"]
