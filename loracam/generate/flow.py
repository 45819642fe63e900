"""Sampling a flow-matching model (Z-Image; FLUX next): the engine's flow path.

What differs from a U-Net on a noise schedule: the latent starts as pure noise and moves along the model's
velocity, x_next = x + (sigma_next - sigma) v, on sigmas from 1 down (shifted by the family's shift, or by mu from
the image's token count where the scheduler shifts dynamically); img2img starts part-way at
x = sigma noise + (1 - sigma) image; the denoiser is a transformer with its own call (DENOISERS). The batch's rows
and AND/scheduling plan are the U-Net path's (loracam.generate.conditioning).

With Euler and a plain prompt this computes what diffusers' ZImagePipeline computes, in the same order of
operations (a test holds it to bit equality): noise in fp32 from each sample's CPU generator, the sigmas
linspace(1, 1/n, n), the pipeline's CFG c + (s - 1)(c - u) in fp32 with its normalisation and truncation, latents
kept in fp32 between steps.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch

from loracam.errors import LoracamError
from loracam.generate.conditioning import CondPlan, Rows
from loracam.generate.request import Sample, Shared
from loracam.generate.samplers import FLOW_SAMPLERS, build_scheduler, flow_sampler


def flow_scheduler(model, shared: Shared, latent_hw: tuple[int, int]):
    """The sampler's flow scheduler with its timesteps set for this size, as the family's pipeline sets them."""
    spec = flow_sampler(shared.sampler, model.spec.short)
    config = dict(model.scheduler_config)
    if shared.shift is not None:  # the user's shift replaces the model's, fixed (not from the image size)
        config |= {"shift": float(shared.shift), "use_dynamic_shifting": False}
    sched = build_scheduler(config, shared.sampler, shared.schedule, FLOW_SAMPLERS)
    n = shared.steps
    accepts = inspect.signature(sched.set_timesteps).parameters
    kwargs = {}
    if "mu" in accepts and config.get("use_dynamic_shifting"):
        kwargs["mu"] = image_mu(config, latent_hw)
    if spec.scheduler == "FlowMatchEulerDiscreteScheduler":
        kwargs["mu"] = image_mu(config, latent_hw)  # the pipeline passes it always; used only when dynamic
        sched.set_timesteps(sigmas=torch.linspace(1.0, 1 / n, n).tolist(), device=model.device, **kwargs)
    else:
        sched.set_timesteps(n, device=model.device, **kwargs)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    return sched


def image_mu(config: dict, latent_hw: tuple[int, int]) -> float:
    """The pipelines' dynamic shift: mu linear in the image's token count (2x2 patches) between the config's
    base and max sequence lengths."""
    seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (top - base) / (max_len - base_len)
    return seq * m + (base - m * base_len)


def model_shift(model, shared: Shared) -> float | None:
    """The shift a render used, for its infotext: the user's, else the model's fixed one; None where the model
    shifts by the image's size (a re-render of the same size shifts the same)."""
    if shared.shift is not None:
        return float(shared.shift)
    config = model.scheduler_config
    return None if config.get("use_dynamic_shifting") else float(config.get("shift", 1.0))


def check_size(model, shared: Shared) -> None:
    step = model.vae_scale_factor * 2  # the transformer's 2x2 patches
    for name, v in (("width", shared.width), ("height", shared.height)):
        if v % step:
            raise LoracamError(f"{name} {v}: {model.spec.short} renders sizes in multiples of {step} "
                               f"(its 2x2 latent patches); try {max(step, round(v / step) * step)}")


def sample_flow(model, shared: Shared, samples: Sequence[Sample], plan: CondPlan, set_rows, init, progress,
                noise: torch.Tensor, gens: list[torch.Generator], init_latents: torch.Tensor | None = None
                ) -> torch.Tensor:
    """One sampling pass of a flow model: the final latents [samples, C, h, w] in fp32."""
    check_size(model, shared)
    sched = flow_scheduler(model, shared, tuple(noise.shape[-2:]))
    timesteps = sched.timesteps
    latents = noise.float()
    mask = None
    if init_latents is not None:
        from loracam.generate.engine import _img2img_timesteps

        timesteps = _img2img_timesteps(sched, shared)
        start = len(sched.timesteps) - len(timesteps)
        sigma = sched.sigmas[start].to(latents.device)
        known = init_latents.float()
        latents = sigma * latents + (1.0 - sigma) * known
        if init is not None and init.mask is not None:
            from loracam.generate.engine import latent_mask

            mask = latent_mask(init.mask, shared.mask_blur, known)
    cfg = [s.cfg for s in samples]
    step_kwargs = {"generator": gens} if "generator" in inspect.signature(sched.step).parameters else {}
    wants_uncond = not all(c == 1.0 and len(plan.conds[i]) == 1 and plan.conds[i][0][1] == 1.0
                           for i, c in enumerate(cfg))
    call = DENOISERS[model.family]
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        step = min(shared.steps - 1, i * shared.steps // total)
        t_norm = (1000 - float(t)) / 1000
        use_uncond = wants_uncond and t_norm <= shared.cfg_truncation  # the pipeline's truncation
        rows = plan.rows_at(step, with_uncond=use_uncond)
        v = _rows(model, call, latents, t, plan, rows, set_rows)
        guided = _guide(v, rows, cfg, use_uncond, shared.cfg_normalization)
        latents = sched.step(guided, t, latents, return_dict=False, **step_kwargs)[0]
        if mask is not None:
            latents = _blend(sched, latents, known, noise.float(), mask, start + i + 1)
        if progress:
            progress(i + 1, total)
    return latents


def _rows(model, call, latents, t, plan: CondPlan, rows: Rows, set_rows) -> torch.Tensor:
    """The velocity of every row, in one denoiser call ordered as the pipeline orders its batch (cond rows, then
    uncond rows): [rows, C, h, w] fp32, negated from the transformer's output as the pipeline does."""
    uncond = set(rows.uncond_row)
    order = [r for r in range(len(rows.sample)) if r not in uncond] + list(rows.uncond_row)
    samples = torch.tensor([rows.sample[r] for r in order])
    if set_rows:
        set_rows("unet", samples)
    ctx = [plan.embeddings[rows.embedding[r]].to(model.dtype) for r in order]
    out = call(model, latents[samples.to(latents.device)], t, ctx)
    v = torch.empty_like(out)
    v[torch.tensor(order, device=out.device)] = out
    return v


def _zimage(model, x: torch.Tensor, t: torch.Tensor, ctx: list[torch.Tensor]) -> torch.Tensor:
    """ZImageTransformer2DModel's call as ZImagePipeline makes it: a list of [C, 1, h, w] latents, t = 1 - sigma,
    the captions' own lengths; the scheduler's velocity is minus its output."""
    dtype = model.unet.dtype
    timestep = (1000 - t.expand(x.shape[0])) / 1000
    xs = list(x.to(dtype).unsqueeze(2).unbind(dim=0))
    out = model.unet(xs, timestep, ctx, return_dict=False)[0]
    return -torch.stack([o.float() for o in out], dim=0).squeeze(2)


# family -> its denoiser's call (model, latents [R, C, h, w], scheduler timestep, contexts) -> velocity fp32
DENOISERS: dict[str, Callable] = {"zimage": _zimage}


def _guide(v: torch.Tensor, rows: Rows, cfg: Sequence[float], use_uncond: bool, normalization: float) -> torch.Tensor:
    """CFG as the family's pipeline computes it, c + (s - 1)(c - u) (s = loracam's CFG scale, the pipeline's
    guidance_scale + 1), with A1111's AND composition u + sum_i w_i s (c_i - u) for several parts; the norm cap
    (cfg_normalization) as the pipeline applies it."""
    if not use_uncond:
        return v[[parts[0][0] for parts in rows.cond_rows]]
    out = []
    for s, parts in enumerate(rows.cond_rows):
        u = v[rows.uncond_row[s]]
        if len(parts) == 1 and parts[0][1] == 1.0:
            c = v[parts[0][0]]
            pred = c + (cfg[s] - 1.0) * (c - u) if cfg[s] != 1.0 else c
        else:
            c = v[parts[0][0]]
            pred = u.clone()
            for r, w in parts:
                pred = pred + (v[r] - u) * (w * cfg[s])
        if normalization > 0:
            top = torch.linalg.vector_norm(c) * float(normalization)
            now = torch.linalg.vector_norm(pred)
            if now > top:
                pred = pred * (top / now)
        out.append(pred)
    return torch.stack(out)


def _blend(sched, latents, known, noise, mask, next_index: int) -> torch.Tensor:
    """Inpainting: outside the mask, the original image noised to the next sigma."""
    sigma = sched.sigmas[min(next_index, len(sched.sigmas) - 1)].to(latents.device)
    return (1 - mask) * (sigma * noise + (1.0 - sigma) * known) + mask * latents
