"""``generate``: a GenRequest in, images with A1111 infotext out; and re-rendering from an infotext."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from loracam import __version__
from loracam.errors import LoracamError
from loracam.generate.engine import InitImages, Progress, render
from loracam.generate.hires import from_infotext as hires_from_infotext
from loracam.generate.images import load_image, save_png
from loracam.generate.infotext import Infotext, format_infotext, parse_lora_hashes, parse_size
from loracam.generate.request import GenRequest, Sample, Shared, resolve_seed, samples_of
from loracam.generate.samplers import parse_sampler, resolved_schedule
from loracam.lora import LoraLibrary, LoraStack
from loracam.models import BaseModel, ModelCache, pick_device, pick_dtype


@dataclass
class Rendered:
    image: Image.Image
    seed: int
    infotext: str
    control_maps: list = field(default_factory=list)  # [H, W, 3] uint8 maps that steered it, saved beside it


@dataclass
class GenResult:
    images: list[Rendered]
    model: BaseModel
    warnings: list[str] = field(default_factory=list)

    def save(self, outdir: Path) -> list[Path]:
        return [save_rendered(r, outdir) for r in self.images]


def save_rendered(r: Rendered, outdir: Path) -> Path:
    """One image as NNNNN-SEED.png with its infotext, its control maps beside it as NNNNN-SEED-controlN.png."""
    from loracam.control.store import save_maps

    path = save_png(r.image, r.infotext, outdir, r.seed)
    save_maps(path, r.control_maps)
    return path


def load_model(req: GenRequest, models: ModelCache) -> BaseModel:
    device = pick_device(req.device)
    return models.get(req.base, device, pick_dtype(req.precision, device), allow_pickle=req.allow_pickle,
                      prediction=req.prediction, vae=req.vae, variant=req.variant)


def native_size(model: BaseModel) -> tuple[int, int]:
    """(width, height) the model was trained at; a U-Net's sample_size is a side or (height, width); a
    transformer family's is its VAE's sample_size (1024 for Z-Image's, 64 for the tiny one's), else the family's."""
    if model.spec.denoiser == "transformer":
        side = model.vae.config.get("sample_size")
        return (side, side) if isinstance(side, int) else model.spec.default_size
    size = model.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    return w * model.vae_scale_factor, h * model.vae_scale_factor


# What a stage above the engine does to each rendered batch before it is kept (loracam.finish.gen: detail passes):
# (images, their samples, the shared settings, the model, the LoRA library, warnings to add to) -> images
AfterBatch = Callable[[list[Rendered], Sequence[Sample], Shared, BaseModel, LoraLibrary, list[str]], list[Rendered]]


def generate(req: GenRequest, models: ModelCache, library: LoraLibrary | None = None,
             progress: Progress | None = None, after: AfterBatch | None = None) -> GenResult:
    """Render a request: batch_count batches of batch_size images, seeds seed, seed+1, ..., each batch through
    ``after`` when given."""
    model = load_model(req, models)
    w, h = native_size(model)
    req = replace(req, width=req.width or w, height=req.height or h)
    library = library or LoraLibrary([Path(d) for d in req.lora_dirs], models.hash_cache)
    shared = shared_of(req)
    init = _init_images(req)
    _check_inpainting(model, init)
    samples = samples_of(req, resolve_seed(req.seed))
    result = GenResult([], model)
    controls = None
    if shared.control:
        from loracam.control.models import ControlNets

        controls = ControlNets([Path(d) for d in req.controlnet_dirs])
    for start in range(0, len(samples), req.batch_size):
        batch = samples[start : start + req.batch_size]
        rendered = render_samples(model, shared, batch, library, init, progress, result.warnings, controls)
        if after is not None:
            rendered = after(rendered, batch, shared, model, library, result.warnings)
        result.images += rendered
    return result


def shared_of(req: GenRequest) -> Shared:
    """What every image of a (sized) request shares in a batch."""
    sampler, schedule = parse_sampler(req.sampler, req.schedule)
    return Shared(req.width, req.height, req.steps, sampler, schedule, req.clip_skip,
                  req.strength if req.init_image else None, req.mask_blur, req.hires, tuple(req.controlnet),
                  req.shift, req.cfg_normalization, req.cfg_truncation)



def with_params(info, extra: dict) -> str:
    """An infotext with ``extra`` keys added before its Version, as A1111 orders extension keys."""
    return format_infotext(info.prompt, info.negative, before_version(info.params, extra))


def before_version(params: dict, extra: dict) -> dict:
    """``params`` with ``extra`` set, a Version key kept last."""
    out = {k: v for k, v in params.items() if k != "Version"}
    out.update(extra)
    if "Version" in params:
        out["Version"] = params["Version"]
    return out


def render_samples(model: BaseModel, shared: Shared, samples: Sequence[Sample], library: LoraLibrary,
                   init: InitImages | None = None, progress: Progress | None = None,
                   warnings: list[str] | None = None, controls=None) -> list[Rendered]:
    """Render samples sharing ``shared`` as one batch, each with its own infotext; ``controls`` (a
    ControlNets library) finds the models of ``shared.control``."""
    names = list(dict.fromkeys(ref.name for s in samples for ref in s.loras))
    files = [library.load(n) for n in names]
    stack = LoraStack.for_model(model, files) if files else None
    weights = torch.zeros(len(samples), len(names), 2)
    for i, s in enumerate(samples):
        for ref in s.loras:
            j = names.index(ref.name)
            weights[i, j, 0] += ref.te  # a LoRA named twice adds up, as A1111 applies both
            weights[i, j, 1] += ref.unet
    control = None
    if shared.control:
        from loracam.control.guidance import Control
        from loracam.control.models import ControlNets

        control = Control(shared.control, controls or ControlNets(), model)
    images = render(model, shared, samples, stack, weights if files else None, init, progress, control)
    if control is not None and warnings is not None:
        warnings += [n for n in control.notes if n not in warnings]
    for note in (model.extra.get("vae_upcast_note"), *(f.note for f in files)):
        if note and warnings is not None and note not in warnings:
            warnings.append(note)
    hashes = {n: library.short_hash(n) for n in names}
    out = []
    size = (shared.width, shared.height)
    maps = [m.image if m else None for m in control.maps(size, init.image if init else None)] if control else []
    for s, im in zip(samples, images):
        params = infotext_params(model, shared, s, {r.name: hashes[r.name] for r in s.loras})
        if control is not None:
            params = before_version(params, control.infotext(s, size))
        out.append(Rendered(im, s.seed, format_infotext(s.prompt, s.negative, params), list(maps)))
    return out


def infotext_params(model: BaseModel, shared: Shared, s: Sample, lora_hashes: dict[str, str]) -> dict:
    """A1111's parameter line, in A1111's key order; a flow model's shift as Forge writes it ("Shift")."""
    flow = model.spec.sampling == "flow"
    shift = None
    if flow:
        from loracam.generate.flow import model_shift
        from loracam.generate.samplers import FLOW_SAMPLERS

        shift = model_shift(model, shared)
    return {
        "Steps": shared.steps,
        "Sampler": shared.sampler,
        "Schedule type": resolved_schedule(shared.sampler, shared.schedule, FLOW_SAMPLERS if flow else None),
        "CFG scale": f"{s.cfg:g}",
        "Shift": f"{shift:g}" if shift is not None else None,
        "CFG normalization": f"{shared.cfg_normalization:g}" if shared.cfg_normalization else None,
        "CFG truncation": f"{shared.cfg_truncation:g}" if shared.cfg_truncation != 1.0 else None,
        "Seed": s.seed,
        "Size": f"{shared.width}x{shared.height}",
        "Model hash": model.short_hash,
        "Model": model.name,
        "VAE hash": model.extra.get("vae_hash"),
        "VAE": model.extra.get("vae"),
        "Denoising strength": f"{shared.denoising:g}" if shared.denoising is not None else None,
        "Mask blur": shared.mask_blur if shared.denoising is not None and shared.mask_blur != 4 else None,
        **(shared.hires.infotext() if shared.hires is not None else {}),
        "Clip skip": shared.clip_skip if shared.clip_skip > 1 else None,
        "Lora hashes": ", ".join(f"{n}: {h}" for n, h in lora_hashes.items()) or None,
        "Noise Schedule": "Zero Terminal SNR" if model.scheduler_config.get("rescale_betas_zero_snr") else None,
        "Version": f"loracam {__version__}",
    }


def _init_images(req: GenRequest) -> InitImages | None:
    if req.init_image is None:
        return None
    size = (req.width, req.height)
    image = load_image(req.init_image, "init image", size)
    mask = load_image(req.mask, "mask", size, mode="L") if req.mask else None
    return InitImages(image, mask)


def _check_inpainting(model: BaseModel, init: InitImages | None) -> None:
    if model.is_inpainting and (init is None or init.mask is None):
        raise LoracamError(f"{model.name} is an inpainting model: give --init-image and --mask")


# ---------------------------------------------------------------------------------------------
# re-rendering from an infotext

BUILTIN_BASES = ("toy", "random:tiny", "random:sd15", "random:tiny-sdxl", "random:sdxl", "random:tiny-zimage",
                 "random:zimage")


def request_from_infotext(info: Infotext, base: str | None, ckpt_dirs: Sequence[Path],
                          models: ModelCache, image_path: Path | None = None, **overrides) -> GenRequest:
    """The GenRequest that reproduces an image, from its infotext (plus the user's overrides); the image's
    own path lets its saved ControlNet maps steer the re-render."""
    p = info.params
    try:
        sampler, schedule = parse_sampler(p.get("Sampler", "Euler a"), p.get("Schedule type", "Automatic"))
        width, height = parse_size(p["Size"]) if "Size" in p else (None, None)
        fields = dict(
            prompt=info.prompt, negative=info.negative, sampler=sampler, schedule=schedule,
            steps=int(p.get("Steps", 20)), cfg=float(p.get("CFG scale", 7)), seed=int(p.get("Seed", -1)),
            width=width, height=height, clip_skip=int(p.get("Clip skip", 1)),
            cfg_normalization=float(p.get("CFG normalization", 0)), cfg_truncation=float(p.get("CFG truncation", 1)),
        )
        if "Shift" in p:  # the shift it ran at, so a re-render on another scheduler config stays the same
            fields["shift"] = float(p["Shift"])
        if "controlnet" not in overrides:  # given (even empty): the caller's units replace the infotext's
            from loracam.control.store import units_from_infotext

            fields["controlnet"] = units_from_infotext(p, image_path)
        hires = hires_from_infotext(p, tuple(overrides.get("upscaler_dirs") or ()))
        if hires is not None:
            fields.update(hires_scale=hires.scale, hires_resize=hires.resize, hires_upscaler=hires.upscaler,
                          hires_steps=hires.steps, denoising=hires.denoising)
        elif "Denoising strength" in p:
            fields["denoising"] = float(p["Denoising strength"])
            if overrides.get("init_image") is None:
                raise LoracamError(
                    "this image was made with img2img/inpainting (it has a Denoising strength): "
                    "give the same --init-image (and --mask) to re-render it"
                )
    except (KeyError, ValueError) as exc:
        raise LoracamError(f"the image's infotext has a malformed value ({exc})") from None
    fields["base"] = base or find_base(p.get("Model"), p.get("Model hash"), ckpt_dirs, models)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return GenRequest(**fields)


def find_base(name: str | None, short_hash: str | None, ckpt_dirs: Sequence[Path], models: ModelCache) -> str:
    """The checkpoint an infotext names: a built-in base, or a file in ``ckpt_dirs`` by hash, then by name."""
    if name in BUILTIN_BASES:
        return name
    candidates = [f for d in ckpt_dirs if Path(d).is_dir() for f in sorted(Path(d).iterdir())
                  if f.suffix.lower() in (".safetensors", ".ckpt")]
    if short_hash:
        for f in candidates:
            if models.hash_cache.sha256(f)[:10] == short_hash.lower():
                return str(f)
    for f in candidates:
        if f.stem == name:
            return str(f)
    where = ", ".join(map(str, ckpt_dirs)) or "no --ckpt-dir given"
    raise LoracamError(
        f"the image was made with model {name!r} (hash {short_hash or 'unknown'}), which is not found "
        f"({where}); pass --base PATH, or --ckpt-dir with the folder that holds it"
    )


def check_lora_hashes(info: Infotext, library: LoraLibrary) -> list[str]:
    """Warnings for LoRAs whose file differs from the one the image was made with."""
    out = []
    for name, h in parse_lora_hashes(info.get("Lora hashes")).items():
        mine = library.short_hash(name)
        if not mine.startswith(h.lower()) and not h.lower().startswith(mine):
            out.append(f"LoRA {name!r} in your LoRA folders (hash {mine}) is not the file the image was "
                       f"made with (hash {h}); the result will differ")
    return out
