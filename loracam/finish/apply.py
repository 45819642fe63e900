"""``loracam detail``: detail passes on finished images, each remade with the model and settings its infotext names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from loracam.errors import LoracamError
from loracam.finish.detail import DetailPass, run_passes
from loracam.finish.detect import Detectors
from loracam.finish.extras import image_files, open_source, save_free
from loracam.generate.request import Sample, Shared
from loracam.io import writable_dir


def detail_files(inputs: Sequence[Path], passes: Sequence[DetailPass], output: Path, models, prompt: str | None = None,
                 negative: str = "", seed: int = 0, base: str | None = None, ckpt_dirs: tuple = (),
                 lora_dirs: tuple = (), device: str | None = None,
                 controlnet_dirs: tuple = ()) -> list[tuple[Path, list[str]]]:
    """Every image through ``passes``; all are read and checked before the first is rendered."""
    from loracam.generate.api import load_model
    from loracam.lora import LoraLibrary

    jobs = [_job(f, prompt, negative, seed, base, ckpt_dirs, lora_dirs, device, models) for f in image_files(inputs)]
    out_dir = writable_dir(output)
    detectors, done = Detectors(), []
    from loracam.control.models import ControlNets

    controls = ControlNets([Path(d) for d in controlnet_dirs])
    for path, image, text, req, info in jobs:
        model = load_model(req, models)
        library = LoraLibrary([Path(d) for d in req.lora_dirs], models.hash_cache)
        made, shared = _made(req, model, image.size)
        result = run_passes(image, made, shared, passes, model, library, detectors, path.name, controls)
        text = {**text, "parameters": _infotext(info, req, result.params)}
        done.append((save_free(out_dir, path.stem, result.image, text), result.notes))
    return done


def _job(path: Path, prompt, negative, seed, base, ckpt_dirs, lora_dirs, device, models):
    from loracam.generate import GenRequest
    from loracam.generate.api import request_from_infotext
    from loracam.generate.infotext import parse_infotext

    image, text = open_source(path)
    overrides = dict(lora_dirs=tuple(map(str, lora_dirs)) or None, device=device)
    if text.get("parameters"):
        info = parse_infotext(text["parameters"])
        # controlnet=(): the image's own ControlNets made it; the passes bring theirs
        req = request_from_infotext(info, base, [Path(d) for d in ckpt_dirs], models, controlnet=(),
                                    **{k: v for k, v in overrides.items() if v is not None})
        return path, image, text, req, info
    if prompt is None:
        raise LoracamError(f"{path.name} has no generation parameters (no infotext); give --prompt (and --negative, "
                           "--seed, --base) to detail it")
    req = GenRequest(prompt=prompt, negative=negative, seed=seed, base=base,
                     **{k: v for k, v in overrides.items() if v is not None})
    return path, image, text, req, None


def _made(req, model, size: tuple[int, int]) -> tuple[Sample, Shared]:
    """What the passes inherit: the request's settings, at the size it was rendered at (its infotext's, else the
    model's native area at the image's aspect)."""
    from loracam.generate.api import shared_of

    if not (req.width and req.height):
        width, height = _native_aspect(model, size)
        req = replace(req, width=width, height=height)
    return Sample(req.prompt, req.negative, req.seed, req.cfg), shared_of(req)


def _native_aspect(model, size: tuple[int, int]) -> tuple[int, int]:
    """For an image with no record of its size: the model's native area at the image's aspect."""
    from loracam.generate.api import native_size

    nw, nh = native_size(model)
    f = model.vae_scale_factor
    k = (nw * nh / (size[0] * size[1])) ** 0.5
    return max(f, round(size[0] * k / f) * f), max(f, round(size[1] * k / f) * f)


def _infotext(info, req, params: dict) -> str:
    from loracam.generate.api import with_params
    from loracam.generate.infotext import Infotext

    if info is None:
        info = Infotext(req.prompt, req.negative, {"Seed": str(req.seed)})
    return with_params(info, params)
