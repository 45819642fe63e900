"""What to render: the user's request (a frozen config, loadable from TOML) and its per-image samples."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from loracam.control.units import ControlUnit
from loracam.errors import LoracamError
from loracam.generate.hires import DEFAULT_DENOISING, HiresFix
from loracam.generate.samplers import parse_sampler
from loracam.prompts import LoraRef, extract_networks


@dataclass(frozen=True)
class GenRequest:
    """Everything `loracam gen` takes; each field is also a key of a `--config` TOML file."""

    prompt: str = ""
    negative: str = ""
    base: str | None = None  # None: the built-in toy model
    sampler: str | None = None  # None: the base's family default (DPM++ 2M; Euler on a flow model)
    schedule: str = "Automatic"
    steps: int | None = None  # None: the family's (20; Z-Image Turbo 9, Base 30)
    cfg: float | None = None  # None: the family's (7; Z-Image Turbo 1, Base 5)
    width: int | None = None  # None: the base model's native size
    height: int | None = None
    seed: int = -1  # -1: random; image i of the run gets seed + i, as in A1111
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    denoising: float | None = None  # img2img / inpaint strength (default 0.75), or the hires pass's (0.7)
    init_image: str | None = None
    mask: str | None = None
    mask_blur: int = 4
    lora_dirs: tuple[str, ...] = ()
    # hires fix (A1111's two-pass txt2img): on when a scale or a size is given
    hires_scale: float | None = None
    hires_resize: tuple[int, int] | None = None
    hires_upscaler: str = "Latent"
    hires_steps: int = 0
    upscaler_dirs: tuple[str, ...] = ()  # where upscaler models are found by name
    controlnet: tuple[ControlUnit, ...] = ()  # ControlNet units steering every pass (several add up)
    controlnet_dirs: tuple[str, ...] = ()  # where ControlNet models are found by type, name or hash
    device: str = "auto"
    precision: str = "auto"
    allow_pickle: bool = False
    prediction: str | None = None  # a base's prediction type when its file does not say (v_prediction+ztsnr)
    vae: str | None = None  # a separate VAE file or folder (A1111's SD VAE)
    variant: str | None = None  # Z-Image: turbo | base, when the file's name does not say
    # flow-matching families (Z-Image): the sigma shift (None: the model's scheduler config, 3 on Turbo) and
    # ZImagePipeline's CFG options: cap |guided| at cfg_normalization x |cond| (0: off); no CFG once the step's
    # t = 1 - sigma exceeds cfg_truncation (1: never)
    shift: float | None = None
    cfg_normalization: float = 0.0
    cfg_truncation: float = 1.0

    def __post_init__(self):
        if None in (self.sampler, self.steps, self.cfg):
            from loracam.models.loader import ref_defaults

            sampler, steps, cfg = ref_defaults(self.base, self.variant, self.allow_pickle)
            for name, value in (("sampler", sampler), ("steps", steps), ("cfg", cfg)):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        if self.steps < 1:
            raise LoracamError(f"steps must be at least 1 (got {self.steps})")
        if not math.isfinite(self.cfg):
            raise LoracamError(f"CFG scale must be a number (got {self.cfg})")
        for name, v in (("width", self.width), ("height", self.height)):
            if v is not None and (v < 8 or v % 8):
                raise LoracamError(f"{name} {v} is not a positive multiple of 8; try {max(8, round(v / 8) * 8)}")
        if self.batch_size < 1 or self.batch_count < 1:
            raise LoracamError("batch size and batch count must be at least 1")
        if self.clip_skip < 1:
            raise LoracamError(f"clip skip counts from 1 (got {self.clip_skip})")
        if self.denoising is not None and not 0.0 <= self.denoising <= 1.0:
            raise LoracamError(f"denoising strength must be between 0 and 1 (got {self.denoising})")
        if self.hires is not None and self.init_image is not None:
            raise LoracamError("hires fix is for txt2img; for an init image, upscale it first (loracam upscale)")
        if self.mask is not None and self.init_image is None:
            raise LoracamError("a mask needs an init image to inpaint (--init-image)")
        if self.mask_blur < 0:
            raise LoracamError("mask blur must be 0 or more pixels")
        if self.seed < -1 or self.seed >= 2**32:
            raise LoracamError(f"seed must be -1 (random) or between 0 and {2**32 - 1} (got {self.seed})")
        parse_sampler(self.sampler, self.schedule)  # fails early with the list of valid names
        if self.shift is not None and not (math.isfinite(self.shift) and self.shift > 0):
            raise LoracamError(f"shift must be a positive number (got {self.shift}); Z-Image Turbo uses 3")
        if self.cfg_normalization < 0 or not 0 <= self.cfg_truncation <= 1:
            raise LoracamError("cfg normalization is 0 (off) or more, cfg truncation between 0 and 1 (1: off)")

    @property
    def strength(self) -> float:
        """img2img's denoising strength (A1111's default 0.75)."""
        return 0.75 if self.denoising is None else self.denoising

    @property
    def hires(self) -> HiresFix | None:
        """The hires fix this request asks for, or None."""
        if self.hires_scale is None and self.hires_resize is None:
            return None
        return HiresFix(scale=self.hires_scale, resize=tuple(self.hires_resize) if self.hires_resize else None,
                        upscaler=self.hires_upscaler, steps=self.hires_steps,
                        denoising=DEFAULT_DENOISING if self.denoising is None else self.denoising,
                        upscaler_dirs=tuple(self.upscaler_dirs))


@dataclass(frozen=True)
class Shared:
    """Settings every image of one batch must share (they fix the tensor shapes and the timesteps)."""

    width: int
    height: int
    steps: int
    sampler: str
    schedule: str
    clip_skip: int = 1
    denoising: float | None = None  # set for img2img / inpaint
    mask_blur: int = 4
    hires: HiresFix | None = None  # a second, larger pass (txt2img)
    control: tuple[ControlUnit, ...] = ()  # ControlNet units (their weights may differ per sample)
    shift: float | None = None  # flow families: the sigma shift (None: the model's own)
    cfg_normalization: float = 0.0
    cfg_truncation: float = 1.0


@dataclass(frozen=True)
class Sample:
    """One image: its prompt as typed (LoRA tags included), seed, CFG scale and LoRAs."""

    prompt: str
    negative: str
    seed: int
    cfg: float
    loras: tuple[LoraRef, ...] = field(default=())
    control_weights: tuple[float, ...] = ()  # per ControlNet unit; (): the units' own weights

    @property
    def text(self) -> str:
        return extract_networks(self.prompt)[0]


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """A1111's seed rule: -1 draws a random 32-bit seed once."""
    if seed != -1:
        return seed
    return (rng or random.SystemRandom()).randrange(2**32 - 1)


def samples_of(req: GenRequest, seed: int) -> list[Sample]:
    """The batch_count x batch_size samples of a request, seeds seed, seed+1, ..."""
    _, loras, _ = extract_networks(req.prompt)
    _, neg_loras, _ = extract_networks(req.negative)
    n = req.batch_size * req.batch_count
    return [Sample(req.prompt, req.negative, (seed + i) % 2**32, req.cfg, tuple(loras + neg_loras)) for i in range(n)]


def with_native_size(req: GenRequest, width: int, height: int) -> GenRequest:
    return replace(req, width=req.width or width, height=req.height or height)
