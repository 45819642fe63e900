"""The portrait job's steps: photos -> dataset -> LoRA -> candidates per style -> judged -> upscaled -> gallery.

Every step resumes: prep publishes its dataset whole (so it is there or not), training continues from its
last checkpoint, candidates already rendered are not rendered again, and the judge and upscaler skip what
they already wrote.

The order differs from the lecture's in one place: the judge reads the candidates at their rendered size
(after the style's detail passes) and only the kept ones are upscaled. Judges work at that size (dlib finds
faces there, the toy probe reads 64x96), and upscaling candidates that are then dropped costs the most of
any finishing step (an ESRGAN 4x of 512x768 is ~1 s on a GPU, minutes on a CPU) for nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes

TOY = "toy"


@dataclass(frozen=True)
class ToyTraining:
    """LoRA settings for the toy base, per subject (the SD1.5 presets' settings do not carry over)."""

    steps: int
    lr: float
    te_lr: float
    rank: int
    alpha: float
    targets: str
    train_text_encoder: bool
    weight: float  # the LoRA's weight in the job's prompts
    batch_size: int = 4


# Why not the face preset (rank 4, attention only, frozen text encoder): on the toy base it reads sks in
# 0-3% of close-ups after 800 steps (benchmarks/README.md, toy_quality). Rank 8 on kohya's targets with the
# text encoder learns it. The demo's time budget set the rest (benchmarks/README.md, "toy_studio"): 2400
# steps at 2e-3 read 83% at weight 1 but take ~7 min on 2 cores; 400 steps at 5e-3 read 8% at weight 1 and
# 58% at 1.4 (24 close-ups), and the judge's ranking does the rest.
TOY_TRAINING = {
    "face": ToyTraining(steps=400, lr=5e-3, te_lr=2.5e-3, rank=8, alpha=8.0, targets="kohya", train_text_encoder=True,
                        weight=1.4),
    "garment": ToyTraining(steps=800, lr=5e-3, te_lr=2.5e-3, rank=16, alpha=8.0, targets="kohya",
                           train_text_encoder=True, weight=1.0),
    "pet": ToyTraining(steps=400, lr=5e-3, te_lr=2.5e-3, rank=8, alpha=8.0, targets="kohya", train_text_encoder=True,
                       weight=1.4),
}


def lora_path(run) -> Path:
    return run.folder / "lora" / f"{run.cfg.name}.safetensors"


# -- prep ---------------------------------------------------------------------------------------------------


def prep_step(run) -> dict:
    from loracam.data.config import PrepConfig
    from loracam.data.prep import prepare

    out = run.folder / "dataset"
    if (out / "manifest.json").is_file():  # published whole before the step could be marked done
        return _prep_summary(out)
    cfg = run.cfg
    photos = Path(cfg.photos) if cfg.photos else None
    if photos is None or not photos.is_dir():
        raise LoracamError(f"the photos folder {photos} is gone; put it back and resume")
    toy = cfg.base == TOY
    boxes = photos / "boxes.json"
    prep_cfg = PrepConfig(
        # the toy world's people are all "1girl": its captions and reg images name the class the base knows
        subject=cfg.subject, trigger=cfg.trigger, class_word="1girl" if toy else cfg.word,
        # the toy base knows a face only in its close-up composition: the caption says so
        class_phrase="1girl, close-up" if toy and cfg.subject == "face" else None,
        reg=cfg.subject == "garment", resolution=_resolution(run),
        boxes=boxes if cfg.subject == "garment" and boxes.is_file() else None,
        face_model="toy" if toy else "dlib")
    result = prepare(photos, out, prep_cfg, echo=lambda s: None)
    for line in result.summary:
        run.note("prep", line)
    return _prep_summary(out)


def _resolution(run) -> tuple[int, int]:
    if run.cfg.base == TOY:
        return (64, 96)
    sizes = [tuple(s.size) for s in run.styles()]
    return sizes[0] if sizes else (512, 768)


def _prep_summary(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    photos = manifest.get("photos", [])
    return {"kept": sum(p.get("status") == "kept" for p in photos), "photos": len(photos)}


# -- train --------------------------------------------------------------------------------------------------


def train_step(run) -> dict:
    from loracam.train import TrainConfig, train

    out = lora_path(run)
    if out.is_file():
        return {"lora": str(out)}
    cfg = run.cfg
    toy = cfg.base == TOY
    scorer = None
    settings: dict = {"subject": cfg.subject if cfg.subject != "pet" else None}
    if toy:
        t = TOY_TRAINING[cfg.subject]
        settings.update(max_steps=cfg.train_steps or t.steps, batch_size=t.batch_size, lr=t.lr, te_lr=t.te_lr,
                        rank=t.rank, alpha=t.alpha, targets=t.targets, train_text_encoder=t.train_text_encoder,
                        resolution=(64, 96))
        if cfg.subject == "face":
            from loracam.toy.judge import ProbeIdentityScorer
            from loracam.toy.probe import Probe

            scorer = ProbeIdentityScorer(Probe.load())
    else:
        settings["max_steps"] = cfg.train_steps or _preset_steps(run)
    settings.update(cfg.train_options)  # the user's rank, lr, ... over the rule's (checked at creation)
    steps = settings["max_steps"]
    face = cfg.subject == "face"
    tcfg = TrainConfig(dataset=str(run.folder / "dataset"), base=cfg.base, output=str(out), seed=0, resume=True,
                       save_every_steps=max(1, steps // 4), select="best" if face else "last",
                       identity_images=8, device=cfg.device, **{k: v for k, v in settings.items() if v is not None})
    out.parent.mkdir(parents=True, exist_ok=True)
    result = train(tcfg, echo=lambda s: run.note("train", s, check=False), progress=False, scorer=scorer, control=run.control)
    if result.stopped_early:
        run.heartbeat.check()  # cancelled or taken over: say which (the checkpoint is saved)
    if result.stopped_early or not out.is_file():
        raise LoracamError("training stopped before it wrote the LoRA; resume the job to continue it")
    return {"lora": str(out), "steps": result.steps, "selected": result.selected}


def _preset_steps(run) -> int:
    """The subject preset's step rule (steps a training image, clamped) over the prepared dataset, known
    here so that checkpoints can be saved at every quarter for the identity pick."""
    from loracam.train.config import GENERIC, PRESETS, preset_steps

    images = [p for p in (run.folder / "dataset" / "img").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".webp")]
    return preset_steps(PRESETS.get(run.cfg.subject, GENERIC), len(images))


# -- render -------------------------------------------------------------------------------------------------


def candidates_dir(run, style: str) -> Path:
    return run.folder / "candidates" / style


def render_step(run) -> dict:
    """K candidates per style, in batches of consecutive seeds; a batch whose files all exist is skipped."""
    made = {}
    for style in run.styles():
        k = run.cfg.per_style or style.candidates
        if k < run.cfg.keep:
            raise LoracamError(f"style {style.name} renders {k} candidates, fewer than --keep {run.cfg.keep}; "
                               "raise --per-style")
        folder = candidates_dir(run, style.name)
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, k, run.cfg.batch_size):
            n = min(run.cfg.batch_size, k - start)
            names = [_candidate_name(start + i, run.cfg.seed + start + i) for i in range(n)]
            if all((folder / f).is_file() for f in names):
                continue
            run.lease.renew()
            result = _render(run, style, run.cfg.seed + start, n)
            for name, image in zip(names, result.images):
                if not (folder / name).is_file():
                    _save(folder / name, image)
        made[style.name] = k
        run.note("render", f"{style.name}: {k} candidates")
    return {"candidates": made}


def _candidate_name(i: int, seed: int) -> str:
    return f"{i:03d}-{seed}.png"


def style_request(run, style, seed: int, n: int, prompt: str | None = None):
    """The GenRequest for ``n`` images of ``style`` from ``seed``: the user's LoRA at the job's weight."""
    from loracam.generate import GenRequest

    cfg = run.cfg
    if prompt is None:
        trigger_lora = f" <lora:{cfg.name}:{lora_weight(run):g}>"
        prompt = style.prompt_for(cfg.subject, cfg.trigger, cfg.word) + trigger_lora
    if style.lora is not None:
        prompt += " " + style.lora.tag()
    w, h = style.size
    return GenRequest(
        prompt=prompt, negative=style.negative, base=cfg.base, sampler=style.sampler, schedule=style.schedule,
        steps=style.steps, cfg=style.cfg, width=w, height=h, seed=seed, batch_size=n, clip_skip=style.clip_skip,
        lora_dirs=(str(run.folder / "lora"), *cfg.lora_dirs),
        controlnet=(style.control.unit(),) if style.control else (), controlnet_dirs=cfg.controlnet_dirs,
        upscaler_dirs=cfg.upscaler_dirs, device=cfg.device)


def lora_weight(run) -> float:
    """The job's LoRA weight: as asked; else the toy rule's on the toy base, else what the LoRA's file
    recommends (loracam writes it per subject preset), else 1."""
    if run.cfg.lora_weight is not None:
        return run.cfg.lora_weight
    if run.cfg.base == TOY and run.cfg.subject in TOY_TRAINING:
        return TOY_TRAINING[run.cfg.subject].weight
    from loracam.lora.formats import read_lora

    meta = read_lora(lora_path(run)).metadata
    try:
        return float(meta.get("loracam_recommended_weight") or 1.0)
    except ValueError:
        return 1.0


def _render(run, style, seed: int, n: int):
    from loracam.finish.gen import generate
    from loracam.lora import LoraLibrary

    req = style_request(run, style, seed, n)
    library = LoraLibrary([Path(d) for d in req.lora_dirs], run.models.hash_cache)
    result = generate(req, run.models, library, detail=style.detail.to_passes() if style.detail else ())
    for w in dict.fromkeys(result.warnings):
        run.note("render", w)
    return result


def _save(path: Path, rendered) -> None:
    from loracam.control.store import save_maps
    from loracam.generate.images import png_bytes

    atomic_write_bytes(path, png_bytes(rendered.image, rendered.infotext))
    save_maps(path, rendered.control_maps)


# -- judge --------------------------------------------------------------------------------------------------


def judge_step(run) -> dict:
    from loracam.judge.rank import Models, judge_images, write_ranking

    kept = {}
    models = Models()  # dlib's models load once for every style, not once a style
    for style in run.styles():
        out = run.folder / "judge" / style.name
        if (out / "ranking.json").is_file():
            kept[style.name] = _kept_names(out / "ranking.json")
            continue
        files = sorted(p for p in candidates_dir(run, style.name).glob("*.png") if "-control" not in p.name)
        ranking = judge_images(files, reference=run.folder / "dataset", config=judge_config(run), models=models)
        out.mkdir(parents=True, exist_ok=True)
        write_ranking(ranking, out / "ranking.json", out / "sheet.png")
        top = ranking.top(run.cfg.keep)
        kept[style.name] = [j.path.name for j in top]
        run.note("judge", f"{style.name}: kept {len(top)} of {len(files)}" + _baseline(ranking))
    return {"kept": kept}


def judge_config(run):
    from loracam.judge.rank import JudgeConfig

    cfg = run.cfg
    toy = cfg.base == TOY
    return JudgeConfig(identity="toy" if toy else ("dlib" if cfg.subject == "face" else "none"),
                       concept=cfg.trigger if not toy else _toy_concept(run), top=cfg.keep, subject=cfg.subject)


def _toy_concept(run) -> str:
    """The toy world's held-out concept the job's photos show (the probe reads that, not the trigger word)."""
    from loracam.toy.world import SKS, TESTDRESS

    return {"face": SKS, "garment": TESTDRESS}.get(run.cfg.subject, SKS)


def _baseline(ranking) -> str:
    return f" (the reference photos' own similarity: {ranking.baseline:.2f})" if ranking.baseline is not None else ""


def _kept_names(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    ranked = sorted((e for e in data["entries"] if e.get("rank") is not None), key=lambda e: e["rank"])
    return [Path(e["path"]).name for e in ranked]


# -- upscale ------------------------------------------------------------------------------------------------


def upscale_step(run) -> dict:
    """The kept images of each style through its upscaler (A1111's Extras keys added); styles without one
    are copied as they are, so the gallery always shows final/."""
    import shutil

    from loracam.finish.extras import upscale_files
    from loracam.generate.upscale import load_upscaler
    from loracam.models import pick_device

    done = {}
    for style in run.styles():
        kept = kept_files(run, style.name)
        out = run.folder / "final" / style.name
        out.mkdir(parents=True, exist_ok=True)
        todo = [p for p in kept if not (out / p.name).is_file()]
        if todo and style.upscale is not None and style.upscale.model:
            from loracam.generate.hires import A1111_UPSCALERS

            dirs = tuple(Path(d) for d in run.cfg.upscaler_dirs)
            # A1111's names ("R-ESRGAN 4x+") are found as their model files' stems in --upscaler-dir
            ref = A1111_UPSCALERS.get(style.upscale.model, style.upscale.model)
            upscaler = load_upscaler(ref, pick_device(run.cfg.device), dirs=dirs)
            upscaler.name = style.upscale.model
            run.lease.renew()
            upscale_files(todo, upscaler, out, scale=style.upscale.scale)
        else:
            for p in todo:
                shutil.copyfile(p, out / f".{p.name}.tmp")
                (out / f".{p.name}.tmp").rename(out / p.name)
        done[style.name] = len(kept)
    return {"final": done}


def kept_files(run, style: str) -> list[Path]:
    names = _kept_names(run.folder / "judge" / style / "ranking.json")[: run.cfg.keep]
    return [candidates_dir(run, style) / n for n in names]


def gallery_step(run) -> dict:
    from loracam.studio.gallery import write_gallery

    return {"gallery": str(write_gallery(run))}


PORTRAIT_STEPS = (("prep", prep_step), ("train", train_step), ("render", render_step), ("judge", judge_step),
                  ("upscale", upscale_step), ("gallery", gallery_step))
