"""``loracam studio``: the resumable jobs (run, dressup, resume, list, status, cancel) and the style presets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from loracam.cli_util import user_errors

studio_app = typer.Typer(help="The studio: photos in, a gallery of the best portraits out, as one resumable job.",
                         no_args_is_help=True)
STUDIO_HELP = "The studio folder: its job store (jobs.sqlite) and one folder per job."
QUEUE_HELP = "Only record the job in the studio's queue: the worker (`loracam studio worker`, or the web UI's) runs it."
BROKER_HELP = ("Send the job to the Celery workers on this Redis broker (`loracam worker`) instead of running it here "
               "(default: $LORACAM_BROKER; unset: run here).")


def _store(studio: Path):
    from loracam.studio.store import JobStore

    return JobStore(studio)


def _csv(text: Optional[str]) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip()) if text else ()


def _paths(values) -> tuple[str, ...]:
    return tuple(str(v) for v in values or ())


@studio_app.command("run")
@user_errors
def run(
    photos: Path = typer.Argument(..., help="The folder of photos (only read, never changed)."),
    name: str = typer.Option(..., "--name", help="The job's name (its folder in the studio)."),
    subject: str = typer.Option("face", "--subject", help="face, pet or garment."),
    trigger: str = typer.Option("sks", "--trigger", help="The trigger word the LoRA learns."),
    class_word: Optional[str] = typer.Option(None, "--class", help="woman, man, dog, dress... (default per subject)."),
    styles: Optional[str] = typer.Option(None, "--styles", help="Comma-separated style names (default: all that suit)."),
    base: str = typer.Option("toy", "--base", help="The base model (as in loracam gen); toy: the built-in one."),
    per_style: Optional[int] = typer.Option(None, "--per-style", help="Candidates per style (default: the style's)."),
    keep: int = typer.Option(6, "--keep", help="Images kept per style."),
    train_steps: Optional[int] = typer.Option(None, "--train-steps", help="LoRA training steps (default: the subject's)."),
    seed: int = typer.Option(1000, "--seed"),
    lora_weight: Optional[float] = typer.Option(None, "--lora-weight",
                                                help="The LoRA's weight (default: what its file recommends)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Candidates rendered together."),
    style_dir: Optional[List[Path]] = typer.Option(None, "--style-dir", help="A folder of your own style presets."),
    lora_dir: Optional[List[Path]] = typer.Option(None, "--lora-dir", help="Where style LoRAs are found."),
    upscaler_dir: Optional[List[Path]] = typer.Option(None, "--upscaler-dir"),
    controlnet_dir: Optional[List[Path]] = typer.Option(None, "--controlnet-dir"),
    device: str = typer.Option("auto", "--device"),
    studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP),
    queue: bool = typer.Option(False, "--queue", help=QUEUE_HELP),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
):
    """Photos -> prep -> train -> candidates per style -> judge -> upscale -> gallery, as one resumable job."""
    from loracam.studio.job import StudioConfig

    cfg = StudioConfig(name=name, photos=str(photos.resolve()), subject=subject, trigger=trigger,
                       class_word=class_word, styles=_csv(styles), base=base, per_style=per_style, keep=keep,
                       train_steps=train_steps, seed=seed, lora_weight=lora_weight, batch_size=batch_size, style_dirs=_paths(style_dir),
                       lora_dirs=_paths(lora_dir), upscaler_dirs=_paths(upscaler_dir),
                       controlnet_dirs=_paths(controlnet_dir), device=device)
    _start(studio, cfg, queue, broker)


def _start(studio: Path, cfg, queue: bool = False, broker: Optional[str] = None) -> None:
    """Record the job, then run it (or queue it, or send it to the workers); a job stopped on the way is
    continued by `loracam studio resume`."""
    from loracam.studio.job import create_job, run_job
    from loracam.workers.submit import broker_url

    url = broker_url(broker)
    store = _store(studio)
    create_job(store, cfg, echo=typer.echo)
    if url:
        _send(store, cfg.name, url)
        return
    if queue:
        store.enqueue(cfg.name)
        typer.echo(f"queued {cfg.name!r}; `loracam studio status {cfg.name} --studio {studio}` follows it")
        return
    folder = run_job(store, cfg.name, echo=typer.echo)
    typer.echo(f"done: open {folder / 'gallery' / 'index.html'}")


def _send(store, name: str, url: str) -> None:
    from loracam.workers.submit import enqueue

    enqueue(store, name, url)
    typer.echo(f"sent {name!r} to the workers on {url}; `loracam studio status {name} --studio {store.studio}` "
               "follows it")


@studio_app.command("dressup")
@user_errors
def dressup(
    name: str = typer.Option(..., "--name", help="The job's name."),
    lora: Optional[List[Path]] = typer.Option(None, "--lora", help="A LoRA file to wear (repeatable: face, garment, shoes...)."),
    weights_from: Optional[Path] = typer.Option(None, "--weights-from", help="A tune.json from `loracam tune`: its LoRAs, "
                                                "prompt and weights (the grid goes -/+0.1 around them)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="The prompt without LoRA tags (default: built from "
                                                                 "the LoRAs' triggers on the toy base)."),
    negative: str = typer.Option("", "--negative"),
    base: str = typer.Option("toy", "--base"),
    seeds: int = typer.Option(8, "--seeds", help="Seeds in the first row."),
    keep: int = typer.Option(3, "--keep", help="Seeds (compositions) the judge keeps for the weight grid."),
    styles: Optional[str] = typer.Option(None, "--styles", help="A style preset for the sampler and finishing."),
    seed: int = typer.Option(1000, "--seed"),
    style_dir: Optional[List[Path]] = typer.Option(None, "--style-dir"),
    device: str = typer.Option("auto", "--device"),
    studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP),
    queue: bool = typer.Option(False, "--queue", help=QUEUE_HELP),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
):
    """The NGA guide's workflow as a job: a seed row, compositions picked by the judge, a LoRA weight grid on
    the picked seeds, the smallest weights that work, finished, in a gallery."""
    from loracam.errors import LoracamError
    from loracam.studio.dressup import tuned_weights
    from loracam.studio.job import StudioConfig

    files, weights = tuple(str(p.resolve()) for p in lora or ()), ()
    if weights_from is not None:
        if files:
            raise LoracamError("give --lora files or --weights-from tune.json (which names its LoRAs), not both")
        files, weights, tuned_prompt = tuned_weights(weights_from)
        prompt = prompt or tuned_prompt
    if not files:
        raise LoracamError("give the LoRAs to wear: --lora FILE (repeatable), or --weights-from tune.json")
    cfg = StudioConfig(name=name, kind="dressup", subject="garment", loras=files, lora_weights=weights,
                       prompt=prompt, negative=negative, base=base, seeds=seeds, keep=keep, styles=_csv(styles),
                       seed=seed, style_dirs=_paths(style_dir), device=device)
    _start(studio, cfg, queue, broker)


@studio_app.command("resume")
@user_errors
def resume(
    name: str = typer.Argument(..., help="The job to continue."),
    accept_changes: bool = typer.Option(False, "--accept-changes",
                                        help="Go on although the photos or base changed (finished steps are kept)."),
    studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP),
    broker: Optional[str] = typer.Option(None, "--broker", help=BROKER_HELP),
):
    """Continue a stopped, failed, cancelled or killed job from its first unfinished step."""
    from loracam.studio.job import check_inputs, run_job
    from loracam.workers.submit import broker_url

    url = broker_url(broker)
    if url:
        store = _store(studio)
        check_inputs(store, name, accept_changes)  # said here, not by a worker
        _send(store, name, url)
        return
    folder = run_job(_store(studio), name, echo=typer.echo, accept_changes=accept_changes)
    gallery = folder / "gallery" / "index.html"
    typer.echo(f"done: open {gallery}" if gallery.is_file() else f"done: {folder}")  # train/grid/tune: no gallery


@studio_app.command("list")
@user_errors
def list_jobs(studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP)):
    """Every job in the studio, with its state."""
    store = _store(studio)
    jobs = store.jobs()
    if not jobs:
        typer.echo(f"no jobs in {studio}")
    for job in jobs:
        done = sum(s.status == "done" for s in store.steps(job.name))
        typer.echo(f"{job.name:<20} {job.kind:<9} {job.status:<9} {done}/{len(store.steps(job.name))} steps  "
                   f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(job.updated))}"
                   + (f"  {job.message}" if job.message else ""))


@studio_app.command("status")
@user_errors
def status(name: str = typer.Argument(...), studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP)):
    """One job: its steps, their times, and its last events."""
    store = _store(studio)
    job = store.job(name)
    typer.echo(f"{job.name}: {job.kind} job, {job.status}" + (f" ({job.message})" if job.message else ""))
    typer.echo(f"folder: {job.folder}")
    worker = store.last_event(name, "worker")
    if job.status == "running" and job.owner:
        typer.echo(f"worker: {worker or job.owner}")
    elif worker:
        typer.echo(f"last worker: {worker}")
    for s in store.steps(name):
        took = f"{s.detail.get('seconds')} s" if s.detail.get("seconds") is not None else ""
        err = f"  {s.detail['error']}" if s.detail.get("error") else ""
        typer.echo(f"  {s.name:<10} {s.status:<8} {took}{err}")
    for t, kind, message in store.events(name, last=8):
        typer.echo(f"  {time.strftime('%H:%M:%S', time.localtime(t))} {kind}: {message}")


@studio_app.command("cancel")
@user_errors
def cancel(name: str = typer.Argument(...), studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP)):
    """Stop a job at its next step boundary (or mark a stopped one cancelled); resume continues it."""
    typer.echo(_store(studio).cancel(name))


@studio_app.command("worker")
@user_errors
def worker(studio: Path = typer.Option(Path("studio"), "--studio", help=STUDIO_HELP),
           idle_exit: Optional[float] = typer.Option(None, "--idle-exit", help="Exit after this many seconds with "
                                                     "nothing queued (default: run until stopped)."),
           poll: float = typer.Option(0.1, "--poll", help="Seconds between looks at the queue.")):
    """Run the jobs queued in the studio (studio, train, generate, grid and tune jobs from the web UI, or
    `studio run --queue`), one at a time, keeping the base model loaded between them, until stopped.
    One worker a studio folder; a job whose worker was killed is resumed by the next one."""
    from loracam.studio.worker import serve

    serve(studio, echo=lambda s: typer.echo(s), poll=poll, idle_exit=idle_exit)


@studio_app.command("styles")
@user_errors
def styles_cmd(style_dir: Optional[List[Path]] = typer.Option(None, "--style-dir", help="Your own style presets."),
               base: Optional[str] = typer.Option(None, "--base", help="Only styles for sd15, sdxl or toy.")):
    """The style presets: shipped ones and those in --style-dir folders."""
    from loracam.studio.styles import find_styles, list_styles

    typer.echo(list_styles(find_styles([Path(d) for d in style_dir or ()]), base_kind=base))
