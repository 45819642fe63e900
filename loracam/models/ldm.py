"""Write SD1.x and SDXL models as original-LDM "single file" checkpoints, the layout A1111, ComfyUI and civitai use.

diffusers only converts LDM -> diffusers; this is the other direction. The mapping is built from the
models' own configs and state dicts, module prefix by module prefix, and every tensor must map to a
distinct LDM name, so a model whose layout is not SD1.x fails loudly instead of writing a file that
other tools would half-load.

The files also carry the diffusers component configs in their safetensors metadata (``loracam_configs``),
so models of non-standard sizes (random:tiny, the toy model) can be loaded back offline.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loracam.errors import LoracamError
from loracam.io import atomic_write
from loracam.models.base import BaseModel

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TE_PREFIX = "cond_stage_model.transformer."
CONTROL_PREFIX = "control_model."
CONFIGS_KEY = "loracam_configs"

# First name inside a ResNet block, diffusers -> LDM. The U-Net's LDM ResBlock keeps its layers in
# Sequentials (in_layers = [norm, SiLU, conv], out_layers = [norm, SiLU, Dropout, conv]).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


# ---------------------------------------------------------------------------------------------
# module prefix tables: diffusers module path -> (LDM module path, renames of the first inner name)


def _unet_modules(config, keys: set[str]) -> dict[str, tuple[str, dict | None]]:
    """Module map of an SD1.x-layout UNet2DConditionModel."""
    layers = config["layers_per_block"]
    n_blocks = len(config["block_out_channels"])
    if not isinstance(layers, int):
        raise LoracamError("this U-Net has a per-block layer count; only SD1.x and SDXL layouts have LDM names")
    table: dict[str, tuple[str, dict | None]] = {
        "conv_in": ("input_blocks.0.0", None),
        "time_embedding.linear_1": ("time_embed.0", None),
        "time_embedding.linear_2": ("time_embed.2", None),
        "conv_norm_out": ("out.0", None),
        "conv_out": ("out.2", None),
        "mid_block.resnets.0": ("middle_block.0", _UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", None),
        "mid_block.resnets.1": ("middle_block.2", _UNET_RESNET),
    }
    if config.get("addition_embed_type") == "text_time":  # SDXL's pooled-text + size embedding (SGM's label_emb)
        table["add_embedding.linear_1"] = ("label_emb.0.0", None)
        table["add_embedding.linear_2"] = ("label_emb.0.2", None)
    # LDM numbers the input blocks flat: after conv_in (index 0) each level has `layers` blocks of
    # [resnet, attention?] and, except the last level, one more holding the downsampler.
    for b in range(n_blocks):
        for j in range(layers):
            i = 1 + b * (layers + 1) + j
            table[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{i}.0", _UNET_RESNET)
            table[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{i}.1", None)
        table[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{1 + b * (layers + 1) + layers}.0.op", None)
    # Output blocks have one more layer per level; the upsampler sits after the attention if the
    # level has one (index 2), else right after the resnet (index 1).
    for b in range(n_blocks):
        has_attn = any(k.startswith(f"up_blocks.{b}.attentions.") for k in keys)
        for j in range(layers + 1):
            i = b * (layers + 1) + j
            table[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{i}.0", _UNET_RESNET)
            table[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{i}.1", None)
        last = b * (layers + 1) + layers
        table[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{last}.{2 if has_attn else 1}.conv", None)
    return table


def _vae_modules(config) -> dict[str, tuple[str, dict | None]]:
    """Module map of an AutoencoderKL; LDM numbers the decoder's levels in reverse (up.0 is the last)."""
    n_blocks = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    table: dict[str, tuple[str, dict | None]] = {
        "quant_conv": ("quant_conv", None),
        "post_quant_conv": ("post_quant_conv", None),
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.conv_in"] = (f"{part}.conv_in", None)
        table[f"{part}.conv_out"] = (f"{part}.conv_out", None)
        table[f"{part}.conv_norm_out"] = (f"{part}.norm_out", None)
        table[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", _VAE_RESNET)
        table[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", _VAE_RESNET)
        table[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION)
    for b in range(n_blocks):
        for j in range(layers):
            table[f"encoder.down_blocks.{b}.resnets.{j}"] = (f"encoder.down.{b}.block.{j}", _VAE_RESNET)
        table[f"encoder.down_blocks.{b}.downsamplers.0.conv"] = (f"encoder.down.{b}.downsample.conv", None)
        ldm_b = n_blocks - 1 - b
        for j in range(layers + 1):  # the decoder has one more resnet per level
            table[f"decoder.up_blocks.{b}.resnets.{j}"] = (f"decoder.up.{ldm_b}.block.{j}", _VAE_RESNET)
        table[f"decoder.up_blocks.{b}.upsamplers.0.conv"] = (f"decoder.up.{ldm_b}.upsample.conv", None)
    return table


def _controlnet_modules(config, keys: set[str]) -> dict[str, tuple[str, dict | None]]:
    """Module map of a ControlNetModel: the U-Net's encoder half under LDM's names, plus the hint encoder
    (``input_hint_block``: convs at every other index, SiLUs between), the zero convolutions after each
    encoder output (``zero_convs.N.0``) and after the middle block (``middle_block_out.0``)."""
    table = {k: v for k, v in _unet_modules(config, set()).items()
             if not k.startswith(("up_blocks.", "conv_out", "conv_norm_out"))}
    n_hint = len(config["conditioning_embedding_out_channels"]) - 1
    table["controlnet_cond_embedding.conv_in"] = ("input_hint_block.0", None)
    for k in range(2 * n_hint):
        table[f"controlnet_cond_embedding.blocks.{k}"] = (f"input_hint_block.{2 + 2 * k}", None)
    table["controlnet_cond_embedding.conv_out"] = (f"input_hint_block.{2 + 4 * n_hint}", None)
    for n in range(sum(1 for k in keys if k.startswith("controlnet_down_blocks.") and k.endswith(".weight"))):
        table[f"controlnet_down_blocks.{n}"] = (f"zero_convs.{n}.0", None)
    table["controlnet_mid_block"] = ("middle_block_out.0", None)
    return table


def _rename(key: str, table: dict[str, tuple[str, dict | None]], what: str) -> str:
    """LDM name of one diffusers tensor name, through the longest module prefix found in ``table``."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        if module not in table:
            continue
        ldm_module, inner = table[module]
        rest = ".".join(parts[cut:])
        if inner is not None:
            for old, new in inner.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            else:
                raise LoracamError(f"{what} tensor {key!r} has no LDM name; only SD1.x layouts can be saved")
        return f"{ldm_module}.{rest}"
    raise LoracamError(f"{what} tensor {key!r} has no LDM name; only SD1.x layouts can be saved")


def _convert(state: dict[str, torch.Tensor], table, prefix: str, what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = prefix + _rename(key, table, what)
        if name in out:  # two tensors on one name would silently lose weights
            raise LoracamError(f"{what} tensors collide on the LDM name {name!r}; only SD1.x layouts can be saved")
        out[name] = tensor
    return out


# ---------------------------------------------------------------------------------------------
# public API


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """U-Net weights under ``model.diffusion_model.*``."""
    state = unet.state_dict()
    return _convert(state, _unet_modules(unet.config, set(state)), UNET_PREFIX, "U-Net")


def unet_module_names(unet) -> dict[str, str]:
    """Each U-Net layer's diffusers module path -> its LDM path (SGM's, for SDXL): the names A1111 single files
    and sd-scripts' SDXL LoRAs use (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``)."""
    state = unet.state_dict()
    table = _unet_modules(unet.config, set(state))
    cut = len(".weight")
    return {k[:-cut]: _rename(k, table, "U-Net")[:-cut] for k in state if k.endswith(".weight")}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """VAE weights under ``first_stage_model.*``; mid-block attention projections as 1x1 convs."""
    out = _convert(vae.state_dict(), _vae_modules(vae.config), VAE_PREFIX, "VAE")
    for name, tensor in out.items():
        # LDM's AttnBlock uses Conv2d(C, C, 1) for q/k/v/proj_out where diffusers uses Linear(C, C).
        if ".mid.attn_1." in name and name.endswith(".weight") and tensor.ndim == 2:
            out[name] = tensor[:, :, None, None]
    return out


def text_encoder_to_ldm(text_encoder, prefix: str = TE_PREFIX) -> dict[str, torch.Tensor]:
    """CLIP text encoder weights under ``cond_stage_model.transformer.text_model.*`` (SDXL's CLIP-L: under
    ``conditioner.embedders.0.transformer.``)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); older ones have it.
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        out[prefix + inner] = tensor
    ids = prefix + "text_model.embeddings.position_ids"
    if ids not in out:
        # SD1.x checkpoints carry this buffer (int64 [1, 77]) and some loaders expect it; recent
        # transformers no longer saves it, so write the correct values.
        n = text_encoder.config.max_position_embeddings
        out[ids] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    return out


def controlnet_to_ldm(controlnet) -> dict[str, torch.Tensor]:
    """ControlNet weights under ``control_model.*``, as lllyasviel's .pth/.safetensors files name them."""
    state = controlnet.state_dict()
    return _convert(state, _controlnet_modules(controlnet.config, set(state)), CONTROL_PREFIX, "ControlNet")


def controlnet_from_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The inverse: an LDM ControlNet state dict renamed to diffusers' names for a ControlNetModel of
    ``config``. The map is built from that model's own tensor names (on the meta device), so a file with
    tensors the model lacks, or lacking some it has, is reported by name rather than half-loaded."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        names = set(ControlNetModel.from_config(config).state_dict())
    table = _controlnet_modules(config, names)
    inverse = {CONTROL_PREFIX + _rename(k, table, "ControlNet"): k for k in names}
    unknown = sorted(k for k in state if k not in inverse)
    missing = sorted(v for k, v in inverse.items() if k not in state)
    if unknown or missing:
        raise LoracamError(
            "the file's tensors do not fit an SD1.x ControlNet of this shape "
            f"({len(unknown)} unexpected, e.g. {unknown[:2]}; {len(missing)} missing, e.g. {missing[:2]})"
        )
    return {inverse[k]: v for k, v in state.items()}


def diffusers_to_ldm(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """All weights of an SD1.x model under original-LDM names (tensors are shared, not copied)."""
    return unet_to_ldm(unet) | vae_to_ldm(vae) | text_encoder_to_ldm(text_encoder)


SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."
SDXL_TE2_PREFIX = "conditioner.embedders.1.model."
# transformers' CLIP layer names -> OpenCLIP's, which SGM's FrozenOpenCLIPEmbedder2 (SDXL's bigG) is saved under
_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}


def openclip_text_to_sgm(text_encoder, prefix: str = SDXL_TE2_PREFIX) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection under OpenCLIP's names: q, k, v stacked into one in_proj, the position
    embedding a bare parameter, the projection transposed (OpenCLIP multiplies x @ text_projection)."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           prefix + "text_projection": state.pop("text_projection.weight").T.contiguous()}
    state.pop("embeddings.position_ids", None)
    for part in ("weight", "bias"):
        out[f"{prefix}ln_final.{part}"] = state.pop(f"final_layer_norm.{part}")
    for i in range(text_encoder.config.num_hidden_layers):
        layer, block = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{block}attn.in_proj_{part}"] = torch.cat([state.pop(f"{layer}self_attn.{p}_proj.{part}")
                                                             for p in "qkv"])
            for hf, oc in _OPENCLIP.items():
                out[f"{block}{oc}.{part}"] = state.pop(f"{layer}{hf}.{part}")
    if state:  # every tensor must have a name in the file: a layer left out would be lost silently
        raise LoracamError(f"text encoder tensors with no OpenCLIP name: {sorted(state)[:3]}")
    return out


def sdxl_to_ldm(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """All weights of an SDXL model under the names of Stability's single files (A1111, ComfyUI, civitai)."""
    return (unet_to_ldm(unet) | vae_to_ldm(vae) | text_encoder_to_ldm(text_encoder, SDXL_TE1_PREFIX)
            | openclip_text_to_sgm(text_encoder_2))


def expected_ldm_shapes(configs: dict[str, dict], family: str = "sd1") -> dict[str, tuple[int, ...]]:
    """Name and shape of every tensor an SD1.x (or SDXL) checkpoint of these component configs must hold.

    The components are built on the meta device (no memory, ~0.1 s at full size, 0.5 s for SDXL), so this is
    exactly what from_single_file will fill. position_ids is left out: it is optional in real files.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def te(cfg, cls):
        return cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype",
                                                                                  "dtype")}))

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = te(configs["text_encoder"], CLIPTextModel)
        if family == "sdxl":
            state = sdxl_to_ldm(unet, vae, text_encoder, te(configs["text_encoder_2"], CLIPTextModelWithProjection))
        else:
            state = diffusers_to_ldm(unet, vae, text_encoder)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for prefix in (TE_PREFIX, SDXL_TE1_PREFIX):
        shapes.pop(prefix + "text_model.embeddings.position_ids", None)
    return shapes


def canonical_name(key: str) -> str:
    """A checkpoint tensor name as diffusers_to_ldm writes it.

    Files made with old transformers versions lack the ``text_model.`` level in the text encoder's
    names; diffusers and A1111 accept both spellings.
    """
    if key.startswith(TE_PREFIX) and not key.startswith(TE_PREFIX + "text_model."):
        return TE_PREFIX + "text_model." + key[len(TE_PREFIX):]
    return key


def component_configs(model: BaseModel) -> dict[str, dict]:
    """The diffusers/transformers configs of a model's components, JSON-ready."""
    configs = {
        "unet": json.loads(model.unet.to_json_string()),
        "vae": json.loads(model.vae.to_json_string()),
        "text_encoder": json.loads(model.text_encoder.config.to_json_string(use_diff=False)),
        "scheduler": dict(model.scheduler_config),
    }
    if model.text_encoder_2 is not None:
        configs["text_encoder_2"] = json.loads(model.text_encoder_2.config.to_json_string(use_diff=False))
    # Where a component was loaded from (often a temporary folder) says nothing about the model and
    # would make two saves of the same model differ.
    drop = ("_name_or_path", "_use_default_values", "_commit_hash")
    return {c: {k: v for k, v in cfg.items() if k not in drop} for c, cfg in configs.items()}


def save_single_file(model: BaseModel, path: Path, dtype: torch.dtype | None = None,
                     overwrite: bool = False) -> Path:
    """Write ``model`` as an LDM single-file .safetensors checkpoint, whole or not at all."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoracamError(f"{path.name}: single-file checkpoints are written as .safetensors; change the name")
    if path.exists() and not overwrite:
        raise LoracamError(f"{path} already exists; choose another name or allow overwriting it")
    if not path.parent.is_dir():
        raise LoracamError(f"the folder {path.parent} does not exist; create it or choose another path")
    if model.family == "sdxl":
        state = sdxl_to_ldm(model.unet, model.vae, model.text_encoder, model.text_encoder_2)
    else:
        state = diffusers_to_ldm(model.unet, model.vae, model.text_encoder)
    tensors = {k: _for_file(v, dtype) for k, v in state.items()}
    # One metadata key only: safetensors writes the metadata in hash-map order, which changes from
    # one save to the next, so a second key would make the bytes (and A1111's Model hash) differ
    # between two saves of the same model.
    metadata = {CONFIGS_KEY: json.dumps(component_configs(model), sort_keys=True)}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), overwrite=overwrite)
    except FileExistsError:
        raise LoracamError(f"{path} already exists; choose another name or allow overwriting it") from None
    return path


def _for_file(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    # Integer buffers (position_ids) keep their dtype; safetensors wants contiguous CPU tensors.
    t = tensor.detach()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.to("cpu").contiguous()
