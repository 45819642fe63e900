"""A studio job: a named sequence of steps run from the job store, resumable after any interruption.

Each step is a function of a ``Run`` that writes its outputs into the job's folder (every file written
whole, under its final name only when complete) and returns a small summary; the store marks it done in
one transaction after it returns. A step killed half-way is run again on resume and finds its finished
files (renders, checkpoints) already there, so no finished work is redone and nothing is written twice.

The job's whole configuration is fixed when it is created, style presets included (their resolved
content, not their file names), so editing a preset later never changes a job half-way through.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from loracam.config import from_dict, to_dict
from loracam.errors import LoracamError
from loracam.io import DiskFull
from loracam.studio.inputs import base_fingerprint, photo_changes, photos_fingerprint
from loracam.studio.heartbeat import Heartbeat, StepControl
from loracam.studio.store import LEASE_SECONDS, Cancelled, Finished, JobStore

JOB_VERSION = 1  # the layout of a job's config and folder; a newer one is refused, not guessed at
Echo = Callable[[str], None]
SUBJECTS = ("face", "pet", "garment")
CLASS_WORDS = {"face": "woman", "pet": "dog", "garment": "dress"}  # the subject's class when none is given


@dataclass(frozen=True)
class StudioConfig:
    """Everything a studio job was asked for (saved in the job store; the styles' content too)."""

    name: str
    kind: str = "portrait"  # portrait | dressup | train (prep and train only)
    photos: str | None = None
    subject: str = "face"
    trigger: str = "sks"
    class_word: str | None = None
    styles: tuple[str, ...] = ()  # empty: every style that suits the subject and the base
    base: str = "toy"
    per_style: int | None = None  # candidates per style; None: the style's own number
    keep: int = 6  # images kept per style (FaceChain returns 6)
    train_steps: int | None = None  # None: the subject's rule on this base
    seed: int = 1000
    batch_size: int = 8
    lora_weight: float | None = None  # None: the toy rule's, or the LoRA's recommended weight
    style_dirs: tuple[str, ...] = ()
    lora_dirs: tuple[str, ...] = ()
    upscaler_dirs: tuple[str, ...] = ()
    controlnet_dirs: tuple[str, ...] = ()
    device: str = "auto"
    # dressup
    loras: tuple[str, ...] = ()
    prompt: str | None = None
    negative: str = ""
    seeds: int = 8
    lora_weights: tuple[float, ...] = ()  # the first row's weights and the grid's centre (from `loracam tune`)
    resolved_styles: tuple[dict, ...] = field(default=())  # filled at creation: the presets' content
    train_options: dict = field(default_factory=dict)  # TrainConfig keys over the subject's rule (rank, lr, ...)

    def __post_init__(self):
        if not self.name or any(c in self.name for c in "/\\:") or self.name.startswith("."):
            raise LoracamError(f"--name {self.name!r}: a job name is a plain folder name (letters, digits, - and _)")
        if self.subject not in SUBJECTS:
            raise LoracamError(f"--subject {self.subject!r}: use one of {', '.join(SUBJECTS)}")
        if self.keep < 1 or (self.per_style is not None and self.per_style < 1) or self.batch_size < 1:
            raise LoracamError("--keep, --per-style and --batch-size must be at least 1")
        if self.lora_weights and len(self.lora_weights) != len(self.loras):
            raise LoracamError(f"{len(self.lora_weights)} weights for {len(self.loras)} LoRAs: give one weight a LoRA")
        if self.per_style is not None and self.per_style < self.keep:
            raise LoracamError(f"--per-style {self.per_style} is fewer than --keep {self.keep}: the judge "
                               "needs more candidates than it keeps")

    @property
    def word(self) -> str:
        return self.class_word or CLASS_WORDS[self.subject]


@dataclass
class Run:
    """What a step gets: the job's config, folder and store, and the shared model cache."""

    store: JobStore
    cfg: StudioConfig
    folder: Path
    echo: Echo
    lease: object
    _models: object = None
    heartbeat: object = None  # loracam/studio/heartbeat.py: renews the lease while a step works

    @property
    def models(self):
        if self._models is None:
            from loracam.models import HashCache, ModelCache, default_cache_path

            self._models = ModelCache(HashCache(default_cache_path()))
        return self._models

    def note(self, step: str, message: str, check: bool = True) -> None:
        self.echo(f"   {message}")
        self.store.event(self.cfg.name, step, message)
        if check and self.heartbeat is not None:
            self.heartbeat.check()  # cancelled or taken over while this step worked: stop here

    @property
    def control(self):
        """What a long step polls to stop early (training checks it every step)."""
        return self.heartbeat.control

    @functools.cached_property
    def _styles(self) -> list:
        from loracam.studio.styles import StylePreset

        return [from_dict(StylePreset, d, where=f"job {self.cfg.name}'s style") for d in self.cfg.resolved_styles]

    def styles(self) -> list:
        """The job's style presets, as they were when it was created."""
        return self._styles


def kinds() -> dict[str, tuple[tuple[str, Callable[[Run], dict]], ...]]:
    """Job kind -> its steps in order (imported late: the steps pull in the engine)."""
    from loracam.studio.dressup import DRESSUP_STEPS
    from loracam.studio.portrait import PORTRAIT_STEPS
    from loracam.studio.tasks import TASK_STEPS

    return {"portrait": PORTRAIT_STEPS, "dressup": DRESSUP_STEPS, "train": PORTRAIT_STEPS[:2], **TASK_STEPS}


def job_config(job) -> "StudioConfig":
    """A stored job's config as its kind's dataclass (a studio job's, or one engine command's)."""
    from loracam.studio.tasks import TASKS, TaskConfig

    cls = TaskConfig if job.kind in TASKS else StudioConfig
    return from_dict(cls, job.config, where=f"job {job.name}")


def job_folder(studio: Path, name: str) -> Path:
    return Path(studio).resolve() / name


def create_job(store: JobStore, cfg: StudioConfig, echo: Echo = print) -> StudioConfig:
    """Check the inputs, resolve the styles, and record a new job (nothing runs yet)."""
    steps = kinds()[cfg.kind]
    folder = job_folder(store.studio, cfg.name)
    if folder.exists() and any(folder.iterdir()):
        raise LoracamError(f"{folder} already exists and is not empty; choose another --name")
    if isinstance(cfg, StudioConfig):
        _check_train_options(cfg.train_options)
        cfg = replace(cfg, resolved_styles=tuple(to_dict(s) for s in _pick_styles(cfg)))
    else:  # one engine command: its paths must mean the same to a worker started elsewhere
        from loracam.studio.tasks import absolute_paths

        cfg = replace(cfg, args=absolute_paths(cfg.args))
    inputs = _fingerprints(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    store.create(cfg.name, cfg.kind, folder, to_dict(cfg), inputs, [name for name, _ in steps], JOB_VERSION)
    return cfg


JOB_SETS = {"dataset", "output", "base", "resume", "device", "save_every_steps", "select", "identity_images"}


def _check_train_options(options: dict) -> None:
    """Train options are TrainConfig's keys with its types: a typo is refused now, not when the job trains."""
    if not options:
        return
    from loracam.train import TrainConfig

    mine = sorted(set(options) & JOB_SETS)
    if mine:
        raise LoracamError(f"train options {', '.join(mine)}: the job sets these itself (its folders, base, "
                           "checkpoints and device); give the others (rank, lr, max_steps, ...)")
    from_dict(TrainConfig, {"dataset": ".", **options}, where="train options")


def style_base(base: str | None) -> str:
    """The kind of base a style is written for that this job's base is: toy, sd15 (SD1.x) or sdxl, by the family
    of its files (read by name and header, not loaded)."""
    if base in (None, "toy"):
        return "toy"
    from loracam.models.loader import ref_family

    return "sdxl" if ref_family(base) == "sdxl" else "sd15"


def _pick_styles(cfg: StudioConfig):
    from loracam.studio.styles import find_styles

    if cfg.kind in ("dressup", "train") and not cfg.styles:
        return []
    found = find_styles([Path(d) for d in cfg.style_dirs])
    base_kind = style_base(cfg.base)
    if cfg.styles:
        unknown = [s for s in cfg.styles if s not in found]
        if unknown:
            raise LoracamError(f"unknown style {unknown[0]!r}; `loracam studio styles` lists them: "
                               + ", ".join(sorted(found)))
        chosen = [found[s] for s in cfg.styles]
        wrong = [s.name for s in chosen if s.base != base_kind]
        if wrong:
            raise LoracamError(f"style {wrong[0]!r} is written for a {found[wrong[0]].base} base, and this job's base "
                               f"is {cfg.base}; pick styles marked {base_kind} (`loracam studio styles`)")
    else:
        chosen = [s for s in found.values() if s.base == base_kind and s.suits(cfg.subject)]
        if not chosen:
            raise LoracamError(f"no style suits a {cfg.subject} on a {base_kind} base; give --styles")
    off = [s.name for s in chosen if not s.suits(cfg.subject)]
    if off:
        raise LoracamError(f"style {off[0]!r} is not written for a {cfg.subject} (its subjects: "
                           f"{', '.join(found[off[0]].subjects)}); pick another")
    return chosen


def _fingerprints(cfg: StudioConfig) -> dict:
    out = {"base": base_fingerprint(cfg.base)}
    if cfg.photos:
        out["photos_dir"] = str(Path(cfg.photos).resolve())
        out["photos"] = photos_fingerprint(Path(cfg.photos))
        if not out["photos"]:
            raise LoracamError(f"{cfg.photos} holds no photos (jpg, png, webp, ...); point at the folder of photos")
    return out


def check_inputs(store: JobStore, name: str, accept_changes: bool = False) -> list[str]:
    """What changed in the job's photos and base since it began; raise unless ``accept_changes``."""
    job = store.job(name)
    cfg = job_config(job)
    changes = []
    now_base = base_fingerprint(cfg.base)
    if now_base != job.inputs.get("base"):
        changes.append(f"the base model {cfg.base} is not the one the job began with "
                       "(its finished steps were made with the other one)")
    if cfg.photos:
        folder = Path(job.inputs.get("photos_dir", cfg.photos))
        if not folder.is_dir():
            changes.append(f"the photos folder {folder} is gone")
        else:
            diff = photo_changes(job.inputs.get("photos", {}), photos_fingerprint(folder))
            if diff:
                changes.append(f"the photos in {folder} changed ({'; '.join(diff)})")
    if changes and not accept_changes:
        raise LoracamError(f"job {name!r} was not resumed: " + "; and ".join(changes) + ". Put them back as "
                           f"they were, or run `loracam studio resume {name} --accept-changes` to go on with what "
                           "is there now (finished steps are kept as they are)")
    return changes


def run_job(store: JobStore, name: str, echo: Echo = print, accept_changes: bool = False,
            stop_after: str | None = None, models=None, lease_seconds: float = LEASE_SECONDS,
            who: str | None = None) -> Path:
    """Run (or resume) a job's unfinished steps; returns its folder. Raises LoracamError on a failed step,
    which stays unfinished (its files from before the failure are kept) for the next resume."""
    job = store.job(name)
    if job.version > JOB_VERSION:
        raise LoracamError(f"job {name!r} was made by a newer loracam (job version {job.version}, this one runs "
                           f"{JOB_VERSION}); upgrade loracam to resume it. Nothing was changed.")
    if job.status == "done":
        gallery = job.folder / "gallery" / "index.html"
        echo(f"job {name!r} is already done: {gallery if gallery.is_file() else job.folder}")
        return job.folder
    changes = check_inputs(store, name, accept_changes)
    try:
        # a worker (``who``) runs jobs from the queue and never a cancelled one (the user's resume queues it
        # again first); the user's own resume of a job it read as cancelled means to run it
        lease = store.acquire(name, seconds=lease_seconds, resume_cancelled=not who and job.status == "cancelled")
    except Finished:  # finished by another worker between the look above and the lease
        echo(f"job {name!r} is already done (finished by another worker meanwhile): {job.folder}")
        return job.folder
    if who:  # a worker: `studio status` and the Jobs page say which one runs the job
        store.event(name, "worker", f"run by {who} ({lease.owner})")
    for change in changes:
        store.event(name, "accepted", change)
    heartbeat = Heartbeat(store.studio, lease, StepControl())
    run = Run(store, job_config(job), job.folder, echo, lease, models, heartbeat)  # models: the worker's, kept warm
    with heartbeat:
        return _run_steps(store, name, job, run, stop_after)


def _run_steps(store: JobStore, name: str, job, run: Run, stop_after: str | None) -> Path:
    lease, echo = run.lease, run.echo
    steps = dict(kinds()[job.kind])
    current = None
    try:
        for row in store.steps(name):
            if row.status == "done":
                echo(f"== {row.name}: done before, kept")
                continue
            current = row.name
            lease.renew()
            echo(f"== {row.name}")
            store.step_status(name, row.name, "running")
            t = time.time()
            detail = steps[row.name](run) or {}
            detail["seconds"] = round(time.time() - t, 1)
            _record_artefacts(store, name, row.name, job.folder)
            store.step_status(name, row.name, "done", detail)
            store.event(name, "step", f"{row.name} done in {detail['seconds']} s")
            if stop_after == row.name:
                lease.release("stopped", f"stopped after {row.name}, as asked")
                return job.folder
        lease.release("done")
    except Cancelled as exc:
        store.step_status(name, current, "pending")
        lease.release("cancelled", str(exc))
        raise
    except DiskFull as exc:
        _stopped(store, name, current, lease, f"{exc}; then `loracam studio resume {name}`")
        raise LoracamError(f"job {name!r} stopped at step {current}: {exc}. Finished steps are kept; "
                           f"`loracam studio resume {name}` continues from there") from None
    except LoracamError as exc:
        _stopped(store, name, current, lease, str(exc))
        raise LoracamError(f"job {name!r} stopped at step {current}: {exc}. Finished steps are kept; fix that "
                           f"and `loracam studio resume {name}`") from None
    except BaseException as exc:  # KeyboardInterrupt, or a bug: stop cleanly, keep the traceback for bugs
        _stopped(store, name, current, lease, f"{type(exc).__name__}: {exc}")
        raise
    return job.folder


# what each step leaves behind, as the store's artefacts table lists it (kind -> glob below the job folder)
ARTEFACTS = {
    "prep": {"dataset": "dataset/manifest.json", "contact sheet": "dataset/contact_sheet.png"},
    "train": {"lora": "lora/*.safetensors", "training log": "lora/*.events.jsonl"},
    "render": {"candidate": "candidates/*/*.png"},
    "judge": {"ranking": "judge/*/ranking.json", "contact sheet": "judge/*/sheet.png"},
    "upscale": {"final": "final/*/*.png"},
    "gallery": {"gallery": "gallery/*"},
    "seeds": {"seed row": "seeds/*.png"},
    "weights": {"weight grid": "weights/*-grid.png", "grid cell": "weights/*/*.png"},
    "choose": {"choice": "weights/chosen.json"},
    "finish": {"final": "final/*.png"},
}


def is_checkpoint(path: Path) -> bool:
    """A LoRA saved during training (NAME-stepNNNNNNNN.safetensors), not the one the job made."""
    return "-step" in Path(path).stem


def _record_artefacts(store: JobStore, name: str, step: str, folder: Path) -> None:
    found = []
    for kind, pattern in ARTEFACTS.get(step, {}).items():
        for path in sorted(folder.glob(pattern)):
            what = ("checkpoint" if kind == "lora" and is_checkpoint(path) else
                    "control map" if "-control" in path.name else kind)
            found.append((path.relative_to(folder), what))
    store.artefacts_add(name, step, found)


def _stopped(store: JobStore, name: str, step: str | None, lease, message: str) -> None:
    import sqlite3

    try:
        if step:
            store.step_status(name, step, "failed", {"error": message})
        store.event(name, "stopped", message)
        lease.release("stopped", message)
    except sqlite3.Error:
        # A full disk can refuse the store's own write too: the row keeps this (soon dead) process as its
        # owner, which the next resume takes over at once, and the step is not marked done, so it runs again.
        pass
