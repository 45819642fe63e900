"""Renders made during training: previews from the user's prompts, and identity renders for scoring."""

from __future__ import annotations

from pathlib import Path

from loracam.generate.engine import render
from loracam.generate.images import save_png
from loracam.generate.infotext import format_infotext
from loracam.generate.request import Sample, Shared


def _shared(run, steps: int, sampler: str) -> Shared:
    w, h = run.resolution
    return Shared(w, h, steps, sampler, "Automatic", run.cfg.clip_skip)


def render_previews(run, step: int) -> list[Path]:
    """One PNG per preview prompt (seed preview_seed + i), with infotext, in NAME.previews/."""
    cfg = run.cfg
    shared = _shared(run, cfg.preview_steps, cfg.preview_sampler)
    samples = [Sample(p, "", cfg.preview_seed + i, 7.0) for i, p in enumerate(cfg.preview_prompts)]
    images = _render(run, shared, samples)
    out = run.output.with_name(run.output.stem + ".previews")
    paths = []
    for s, im in zip(samples, images):
        params = {"Steps": shared.steps, "Sampler": shared.sampler, "CFG scale": "7", "Seed": s.seed,
                  "Size": f"{shared.width}x{shared.height}", "Model": run.model.name,
                  "Training step": step, "Version": "loracam"}
        paths.append(save_png(im, format_infotext(s.prompt, "", params), out, s.seed))
    return paths


def _render(run, shared: Shared, samples: list[Sample]):
    """Render with the model as it is now (LoRA active), then put the networks back in training mode."""
    model = run._render_model()
    unet_mode, te_mode = model.unet.training, model.text_encoder.training
    model.unet.eval()
    model.text_encoder.eval()
    try:
        return render(model, shared, samples)
    finally:
        model.unet.train(unet_mode)
        model.text_encoder.train(te_mode)


def identity_score(run, step: int, path: Path):
    """Render the trigger K times and score the faces against the training photos (None: no reference)."""
    from loracam.judge.select import CheckpointScore

    if not hasattr(run, "_scorer"):
        run._scorer = run.custom_scorer or _face_scorer(run.data.reference_embeddings())
        if run._scorer is None:
            run.echo("no face embeddings in the dataset's manifest (prep one with --subject face): "
                     "checkpoints cannot be picked by identity; the last one is kept")
    if run._scorer is None:
        return None
    ident = run.identity
    prompt = ", ".join(x for x in (ident.get("trigger"), ident.get("phrase")) if x) or run.data.samples[0].caption
    shared = _shared(run, run.cfg.preview_steps, run.cfg.preview_sampler)
    samples = [Sample(prompt, "", 10_000 + i, 7.0) for i in range(run.cfg.identity_images)]
    result = run._scorer.score(_render(run, shared, samples))
    return CheckpointScore(step, path, result.score)


def _face_scorer(reference):
    """dlib's face embeddings against prep's reference (None: the dataset has none)."""
    from loracam.judge.identity import IdentityScorer

    return IdentityScorer(reference) if reference is not None else None
