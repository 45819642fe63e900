"""SDXL LoRA training with sd-scripts' semantics: both encoders, size ids per bucket, names and metadata other tools
read, parity with diffusers' loader on what was trained, exact resume."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from loracam.lora import read_lora
from loracam.train import Control, TrainConfig, train
from loracam.train.captions import crop_ltrb, size_ids


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 training images in two buckets (a square and a tall one) with captions."""
    root = tmp_path_factory.mktemp("xlds")
    rng = np.random.default_rng(0)
    d = root / "img" / "5_sks cat"
    d.mkdir(parents=True)
    for i in range(4):
        size = (64, 64) if i < 3 else (48, 96)
        a = rng.integers(0, 255, (size[1], size[0], 3)).astype("uint8")
        a[8:40, 8:40] = [200, 30, 30]
        Image.fromarray(a).save(d / f"{i}.png")
        (d / f"{i}.txt").write_text("sks, red square")
    return root


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory) -> Path:
    from test_families import _tiny_sdxl_folder

    path = tmp_path_factory.mktemp("xlbase") / "tiny-sdxl"
    _tiny_sdxl_folder(path)
    return path


def cfg(dataset, out, base, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(dataset=str(dataset), output=str(out), base=str(base), max_steps=4,
                                 resolution=(64, 64), rank=4, alpha=4.0, lr=2e-2, seed=3, device="cpu"), **kw})


def test_sd_scripts_size_ids_of_a_bucket():
    """get_crop_ltrb fits the image inside the bucket (letterbox offsets); ids are (h, w) pairs."""
    assert crop_ltrb((64, 64), (64, 64)) == (0, 0, 64, 64)
    left, top, right, bottom = crop_ltrb((1024, 1024), (800, 1200))  # a tall photo in a square bucket
    assert (left, top, bottom) == (170, 0, 1024) and right == pytest.approx(170 + 1024 * 800 / 1200)
    assert size_ids((800, 1200), (832, 1216), False) == [1200, 800, 0, 10, 1216, 832]  # (832 - 810.7) // 2
    assert size_ids((800, 1200), (1024, 1024), True) == pytest.approx([1200, 800, 0, 1024 - right, 1024, 1024])


@pytest.mark.filterwarnings("ignore:Already found a .peft_config.")
def test_an_sdxl_lora_trained_on_a_diffusers_folder_renders_as_diffusers_loads_it(dataset, xl_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from loracam.generate import Sample, Shared, render_samples
    from loracam.generate.samplers import build_scheduler
    from loracam.lora import LoraLibrary
    from loracam.models import LoadOptions, load_base
    from loracam.prompts import LoraRef

    out = tmp_path / "sksxl.safetensors"
    said: list[str] = []
    train(cfg(dataset, out, xl_folder, train_text_encoder=True, te_lr=1e-2, te2_lr=5e-3), echo=said.append,
          progress=False)
    lora = read_lora(out)
    assert lora.family == "sdxl"
    prefixes = {n.split("_")[1] for n in lora.modules}  # unet, te1, te2
    assert prefixes == {"unet", "te1", "te2"}
    assert any(n.startswith("lora_unet_input_blocks_") for n in lora.modules)
    meta = lora.metadata
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_text_encoder_lr"] == "[0.01, 0.005]"  # sd-scripts' list, one rate per encoder
    model = load_base(str(xl_folder), LoadOptions(torch.device("cpu"), torch.float32))
    shared = Shared(64, 64, 3, "Euler", "Automatic")
    ref = LoraRef("sksxl", 0.8, 0.8)
    [mine] = render_samples(model, shared, [Sample("sks, red square <lora:sksxl:0.8>", "lowres", 4, 7.0, (ref,))],
                            LoraLibrary([tmp_path]))
    [plain] = render_samples(model, shared, [Sample("sks, red square", "lowres", 4, 7.0)], LoraLibrary([tmp_path]))
    parts = model.components() | {k: copy.deepcopy(getattr(model, k)) for k in ("unet", "text_encoder",
                                                                                 "text_encoder_2")}
    pipe = StableDiffusionXLPipeline(**parts)
    pipe.scheduler = build_scheduler(model.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(out), adapter_name="sksxl")
    pipe.set_adapters(["sksxl"], adapter_weights=[0.8])
    theirs = pipe("sks, red square", negative_prompt="lowres", num_inference_steps=3, height=64, width=64,
                  guidance_scale=7.0, generator=torch.Generator().manual_seed(4)).images[0]
    a, b, c = (np.asarray(getattr(x, "image", x), np.int16) for x in (mine, theirs, plain))
    assert np.abs(a - b).max() <= 1
    assert np.abs(a - c).mean() > 0.5  # training moved the model


def test_sdxl_training_passes_each_images_size_ids_and_pooled_text_to_the_unet(dataset, tmp_path, monkeypatch):
    import loracam.train.trainer as trainer

    seen = []
    real = trainer.diffusion_loss

    def spy(unet, sched, latents, text, w, gen, c, v, added=None):
        seen.append((tuple(latents.shape), text.shape[-1], added["text_embeds"].shape, added["time_ids"].tolist()))
        return real(unet, sched, latents, text, w, gen, c, v, added)

    monkeypatch.setattr(trainer, "diffusion_loss", spy)
    train(cfg(dataset, tmp_path / "ids.safetensors", "random:tiny-sdxl", max_steps=20, flip=False),
          echo=lambda s: None, progress=False)
    ids = {tuple(row) for *_, rows in seen for row in rows}
    assert (64, 64, 0, 0, 64, 64) in ids  # the square images: original = target, no offset
    tall = [row for row in ids if row[:2] == (96, 48)]  # the 48x96 image: its own size as sd-scripts records it
    assert tall and all(row[4:] != (64, 64) for row in tall)  # in its own (tall) bucket
    assert all(width == 80 and pooled[-1] == 48 for _, width, pooled, _ in seen)  # 32 + 48 channels; bigG pooled


def test_sdxl_resume_after_kill_9_equals_an_uninterrupted_run(dataset, tmp_path):
    """Both text encoders trained (te and te2 at their own rates), killed mid-run, resumed: the same file."""
    from test_train import killed_at_step

    from loracam.train.events import read_events

    kw = dict(max_steps=6, train_text_encoder=True, te_lr=1e-3, te2_lr=5e-4, save_every_steps=1)
    ref = tmp_path / "ref.safetensors"
    train(cfg(dataset, ref, "random:tiny-sdxl", **kw), echo=lambda s: None, progress=False)
    out = tmp_path / "killed.safetensors"
    events = killed_at_step([str(dataset), "--base", "random:tiny-sdxl", "-o", str(out), "--max-steps", "6",
                             "--resolution", "64x64", "--rank", "4", "--alpha", "4", "--lr", "2e-2", "--seed", "3",
                             "--device", "cpu", "--save-every", "1", "--train-text-encoder", "--te-lr", "1e-3",
                             "--te2-lr", "5e-4"], out, 3)
    train(cfg(dataset, out, "random:tiny-sdxl", resume=True, **kw), echo=lambda s: None, progress=False)
    a, b = load_file(str(ref)), load_file(str(out))
    assert any(k.startswith("lora_te2_") for k in a) and any(k.startswith("lora_te1_") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [e for e in read_events(events) if e["event"] == "start"][-1]["resumed_at"] >= 2


def test_sdxl_full_finetune_writes_a_stability_single_file_and_a_diffusers_folder(dataset, tmp_path):
    """`train --full --train-text-encoder` on SDXL: a single file in Stability's layout (conditioner.embedders.0/1,
    as A1111 and ComfyUI load SDXL) that loracam reads back as SDXL with the trained U-Net and both trained encoders,
    the U-Net equal to the diffusers folder's."""
    from safetensors import safe_open

    from loracam.models import LoadOptions, load_base

    out = tmp_path / "tuned.safetensors"
    train(cfg(dataset, out, "random:tiny-sdxl", full=True, max_steps=2, lr=1e-3, train_text_encoder=True,
              te_lr=1e-3), echo=lambda s: None, progress=False)
    with safe_open(str(out), "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("conditioner.embedders.0.transformer.") for k in keys)
    assert any(k.startswith("conditioner.embedders.1.model.") for k in keys)
    assert any(k.startswith("model.diffusion_model.label_emb.") for k in keys)
    cpu = LoadOptions(torch.device("cpu"), torch.float32)
    tuned, folder = load_base(str(out), cpu), load_base(str(tmp_path / "tuned"), cpu)
    base = load_base("random:tiny-sdxl", cpu)
    assert tuned.family == folder.family == "sdxl"
    changed = 0
    for name, w in tuned.unet.state_dict().items():
        assert torch.equal(w, folder.unet.state_dict()[name]), name
        changed += not torch.equal(w, base.unet.state_dict()[name])
    assert changed > 10  # the U-Net was trained, and what was trained is what the file holds
    for te in ("text_encoder", "text_encoder_2"):  # both encoders trained (sd-scripts' sdxl_train), both saved
        got, was = getattr(tuned, te).state_dict(), getattr(base, te).state_dict()
        assert any(not torch.equal(w, was[k]) for k, w in got.items()), te


def test_sdxl_presets_and_a_v_prediction_base(dataset, tmp_path):
    from loracam.train.config import SDXL_PRESETS, resolve

    r = resolve(TrainConfig(dataset="d", output="o.safetensors", subject="garment"), family="sdxl")
    assert (r.cfg.rank, r.cfg.alpha, r.train_text_encoder) == (32, 16.0, False)
    asked = resolve(TrainConfig(dataset="d", output="o.safetensors", subject="face", train_text_encoder=True),
                    family="sdxl")
    assert asked.te_lr == 1e-5 and SDXL_PRESETS["face"].rank == 16
    out = tmp_path / "vpred.safetensors"
    said: list[str] = []
    train(cfg(dataset, out, "random:tiny-sdxl", max_steps=1, prediction="v_prediction+ztsnr"),
          echo=said.append, progress=False)
    meta = read_lora(out).metadata
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_v_parameterization"] == "True"
    assert meta["ss_zero_terminal_snr"] == "True"


def test_an_sdxl_base_trains_at_1024_unless_told_even_on_a_dataset_prep_made_at_512(tmp_path):
    import json

    from loracam.train.trainer import _data

    d = tmp_path / "ds" / "img" / "1_sks"
    d.mkdir(parents=True)
    Image.new("RGB", (1200, 1600), "gray").save(d / "a.png")
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps({"config": {"resolution": [512, 512]}}))
    said: list[str] = []
    base = TrainConfig(dataset=str(tmp_path / "ds"), output="o.safetensors")
    assert _data(base, tmp_path / "ds", "sdxl", said.append)[1] == (1024, 1024)
    assert said == ["resolution: 1024x1024, SDXL's own (prep made 512x512); pass --resolution to choose"]
    assert _data(base, tmp_path / "ds", "sd1", said.append)[1] == (512, 512)
    data, res = _data(TrainConfig(dataset="x", output="o.safetensors", resolution=(768, 768)), tmp_path / "ds", "sdxl")
    assert res == (768, 768)
    [sample] = data.samples
    assert sample.original == (1200, 1600) and sample.bucket[0] % 64 == 0  # buckets around it in 64-px steps


def test_bf16_mixed_precision_keeps_the_frozen_base_in_bf16_and_the_lora_in_fp32_with_adafactor(dataset, tmp_path):
    """The memory recipe for 1024-px SDXL on an 8-12 GB card (frozen weights in bf16, LoRA fp32, Adafactor, previews
    through an fp32 VAE), run on the CPU's bf16 autocast."""
    from accelerate.state import AcceleratorState

    import loracam.train.trainer as trainer

    seen = {}
    real = trainer._Run.execute
    AcceleratorState._reset_state(True)  # accelerate keeps one precision a process: other tests' runs used "no"

    def spy(self, summary):
        seen["unet"], seen["vae"] = self.model.unet.dtype, self.model.vae.dtype
        return real(self, summary)

    trainer._Run.execute = spy
    try:
        out = tmp_path / "bf16.safetensors"
        train(cfg(dataset, out, "random:tiny-sdxl", mixed_precision="bf16", optimizer="Adafactor", lr=1e-3,
                  gradient_checkpointing=True, preview_every=2, preview_prompts=("sks",), preview_steps=2),
              echo=lambda s: None, progress=False)
    finally:
        trainer._Run.execute = real
        AcceleratorState._reset_state(True)
    assert seen == {"unet": torch.bfloat16, "vae": torch.float32}
    weights = load_file(str(out))
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_up" in k)  # Adafactor moved the zero init
    assert len(list(out.with_name("bf16.previews").glob("*.png"))) == 2
