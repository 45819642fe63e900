"""The model-family table (loracam/models/families.py): each family's files are recognised by the table's
markers, and a family loracam does not run yet is refused with its name and what to use, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from loracam.errors import LoracamError
from loracam.models.families import (FAMILIES, _DETECT_ORDER, family_of_checkpoint, family_of_metadata,
                                     family_of_pipeline)
from loracam.models.loader import checkpoint_family

Z = np.zeros(1, np.float32)

# One file per family as users have them: A1111/civitai single files (model.diffusion_model., conditioner.),
# ComfyUI's split diffusion-model files (bare names), diffusers-named transformers.
FILES = {
    "sd1": ["model.diffusion_model.output_blocks.11.0.skip_connection.weight",
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"],
    "sd2": ["model.diffusion_model.output_blocks.11.0.skip_connection.weight",
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"],
    "sdxl": ["model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.1.model.ln_final.weight",
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"],
    "sdxl-refiner": ["model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.0.model.ln_final.weight"],
    "flux1": ["double_blocks.0.img_attn.norm.key_norm.scale", "guidance_in.in_layer.bias"],
    "flux2": ["model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale",
              "model.diffusion_model.double_stream_modulation_img.lin.weight"],
    "zimage": ["diffusion_model.noise_refiner.0.attention.qkv.weight", "diffusion_model.cap_embedder.1.weight"],
    "sd3": ["model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight"],
}


def test_every_family_is_recognised_by_its_own_markers_and_no_other():
    assert set(FILES) == set(FAMILIES) == set(_DETECT_ORDER)
    for name, keys in FILES.items():
        assert family_of_checkpoint({k: (1,) for k in keys}).name == name, name
    assert family_of_checkpoint({"encoder.conv_in.weight": (1,)}) is None  # a VAE is no base model


def test_the_table_is_whole():
    pipelines = [p for f in FAMILIES.values() for p in f.pipelines]
    assert len(pipelines) == len(set(pipelines))  # a diffusers class names one family
    configs = Path(__file__).resolve().parent.parent / "loracam" / "models" / "configs"
    for f in FAMILIES.values():
        assert f.status in ("supported", "planned", "refused"), f.name
        assert f.supported or f.why, f"{f.name}: a family loracam does not run must say what to use instead"
        if f.supported:  # it loads offline from the configs loracam ships
            assert f.config_dir, f.name
        if f.config_dir:
            index = json.loads((configs / f.config_dir / "model_index.json").read_text())
            assert family_of_pipeline(index["_class_name"]) is f, f.name
        if f.ss_base_model_version:  # the metadata it writes reads back as the same family
            assert family_of_metadata({"ss_base_model_version": f.ss_base_model_version}).name == f.name
    assert family_of_pipeline("StableDiffusionXLPipeline").name == "sdxl" and family_of_pipeline("Nope") is None


@pytest.mark.parametrize("name", [n for n in FILES if not FAMILIES[n].supported])
def test_a_file_of_a_family_loracam_does_not_run_is_refused_by_name(name):
    with pytest.raises(LoracamError) as err:
        checkpoint_family({k: (1,) for k in FILES[name]}, f"{name}.safetensors")
    assert str(err.value).startswith(f"{name}.safetensors is {FAMILIES[name].label}; ")
    assert "use" in str(err.value)  # says what to use instead


def test_loras_and_non_models_are_told_apart_from_bases():
    assert checkpoint_family({k: (1,) for k in FILES["sd1"]}, "a").name == "sd1"
    with pytest.raises(LoracamError, match="is a LoRA, not a base model"):
        checkpoint_family({"lora_unet_x.lora_down.weight": (1,)}, "a")
    with pytest.raises(LoracamError, match="is a LoRA"):  # a diffusers/PEFT LoRA too
        checkpoint_family({"transformer.x.lora_A.weight": (1,)}, "a")
    with pytest.raises(LoracamError, match="not a base model loracam knows.*VAE"):
        checkpoint_family({"encoder.conv_in.weight": (1,)}, "a")


def _sdxl_parts(configs: dict, device: str | None = None) -> dict:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def te(cfg, cls):
        return cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))

    torch.manual_seed(0)
    with torch.device(device or "cpu"):  # "meta": shapes without memory
        parts = {"unet": UNet2DConditionModel.from_config(configs["unet"]),
                 "vae": AutoencoderKL.from_config(configs["vae"]),
                 "text_encoder": te(configs["text_encoder"], CLIPTextModel),
                 "text_encoder_2": te(configs["text_encoder_2"], CLIPTextModelWithProjection)}
    return parts | {"scheduler": EulerDiscreteScheduler.from_config(configs["scheduler"])}


def _tiny_sdxl_folder(path: Path) -> None:
    """An SDXL diffusers folder of random weights at diffusers' own test sizes, built offline."""
    from diffusers import StableDiffusionXLPipeline

    from loracam.models import SDXL_DIR, tiny_sdxl_configs
    from loracam.models.tiny import clip_tokenizer

    StableDiffusionXLPipeline(**_sdxl_parts(tiny_sdxl_configs()), tokenizer=clip_tokenizer(SDXL_DIR / "tokenizer"),
                              tokenizer_2=clip_tokenizer(SDXL_DIR / "tokenizer_2")).save_pretrained(path)


def test_the_shipped_sdxl_configs_build_sdxl_base_exactly():
    """Parameter counts of stabilityai/stable-diffusion-xl-base-1.0's components, and sd-scripts' LoRA module
    counts at its defaults (722 U-Net, 72 CLIP-L, 192 bigG: shared/docs/research/sdxl_flux.md s1.1), on the meta
    device (no memory, half a second)."""
    from loracam.lora.naming import kohya_targets
    from loracam.models import sdxl_configs

    parts = _sdxl_parts(sdxl_configs(), device="meta")
    count = {name: sum(p.numel() for p in parts[name].parameters()) for name in ("unet", "vae", "text_encoder",
                                                                                 "text_encoder_2")}
    assert count == {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                     "text_encoder_2": 694_659_840}
    unet_only = len(kohya_targets(parts["unet"], None))
    assert unet_only == 722
    assert len(kohya_targets(parts["unet"], parts["text_encoder"])) - unet_only == 72
    assert len(kohya_targets(parts["unet"], parts["text_encoder_2"])) - unet_only == 192
    assert parts["vae"].config.scaling_factor == FAMILIES["sdxl"].latent.scale and parts["vae"].config.force_upcast


def test_sdxls_two_tokenizers_share_clips_bpe_and_pad_differently():
    from loracam.models import SDXL_DIR
    from loracam.models.tiny import clip_tokenizer

    one, two = clip_tokenizer(SDXL_DIR / "tokenizer"), clip_tokenizer(SDXL_DIR / "tokenizer_2")
    ids = [t("a photo of sks", padding="max_length", max_length=77).input_ids for t in (one, two)]
    assert ids[0][:6] == ids[1][:6] and ids[0][5] == 49407  # the same BPE: start, 4 tokens, end
    assert ids[0][6:] == [49407] * 71 and ids[1][6:] == [0] * 71  # CLIP-L pads with its end token, bigG with "!"


def test_the_tiny_sdxl_renders_in_diffusers_pipeline(tmp_path):
    """The tiny SDXL configs are consistent (context 32 + 48, added embedding 6 x 8 + 48): diffusers' own SDXL
    pipeline renders with them."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    _tiny_sdxl_folder(tmp_path / "tiny-sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "tiny-sdxl", local_files_only=True)
    image = pipe("1girl", negative_prompt="lowres", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_gen_on_an_sdxl_folder_renders_and_on_a_flux_file_says_so_and_writes_nothing(tmp_path):
    """The issue's report: an SDXL diffusers folder died inside diffusers (get_aug_embed, a bare TypeError). Now it
    renders at its own size with A1111's infotext; a FLUX.1 file (not run yet) is refused by name."""
    from PIL import Image

    _tiny_sdxl_folder(tmp_path / "tiny-sdxl")
    assert json.loads((tmp_path / "tiny-sdxl" / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionXLPipeline"
    out = tmp_path / "out-xl"
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", "gen", "1girl", "--base", str(tmp_path / "tiny-sdxl"),
                           "--steps", "2", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [png] = out.glob("*.png")
    image = Image.open(png)
    assert image.size == (32, 32)  # the tiny U-Net's sample_size 16 x its VAE's factor 2: the model's own size
    assert "Model: tiny-sdxl" in image.text["parameters"]
    save_file({k: Z for k in FILES["flux1"]}, str(tmp_path / "flux1-dev.safetensors"))
    out = tmp_path / "out-flux"
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", "gen", "1girl", "--base",
                           str(tmp_path / "flux1-dev.safetensors"), "--steps", "2", "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "is a FLUX.1 model" in proc.stderr and "SD1.x, SDXL and Z-Image" in proc.stderr, proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_info_describes_a_file_of_any_known_family(tmp_path):
    from loracam.info import describe
    from loracam.models import HashCache

    save_file({k: Z for k in FILES["sdxl"]}, str(tmp_path / "ponyDiffusionV6XL.safetensors"))
    info = describe(tmp_path / "ponyDiffusionV6XL.safetensors", HashCache(tmp_path / "hashes.json"))
    assert info["kind"] == "checkpoint" and info["family"] == "sdxl" and info["family_name"] == "SDXL"
    assert info["usable"] == "yes"
    save_file({k: Z for k in FILES["flux1"]}, str(tmp_path / "flux1-dev.safetensors"))
    info = describe(tmp_path / "flux1-dev.safetensors", HashCache(tmp_path / "hashes.json"))
    assert info["family"] == "flux1" and info["usable"].startswith("no: ") and "FLUX.1" in info["usable"]
