"""Full fine-tuning (``--full``): the whole U-Net (and optionally the text encoder) is trained.

Used to train the toy base model from random weights. It has the same interface as the LoRA network,
so the training loop does not care which it trains; checkpoints are single-file checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loracam.errors import LoracamError


class FullNetwork:
    def __init__(self, model, train_text_encoder: bool):
        self.model = model
        self.train_te = train_text_encoder
        model.unet.requires_grad_(True)
        model.text_encoder.requires_grad_(train_text_encoder)
        model.unet.train()
        model.text_encoder.train(train_text_encoder)

    def parameters(self, component: str | None = None) -> list[torch.nn.Parameter]:
        unet = list(self.model.unet.parameters()) if component in (None, "unet") else []
        te = list(self.model.text_encoder.parameters()) if self.train_te and component in (None, "te") else []
        return unet + te

    def param_groups(self, unet_lr: float, te_lr: float | None) -> list[dict]:
        groups = [{"params": self.parameters("unet"), "lr": unet_lr}]
        if self.train_te:
            groups.append({"params": self.parameters("te"), "lr": te_lr or unet_lr})
        return groups

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"unet.{k}": v for k, v in self.model.unet.state_dict().items()}
        if self.train_te:
            sd.update({f"te.{k}": v for k, v in self.model.text_encoder.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        unet = {k[5:]: v for k, v in sd.items() if k.startswith("unet.")}
        te = {k[3:]: v for k, v in sd.items() if k.startswith("te.")}
        try:
            self.model.unet.load_state_dict(unet, strict=True)
            if self.train_te:
                self.model.text_encoder.load_state_dict(te, strict=True)
        except RuntimeError as exc:
            raise LoracamError(f"the resume state does not fit this model ({str(exc)[:200]})") from None

    def save(self, path: Path, overwrite: bool = False) -> None:
        """A single-file checkpoint at ``path`` and, for the final output, a diffusers folder beside it."""
        from loracam.models.ldm import save_single_file

        target = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
        save_single_file(self.model, target, overwrite=overwrite)
        if "-step" not in path.stem:
            self._save_diffusers(path.with_suffix(""))

    def _save_diffusers(self, folder: Path) -> None:
        from diffusers import StableDiffusionPipeline

        if folder.exists():
            raise LoracamError(f"{folder} already exists; choose another -o")
        tmp = folder.with_name(folder.name + ".partial")
        pipe = StableDiffusionPipeline(**self.model.components())
        pipe.save_pretrained(tmp, safe_serialization=True)
        tmp.rename(folder)
