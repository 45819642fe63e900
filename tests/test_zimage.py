"""Z-Image (Tongyi-MAI, Turbo and Base): loaded offline, encoded and sampled as diffusers' ZImagePipeline does it,
bit for bit; A1111's prompt syntax where it means something on an LLM encoder; flow samplers; re-rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from loracam.errors import LoracamError
from loracam.generate import GenRequest
from loracam.generate.api import generate
from loracam.models import ModelCache
from loracam.models.loader import LoadOptions, load_base

CPU = LoadOptions(torch.device("cpu"), torch.float32)


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture(scope="module")
def tiny_zimage():
    return load_base("random:tiny-zimage", CPU)


@pytest.fixture(scope="module")
def zimage_folder(tiny_zimage, tmp_path_factory) -> Path:
    """A diffusers ZImagePipeline folder (its tokenizer with its chat template), named as Tongyi names Turbo."""
    from loracam.models.zimage import save_folder

    m = tiny_zimage
    folder = tmp_path_factory.mktemp("zimage") / "Z-Image-Turbo"
    return save_folder({"unet": m.unet, "vae": m.vae, "text_encoder": m.text_encoder, "tokenizer": m.tokenizer},
                       m.scheduler_config, folder)


def _pipeline(folder: Path, prompt: str, negative: str, cfg: float, seed: int, steps: int, size=(64, 64), **kw):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    # loracam's CFG scale is A1111's (1: none); the pipeline's guidance_scale g computes pos + g (pos - neg)
    return pipe(prompt, negative_prompt=negative, width=size[0], height=size[1], num_inference_steps=steps,
                guidance_scale=cfg - 1, generator=torch.Generator("cpu").manual_seed(seed), **kw).images[0]


@pytest.mark.parametrize("cfg,negative,size", [(1.0, "", (64, 64)), (5.0, "blurry, lowres", (64, 48)),
                                               (3.5, "", (48, 64))])
def test_a_plain_prompt_on_a_diffusers_folder_is_zimagepipelines_image_exactly(zimage_folder, cfg, negative, size):
    req = GenRequest(prompt="a woman in a red dress, studio portrait", negative=negative, base=str(zimage_folder),
                     seed=7, cfg=cfg, steps=4, width=size[0], height=size[1], device="cpu")
    [mine] = generate(req, ModelCache()).images
    ref = _pipeline(zimage_folder, req.prompt, negative, cfg, 7, 4, size)
    assert np.array_equal(px(mine.image), px(ref))


def test_cfg_normalization_and_truncation_are_the_pipelines(zimage_folder):
    req = GenRequest(prompt="a red dress", negative="ugly", base=str(zimage_folder), seed=3, cfg=6.0, steps=4,
                     cfg_normalization=1.0, cfg_truncation=0.5, device="cpu")
    [mine] = generate(req, ModelCache()).images
    ref = _pipeline(zimage_folder, "a red dress", "ugly", 6.0, 3, 4, cfg_normalization=1.0, cfg_truncation=0.5)
    plain = generate(GenRequest(prompt="a red dress", negative="ugly", base=str(zimage_folder), seed=3, cfg=6.0,
                                steps=4, device="cpu"), ModelCache()).images[0]
    assert np.array_equal(px(mine.image), px(ref))
    assert not np.array_equal(px(mine.image), px(plain.image))  # the options change the image
    assert "CFG normalization: 1, CFG truncation: 0.5" in mine.infotext


def test_the_prompt_is_the_pipelines_chat_template_and_penultimate_layer(tiny_zimage):
    """The encoder's output for each prompt equals ZImagePipeline.encode_prompt's (the prompt's own tokens only),
    and a prompt encodes to the same bits alone or among others."""
    from diffusers import ZImagePipeline

    from loracam.prompts import encoder_for

    texts = ["a red dress", "a photo of a smiling woman in a garden, full body, white shoes"]
    enc = encoder_for(tiny_zimage)
    with torch.inference_mode():
        mine = enc.encode(texts)
        pipe = ZImagePipeline(**tiny_zimage.components())
        theirs = [pipe.encode_prompt([t], do_classifier_free_guidance=False)[0][0] for t in texts]
        alone = enc.encode(texts[1:])[0]
    assert enc.template("x") == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    assert [tuple(m.shape) for m in mine] == [tuple(t.shape) for t in theirs]
    assert all(torch.equal(m, t) for m, t in zip(mine, theirs))
    assert torch.equal(alone, mine[1])


def test_a1111_syntax_on_the_llm_encoder(tiny_zimage):
    """BREAK is a line break; emphasis is not applied (ComfyUI tokenizes Z-Image prompts with weights off): the
    brackets reach the encoder as written."""
    from loracam.prompts import encoder_for

    enc = encoder_for(tiny_zimage)
    assert "a dress\non a beach" in enc.template("a dress BREAK on a beach")
    with torch.inference_mode():
        emphasized, written = enc.encode(["(red:1.4) dress", "(red:1.4) dress"])
        plain = enc.encode(["red dress"])[0]
    assert torch.equal(emphasized, written) and emphasized.shape != plain.shape


def test_turbo_and_base_defaults_come_from_the_files_name_and_can_be_overridden(zimage_folder, tmp_path):
    import shutil

    turbo = GenRequest(prompt="x", base=str(zimage_folder))
    assert (turbo.sampler, turbo.steps, turbo.cfg) == ("Euler", 9, 1.0)
    base_dir = tmp_path / "Z-Image-Base"
    shutil.copytree(zimage_folder, base_dir)
    base = GenRequest(prompt="x", base=str(base_dir))
    assert (base.steps, base.cfg) == (30, 5.0)
    assert GenRequest(prompt="x", base=str(base_dir), variant="turbo").steps == 9
    assert GenRequest(prompt="x", base="random:tiny").steps == 20  # SD's defaults stay A1111's
    with pytest.raises(LoracamError, match="unknown Z-Image variant"):
        GenRequest(prompt="x", base=str(base_dir), variant="fast")


def test_flow_samplers_run_and_a1111_samplers_without_a_flow_version_are_refused(tiny_zimage):
    from loracam.generate import Sample, Shared
    from loracam.generate.engine import render

    images = {}
    for sampler in ("Euler", "Euler a", "Heun", "DPM++ 2M", "UniPC"):
        [im] = render(tiny_zimage, Shared(32, 32, 3, sampler, "Automatic"), [Sample("a red dress", "", 5, 1.0)])
        images[sampler] = px(im)
    assert len({im.tobytes() for im in images.values()}) == len(images)
    with pytest.raises(LoracamError, match="DPM\\+\\+ SDE has no flow-matching version.*Euler"):
        render(tiny_zimage, Shared(32, 32, 3, "DPM++ SDE", "Automatic"), [Sample("x", "", 5, 1.0)])
    with pytest.raises(LoracamError, match="multiples of 4"):
        render(tiny_zimage, Shared(34, 32, 3, "Euler", "Automatic"), [Sample("x", "", 5, 1.0)])


def test_a_batch_gives_each_image_its_own_seed_and_the_same_image_as_alone(tiny_zimage):
    models = ModelCache()
    req = GenRequest(prompt="a red dress", base="random:tiny-zimage", seed=11, batch_size=3, steps=3, cfg=3.0,
                     width=32, height=32, device="cpu")
    batch = generate(req, models).images
    alone = generate(GenRequest(prompt="a red dress", base="random:tiny-zimage", seed=12, steps=3, cfg=3.0,
                                width=32, height=32, device="cpu"), models).images[0]
    assert [r.seed for r in batch] == [11, 12, 13]
    assert np.array_equal(px(batch[1].image), px(alone.image))
    assert not np.array_equal(px(batch[0].image), px(batch[1].image))


def test_img2img_and_inpainting_start_part_way_and_keep_the_unmasked_part(tmp_path):
    from PIL import Image

    models = ModelCache()
    init = np.zeros((32, 32, 3), np.uint8)
    init[:, 16:] = 200
    Image.fromarray(init).save(tmp_path / "init.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = dict(prompt="a red dress", base="random:tiny-zimage", seed=2, steps=4, width=32, height=32,
                  device="cpu", init_image=str(tmp_path / "init.png"))
    light = px(generate(GenRequest(**common, denoising=0.25), models).images[0].image)
    heavy = px(generate(GenRequest(**common, denoising=1.0), models).images[0].image)
    assert np.abs(light - init).mean() < np.abs(heavy - init).mean()
    painted = generate(GenRequest(**common, mask=str(tmp_path / "mask.png"), mask_blur=0), models).images[0]
    out = px(painted.image)
    assert np.array_equal(out[:4], init[:4].astype(np.int16))  # A1111's overlay outside the mask
    assert "Denoising strength: 0.75" in painted.infotext


def test_infotext_says_shift_and_gen_from_re_renders_identically(zimage_folder, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from loracam.cli import app

    runner = CliRunner()
    args = ["gen", "a red dress", "--base", str(zimage_folder), "--steps", "3", "--seed", "4", "--cfg", "2.5",
            "--shift", "2", "--size", "32x32", "-o", str(tmp_path / "o")]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    [png] = sorted((tmp_path / "o").glob("*.png"))
    text = Image.open(png).info["parameters"]
    assert "Steps: 3, Sampler: Euler, Schedule type: Automatic, CFG scale: 2.5, Shift: 2, Seed: 4" in text
    r = runner.invoke(app, ["gen", "--from", str(png), "--base", str(zimage_folder), "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    a, b = sorted((tmp_path / "o").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    shifted = sorted((tmp_path / "o").glob("*.png"))
    assert len(shifted) == 2


def test_the_shipped_configs_build_zimage_at_its_published_sizes():
    """On the meta device (no memory): the transformer's 6.15B parameters (Tongyi's S3-DiT), Qwen3-4B's 4.02B of
    which 3.63B outside the 151936 x 2560 embedding (Qwen's model card: 4.0B, 3.6B non-embedding), FLUX.1's 83.8M
    VAE (shared/docs/research/families_2026.md s2.1)."""
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from loracam.models.zimage import zimage_configs

    c = zimage_configs()
    with torch.device("meta"):
        parts = {"transformer": ZImageTransformer2DModel.from_config(c["transformer"]),
                 "vae": AutoencoderKL.from_config(c["vae"]),
                 "text_encoder": Qwen3Model(Qwen3Config(**{k: v for k, v in c["text_encoder"].items()
                                                           if k != "architectures"}))}
    count = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    assert round(count["transformer"] / 1e9, 2) == 6.15
    assert round(count["text_encoder"] / 1e9, 2) == 4.02
    assert round((count["text_encoder"] - 151936 * 2560) / 1e9, 2) == 3.63
    assert round(count["vae"] / 1e6, 1) == 83.8


def test_loracam_prompt_says_what_a1111_syntax_does_on_zimage():
    from typer.testing import CliRunner

    from loracam.cli import app

    r = CliRunner().invoke(app, ["prompt", "(red:1.3) dress BREAK beach <lora:face:0.8>", "--family", "zimage"])
    assert r.exit_code == 0, r.output
    assert "emphasis is not applied" in r.output and "BREAK becomes a line break" in r.output
    assert "lora: face" in r.output and "chunk" not in r.output.split("note:")[0]
    r = CliRunner().invoke(app, ["prompt", "x", "--family", "flux1"])
    assert r.exit_code != 0 and "unknown family 'flux1'; use sd1, sdxl, zimage" in r.output


def test_hires_fix_detail_pass_and_grid_run_on_zimage(tmp_path):
    """The stages above the engine on a flow model: a Latent hires pass, a detail pass, an X/Y grid."""
    from PIL import Image
    from typer.testing import CliRunner

    from loracam.cli import app

    runner = CliRunner()
    base = ["--base", "random:tiny-zimage", "--steps", "2", "--seed", "1"]
    r = runner.invoke(app, ["gen", "a dress", *base, "--size", "32x32", "--hires-scale", "2", "-o", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    [png] = (tmp_path / "h").glob("*.png")
    assert Image.open(png).size == (64, 64) and "Hires upscaler: Latent" in Image.open(png).info["parameters"]
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    r = runner.invoke(app, ["gen", "a dress", *base, "--steps", "3", "--size", "64x64",  # 0.4 x 3: one step
                            "--detail", f"mask:{tmp_path / 'm.png'}",
                            "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    [png] = (tmp_path / "d").glob("*.png")
    assert "ADetailer model: " in Image.open(png).info["parameters"]
    r = runner.invoke(app, ["grid", "a dress", *base, "--size", "32x32", "--x", "cfg=1,3", "-o", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    assert "2 cells (2 rendered" in r.output


def test_a_zimage_single_file_is_refused_with_what_to_use(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({"noise_refiner.0.attention.qkv.weight": torch.zeros(1), "cap_embedder.1.weight": torch.zeros(1)},
              str(path))
    with pytest.raises(LoracamError, match="diffusion-model file.*diffusers folder only.*--base"):
        load_base(str(path), CPU)


def test_training_on_zimage_is_refused_by_name_before_anything_is_written(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from loracam.cli import app

    folder = tmp_path / "ds" / "img" / "10_sks"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(folder / "0.png")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "ds"), "--base", "random:tiny-zimage", "--max-steps", "1",
                                 "-o", str(tmp_path / "z.safetensors")])
    assert r.exit_code != 0 and "LoRA training on Z-Image is not in this version" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_loracam_info_says_a_zimage_transformer_file_is_not_usable_as_a_base(tmp_path):
    from loracam.info import describe
    from loracam.models import HashCache
    from safetensors.torch import save_file

    path = tmp_path / "z_image_turbo_bf16.safetensors"
    save_file({"noise_refiner.0.attention.qkv.weight": torch.zeros(1)}, str(path))
    info = describe(path, HashCache(None))
    assert info["family"] == "zimage" and info["usable"].startswith("no: z_image_turbo_bf16.safetensors is a Z-Image")


@pytest.mark.parametrize("part,what", [("tokenizer", "tokenizer/"), ("text_encoder", "text_encoder/ (Qwen3Model)")])
def test_a_folder_missing_its_tokenizer_or_text_encoder_says_what_is_missing(zimage_folder, tmp_path, part, what):
    import shutil

    folder = tmp_path / "Z-Image-Turbo"
    shutil.copytree(zimage_folder, folder)
    shutil.rmtree(folder / part)
    import re

    with pytest.raises(LoracamError, match=f"is a Z-Image folder without {re.escape(what)}.*Tongyi-MAI/Z-Image-Turbo"):
        load_base(str(folder), CPU)
    assert (folder / "model_index.json").exists() and (folder / "transformer").is_dir()  # nothing touched
