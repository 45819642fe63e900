"""The command line: parses arguments and calls the engine; no logic of its own lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from loracam.cli_control import COMMANDS as CONTROL_COMMANDS
from loracam.cli_finish import COMMANDS as FINISH_COMMANDS, DETAIL_HELP, detail_passes
from loracam.cli_judge import COMMANDS as JUDGE_COMMANDS
from loracam.cli_studio import studio_app
from loracam.cli_tune import COMMANDS as TUNE_COMMANDS
from loracam.cli_submit import broker_option, sent_to_workers, studio_option
from loracam.cli_web import COMMANDS as WEB_COMMANDS
from loracam.cli_worker import COMMANDS as WORKER_COMMANDS
from loracam.cli_util import StepBar, asdict, parse_size, services, user_errors
from loracam.control.units import CONTROLNET_HELP, from_flags
from loracam.errors import LoracamError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="loracam: a LoRA photo studio. Prepare photos, train LoRAs, compose, grid, finish.")


PREDICTION_HELP = ("For a base whose file lacks the v_pred/ztsnr markers: epsilon, v_prediction or "
                   "v_prediction+ztsnr (NoobAI v-pred).")


@app.command()
@user_errors
def gen(
    prompt: Optional[str] = typer.Argument(None, help="The prompt, with <lora:NAME:W> tags."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt."),
    base: Optional[str] = typer.Option(None, "--base", help="Checkpoint file, diffusers folder, hub id, random:tiny, toy."),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir", help="Folder with LoRA files (repeatable)."),
    batch_count: Optional[int] = typer.Option(None, "-n", "--batch-count", help="Batches to render one after another."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images rendered together per batch."),
    seed: Optional[int] = typer.Option(None, "--seed", help="-1 for random; image i gets seed + i."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help='A1111 sampler name, e.g. "DPM++ 2M Karras".'),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Schedule type: Automatic, Karras, Exponential..."),
    steps: Optional[int] = typer.Option(None, "--steps"),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="CFG scale (A1111's: 1 is none; Z-Image Turbo 1, Base 5)."),
    shift: Optional[float] = typer.Option(None, "--shift", help="Flow models: the sigma shift (Z-Image Turbo: 3)."),
    cfg_normalization: Optional[float] = typer.Option(None, "--cfg-normalization",
                                                      help="Z-Image: cap the guided norm at N x the prompt's (0: off)."),
    cfg_truncation: Optional[float] = typer.Option(None, "--cfg-truncation",
                                                   help="Z-Image: no CFG once t = 1 - sigma passes this (1: never)."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Z-Image: turbo or base, when the name does not say."),
    size: Optional[str] = typer.Option(None, "--size", help="WIDTHxHEIGHT, multiples of 8."),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip"),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="img2img / inpainting source image."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting mask: white is repainted."),
    denoising: Optional[float] = typer.Option(None, "--denoising", help="img2img strength, 0-1."),
    mask_blur: Optional[int] = typer.Option(None, "--mask-blur"),
    hires_scale: Optional[float] = typer.Option(None, "--hires-scale", help="Hires fix: upscale by (A1111's 2)."),
    hires_resize: Optional[str] = typer.Option(None, "--hires-resize", help="Hires fix: to WIDTHxHEIGHT instead."),
    hires_upscaler: Optional[str] = typer.Option(None, "--hires-upscaler",
                                                 help="Latent (default), Latent (bicubic), ..., Lanczos, an upscaler file"),
    hires_steps: Optional[int] = typer.Option(None, "--hires-steps", help="Second-pass steps (0: as the first)."),
    upscaler_dir: Optional[List[Path]] = typer.Option(None, "--upscaler-dir", help="Where upscalers are found by name."),
    detail: Optional[List[str]] = typer.Option(None, "--detail", help=DETAIL_HELP),
    detail_denoising: float = typer.Option(0.4, "--detail-denoising", help="Detail passes' denoising strength."),
    detail_confidence: float = typer.Option(0.3, "--detail-confidence", help="Detail passes' detection threshold."),
    detail_padding: Optional[int] = typer.Option(None, "--detail-padding", help="Pixels around a region (32 at 512)."),
    detail_mask_blur: Optional[int] = typer.Option(None, "--detail-mask-blur", help="Mask blur (4 at 512)."),
    controlnet: Optional[List[str]] = typer.Option(None, "--controlnet", help=CONTROLNET_HELP),
    control_mode: Optional[str] = typer.Option(None, "--control-mode",
                                               help='Balanced, "My prompt is more important", "ControlNet is more important".'),
    resize_mode: Optional[str] = typer.Option(None, "--resize-mode",
                                              help="Just Resize, Crop and Resize (default), Resize and Fill."),
    controlnet_dir: Optional[List[Path]] = typer.Option(None, "--controlnet-dir", help="Folder with ControlNet models."),
    detail_controlnet: Optional[List[str]] = typer.Option(None, "--detail-controlnet",
                                                          help="TYPE[:WEIGHT[:START:END]] for the Nth --detail pass "
                                                               "(on its own region), or none."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32, fp16, bf16."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow .ckpt checkpoints (loaded weights-only)."),
    vae: Optional[Path] = typer.Option(None, "--vae", help="A separate VAE file or folder (sdxl-vae-fp16-fix...)."),
    prediction: Optional[str] = typer.Option(None, "--prediction", help=PREDICTION_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of gen options; flags override it."),
    from_image: Optional[Path] = typer.Option(None, "--from", help="Re-render a PNG from its infotext."),
    ckpt_dir: Optional[List[Path]] = typer.Option(None, "--ckpt-dir", help="Where --from looks for the image's model."),
    output: Path = typer.Option(Path("outputs"), "-o", "--output", help="Output folder (files are never overwritten)."),
):
    """Render images: txt2img, img2img (--init-image) or inpainting (--mask), PNGs with A1111 infotext."""
    from loracam.config import from_dict, read_toml
    from loracam.finish.gen import gen_config, generate, request_from_infotext
    from loracam.generate import GenRequest, read_png_infotext
    from loracam.generate.api import check_lora_hashes
    from loracam.io import check_writable_dir
    from loracam.lora import LoraLibrary

    width, height = parse_size(size)
    flags = dict(
        prompt=prompt, negative=negative, base=base, batch_count=batch_count, batch_size=batch_size,
        seed=seed, sampler=sampler, schedule=schedule, steps=steps, cfg=cfg, width=width, height=height,
        shift=shift, cfg_normalization=cfg_normalization, cfg_truncation=cfg_truncation, variant=variant,
        clip_skip=clip_skip, init_image=str(init_image) if init_image else None,
        mask=str(mask) if mask else None, denoising=denoising, mask_blur=mask_blur, device=device,
        precision=precision, allow_pickle=allow_pickle or None, vae=str(vae) if vae else None,
        prediction=prediction, lora_dirs=tuple(map(str, lora_dir)) if lora_dir else None, **hires_flags(
            hires_scale, hires_resize, hires_upscaler, hires_steps, upscaler_dir),
        **control_flags(controlnet, control_mode, resize_mode, controlnet_dir),
    )
    flags = {k: v for k, v in flags.items() if v is not None}
    passes = detail_passes(detail, detail_denoising, detail_confidence, detail_padding, detail_mask_blur,
                           detail_controlnet)
    check_writable_dir(output)  # fail before minutes of rendering; created when the first image is saved
    models = services()
    warnings: list[str] = []
    if from_image is not None:
        info = read_png_infotext(from_image)
        req, passes = request_from_infotext(info, flags.pop("base", None), ckpt_dir or [], models, from_image,
                                            detail=passes, **flags)
        library = LoraLibrary([Path(d) for d in req.lora_dirs], models.hash_cache)
        warnings += check_lora_hashes(info, library)
    else:
        table = read_toml(config) if config else {}
        req, passes = gen_config(table, str(config), passes)  # checks the file's keys and passes
        # the file's own keys, not the request it made: a default the file left out (steps, CFG, sampler) is the
        # family's of the --base the flags may name
        req = from_dict(GenRequest, {**{k: v for k, v in table.items() if k != "detail"}, **flags},
                        where="gen options")
        if not req.prompt:
            raise LoracamError("give a prompt (or --from IMAGE.png, or a --config with prompt = ...)")
        library = LoraLibrary([Path(d) for d in req.lora_dirs], models.hash_cache)
    for w in warnings:
        typer.secho(f"warning: {w}", err=True, fg=typer.colors.YELLOW)
    bar = StepBar(total=_total_steps(req))
    try:
        result = generate(req, models, library, progress=bar, detail=passes or ())
    finally:
        bar.close()
    for w in result.warnings:
        typer.secho(f"warning: {w}", err=True, fg=typer.colors.YELLOW)
    for path in result.save(output):
        typer.echo(str(path))


def _total_steps(req) -> int:
    from loracam.generate.hires import total_steps

    per_image = total_steps(req.steps, req.hires) if req.init_image is None else max(1, int(req.steps * req.strength))
    return per_image * req.batch_count  # the bar counts steps of each batch once


def hires_flags(scale, resize, upscaler, steps, upscaler_dir) -> dict:
    """The hires options as GenRequest fields (None where not given)."""
    return dict(hires_scale=scale, hires_resize=tuple(v or 0 for v in parse_size(resize)) if resize else None,
                hires_upscaler=upscaler, hires_steps=steps,
                upscaler_dirs=tuple(map(str, upscaler_dir)) if upscaler_dir else None)


def control_flags(specs, control_mode, resize_mode, dirs) -> dict:
    """The ControlNet options as GenRequest fields (None where not given)."""
    return dict(controlnet=from_flags(specs, control_mode, resize_mode) or None,
                controlnet_dirs=tuple(map(str, dirs)) if dirs else None)


@app.command()
@user_errors
def grid(
    prompt: str = typer.Argument(..., help="The prompt, with <lora:NAME:W> tags."),
    x: Optional[str] = typer.Option(None, "--x", help='An axis: TYPE=VALUES, e.g. "lora:testdress=0.3-0.5 [3]".'),
    y: Optional[str] = typer.Option(None, "--y", help='The Y axis, e.g. "CFG Scale=5,7,9".'),
    z: Optional[str] = typer.Option(None, "--z", help="The Z axis (one sub-grid per value)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="A row of N random seeds, to pick a composition."),
    keep_random_seeds: bool = typer.Option(False, "--keep-random-seeds", help="Seed -1 stays random per cell."),
    vary_seeds: str = typer.Option("", "--vary-seeds", help="x, y, z or a mix: add the axis index to the seed."),
    batch_size: int = typer.Option(8, "--batch-size", help="The most cells rendered together."),
    force: bool = typer.Option(False, "--force", help="Render grids over the size limit."),
    negative: Optional[str] = typer.Option(None, "--negative"),
    base: Optional[str] = typer.Option(None, "--base"),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    sampler: Optional[str] = typer.Option(None, "--sampler"),
    schedule: Optional[str] = typer.Option(None, "--schedule"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    cfg: Optional[float] = typer.Option(None, "--cfg"),
    size: Optional[str] = typer.Option(None, "--size"),
    clip_skip: Optional[int] = typer.Option(None, "--clip-skip"),
    denoising: Optional[float] = typer.Option(None, "--denoising", help="The hires pass's strength (0.7)."),
    hires_scale: Optional[float] = typer.Option(None, "--hires-scale"),
    hires_resize: Optional[str] = typer.Option(None, "--hires-resize"),
    hires_upscaler: Optional[str] = typer.Option(None, "--hires-upscaler"),
    hires_steps: Optional[int] = typer.Option(None, "--hires-steps"),
    upscaler_dir: Optional[List[Path]] = typer.Option(None, "--upscaler-dir"),
    controlnet: Optional[List[str]] = typer.Option(None, "--controlnet", help=CONTROLNET_HELP),
    control_mode: Optional[str] = typer.Option(None, "--control-mode"),
    resize_mode: Optional[str] = typer.Option(None, "--resize-mode"),
    controlnet_dir: Optional[List[Path]] = typer.Option(None, "--controlnet-dir"),
    device: Optional[str] = typer.Option(None, "--device"),
    precision: Optional[str] = typer.Option(None, "--precision"),
    output: Path = typer.Option(Path("outputs/grids"), "-o", "--output"),
    broker: Optional[str] = broker_option(),
    studio: Path = studio_option(),
):
    """Render an X/Y/Z grid (A1111's axes and value syntax), batching cells that can share a batch."""
    from loracam.config import from_dict, to_dict
    from loracam.generate import GenRequest
    from loracam.grid import AxisSpec, GridOptions, run_grid
    from loracam.io import check_writable_dir
    from loracam.lora import LoraLibrary

    width, height = parse_size(size)
    fields = dict(prompt=prompt, negative=negative, base=base, seed=seed, sampler=sampler, schedule=schedule,
                  steps=steps, cfg=cfg, width=width, height=height, clip_skip=clip_skip, device=device,
                  precision=precision, lora_dirs=tuple(map(str, lora_dir)) if lora_dir else None, denoising=denoising,
                  **hires_flags(hires_scale, hires_resize, hires_upscaler, hires_steps, upscaler_dir),
                  **control_flags(controlnet, control_mode, resize_mode, controlnet_dir))
    req = from_dict(GenRequest, {k: v for k, v in fields.items() if v is not None}, where="grid options")
    if seeds is not None and seeds < 1:
        raise LoracamError("--seeds must be at least 1")
    if set(vary_seeds) - set("xyz"):
        raise LoracamError(f"--vary-seeds {vary_seeds!r}: use x, y, z or a mix such as xy")
    specs = [AxisSpec.parse(a) if a else None for a in (x, y, z)]
    if seeds is None and not any(specs):
        raise LoracamError("give at least one axis (--x TYPE=VALUES) or --seeds N")
    opts = GridOptions(keep_random_seeds=keep_random_seeds, vary_seeds=vary_seeds, batch_size=batch_size, force=force)
    if sent_to_workers("grid", {"request": to_dict(req), "axes": [x, y, z], "seeds": seeds, "options": to_dict(opts)},
                       studio, broker):
        return
    check_writable_dir(output)
    models = services()
    library = LoraLibrary([Path(d) for d in req.lora_dirs], models.hash_cache)
    bar = StepBar(total=0)
    result = run_grid(req, specs, opts, models, library, output, seeds=seeds,
                      progress=lambda i, n: (setattr(bar, "total", n), bar(i, n)))
    bar.close()
    n = len(result.paths["cells"])
    typer.echo(f"{n} cells ({result.rendered} rendered, {n - result.rendered} from the cache)")
    typer.echo(f"grid: {result.paths['grid']}")


@app.command()
@user_errors
def prompt(
    text: str = typer.Argument(..., help="A prompt in A1111 syntax."),
    steps: int = typer.Option(20, "--steps", help="Steps used to resolve [from:to:when] schedules."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    family: str = typer.Option("sd1", "--family", help="The base's family: sd1, sdxl, zimage (what the syntax does)."),
):
    """Inspect a prompt like A1111's token counter: LoRAs, attention weights, schedule, tokens, chunks."""
    from transformers import CLIPTokenizer

    from loracam.models import SD15_DIR
    from loracam.models.families import FAMILIES
    from loracam.prompts import inspect_prompt
    from loracam.prompts.inspect import NOTES

    if steps < 1:
        raise LoracamError("--steps must be at least 1")
    if family not in FAMILIES or not FAMILIES[family].supported:
        raise LoracamError(f"unknown family {family!r}; use {', '.join(n for n, f in FAMILIES.items() if f.supported)}")
    report = inspect_prompt(text, CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer"), steps)
    report["notes"] = list(NOTES.get(FAMILIES[family].conditioning, ()))
    if as_json:
        report.pop("ignored_tags")
        typer.echo(json.dumps(report, ensure_ascii=False))
        return
    clip = FAMILIES[family].conditioning in ("clip", "sdxl")  # CLIP's chunks and weights mean nothing on an LLM
    if clip:
        typer.echo(f"tokens: {report['tokens']}/{report['chunks'] * 75}  ({report['chunks']} chunk(s))")
    for lora in report["loras"]:
        typer.echo(f"lora: {lora['name']}  te={lora['te']:g} unet={lora['unet']:g}")
    for seg, weight in report["attention"] if clip else ():
        typer.echo(f"  {weight:6.3f}  {seg!r}")
    if len(report["schedule"]) > 1:
        for end, t in report["schedule"]:
            typer.echo(f"until step {end}: {t}")
    for tag in report["ignored_tags"]:
        typer.secho(f"warning: {tag} is not a LoRA tag and is ignored", err=True, fg=typer.colors.YELLOW)
    for note in report["notes"]:
        typer.echo(f"note: {note}")


@app.command()
@user_errors
def info(
    file: Path = typer.Argument(..., help="A PNG, a LoRA or a checkpoint (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
):
    """Show a PNG's generation parameters, or a LoRA's metadata, dim, alpha, family, modules and hash."""
    from loracam.info import describe
    from loracam.models import HashCache, default_cache_path

    report = describe(file, HashCache(default_cache_path()))
    if as_json:
        typer.echo(json.dumps(report, ensure_ascii=False, indent=1))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            typer.echo(f"{key}:")
            for k, v in value.items():
                typer.echo(f"  {k}: {v if len(str(v)) < 300 else str(v)[:300] + '...'}")
        else:
            typer.echo(f"{key}: {value}")


@app.command()
@user_errors
def prep(
    photos: Optional[Path] = typer.Argument(None, help="Folder of photos (only read, never changed)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Dataset folder to create."),
    subject: Optional[str] = typer.Option(None, "--subject", help="face, person, garment, shoes, pet or object."),
    trigger: Optional[str] = typer.Option(None, "--trigger", help="The trigger word, e.g. sks or testdress."),
    class_word: Optional[str] = typer.Option(None, "--class", help="The class word, e.g. woman, dress, shoes."),
    class_phrase: Optional[str] = typer.Option(None, "--class-phrase", help='Caption phrase, e.g. "a beautiful woman".'),
    reg: Optional[bool] = typer.Option(None, "--reg/--no-reg", help="Also write full-body regularization crops."),
    repeats: Optional[int] = typer.Option(None, "--repeats"),
    reg_repeats: Optional[int] = typer.Option(None, "--reg-repeats"),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="WIDTHxHEIGHT, multiples of 64 (512x768)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help='JSON {"photo.jpg": {"garment": [x0,y0,x1,y1]}}.'),
    long_garment: Optional[bool] = typer.Option(None, "--long-garment", help="Garment crops reach the ankles."),
    tagger: Optional[str] = typer.Option(None, "--tagger", help="wd14 or blip."),
    tagger_model: Optional[str] = typer.Option(None, "--tagger-model", help="Tagger model path (or cached hub id)."),
    keep: Optional[List[str]] = typer.Option(None, "--keep", help="Keep this photo even if flagged (repeatable)."),
    face_model: Optional[str] = typer.Option(None, "--face-model", help="Faces found by dlib (default) or toy (dolls)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing dataset (the old one is kept, renamed)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of prep options; flags override it."),
    import_dir: Optional[Path] = typer.Option(None, "--import", help="Describe an existing kohya dataset instead."),
):
    """Prepare a kohya-ready training set from a folder of photos, explaining every decision."""
    from loracam.config import from_dict, load_toml
    from loracam.data.config import PrepConfig

    if import_dir is not None:
        from loracam.data.importer import write_import

        target, manifest = write_import(import_dir, output, force=force)
        typer.echo(f"{sum(len(s['images']) for s in manifest['subsets'])} images in "
                   f"{len(manifest['subsets'])} subsets; {manifest['steps']['summary']}")
        for line in manifest["skipped"]:
            typer.secho(f"skipped: {line}", err=True, fg=typer.colors.YELLOW)
        typer.echo(f"manifest: {target}")
        return
    if photos is None or output is None:
        raise LoracamError("give the photo folder and -o DATASET_DIR (or --import KOHYA_DIR)")
    flags = dict(subject=subject, trigger=trigger, class_word=class_word, class_phrase=class_phrase, reg=reg,
                 repeats=repeats, reg_repeats=reg_repeats, boxes=str(boxes) if boxes else None,
                 long_garment=long_garment, tagger=tagger, tagger_model=tagger_model,
                 keep=tuple(keep) if keep else None, force=force or None, face_model=face_model,
                 resolution=list(parse_size(resolution)) if resolution else None)
    base = asdict(load_toml(PrepConfig, config)) if config else {}
    cfg = from_dict(PrepConfig, {**base, **{k: v for k, v in flags.items() if v is not None}}, where="prep options")
    from loracam.data.prep import prepare

    typer.echo(f"preparing {photos} -> {output} ({cfg.subject}, trigger {cfg.trigger!r}, class {cfg.class_word!r})")
    result = prepare(photos, output, cfg, echo=typer.echo)
    for line in result.summary:
        typer.echo(line)
    typer.echo(f"dataset: {result.out_dir}  (contact_sheet.png, report.md, manifest.json, dataset.toml)")


@app.command()
@user_errors
def tags(
    dataset: Path = typer.Argument(..., help="A dataset folder (its .txt captions are edited)."),
    add: Optional[List[str]] = typer.Option(None, "--add", help="Tag to add (repeatable)."),
    remove: Optional[List[str]] = typer.Option(None, "--remove", help="Tag to remove (repeatable)."),
    replace: Optional[List[str]] = typer.Option(None, "--replace", help="OLD=NEW (repeatable)."),
    trigger_first: Optional[str] = typer.Option(None, "--trigger-first", help="Move (or insert) this tag first."),
    dedupe: bool = typer.Option(True, "--dedupe/--no-dedupe"),
    report: bool = typer.Option(False, "--report", help="Only print the tag frequency per folder."),
):
    """Edit the captions of a dataset (add, remove, replace, deduplicate, trigger first) or report tags."""
    from loracam.data.tags import edit_dataset, tag_frequency

    if not dataset.is_dir():
        raise LoracamError(f"dataset folder not found: {dataset}")
    if report:
        for folder, counts in tag_frequency(dataset).items():
            typer.echo(f"{folder}:")
            for tag, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                typer.echo(f"  {n:5d}  {tag}")
        return
    pairs = {}
    for item in replace or []:
        if "=" not in item:
            raise LoracamError(f"--replace {item!r}: write OLD=NEW")
        old, new = item.split("=", 1)
        pairs[old.strip()] = new.strip()
    result = edit_dataset(dataset, add=tuple(add or ()), remove=tuple(remove or ()), replace=pairs,
                          dedupe=dedupe, trigger_first=trigger_first)
    typer.echo(str(result))


@app.command()
@user_errors
def train(
    dataset: Path = typer.Argument(..., help="A dataset from loracam prep, or any kohya-layout folder."),
    base: Optional[str] = typer.Option(None, "--base", help="The base model (as in loracam gen)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="The LoRA file to write (.safetensors)."),
    config: Optional[Path] = typer.Option(None, "--config", help="A TOML file of train options; flags override it."),
    subject: Optional[str] = typer.Option(None, "--subject", help="Preset: face, garment, shoes, person, style."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum"),
    resolution: Optional[str] = typer.Option(None, "--resolution", help="WIDTHxHEIGHT (multiples of 64)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA dim."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="LoRA alpha (scale = alpha / rank)."),
    conv_dim: Optional[int] = typer.Option(None, "--conv-dim", help="LoCon: also train 3x3 convs at this rank."),
    conv_alpha: Optional[float] = typer.Option(None, "--conv-alpha"),
    train_text_encoder: Optional[bool] = typer.Option(None, "--train-text-encoder/--freeze-text-encoder"),
    lr: Optional[float] = typer.Option(None, "--lr",
                                       help="U-Net learning rate (default: the preset's; x20 on the toy base)."),
    te_lr: Optional[float] = typer.Option(None, "--te-lr", help="Text-encoder learning rate (default: the preset's; without --subject the U-Net's, as sd-scripts)."),
    te2_lr: Optional[float] = typer.Option(None, "--te2-lr", help="SDXL: bigG's rate (default: as --te-lr)."),
    prediction: Optional[str] = typer.Option(None, "--prediction", help=PREDICTION_HELP),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="AdamW, AdamW8bit, Prodigy, SGD."),
    lr_scheduler: Optional[str] = typer.Option(None, "--lr-scheduler", help="constant, cosine, linear, ..."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps"),
    noise_offset: Optional[float] = typer.Option(None, "--noise-offset"),
    min_snr_gamma: Optional[float] = typer.Option(None, "--min-snr-gamma"),
    prior_loss_weight: Optional[float] = typer.Option(None, "--prior-loss-weight"),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Random horizontal flips."),
    caption_dropout: Optional[float] = typer.Option(None, "--caption-dropout",
                                                    help="Share of samples trained with an empty caption."),
    bucket_step: Optional[int] = typer.Option(None, "--bucket-step", help="Bucket side step (default 64)."),
    shuffle_caption: Optional[bool] = typer.Option(None, "--shuffle-caption/--no-shuffle-caption"),
    keep_tokens: Optional[int] = typer.Option(None, "--keep-tokens"),
    mixed_precision: Optional[str] = typer.Option(None, "--mixed-precision", help="auto, no, fp16, bf16."),
    gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing"),
    deterministic: Optional[bool] = typer.Option(
        None, "--deterministic/--no-deterministic",
        help="GPU: deterministic kernels (default), so --resume ends exactly as an uninterrupted run."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Save a checkpoint every N steps."),
    save_every_epochs: Optional[int] = typer.Option(None, "--save-every-epochs"),
    preview_every: Optional[int] = typer.Option(None, "--preview-every", help="Render previews every N steps."),
    preview_prompt: Optional[List[str]] = typer.Option(None, "--preview-prompt", help="A preview prompt (repeatable)."),
    select: Optional[str] = typer.Option(None, "--select", help="last, best or average-top-k (face identity)."),
    select_k: Optional[int] = typer.Option(None, "--select-k"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of a LoRA."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of this run."),
    broker: Optional[str] = broker_option(),
    studio: Path = studio_option(),
):
    """Train a LoRA (kohya format, loads in A1111/ComfyUI/diffusers) or fine-tune a whole model (--full)."""
    from loracam.config import from_dict, load_toml, to_dict
    from loracam.train import TrainConfig
    from loracam.train import train as run_training

    flags = dict(
        dataset=str(dataset), base=base, output=str(output) if output else None, subject=subject, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        resolution=list(parse_size(resolution)) if resolution else None, rank=rank, alpha=alpha,
        conv_dim=conv_dim, conv_alpha=conv_alpha, train_text_encoder=train_text_encoder, lr=lr, te_lr=te_lr,
        te2_lr=te2_lr, prediction=prediction,
        optimizer=optimizer, lr_scheduler=lr_scheduler, warmup_steps=warmup_steps, noise_offset=noise_offset,
        min_snr_gamma=min_snr_gamma, prior_loss_weight=prior_loss_weight, flip=flip,
        caption_dropout=caption_dropout, bucket_step=bucket_step, shuffle_caption=shuffle_caption, keep_tokens=keep_tokens, mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing, deterministic=deterministic, save_every_steps=save_every,
        save_every_epochs=save_every_epochs, preview_every=preview_every,
        preview_prompts=tuple(preview_prompt) if preview_prompt else None, select=select, select_k=select_k,
        seed=seed, device=device, full=full or None, resume=resume or None,
    )
    base_cfg = asdict(load_toml(TrainConfig, config)) if config else {}
    cfg = from_dict(TrainConfig, {**base_cfg, **{k: v for k, v in flags.items() if v is not None}},
                    where="train options")
    if sent_to_workers("train-dataset", {k: v for k, v in to_dict(cfg).items() if k not in ("output", "resume")},
                       studio, broker):
        return
    result = run_training(cfg, echo=typer.echo)
    if result.main_process and not result.stopped_early:
        typer.echo(f"wrote {result.output} after {result.steps} steps"
                   + (f" (kept: {result.selected})" if result.selected != "last" else ""))


def train_main() -> None:
    """Entry point of ``python -m loracam.train`` / ``accelerate launch -m loracam.train``."""
    app(["train", *sys.argv[1:]])


toy_app = typer.Typer(help="The built-in toy world: its 'photos' and the probe that judges images.",
                      no_args_is_help=True)
app.add_typer(toy_app, name="toy")


@toy_app.command("photos")
@user_errors
def toy_photos(
    output: Path = typer.Argument(..., help="An empty folder for the photos."),
    concept: str = typer.Option("testdress", "--concept", help="testdress, myshoes, sks or none."),
    n: int = typer.Option(12, "-n", help="How many photos."),
    seed: int = typer.Option(0, "--seed"),
    size: str = typer.Option("192x288", "--size", help="WIDTHxHEIGHT, 2:3."),
):
    """Render 'user photos' of dolls with a held-out concept, plus boxes.json for prep --boxes."""
    from loracam.toy.photos import write_photos

    w, h = parse_size(size)
    paths = write_photos(output, concept, n, seed, (w, h))
    typer.echo(f"wrote {len(paths)} photos of {concept} and boxes.json to {output}/")


@toy_app.command("judge")
@user_errors
def toy_judge(
    folder: Path = typer.Argument(..., help="A folder of 64x96 PNGs made with the toy model (e.g. grid cells)."),
    concept: str = typer.Option("testdress", "--concept", help="testdress, myshoes or sks."),
    lora: Optional[str] = typer.Option(None, "--lora", help="Group by this LoRA's weight (default: the first)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers as JSON here."),
):
    """Read images with the toy probe: how often the concept appears, per LoRA weight."""
    from loracam.io import atomic_write_bytes
    from loracam.toy.report import judge_folder, markdown

    judged = judge_folder(folder, concept, lora)
    typer.echo(markdown(judged))
    if json_out:
        atomic_write_bytes(json_out, json.dumps(judged.to_dict(), indent=1).encode())


@app.command()
@user_errors
def demo(output: Path = typer.Option(Path("demo-output"), "-o", "--output"),
         steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                             help="LoRA training steps (default: the toy face rule; fewer: quick, weak)."),
         per_style: Optional[int] = typer.Option(None, "--per-style", min=1, help="Candidates per style (default 12).")):
    """Run the studio job on the built-in toy world and write the results to demo-output/."""
    from dataclasses import replace

    from loracam.studio.demo import DemoSettings, run_demo

    settings = DemoSettings()
    if steps is not None:
        settings = replace(settings, train_steps=steps)
    if per_style is not None:
        settings = replace(settings, per_style=per_style, keep=min(settings.keep, per_style))
    run_demo(output, echo=typer.echo, settings=settings)


for _command in FINISH_COMMANDS:  # upscale, detail: their own module keeps this one short
    app.command()(_command)
for _command in CONTROL_COMMANDS:  # pose
    app.command()(_command)
for _command in JUDGE_COMMANDS:  # judge
    app.command()(_command)
for _command in TUNE_COMMANDS:  # tune
    app.command()(_command)
for _command in WEB_COMMANDS:  # web (gradio is imported only when it runs)
    app.command()(_command)
for _command in WORKER_COMMANDS:  # worker (celery is imported only when it runs)
    app.command()(_command)
app.add_typer(studio_app, name="studio")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
