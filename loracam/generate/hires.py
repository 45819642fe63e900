"""Hires fix: A1111's two-pass txt2img (modules/processing.py), for batches that share its settings.

Pass 1 renders at the request's size. Its result is enlarged to the hires size, either in latent space
(``Latent`` and its interpolation variants) or as pixels by an upscaler (Lanczos, Nearest, or any model
file spandrel reads, e.g. RealESRGAN_x4plus.pth) and encoded again; pass 2 is img2img on that at the
hires denoising strength, with ``hires steps`` (0: the first pass's count) and fresh noise from each
image's own seed. The hires size is floored to the VAE's factor, as A1111's latent arithmetic does.

Infotext (written only when hires is on): ``Denoising strength``, ``Hires upscale`` (or ``Hires resize: WxH``
when a size was given), ``Hires steps`` when not 0, ``Hires upscaler``; ``Size`` stays the first pass's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from loracam.errors import LoracamError

# A1111's latent modes: (interpolation, antialias)
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111's names for the Real-ESRGAN releases, so its infotexts find the user's files by their usual names
A1111_UPSCALERS = {
    "R-ESRGAN 4x+": "RealESRGAN_x4plus",
    "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B",
    "R-ESRGAN 2x+": "RealESRGAN_x2plus",
    "R-ESRGAN General 4xV3": "realesr-general-x4v3",
    "R-ESRGAN AnimeVideo": "realesr-animevideov3",
}
DEFAULT_DENOISING = 0.7  # A1111's hires default (img2img's is 0.75)


@dataclass(frozen=True)
class HiresFix:
    """The second pass's settings; every image of a batch shares them."""

    scale: float | None = 2.0  # "Hires upscale", used when resize is None
    resize: tuple[int, int] | None = None  # "Hires resize" (a side of 0 keeps the aspect)
    upscaler: str = "Latent"
    steps: int = 0  # 0: as many as the first pass
    denoising: float = DEFAULT_DENOISING
    upscaler_dirs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.resize is None and (self.scale is None or self.scale <= 0):
            raise LoracamError("hires fix needs --hires-scale above 0 or --hires-resize WxH")
        if self.resize is not None and (min(self.resize) < 0 or not any(self.resize)):
            raise LoracamError(f"--hires-resize {self.resize[0]}x{self.resize[1]}: give a size (one side may be 0)")
        if self.steps < 0:
            raise LoracamError("--hires-steps must be 0 (as the first pass) or more")
        if not 0.0 <= self.denoising <= 1.0:
            raise LoracamError(f"denoising strength must be between 0 and 1 (got {self.denoising})")

    def size(self, width: int, height: int, factor: int) -> tuple[int, int]:
        """The second pass's size, floored to the VAE's factor."""
        from loracam.generate.upscale import target_size

        w, h = target_size((width, height), self.scale, self.resize)
        w, h = w // factor * factor, h // factor * factor
        if w < factor or h < factor:
            raise LoracamError(f"the hires size {w}x{h} is too small")
        return w, h

    def infotext(self) -> dict:
        return {
            "Denoising strength": f"{self.denoising:g}",
            "Hires upscale": f"{self.scale:g}" if self.resize is None else None,
            "Hires resize": f"{self.resize[0]}x{self.resize[1]}" if self.resize is not None else None,
            "Hires steps": self.steps or None,
            "Hires upscaler": upscaler_name(self.upscaler),
        }


def upscaler_name(ref: str) -> str:
    """How infotext names an upscaler: a model file by its stem (A1111's names), found again by --upscaler-dir."""
    from loracam.models.upscalers import MODEL_SUFFIXES

    return Path(ref).stem if Path(ref).suffix.lower() in MODEL_SUFFIXES else ref


def from_infotext(params: dict[str, str], upscaler_dirs: tuple[str, ...] = ()) -> HiresFix | None:
    """The hires fix an A1111 or loracam infotext describes, or None when it has none."""
    if not any(k in params for k in ("Hires upscale", "Hires resize", "Hires upscaler")):
        return None
    from loracam.generate.infotext import parse_size

    resize = parse_size(params["Hires resize"]) if "Hires resize" in params else None
    return HiresFix(scale=float(params.get("Hires upscale", 2)) if resize is None else None, resize=resize,
                    upscaler=params.get("Hires upscaler", "Latent"), steps=int(params.get("Hires steps", 0)),
                    denoising=float(params.get("Denoising strength", DEFAULT_DENOISING)), upscaler_dirs=upscaler_dirs)


def upscale_latents(model, shared, first: torch.Tensor, hires: HiresFix) -> torch.Tensor:
    """Pass 1's latents, enlarged to the hires size: interpolated, or decoded, upscaled and encoded."""
    from loracam.generate.engine import decode, encode_image, to_pil

    f = model.vae_scale_factor
    w, h = hires.size(shared.width, shared.height, f)
    mode = _latent_mode(hires.upscaler)
    if mode is not None:
        interpolation, antialias = mode
        kwargs = {"align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
        return F.interpolate(first, size=(h // f, w // f), mode=interpolation, antialias=antialias, **kwargs)
    upscaler = _upscaler(hires, model.device)
    images = [upscaler.upscale(im, (w, h)) for im in to_pil(decode(model, first))]
    return torch.cat([encode_image(model, im) for im in images])


def second_pass(shared, hires: HiresFix, model):
    """The Shared of pass 2: hires size and steps, img2img at the hires strength, the same sampler."""
    w, h = hires.size(shared.width, shared.height, model.vae_scale_factor)
    return replace(shared, width=w, height=h, steps=hires.steps or shared.steps, denoising=hires.denoising,
                   hires=None)


def _latent_mode(name: str) -> tuple[str, bool] | None:
    for key, mode in LATENT_MODES.items():
        if key.casefold() == name.strip().casefold():
            return mode
    return None


def _upscaler(hires: HiresFix, device: torch.device):
    from loracam.generate.upscale import load_upscaler

    name = A1111_UPSCALERS.get(hires.upscaler, hires.upscaler)
    try:
        up = load_upscaler(name, device, dirs=tuple(Path(d) for d in hires.upscaler_dirs))
    except LoracamError as exc:
        raise LoracamError(f"hires upscaler: {exc} (latent modes: {', '.join(LATENT_MODES)})") from None
    up.name = hires.upscaler
    return up


def total_steps(steps: int, hires: HiresFix | None) -> int:
    """Sampling steps one image takes, both passes."""
    if hires is None:
        return steps
    return steps + max(1, int((hires.steps or steps) * hires.denoising))
