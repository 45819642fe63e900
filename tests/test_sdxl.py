"""SDXL's layouts: its U-Net under LDM/SGM names (A1111 single files, sd-scripts' SDXL LoRA names), checked against
diffusers' own converter and sd-scripts' module names."""

from __future__ import annotations

import torch

from test_families import _sdxl_parts


def test_the_sdxl_unet_goes_to_sgm_names_and_back_through_diffusers_converter_exactly():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from loracam.models import tiny_sdxl_configs
    from loracam.models.ldm import unet_to_ldm

    unet = _sdxl_parts(tiny_sdxl_configs())["unet"]
    ldm = unet_to_ldm(unet)
    assert "model.diffusion_model.label_emb.0.0.weight" in ldm  # SDXL's added embedding under SGM's name
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))  # what diffusers reads an A1111 SDXL file with
    state = unet.state_dict()
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(back[key], tensor), key


def test_sd_scripts_sdxl_lora_names_of_kohyas_722_unet_targets():
    """sd-scripts names SDXL U-Net LoRA modules by its SGM U-Net's paths (shared/docs/research/sdxl_flux.md s1.1);
    loracam's kohya targets (diffusers paths) must map one to one onto them."""
    from loracam.lora.naming import UNET_PREFIX, kohya_targets
    from loracam.models import sdxl_configs
    from loracam.models.ldm import unet_module_names

    unet = _sdxl_parts(sdxl_configs(), device="meta")["unet"]
    sgm = unet_module_names(unet)
    paths = {name[len(UNET_PREFIX):]: module for name, module in kohya_targets(unet, None)}
    by_module = {id(m): p for p, m in unet.named_modules()}
    names = {UNET_PREFIX + sgm[by_module[id(m)]].replace(".", "_") for m in paths.values()}
    assert len(names) == 722  # distinct: no two targets share a file name
    for example in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_unet_middle_block_1_proj_in",
                    "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj",
                    "lora_unet_input_blocks_8_1_transformer_blocks_1_attn2_to_k",
                    "lora_unet_output_blocks_5_1_transformer_blocks_1_attn2_to_out_0"):
        assert example in names, example
    assert all(n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for n in names)


def test_an_sdxl_single_file_loracam_writes_is_read_back_by_diffusers_tensor_for_tensor(tmp_path):
    """sdxl_to_ldm writes Stability's layout (U-Net, VAE, CLIP-L under conditioner.embedders.0, bigG under OpenCLIP
    names in conditioner.embedders.1); diffusers' from_single_file, which reads civitai's SDXL files, gets back
    every tensor of every component. The table recognises the file as SDXL."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from loracam.models.families import family_of_checkpoint
    from loracam.models.ldm import sdxl_to_ldm
    from test_families import _tiny_sdxl_folder

    _tiny_sdxl_folder(tmp_path / "tiny-sdxl")
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "tiny-sdxl", local_files_only=True)
    state = sdxl_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "tiny-sdxl.safetensors"))
    assert family_of_checkpoint({k: () for k in state}).name == "sdxl"
    back = StableDiffusionXLPipeline.from_single_file(str(tmp_path / "tiny-sdxl.safetensors"),
                                                      config=str(tmp_path / "tiny-sdxl"), local_files_only=True)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        want, got = getattr(pipe, part).state_dict(), getattr(back, part).state_dict()
        want = {k: v for k, v in want.items() if not k.endswith("position_ids")}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        assert want.keys() == got.keys(), (part, set(want) ^ set(got))
        for key in want:
            assert torch.equal(want[key], got[key]), (part, key)
