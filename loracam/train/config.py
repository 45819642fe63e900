"""What ``loracam train`` takes (a frozen config, loadable from TOML) and the subject presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal

from loracam.errors import LoracamError


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``loracam train``; each is also a key of a ``--config`` TOML file."""

    dataset: str = ""
    output: str = ""
    base: str | None = None
    subject: str | None = None  # a preset: face, garment, shoes, person, style
    # data (kohya semantics)
    resolution: tuple[int, int] | None = None  # width, height; None: the dataset's (prep's) or 512x512
    batch_size: int = 1
    grad_accum: int = 1
    epochs: int | None = None  # max_train_epochs: wins over max_steps, as in sd-scripts
    max_steps: int | None = None  # None: the preset's rule, else sd-scripts' default 1600
    bucket_no_upscale: bool = True
    shuffle_caption: bool = False
    keep_tokens: int = 1
    flip: bool = False
    prior_loss_weight: float = 1.0
    caption_dropout: float = 0.0  # sd-scripts' caption_dropout_rate (0.1 when training a base for CFG)
    bucket_step: int | None = None  # sd-scripts' bucket_reso_steps; None: 64, or 32 for sizes like 64x96
    clip_skip: int = 1
    # network
    rank: int | None = None
    alpha: float | None = None
    conv_dim: int | None = None
    conv_alpha: float | None = None
    train_text_encoder: bool | None = None
    targets: Literal["kohya", "attention"] | None = None
    # optimisation
    optimizer: str = "AdamW"
    lr: float | None = None  # U-Net learning rate
    te_lr: float | None = None  # text-encoder learning rate (default: the preset's; without one the U-Net's)
    te2_lr: float | None = None  # SDXL's second text encoder (bigG); None: as te_lr
    prediction: str | None = None  # the base's prediction when its file lacks v_pred/ztsnr markers (as gen's)
    lr_scheduler: str | None = None
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    noise_offset: float = 0.0
    min_snr_gamma: float | None = None
    seed: int = 0
    # speed and memory
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    channels_last: bool = True
    device: str = "auto"
    deterministic: bool = True  # CUDA: deterministic kernels, so a resumed run equals an uninterrupted one
    # outputs
    save_every_steps: int | None = None
    save_every_epochs: int | None = None
    keep_states: int = 2  # resume states kept on disk (each checkpoint's LoRA file is always kept)
    preview_every: int | None = None
    preview_prompts: tuple[str, ...] = ()
    preview_steps: int = 20
    preview_sampler: str = "Euler a"
    preview_seed: int = 1234
    # checkpoint choice (face subjects)
    select: Literal["last", "best", "average-top-k"] = "last"
    select_k: int = 3
    identity_images: int = 4
    # full fine-tuning
    full: bool = False
    resume: bool = False

    def __post_init__(self):
        checks = [
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.grad_accum >= 1, "gradient accumulation must be at least 1"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.rank is None or self.rank >= 1, "--rank must be at least 1"),
            (self.alpha is None or self.alpha > 0, "--alpha must be positive"),
            (self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), "--lr must be a positive number"),
            (self.save_every_steps is None or self.save_every_steps >= 1, "--save-every must be at least 1"),
            (self.select_k >= 1, "select_k must be at least 1"),
            (self.clip_skip >= 1, "clip skip counts from 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise LoracamError(message)
        if self.resolution is not None and (self.resolution[0] % 32 or self.resolution[1] % 32):
            raise LoracamError(f"--resolution {self.resolution[0]}x{self.resolution[1]}: use multiples of 64 "
                               "(or 32 for small models such as the toy base)")
        if self.bucket_step is not None and (self.bucket_step < 8 or self.bucket_step % 8):
            raise LoracamError(f"--bucket-step {self.bucket_step}: use a multiple of 8 (64 is sd-scripts' default)")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise LoracamError(f"--caption-dropout {self.caption_dropout}: give a share from 0 up to (not) 1")
        if self.subject is not None and self.subject not in PRESETS:
            raise LoracamError(f"unknown subject preset {self.subject!r}; use one of {', '.join(PRESETS)}")


@dataclass(frozen=True)
class Preset:
    """Defaults for a kind of subject, each chosen for a reason (see PRESETS)."""

    rank: int
    alpha: float
    lr: float
    te_lr: float | Literal["unet"] | None  # None: the text encoder stays frozen; "unet": at the U-Net's rate
    targets: str
    lr_scheduler: str
    steps_per_image: int  # max_steps = steps_per_image x training images, clamped to [min_steps, max_steps]
    min_steps: int
    max_steps: int
    recommended_weight: float
    asked_te_lr: float | None = None  # the text encoder's rate when a preset that keeps it frozen is asked to train it


# The defaults, and why (anchors.md, the NGA guide):
# - face: FaceChain's recipe, which is what makes a portrait LoRA "look like me" without learning the
#   photos' backgrounds: rank 4, attention-only, frozen text encoder, lr 1.5e-4 with cosine decay, about
#   200 steps per photo. Capped at 1600 (sd-scripts' default) since the identity score peaks earlier;
#   alpha = rank (scale 1), as diffusers' example scripts train.
# - garment / shoes: the NGA guide trains part LoRAs with reg images for 4000+ steps and wears them at
#   0.4-0.5; the text encoder learns the trigger at half the U-Net rate (EasyPhoto's ratio). Rank 16 /
#   alpha 8 keeps the pattern detail a rank-4 LoRA blurs; shoes are smaller and need less (rank 8).
# - person: a whole person (face + body + clothes) needs more capacity than a face and the text encoder.
# - style: styles are broad: rank 32, frozen text encoder so the trigger does not absorb content words.
PRESETS: dict[str, Preset] = {
    "face": Preset(4, 4.0, 1.5e-4, None, "attention", "cosine", 200, 400, 1600, 0.9),
    "garment": Preset(16, 8.0, 1e-4, 5e-5, "kohya", "cosine", 200, 4000, 6000, 0.5),
    "shoes": Preset(8, 4.0, 1e-4, 5e-5, "kohya", "cosine", 200, 3000, 5000, 0.5),
    "person": Preset(16, 8.0, 1e-4, 5e-5, "kohya", "cosine", 200, 1500, 3000, 0.8),
    "style": Preset(32, 16.0, 1e-4, None, "kohya", "cosine", 100, 1000, 3000, 0.6),
}
# SDXL (shared/docs/research/sdxl_flux.md s1.4). sd-scripts' SDXL LoRA example trains dim 32 / alpha 16 at 1e-4 with
# both text encoders at 1e-5 and calls U-Net-only training "highly recommended" for SDXL: every preset keeps the
# encoders frozen (which also lets their outputs be cached) and trains them at 1e-5 when asked. Ranks: dim 32 for the
# broad subjects, 16 for a face and shoes (kohya's 8 GB advice is dim 4-8; 16 keeps a face's detail at 1024 px).
# Steps: SDXL at 1024 px sees 4x the pixels per step; the SD1.5 rules are kept, halved for the face, whose identity
# peaks early on SDXL in users' reports. Nothing here was measured on a real SDXL base: there is none offline.
SDXL_PRESETS: dict[str, Preset] = {
    "face": Preset(16, 8.0, 1e-4, None, "kohya", "cosine", 100, 400, 1200, 0.9, 1e-5),
    "garment": Preset(32, 16.0, 1e-4, None, "kohya", "cosine", 200, 3000, 5000, 0.6, 1e-5),
    "shoes": Preset(16, 8.0, 1e-4, None, "kohya", "cosine", 200, 2000, 4000, 0.6, 1e-5),
    "person": Preset(32, 16.0, 1e-4, None, "kohya", "cosine", 200, 1500, 3000, 0.8, 1e-5),
    "style": Preset(32, 16.0, 1e-4, None, "kohya", "cosine", 100, 1000, 3000, 0.6, 1e-5),
}
PRESETS_BY_FAMILY: dict[str, dict[str, Preset]] = {"sd1": PRESETS, "sdxl": SDXL_PRESETS}

# sd-scripts' defaults: the text encoder is trained too (network_train_unet_only is off), and its
# text_encoder_lr falls back to learning_rate: kohya's 264 modules on SD1.5, 72 of them in the text encoder.
GENERIC = Preset(4, 1.0, 1e-4, "unet", "kohya", "constant", 0, 0, 1600, 1.0)


@dataclass(frozen=True)
class Resolved:
    """The config with every default filled in (saved next to the output)."""

    cfg: TrainConfig
    preset: Preset
    train_text_encoder: bool
    te_lr: float | None
    lr_scale: float = 1.0  # the factor put on a rate taken from the preset; 1.0 when every rate was given


def resolve(cfg: TrainConfig, lr_scale: float = 1.0, family: str = "sd1") -> Resolved:
    """Fill the unset network/optimisation fields from the family's subject preset (or sd-scripts' defaults).

    ``lr_scale`` multiplies the learning rates taken from the preset (not the ones the user gave):
    the presets are SD1.5's and SDXL's, and a base may need others (models.preset_lr_scale).
    """
    p = PRESETS_BY_FAMILY.get(family, PRESETS).get(cfg.subject or "", GENERIC)
    # A full fine-tune leaves the text encoder alone unless asked, as sd-scripts' fine_tune.py does.
    default_te = p.te_lr is not None and not cfg.full
    train_te = cfg.train_text_encoder if cfg.train_text_encoder is not None else default_te
    lr = cfg.lr if cfg.lr is not None else p.lr * lr_scale
    scaled_te = train_te and cfg.te_lr is None and isinstance(p.te_lr, float)  # the preset's own te rate
    te_lr = cfg.te_lr if cfg.te_lr is not None else (_te_rate(p, lr) * (lr_scale if scaled_te else 1.0)
                                                     if train_te else None)
    filled = replace(
        cfg,
        rank=cfg.rank or p.rank,
        alpha=cfg.alpha if cfg.alpha is not None else (p.alpha if cfg.rank is None else float(cfg.rank)),
        lr=lr,
        targets=cfg.targets or p.targets,
        lr_scheduler=cfg.lr_scheduler or p.lr_scheduler,
        train_text_encoder=train_te,
        te_lr=te_lr,
    )
    from_preset = cfg.lr is None or scaled_te
    return Resolved(filled, p, train_te, te_lr, lr_scale if from_preset else 1.0)


def _te_rate(p: Preset, unet_lr: float) -> float:
    """The text encoder's rate before a base's scale: the preset's, the U-Net's, or half of it (EasyPhoto's
    ratio) for a preset that keeps the text encoder frozen unless asked."""
    if p.te_lr == "unet":
        return unet_lr
    if p.te_lr is None and p.asked_te_lr is not None:
        return p.asked_te_lr
    return p.te_lr if p.te_lr is not None else unet_lr / 2


def preset_steps(preset: Preset, train_images: int) -> int:
    """The preset's step rule: steps_per_image x images, clamped; sd-scripts' 1600 without a preset."""
    if preset.steps_per_image == 0:
        return preset.max_steps
    return max(preset.min_steps, min(preset.max_steps, preset.steps_per_image * train_images))


def bucket_step(cfg: TrainConfig, resolution: tuple[int, int]) -> int:
    """sd-scripts' 64 unless given or the resolution is not a multiple of it (64x96 buckets in steps of 32)."""
    from loracam.data.buckets import default_step

    return cfg.bucket_step if cfg.bucket_step is not None else default_step(resolution)


def config_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig)]
