"""Model families as a table: what loracam knows of each base-model architecture, in one entry.

A family is one ``Family`` in ``FAMILIES`` (ComfyUI's comfy/supported_models.py is the model: one entry per
architecture with its detection, configs, latent format and sampling type). The engine asks the entry instead of
branching on family names: the loader (its pipeline class and config folder), the prompt encoder
(``conditioning``: loracam.prompts.ENCODERS, loracam.train.captions.CAPTIONS), the empty-negative rule, native
sizes, the LoRA family checks and the metadata trained files carry, ``loracam info`` and the web library. So
adding a family is:

1. an entry here: how its files are recognised (single-file tensor names, diffusers pipeline classes, LoRA
   metadata), the config folder loracam ships to build it offline, its denoiser and text encoders, latent format,
   prediction type and sampler family, default and bucket sizes, LoRA prefixes and the metadata other tools read;
2. its tests on a tiny random model built from config (tests never download);
3. code only where the family truly differs: another prompt encoder (SDXL's two CLIPs and size conditioning, a
   Qwen3 chat template), another denoiser call (a flow-matching transformer takes packed latents and a sigma,
   not a U-Net's timestep), another loss (flow matching's velocity instead of noise).

Families loracam recognises but does not run yet are entries too (``status`` "planned" or "refused"), so a file of
one is refused with its family named and what to do, never with a traceback from inside diffusers.

Facts (marker tensors, metadata values, latent scales) are from shared/docs/research/sdxl_flux.md and
families_2026.md: sd-scripts' metadata, diffusers' single-file detection, ComfyUI's model detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from loracam.errors import LoracamError


@dataclass(frozen=True)
class LatentFormat:
    """How the VAE's latent is laid out: channels, and latent = (encoded - shift) * scale."""

    channels: int
    scale: float
    shift: float = 0.0
    downscale: int = 8


@dataclass(frozen=True)
class TextEncoder:
    component: str  # the diffusers component: text_encoder, text_encoder_2
    kind: str  # what it is: clip-l, openclip-bigg, t5-xxl, qwen3-4b, ...
    lora_prefix: str  # its kohya LoRA prefix


@dataclass(frozen=True)
class Family:
    name: str  # what loracam calls it: BaseModel.family, a LoRA file's family
    short: str  # what a person calls it: "SDXL", in lists and the web UI's library
    label: str  # the same in a sentence: "an SDXL model"
    status: str  # supported | planned (recognised, not run yet) | refused (recognised, not for loracam)
    why: str = ""  # for planned and refused: what to do instead
    # recognition: any of these tensor names (after the prefixes single files carry) marks a single file
    file_markers: tuple[str, ...] = ()
    file_prefixes: tuple[str, ...] = ()  # weaker: a layout's prefix, asked when no family's markers are there
    pipelines: tuple[str, ...] = ()  # diffusers model_index.json "_class_name" values
    meta_markers: tuple[str, ...] = ()  # prefixes of ss_base_model_version / modelspec.architecture values
    # what it is made of and how it runs
    config_dir: str | None = None  # the shipped diffusers config folder (loracam/models/configs/)
    pipeline: str = ""  # the diffusers pipeline class loracam loads its files and folders with
    denoiser: str = "unet"  # unet | transformer: the diffusers component that denoises (BaseModel.unet holds it)
    conditioning: str = "clip"  # the prompt encoder (loracam.prompts.ENCODERS): clip | sdxl | qwen3
    zero_empty_negative: bool = False  # an empty negative prompt is zeros, not "" encoded (SDXL in A1111, diffusers)
    text_encoders: tuple[TextEncoder, ...] = ()
    latent: LatentFormat = LatentFormat(4, 0.18215)
    prediction: str = "epsilon"  # epsilon | v_prediction | flow
    sampling: str = "discrete"  # discrete: A1111's samplers on a beta schedule; flow: flow-matching Euler family
    guidance: str = "uncond"  # CFG as u + s (c - u) (A1111, diffusers' SD) | "cond": c + (s - 1) (c - u) (Z-Image)
    default_size: tuple[int, int] = (512, 512)  # width, height
    default_sampler: str = "DPM++ 2M"
    default_steps: int = 20
    default_cfg: float = 7.0  # A1111's scale; a family with variants (Turbo, Base) takes the variant's
    trains: bool = True  # loracam trains LoRAs on it (a supported family may render before it trains)
    train_why: str = ""  # when it does not: what to do instead
    bucket_step: int = 64
    # the files it writes, as other tools read them
    lora_unet_prefix: str = "lora_unet"
    ss_base_model_version: str = ""
    modelspec_architecture: str = ""

    @property
    def supported(self) -> bool:
        return self.status == "supported"

    def refusal(self, name: str) -> str:
        """The message for a file of this family that loracam cannot use, naming the family."""
        return f"{name} is {self.label}; {self.why}"


_NOT_YET = ("this version of loracam runs SD1.x, SDXL and Z-Image bases only ({label} support is on its way); use "
            "an SD1.x, SDXL or Z-Image checkpoint (.safetensors), a diffusers folder of one, or the built-in toy base")

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(
        "sd1", "SD1.x", "an SD1.x model", "supported",
        file_markers=("model.diffusion_model.output_blocks.11.0.skip_connection.weight",
                      "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"),
        pipelines=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
        meta_markers=("sd_v1", "stable-diffusion-v1"),
        config_dir="sd15", pipeline="StableDiffusionPipeline",
        text_encoders=(TextEncoder("text_encoder", "clip-l", "lora_te"),),
        ss_base_model_version="sd_v1", modelspec_architecture="stable-diffusion-v1/lora",
    ),
    Family(
        "sd2", "SD2.x", "an SD2.x model", "refused",
        why="loracam does not run SD2.x (few users left it for SD1.5 finetunes or SDXL); use one of those",
        file_markers=("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight",),
        file_prefixes=("cond_stage_model.model.",),  # OpenCLIP's names: SD2's text encoder
        meta_markers=("sd_v2", "stable-diffusion-v2"),
        text_encoders=(TextEncoder("text_encoder", "openclip-h", "lora_te"),),
        default_size=(768, 768), ss_base_model_version="sd_v2", modelspec_architecture="stable-diffusion-v2-512/lora",
    ),
    Family(
        "sdxl", "SDXL", "an SDXL model (Pony, Illustrious, NoobAI and the like)", "supported",
        file_markers=("conditioner.embedders.1.model.ln_final.weight",
                      "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"),
        file_prefixes=("conditioner.embedders.",),  # SGM's conditioner: SDXL's layout
        pipelines=("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"),
        meta_markers=("sdxl", "stable-diffusion-xl"),
        config_dir="sdxl", pipeline="StableDiffusionXLPipeline", conditioning="sdxl", zero_empty_negative=True,
        text_encoders=(TextEncoder("text_encoder", "clip-l", "lora_te1"),
                       TextEncoder("text_encoder_2", "openclip-bigg", "lora_te2")),
        latent=LatentFormat(4, 0.13025), default_size=(1024, 1024),
        ss_base_model_version="sdxl_base_v1-0", modelspec_architecture="stable-diffusion-xl-v1-base/lora",
    ),
    Family(
        "sdxl-refiner", "SDXL refiner", "the SDXL refiner", "refused",
        why=("the refiner is a second-stage img2img model, not a base to render or train on; use an SDXL base "
             "(finetunes of SDXL need no refiner), and a hires fix or detail pass for the last details"),
        file_markers=("conditioner.embedders.0.model.ln_final.weight",
                      "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"),
        pipelines=("StableDiffusionXLImg2ImgPipeline",),
        latent=LatentFormat(4, 0.13025), default_size=(1024, 1024),
    ),
    Family(
        "flux2", "FLUX.2", "a FLUX.2 model (klein or dev)", "planned", why=_NOT_YET.format(label="FLUX.2 klein"),
        file_markers=("double_stream_modulation_img.lin.weight", "double_stream_modulation_img.linear.weight"),
        pipelines=("Flux2Pipeline", "Flux2KleinPipeline"),
        denoiser="transformer", latent=LatentFormat(32, 1.0), prediction="flow", sampling="flow",
        default_size=(1024, 1024),
    ),
    Family(
        "flux1", "FLUX.1", "a FLUX.1 model (dev or schnell)", "planned", why=_NOT_YET.format(label="FLUX.1"),
        file_markers=("double_blocks.0.img_attn.norm.key_norm.scale",
                      "transformer_blocks.0.attn.norm_added_k.weight"),
        pipelines=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline"),
        meta_markers=("flux1", "flux-1"),
        denoiser="transformer",
        text_encoders=(TextEncoder("text_encoder", "clip-l", "lora_te1"),
                       TextEncoder("text_encoder_2", "t5-xxl", "lora_te3")),
        latent=LatentFormat(16, 0.3611, 0.1159), prediction="flow", sampling="flow", default_size=(1024, 1024),
        ss_base_model_version="flux1", modelspec_architecture="flux-1-dev/lora",
    ),
    Family(
        "zimage", "Z-Image", "a Z-Image model (Turbo or Base)", "supported",
        file_markers=("noise_refiner.0.attention.qkv.weight", "noise_refiner.0.attention.to_q.weight",
                      "cap_embedder.1.weight"),
        pipelines=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
        meta_markers=("zimage", "z-image", "z_image"),
        config_dir="zimage", pipeline="ZImagePipeline", denoiser="transformer", conditioning="qwen3",
        text_encoders=(TextEncoder("text_encoder", "qwen3-4b", "lora_te"),),
        latent=LatentFormat(16, 0.3611, 0.1159), prediction="flow", sampling="flow", guidance="cond",
        default_size=(1024, 1024), default_sampler="Euler", default_steps=9, default_cfg=1.0, bucket_step=32,
        trains=False, train_why=("LoRA training on Z-Image is not in this version of loracam yet (it renders Z-Image "
                                 "and reads and writes its LoRAs); train the LoRA with ai-toolkit or musubi-tuner on "
                                 "Z-Image Base, then use it here with <lora:NAME:W>"),
        lora_unet_prefix="lora_unet", ss_base_model_version="zimage", modelspec_architecture="z-image/lora",
    ),
    Family(
        "sd3", "SD3", "a Stable Diffusion 3 model", "refused",
        why="loracam does not run SD3; for portraits its users pick SDXL, FLUX or Z-Image",
        file_markers=("joint_blocks.0.context_block.attn.qkv.weight",),
        pipelines=("StableDiffusion3Pipeline",), denoiser="transformer", latent=LatentFormat(16, 1.5305, 0.0609),
        prediction="flow", sampling="flow", default_size=(1024, 1024),
    ),
)}

# Prefixes single files put before the denoiser's own names: A1111/civitai checkpoints, ComfyUI's split files
# and ai-toolkit's saves, diffusers' transformer folders.
_DENOISER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "transformer.")


def family_of_checkpoint(keys: Mapping[str, tuple] | set[str]) -> Family | None:
    """The family whose marker tensors a checkpoint holds, or None (not a base model loracam knows)."""
    names = set(keys)
    names |= {k[len(p):] for k in names for p in _DENOISER_PREFIXES if k.startswith(p)}
    found = next((FAMILIES[n] for n in _DETECT_ORDER if any(m in names for m in FAMILIES[n].file_markers)), None)
    return found or next((FAMILIES[n] for n in _DETECT_ORDER
                          if any(k.startswith(FAMILIES[n].file_prefixes) for k in names)), None)  # () matches none


# Where one family's names are another's too: SD2's U-Net has SD1's output_blocks.11 (its OpenCLIP text encoder
# tells it apart), and FLUX.2's blocks have FLUX.1's double_blocks names (its shared modulation tells it apart).
_DETECT_ORDER = ("sd2", "sdxl", "sdxl-refiner", "flux2", "flux1", "zimage", "sd3", "sd1")


def family_of_pipeline(class_name: str | None) -> Family | None:
    """The family of a diffusers folder from its model_index.json's _class_name."""
    return next((f for f in FAMILIES.values() if class_name in f.pipelines), None)


def family_of_metadata(metadata: Mapping[str, str]) -> Family | None:
    """The family a LoRA's or checkpoint's metadata names (kohya's ss_base_model_version, SAI modelspec)."""
    if metadata.get("ss_v2", "").lower() == "true":
        return FAMILIES["sd2"]
    for key in ("ss_base_model_version", "modelspec.architecture"):
        value = metadata.get(key, "").lower()
        for family in FAMILIES.values():
            if value and any(value.startswith(m) for m in family.meta_markers):
                return family
    return None


def require_supported(family: Family, name: str) -> Family:
    """The family, or a LoracamError naming it and saying what to use instead."""
    if not family.supported:
        raise LoracamError(family.refusal(name))
    return family


def short_name(name: str) -> str:
    """A family's name for people ("SDXL"), also for a name the table does not hold."""
    family = FAMILIES.get(name)
    return family.short if family else name


def article(name: str) -> str:
    """The article before a family's short name: an SD1.x, an SDXL, a FLUX.1, a Z-Image."""
    return "an" if short_name(name)[:1] in "SAEIOU" else "a"
