"""Full fine-tuning (``--full``): the whole U-Net (and optionally the text encoders: both of SDXL's, as sd-scripts'
sdxl_train with --train_text_encoder) is trained.

Used to train the toy base model from random weights. It has the same interface as the LoRA network,
so the training loop does not care which it trains; checkpoints are single-file checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loracam.errors import LoracamError
from loracam.models.families import FAMILIES

TE_KEYS = ("te", "te2")  # state-dict prefixes of the first and second text encoder


class FullNetwork:
    def __init__(self, model, train_text_encoder: bool):
        self.model = model
        self.train_te = train_text_encoder
        model.unet.requires_grad_(True)
        model.unet.train()
        for te in model.text_encoders:
            te.requires_grad_(train_text_encoder)
            te.train(train_text_encoder)

    def _encoders(self) -> list[tuple[str, torch.nn.Module]]:
        return list(zip(TE_KEYS, self.model.text_encoders)) if self.train_te else []

    def parameters(self, component: str | None = None) -> list[torch.nn.Parameter]:
        """The trained weights: component None (all), "unet", "te" or "te2" (SDXL's second encoder)."""
        unet = list(self.model.unet.parameters()) if component in (None, "unet") else []
        te = [p for key, m in self._encoders() if component in (None, key) for p in m.parameters()]
        return unet + te

    def param_groups(self, unet_lr: float, te_lr: float | None = None, te2_lr: float | None = None) -> list[dict]:
        """As the LoRA network's: the U-Net at unet_lr, each encoder at its own rate (te2 defaults to te's)."""
        te_lr = unet_lr if te_lr is None else te_lr
        groups = [{"params": self.parameters("unet"), "lr": float(unet_lr), "name": "unet"},
                  {"params": self.parameters("te"), "lr": float(te_lr), "name": "te"},
                  {"params": self.parameters("te2"), "lr": float(te_lr if te2_lr is None else te2_lr), "name": "te2"}]
        return [g for g in groups if g["params"]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"unet.{k}": v for k, v in self.model.unet.state_dict().items()}
        for key, te in self._encoders():
            sd.update({f"{key}.{k}": v for k, v in te.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")}

        try:
            self.model.unet.load_state_dict(part("unet"), strict=True)
            for key, te in self._encoders():
                te.load_state_dict(part(key), strict=True)
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
        import diffusers

        if folder.exists():
            raise LoracamError(f"{folder} already exists; choose another -o")
        tmp = folder.with_name(folder.name + ".partial")
        pipe = getattr(diffusers, FAMILIES[self.model.family].pipeline)(**self.model.components())
        pipe.save_pretrained(tmp, safe_serialization=True)
        tmp.rename(folder)
