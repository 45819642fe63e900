"""A loaded base model: the diffusers components loracam uses, plus what infotext needs to say about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class BaseModel:
    """A base model of one family (``spec``: its entry in loracam/models/families.py), its components on one
    device, and its identity for infotext. SDXL has a second text encoder and tokenizer; SD1.x has None there.

    The components are shared by every job that uses the model and must never be mutated in place:
    LoRAs patch them temporarily and restore them exactly (see loracam.lora).
    """

    name: str  # infotext "Model": file stem, folder name, hub id or "random:tiny"
    ref: str  # the reference the user gave, resolved (absolute path, hub id, random:*)
    family: str  # a key of FAMILIES: "sd1", "sdxl"
    unet: Any  # the denoiser: a U-Net, or a diffusion transformer for the families that have one (Z-Image)
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    path: Path | None = None  # the checkpoint file, when the model came from one
    sha256: str | None = None
    extra: dict = field(default_factory=dict)
    text_encoder_2: Any = None
    tokenizer_2: Any = None

    @property
    def spec(self):
        """The family's table entry."""
        from loracam.models.families import FAMILIES

        return FAMILIES[self.family]

    @property
    def text_encoders(self) -> list[Any]:
        """Every text encoder, in the family's order (CLIP-L, then bigG for SDXL)."""
        return [te for te in (self.text_encoder, self.text_encoder_2) if te is not None]

    def modules(self) -> list[Any]:
        """Every weight-holding component: denoiser, VAE, text encoders."""
        return [self.unet, self.vae, *self.text_encoders]

    @property
    def short_hash(self) -> str | None:
        """A1111's "Model hash": the first 10 hex of the checkpoint's sha256."""
        return self.sha256[:10] if self.sha256 else None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def is_inpainting(self) -> bool:
        return self.spec.denoiser == "unet" and self.unet.config.in_channels == 9

    @property
    def variant(self):
        """The family's variant this checkpoint is (Z-Image Turbo or Base), or None for families without."""
        from loracam.models.zimage import VARIANTS

        return VARIANTS.get(self.extra.get("variant", ""))

    @property
    def default_steps(self) -> int:
        return self.variant.steps if self.variant else self.spec.default_steps

    @property
    def default_cfg(self) -> float:
        return self.variant.cfg if self.variant else self.spec.default_cfg

    def components(self) -> dict[str, Any]:
        """Keyword arguments for the family's diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline)
        built on these components."""
        from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

        if self.spec.denoiser == "transformer":
            return {"transformer": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                    "tokenizer": self.tokenizer,
                    "scheduler": FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)}
        if self.family == "sdxl":
            return {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                    "text_encoder_2": self.text_encoder_2, "tokenizer": self.tokenizer, "tokenizer_2": self.tokenizer_2,
                    "scheduler": EulerDiscreteScheduler.from_config(self.scheduler_config)}
        return {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "scheduler": PNDMScheduler.from_config(self.scheduler_config),
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
