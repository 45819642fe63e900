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
            assert f.config_dir and (configs / f.config_dir / "model_index.json").is_file(), f.name
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


def _tiny_sdxl_folder(path: Path) -> None:
    """An SDXL diffusers folder of random weights at diffusers' own test sizes, built offline."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from loracam.models import SD15_DIR

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64)
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4)
    te = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                        vocab_size=49408, projection_dim=32)
    tok = CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer")
    StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(te), text_encoder_2=CLIPTextModelWithProjection(te),
                              tokenizer=tok, tokenizer_2=tok, unet=unet,
                              scheduler=EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1)
                              ).save_pretrained(path)


def test_gen_on_an_sdxl_folder_or_a_flux_file_says_so_and_writes_nothing(tmp_path):
    """The issue's report: an SDXL diffusers folder died inside diffusers (get_aug_embed, a bare TypeError)."""
    _tiny_sdxl_folder(tmp_path / "tiny-sdxl")
    assert json.loads((tmp_path / "tiny-sdxl" / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionXLPipeline"
    save_file({k: Z for k in FILES["flux1"]}, str(tmp_path / "flux1-dev.safetensors"))
    for base, family in ((tmp_path / "tiny-sdxl", "an SDXL model"), (tmp_path / "flux1-dev.safetensors",
                                                                       "a FLUX.1 model")):
        out = tmp_path / f"out-{base.stem}"
        proc = subprocess.run([sys.executable, "-m", "loracam.cli", "gen", "1girl", "--base", str(base), "--steps", "2",
                               "-o", str(out)], capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert f"is {family}" in proc.stderr and "SD1.x" in proc.stderr, proc.stderr
        assert not out.exists() or not any(out.iterdir())


def test_info_describes_a_file_of_any_known_family(tmp_path):
    from loracam.info import describe
    from loracam.models import HashCache

    save_file({k: Z for k in FILES["sdxl"]}, str(tmp_path / "ponyDiffusionV6XL.safetensors"))
    info = describe(tmp_path / "ponyDiffusionV6XL.safetensors", HashCache(tmp_path / "hashes.json"))
    assert info["kind"] == "checkpoint" and info["family"] == "sdxl" and info["family_name"] == "SDXL"
    assert info["usable"].startswith("no: ") and "Pony" in info["usable"]
