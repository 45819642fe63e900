"""The ``tune`` command: per seed, the lightest LoRA weights at which every LoRA shows; registered by loracam.cli."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from loracam.cli_submit import broker_option, sent_to_workers, studio_option
from loracam.cli_util import parse_size, services, user_errors
from loracam.errors import LoracamError


def pairs(values: list[str] | None, flag: str, cast=str) -> tuple[tuple[str, object], ...]:
    """``NAME=VALUE`` flags as pairs; a missing ``=`` or a bad value says how to write it."""
    out = []
    for text in values or ():
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise LoracamError(f"{flag} {text!r}: write {flag} NAME=VALUE with NAME a LoRA of the prompt")
        try:
            out.append((name.strip(), cast(value.strip())))
        except ValueError:
            raise LoracamError(f"{flag} {text!r}: {value!r} is not a number") from None
    return tuple(out)


@user_errors
def tune(
    prompt: str = typer.Argument(..., help='The prompt with its LoRAs: "1girl, full body <lora:face:0.7> <lora:testdress:0.4>".'),
    output: Path = typer.Option(..., "-o", "--output", help="A new folder for the renders, grids and tune.json."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Tune on N random seeds (default 3)."),
    seed: Optional[List[int]] = typer.Option(None, "--seed", help="Tune on this seed (repeat for several)."),
    budget: int = typer.Option(18, "--budget", help="Search renders per seed (the guide's two grids: 54)."),
    judge: Optional[List[str]] = typer.Option(None, "--judge", help="NAME=probe|identity|clip: who says LoRA NAME shows."),
    reference: Optional[List[str]] = typer.Option(None, "--reference", help="NAME=FOLDER: LoRA NAME's training photos."),
    threshold: Optional[List[str]] = typer.Option(None, "--threshold", help="NAME=V: the fidelity at which NAME counts as shown."),
    prior: Optional[str] = typer.Option(None, "--prior", help="probe, clip-text or none: how the rest of the prompt is judged."),
    clip: Optional[str] = typer.Option(None, "--clip", help="A CLIP model folder, or a hub id in your local cache."),
    identity: str = typer.Option("dlib", "--identity", help="Face LoRAs' identity embedder: dlib or onnx:PATH."),
    max_weight: float = typer.Option(1.0, "--max-weight", help="Where every LoRA starts (the top of its search)."),
    ceiling: float = typer.Option(1.5, "--ceiling", help="A LoRA missing at --max-weight is tried this heavy once."),
    neighbourhood: float = typer.Option(0.1, "--neighbourhood", help="The grid's step around the answer (0: no grid)."),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir"),
    negative: str = typer.Option("", "--negative"),
    base: Optional[str] = typer.Option(None, "--base"),
    sampler: str = typer.Option("DPM++ 2M", "--sampler"),
    steps: Optional[int] = typer.Option(None, "--steps"),
    cfg: Optional[float] = typer.Option(None, "--cfg"),
    size: Optional[str] = typer.Option(None, "--size"),
    batch_size: int = typer.Option(8, "--batch-size"),
    device: str = typer.Option("auto", "--device"),
    broker: Optional[str] = broker_option(),
    studio: Path = studio_option(),
):
    """Find, per seed, the lightest weights at which each LoRA's concept is judged present (bisection, all
    LoRAs side by side, rendered in batches with per-image weights), preferring renders that keep the rest of
    the prompt. Writes every render with its infotext, a grid around each answer and a picture of the search."""
    from loracam.lora import LoraLibrary
    from loracam.tune.run import TuneConfig, run_tune

    if seeds is not None and seed:
        raise LoracamError("give --seeds N (random seeds) or --seed S (repeatable), not both")
    width, height = parse_size(size)
    config = TuneConfig(prompt=prompt, negative=negative, base=base, seeds=tuple(seed or ()), n_seeds=seeds or 3,
                        budget=budget, judges=pairs(judge, "--judge"), references=pairs(reference, "--reference"),
                        thresholds=pairs(threshold, "--threshold", float), prior=prior, clip=clip, identity=identity,
                        start=max_weight, ceiling=ceiling, neighbourhood=neighbourhood,
                        lora_dirs=tuple(map(str, lora_dir or ())), sampler=sampler, steps=steps, cfg=cfg,
                        width=width, height=height, batch_size=batch_size, device=device)
    from loracam.config import to_dict

    if sent_to_workers("tune", to_dict(config), studio, broker):
        return
    models = services()
    library = LoraLibrary([Path(d) for d in config.lora_dirs], models.hash_cache)
    run_tune(config, models, library, output, echo=typer.echo)


COMMANDS = [tune]
