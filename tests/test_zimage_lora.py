"""Z-Image LoRAs: every layout diffusers' Z-Image loader accepts reads to the same modules; the file loracam writes
renders in diffusers (load_lora_weights + set_adapters) as in loracam; several LoRAs, per-sample weights, families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from loracam.errors import LoracamError
from loracam.generate import GenRequest
from loracam.generate.api import generate
from loracam.lora import random_lora, read_lora, write_kohya
from loracam.models import ModelCache
from loracam.models.loader import LoadOptions, load_base
from loracam.models.zimage import save_folder


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture(scope="module")
def tiny():
    return load_base("random:tiny-zimage", LoadOptions(torch.device("cpu"), torch.float32))


@pytest.fixture(scope="module")
def loras(tiny, tmp_path_factory) -> Path:
    """Two LoRAs in loracam's Z-Image layout, and the tiny model as a diffusers folder beside them."""
    d = tmp_path_factory.mktemp("zlora")
    for name, seed in (("face", 1), ("dress", 2)):
        mods = random_lora(tiny.unet, None, dim=4, alpha=2, te=False, std=0.5, seed=seed)
        write_kohya(d / f"{name}.safetensors", mods, {"ss_base_model_version": "zimage"}, family="zimage")
    save_folder({"unet": tiny.unet, "vae": tiny.vae, "text_encoder": tiny.text_encoder, "tokenizer": tiny.tokenizer},
                tiny.scheduler_config, d / "Z-Image-Turbo")
    return d


def test_loracams_file_targets_attention_and_feed_forward_and_names_diffusers_paths(loras):
    f = read_lora(loras / "face.safetensors")
    assert f.family == "zimage" and f.layout == "peft"
    # 4 blocks (2 main, 1 noise and 1 context refiner) x (to_q, to_k, to_v, to_out.0, w1, w2, w3)
    assert len(f.modules) == 28
    assert "lora_unet_layers_1_attention_to_out_0" in f.modules and "lora_unet_context_refiner_0_feed_forward_w2" in f.modules
    from safetensors import safe_open

    with safe_open(str(loras / "face.safetensors"), "pt") as fh:
        keys = set(fh.keys())
    assert "diffusion_model.layers.1.attention.to_out.0.lora_A.weight" in keys
    assert "diffusion_model.noise_refiner.0.feed_forward.w1.alpha" in keys


@pytest.mark.parametrize("weight", [0.8, -0.5])
def test_a_loracam_lora_renders_in_diffusers_as_in_loracam(loras, weight):
    from diffusers import ZImagePipeline

    folder = loras / "Z-Image-Turbo"
    req = GenRequest(prompt=f"a red dress <lora:face:{weight}>", base=str(folder), seed=3, steps=4, cfg=3.0,
                     lora_dirs=(str(loras),), device="cpu")
    mine = px(generate(req, ModelCache()).images[0].image)
    plain = px(generate(GenRequest(prompt="a red dress", base=str(folder), seed=3, steps=4, cfg=3.0, device="cpu"),
                        ModelCache()).images[0].image)
    pipe = ZImagePipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(loras / "face.safetensors"), adapter_name="face")
    pipe.set_adapters(["face"], [weight])
    ref = px(pipe("a red dress", negative_prompt="", width=64, height=64, num_inference_steps=4, guidance_scale=2.0,
                  generator=torch.Generator().manual_seed(3)).images[0])
    # loracam merges W + w s up @ down into the weight, peft adds w s B(A(x)) beside it: rounding may differ by a level
    assert np.abs(mine - ref).max() <= 1
    assert np.abs(mine - plain).mean() > 2  # and the LoRA does change the image


def _canonical(path: Path) -> dict[str, torch.Tensor]:
    return {n: m.delta() for n, m in read_lora(path).modules.items()}


def _write(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_every_layout_diffusers_accepts_reads_to_the_same_deltas(loras, tmp_path):
    """diffusers/peft (transformer.), ai-toolkit (diffusion_model.), musubi's kohya names with alpha, kohya names
    over Z-Image's original modules (fused attention_qkv, attention_out), LyCORIS LoKr (lycoris_)."""
    mods = read_lora(loras / "face.safetensors").modules
    want = {n: m.delta() for n, m in mods.items()}
    flat = {n[len("lora_unet_"):]: m for n, m in mods.items()}
    from loracam.lora.transformer import diffusers_path

    # diffusers' own save: alpha folded into the weights, no alpha keys
    peft = {}
    for p, m in flat.items():
        peft[f"transformer.{diffusers_path(p)}.lora_A.weight"] = m.down * m.scale
        peft[f"transformer.{diffusers_path(p)}.lora_B.weight"] = m.up
    musubi = {}
    for p, m in flat.items():
        musubi |= {f"lora_unet_{p}.lora_down.weight": m.down, f"lora_unet_{p}.lora_up.weight": m.up,
                   f"lora_unet_{p}.alpha": torch.tensor(m.alpha)}
    original = {}
    for p, m in flat.items():
        if p.endswith(("_to_k", "_to_v")):
            continue
        if p.endswith("_to_q"):  # one fused qkv module: a shared down (the q one, so q k v must share it)
            block = p[: -len("_to_q")]
            ups = [flat[f"{block}_to_{x}"].up for x in "qkv"]
            original |= {f"lora_unet_{block}_qkv.lora_down.weight": m.down,
                         f"lora_unet_{block}_qkv.lora_up.weight": torch.cat(ups),
                         f"lora_unet_{block}_qkv.alpha": torch.tensor(m.alpha)}
            continue
        name = p.replace("_attention_to_out_0", "_attention_out")
        original |= {f"lora_unet_{name}.lora_down.weight": m.down, f"lora_unet_{name}.lora_up.weight": m.up,
                     f"lora_unet_{name}.alpha": torch.tensor(m.alpha)}
    files = {"peft": _write(tmp_path / "p.safetensors", peft), "musubi": _write(tmp_path / "m.safetensors", musubi),
             "original": _write(tmp_path / "o.safetensors", original)}
    for layout in ("peft", "musubi"):
        got = _canonical(files[layout])
        assert set(got) == set(want), layout
        assert all(torch.allclose(got[n], want[n], atol=1e-6) for n in want), layout
    got = _canonical(files["original"])
    assert set(got) == set(want)
    for n in want:  # k and v took q's down: their deltas are up_k @ down_q
        if n.endswith(("_to_k", "_to_v")):
            block = n.rsplit("_to_", 1)[0]
            ref = mods[n].scale * mods[n].up @ mods[f"{block}_to_q"].down
            assert torch.allclose(got[n], ref, atol=1e-6)
        else:
            assert torch.allclose(got[n], want[n], atol=1e-6), n
    assert read_lora(files["original"]).family == "zimage"


def test_a_lycoris_lokr_on_zimage_reads_to_its_kronecker_delta(tiny, tmp_path):
    layer = tiny.unet.layers[0].attention.to_q  # 32 -> 32
    w1, w2 = torch.randn(4, 4), torch.randn(8, 8)
    path = _write(tmp_path / "lokr.safetensors", {"lycoris_layers_0_attention_to_q.lokr_w1": w1,
                                                  "lycoris_layers_0_attention_to_q.lokr_w2": w2,
                                                  "lycoris_layers_0_attention_to_q.alpha": torch.tensor(1.0)})
    f = read_lora(path)
    assert f.family == "zimage" and f.networks == ("LoKr",)
    delta = f.modules["lora_unet_layers_0_attention_to_q"].delta()
    assert delta.shape == layer.weight.shape
    assert torch.allclose(delta, torch.kron(w1, w2), atol=1e-5)


def test_two_loras_with_per_sample_weights_in_one_batch_equal_each_alone(loras):
    folder = str(loras / "Z-Image-Turbo")
    models = ModelCache()
    prompts = ["a red dress <lora:face:0.9> <lora:dress:0.3>", "a red dress <lora:face:0.2> <lora:dress:1>"]
    common = dict(base=folder, steps=3, cfg=1.0, width=32, height=32, lora_dirs=(str(loras),), device="cpu")
    from loracam.generate import Sample, Shared
    from loracam.generate.api import render_samples
    from loracam.lora import LoraLibrary

    model = generate(GenRequest(prompt=prompts[0], seed=5, **common), models).model
    shared = Shared(32, 32, 3, "Euler", "Automatic")
    library = LoraLibrary([loras])
    from loracam.prompts import extract_networks

    samples = [Sample(p, "", 5 + i, 1.0, tuple(extract_networks(p)[1])) for i, p in enumerate(prompts)]
    together = render_samples(model, shared, samples, library)
    alone = [render_samples(model, shared, [s], library)[0] for s in samples]
    for t, a in zip(together, alone):  # per-row hooks against fused weights: rounding may differ by a level
        assert np.abs(px(t.image) - px(a.image)).max() <= 1
    assert np.abs(px(together[0].image) - px(together[1].image)).mean() > 1


def test_a_lora_of_another_family_is_refused_naming_both(loras, tmp_path):
    sd = load_base("random:tiny", LoadOptions(torch.device("cpu"), torch.float32))
    sd_lora = random_lora(sd.unet, sd.text_encoder, dim=2)
    write_kohya(tmp_path / "sd.safetensors", sd_lora, {"ss_base_model_version": "sd_v1"})
    (tmp_path / "face.safetensors").write_bytes((loras / "face.safetensors").read_bytes())
    with pytest.raises(LoracamError, match="is an SD1.x LoRA; the base model is Z-Image"):
        generate(GenRequest(prompt="x <lora:sd:1>", base=str(loras / "Z-Image-Turbo"), steps=1, width=32, height=32,
                            lora_dirs=(str(tmp_path),), device="cpu"), ModelCache())
    with pytest.raises(LoracamError, match="is a Z-Image LoRA; the base model is SD1.x"):
        generate(GenRequest(prompt="x <lora:face:1>", base="random:tiny", steps=1, lora_dirs=(str(tmp_path),),
                            device="cpu"), ModelCache())
