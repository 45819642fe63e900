"""Render a batch of samples that share size, sampler and steps: txt2img, img2img and inpainting.

The shape of a call follows diffusers' pipelines (encode prompts, prepare latents, timesteps, denoise,
decode), written out here because loracam needs what a pipeline call cannot take: per-sample prompts
with A1111 scheduling and AND, per-sample CFG scales, and per-sample LoRA multipliers in one batch.
With a plain prompt it computes what diffusers' StableDiffusionPipeline computes (a test holds it to that).
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from loracam.generate.conditioning import CondPlan, Rows, build_plan
from loracam.generate.request import Sample, Shared
from loracam.generate.samplers import build_scheduler
from loracam.models import BaseModel
from loracam.prompts import encoder_for

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class InitImages:
    """img2img / inpainting inputs, already at the target size; or, for a hires pass, latents per sample."""

    image: Image.Image | None = None
    mask: Image.Image | None = None  # "L": white is repainted
    latents: torch.Tensor | None = None  # [samples, C, h, w]: img2img starts from these instead of the image
    composite: bool = True  # paste the original back outside the mask (a detail pass does it at full size)


# ---------------------------------------------------------------------------------------------
# LoRA modes: fused when every sample uses the same weights (A1111's speed), per-row hooks otherwise


@contextmanager
def lora_mode(stack, weights: torch.Tensor | None):
    """Apply LoRAs for a batch; yields set_rows(component, sample_index_per_row) or None.

    ``weights`` is [samples, loras, 2] (text encoder, U-Net). Identical rows are fused into the
    weights for the duration (the original tensors are put back after); mixed rows use hooks.
    """
    if stack is None or weights is None or weights.shape[1] == 0:
        yield None
        return
    if bool((weights == weights[:1]).all()):
        with stack.fused(te=weights[0, :, 0].tolist(), unet=weights[0, :, 1].tolist()):
            yield None
        return
    with stack.per_sample() as ctl:
        def set_rows(component: str, samples: torch.Tensor) -> None:
            col = 0 if component == "te" else 1
            ctl.set_rows(component, weights[samples][:, :, col])
        yield set_rows


# ---------------------------------------------------------------------------------------------


def render(
    model: BaseModel,
    shared: Shared,
    samples: Sequence[Sample],
    lora_stack=None,
    lora_weights: torch.Tensor | None = None,
    init: InitImages | None = None,
    progress: Progress | None = None,
    control=None,
) -> list[Image.Image]:
    """Render ``samples`` as one batch and return PIL images (decoded, composited for inpainting).

    ``control`` (a loracam.control.guidance.Control) steers every pass with its ControlNets."""
    with torch.inference_mode():
        size = (shared.width, shared.height)
        guide = None
        if control:  # in hires fix, a unit with no source of its own waits for the second pass
            guide = control.guidance(size, samples, init.image if init else None, skip_own=shared.hires is not None)
        if shared.hires is None:
            latents = render_latents(model, shared, samples, lora_stack, lora_weights, init, progress, guide)
        else:
            from loracam.generate.hires import second_pass, upscale_latents

            first = render_latents(model, replace(shared, hires=None), samples, lora_stack, lora_weights, None,
                                   progress, guide)
            big = upscale_latents(model, shared, first, shared.hires)
            hi = second_pass(shared, shared.hires, model)
            if control:  # the second pass is steered at its own size; a tile unit by each enlarged first pass
                own = [im.resize((hi.width, hi.height), Image.LANCZOS) for im in to_pil(decode(model, first))] \
                    if control.needs_own_image() else None
                guide = control.guidance((hi.width, hi.height), samples, own)
            latents = render_latents(model, hi, samples, lora_stack, lora_weights, InitImages(latents=big),
                                     progress, guide)
        pixels = decode(model, latents)
    images = to_pil(pixels)
    if init is not None and init.mask is not None and init.composite:
        images = [_composite(init, im, shared.mask_blur) for im in images]
    return images


def render_latents(model: BaseModel, shared: Shared, samples: Sequence[Sample], lora_stack=None,
                   lora_weights: torch.Tensor | None = None, init: InitImages | None = None,
                   progress: Progress | None = None, guide=None) -> torch.Tensor:
    """One sampling pass over ``samples``: the final latents, not decoded."""
    with torch.inference_mode(), lora_mode(lora_stack, lora_weights) as set_rows:
        encoder = encoder_for(model, shared.clip_skip)
        te_keys = [tuple(w[:, 0].tolist()) for w in lora_weights] if set_rows else None
        plan = build_plan(
            encoder, [s.prompt for s in samples], [s.negative for s in samples], shared.steps,
            te_keys, (lambda rows: set_rows("te", rows)) if set_rows else None,
            zero_empty_negative=model.spec.zero_empty_negative,
        )
        if model.spec.sampling == "flow":
            return _sample_flow(model, shared, samples, plan, set_rows, init, progress, guide)
        return _sample(model, shared, samples, plan, set_rows, init, progress, guide)


def _sample_flow(model, shared, samples, plan, set_rows, init, progress, guide) -> torch.Tensor:
    from loracam.errors import LoracamError
    from loracam.generate.flow import sample_flow

    if guide is not None:
        raise LoracamError(f"ControlNet on {model.spec.short} is not supported yet; render without --controlnet")
    gens = _generators(samples)
    noise = _noise(model, shared, gens, dtype=torch.float32)
    init_latents = None
    if init is not None:
        init_latents = init.latents if init.latents is not None else encode_image(model, init.image).expand(
            len(samples), -1, -1, -1)
        init_latents = init_latents.to(model.device)
    return sample_flow(model, shared, samples, plan, set_rows, init, progress, noise, gens, init_latents)


def _generators(samples: Sequence[Sample]) -> list[torch.Generator]:
    # CPU generators, one per sample: the same seed gives the same noise on any device and in any
    # batch, which is what makes a batched grid cell equal the same image rendered alone.
    return [torch.Generator("cpu").manual_seed(s.seed) for s in samples]


def _noise(model: BaseModel, shared: Shared, gens: list[torch.Generator], dtype=None) -> torch.Tensor:
    f = model.vae_scale_factor
    shape = (1, model.vae.config.latent_channels, shared.height // f, shared.width // f)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]
    return torch.cat(noise).to(model.device, dtype or model.dtype)


def _sample(model, shared, samples, plan: CondPlan, set_rows, init, progress, guide=None) -> torch.Tensor:
    sched = build_scheduler(model.scheduler_config, shared.sampler, shared.schedule)
    sched.set_timesteps(shared.steps, device=model.device)
    timesteps = sched.timesteps
    gens = _generators(samples)
    noise = _noise(model, shared, gens)
    cfg = torch.tensor([s.cfg for s in samples], device=model.device, dtype=torch.float32)
    inpaint = None
    if init is None:
        latents = noise * sched.init_noise_sigma
    else:
        timesteps = _img2img_timesteps(sched, shared)
        if init.latents is not None:
            init_latents = init.latents.to(model.device, model.dtype)
        else:
            init_latents = encode_image(model, init.image).expand(len(samples), -1, -1, -1)
        latents = sched.add_noise(init_latents, noise, timesteps[:1].repeat(len(samples)))
        if init.mask is not None:
            inpaint = _Inpaint.prepare(model, init, init_latents, noise, shared.mask_blur)
    step_kwargs = {"generator": gens} if "generator" in inspect.signature(sched.step).parameters else {}
    use_uncond = not all(s.cfg == 1.0 and _single_part(plan, i) for i, s in enumerate(samples))
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        step = min(shared.steps - 1, i * shared.steps // total)  # order-2 samplers evaluate twice a step
        rows = plan.rows_at(step, with_uncond=use_uncond)
        x = sched.scale_model_input(latents, t)
        eps = _unet_rows(model, x, t, plan, rows, set_rows, inpaint, guide, i / total)
        guided = _guide(eps, rows, cfg, use_uncond)
        latents = sched.step(guided, t, latents, return_dict=False, **step_kwargs)[0]
        if inpaint is not None and not model.is_inpainting:
            latents = inpaint.blend(sched, latents, timesteps, i)
        if progress:
            progress(i + 1, total)
    return latents


def _single_part(plan: CondPlan, s: int) -> bool:
    return len(plan.conds[s]) == 1 and plan.conds[s][0][1] == 1.0


def _img2img_timesteps(sched, shared: Shared):
    """The last ``denoising x steps`` timesteps, as diffusers' img2img pipelines and A1111 pick them."""
    from loracam.errors import LoracamError

    run = min(int(shared.steps * shared.denoising), shared.steps)
    if run < 1:
        raise LoracamError(
            f"denoising strength {shared.denoising} with {shared.steps} steps runs no step at all; "
            "raise --denoising or --steps"
        )
    start = (shared.steps - run) * sched.order
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(start)
    return sched.timesteps[start:]


def _unet_rows(model, x, t, plan: CondPlan, rows: Rows, set_rows, inpaint, guide=None, frac: float = 0.0
               ) -> torch.Tensor:
    """U-Net noise predictions for every row; rows with different context lengths run separately."""
    samples = torch.tensor(rows.sample, device=x.device)
    x_rows = x[samples]
    x_plain = x_rows  # a ControlNet sees the 4 latent channels, never an inpainting model's extra ones
    if guide is not None:
        uncond = torch.zeros(len(rows.sample), dtype=torch.bool, device=x.device)
        uncond[rows.uncond_row] = True
    if inpaint is not None and model.is_inpainting:
        x_rows = torch.cat([x_rows, inpaint.unet_extra[samples]], dim=1)
    out = torch.empty((len(rows.sample),) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
    by_len: dict[int, list[int]] = {}
    for r, e in enumerate(rows.embedding):
        by_len.setdefault(plan.embeddings[e].shape[0], []).append(r)
    for idx in by_len.values():
        ix = torch.tensor(idx, device=x.device)
        ctx = torch.stack([plan.embeddings[rows.embedding[r]] for r in idx]).to(model.dtype)
        if set_rows:
            set_rows("unet", samples[ix].cpu())
        extra = {}
        added = added_conditioning(model, plan, [rows.embedding[r] for r in idx], x.shape[-2:])
        if added is not None:
            extra["added_cond_kwargs"] = added
        if guide is not None:
            down, mid = guide.residuals(x_plain[ix], t, ctx, samples[ix], uncond[ix], frac, added)
            if down is not None:
                extra |= {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        # .to: a training preview's fp32 LoRA layers on a half-precision U-Net give fp32 out
        out[ix] = model.unet(x_rows[ix], t, encoder_hidden_states=ctx, return_dict=False, **extra)[0].to(out.dtype)
    return out


def added_conditioning(model, plan: CondPlan, embeddings: list[int], latent_hw) -> dict | None:
    """SDXL's extra U-Net inputs for these rows: bigG's pooled vectors and the size ids. The size ids are A1111's
    and diffusers' defaults, original = target = the size rendered (a hires pass's own size), crop (0, 0)."""
    if plan.pooled is None:
        return None
    f = model.vae_scale_factor
    h, w = int(latent_hw[0]) * f, int(latent_hw[1]) * f
    pooled = torch.stack([plan.pooled[e] for e in embeddings]).to(model.dtype)
    ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=model.dtype, device=pooled.device).repeat(len(embeddings), 1)
    return {"text_embeds": pooled, "time_ids": ids}


def _guide(eps: torch.Tensor, rows: Rows, cfg: torch.Tensor, use_uncond: bool) -> torch.Tensor:
    """Classifier-free guidance with A1111's AND composition: u + sum_i (c_i - u) * (w_i * cfg)."""
    if not use_uncond:
        return eps[[parts[0][0] for parts in rows.cond_rows]]
    out = []
    for s, parts in enumerate(rows.cond_rows):
        u = eps[rows.uncond_row[s]]
        if len(parts) == 1 and parts[0][1] == 1.0:
            c = eps[parts[0][0]]
            out.append(u + cfg[s].to(u.dtype) * (c - u))  # diffusers' exact expression
            continue
        acc = u.clone()
        for r, w in parts:
            acc = acc + (eps[r] - u) * (w * cfg[s]).to(u.dtype)
        out.append(acc)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# VAE


def encode_image(model: BaseModel, image: Image.Image) -> torch.Tensor:
    """Latents of an RGB image ([1, 4, h/8, w/8]); the distribution's mean, so it is deterministic."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].to(model.device, model.vae.dtype)
    dist = model.vae.encode(x).latent_dist
    shift = model.vae.config.get("shift_factor") or 0.0  # FLUX.1's VAE (Z-Image) centres its latents
    return ((dist.mean - shift) * model.vae.config.scaling_factor).to(model.dtype)


def decode(model: BaseModel, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1]; a half-precision decode that overflows is redone in fp32, as A1111 does."""
    z = latents / model.vae.config.scaling_factor
    shift = model.vae.config.get("shift_factor")
    if shift:
        z = z + shift
    vae_dtype = model.vae.dtype  # a trainer's previews keep an fp32 VAE beside a half-precision U-Net
    x = model.vae.decode(z.to(vae_dtype), return_dict=False)[0]
    if vae_dtype != torch.float32 and not torch.isfinite(x).all():
        vae32 = model.extra.get("vae_fp32")
        if vae32 is None:
            vae32 = model.extra["vae_fp32"] = copy.deepcopy(model.vae).float()
            model.extra["vae_upcast_note"] = (
                f"the VAE overflowed in {str(vae_dtype).removeprefix('torch.')} (SDXL's does): decoded in fp32 "
                "instead, as A1111 does; --precision bf16, or --vae with an fp16-safe VAE (sdxl-vae-fp16-fix), "
                "avoids the second decode")
        x = vae32.decode(z.float(), return_dict=False)[0]
    return (x / 2 + 0.5).clamp(0, 1)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    arr = pixels.cpu().permute(0, 2, 3, 1).float().numpy()
    arr = (arr * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]


# ---------------------------------------------------------------------------------------------
# inpainting


def blurred_mask(mask: Image.Image, blur: int) -> Image.Image:
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def latent_mask(mask: Image.Image, blur: int, like: torch.Tensor) -> torch.Tensor:
    """The blurred mask at latent size, [samples, 1, h, w] in [0, 1] fp32 on ``like``'s device."""
    h, w = like.shape[-2:]
    m = blurred_mask(mask, blur).resize((w, h), Image.BILINEAR)
    out = torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)[None, None]
    return out.to(like.device).expand(like.shape[0], 1, h, w)


class _Inpaint:
    """Mask state for inpainting: blend known latents back each step (4-channel models) or feed
    mask and masked-image latents as extra U-Net channels (9-channel inpainting models)."""

    def __init__(self, mask_latent, init_latents, noise, unet_extra):
        self.mask_latent = mask_latent
        self.init_latents = init_latents
        self.noise = noise
        self.unet_extra = unet_extra

    @classmethod
    def prepare(cls, model: BaseModel, init: InitImages, init_latents, noise, blur: int) -> "_Inpaint":
        mask = latent_mask(init.mask, blur, init_latents).to(model.dtype)
        h, w = init_latents.shape[-2:]
        extra = None
        if model.is_inpainting:
            keep = np.asarray(init.mask.resize(init.image.size), dtype=np.float32)[..., None] < 127.5
            masked = Image.fromarray((np.asarray(init.image.convert("RGB")) * keep).astype("uint8"))
            masked_latents = encode_image(model, masked).expand(init_latents.shape[0], -1, -1, -1)
            hard = (mask > 0.5).to(model.dtype)
            extra = torch.cat([hard, masked_latents], dim=1)
        return cls(mask, init_latents, noise, extra)

    def blend(self, sched, latents, timesteps, i: int) -> torch.Tensor:
        """Put the original (noised to the next timestep) back outside the mask."""
        known = self.init_latents
        if i < len(timesteps) - 1:
            t_next = timesteps[i + 1 : i + 2].repeat(latents.shape[0])
            known = sched.add_noise(self.init_latents, self.noise, t_next)
        return (1 - self.mask_latent) * known + self.mask_latent * latents


def _composite(init: InitImages, image: Image.Image, blur: int) -> Image.Image:
    """Outside the (blurred) mask the result is the original pixels, as A1111's overlay does."""
    alpha = blurred_mask(init.mask, blur).resize(image.size)
    return Image.composite(image, init.image.convert("RGB").resize(image.size), alpha)
