"""One engine command as a job: generate, grid and tune, queued in the studio and run by its worker.

The web UI's Generate, Grid and Tune pages record one of these instead of rendering in the server, so one
process (the worker) holds the model and the GPU, and a page closed or a server restarted loses nothing: the
job is in the store and its files in its folder. (Training is the portrait job's first two steps: the
``train`` kind in loracam/studio/job.py.)

Each command writes into its own folder of the job and marks it finished last: the engine's writers number
their files and never overwrite, so a step run again after a kill starts from an emptied folder (its own
half-written files, nothing of the user's) and leaves the same files as one run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loracam.config import from_dict
from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes

TASKS = ("generate", "grid", "tune", "train-dataset")
REQUESTS = ("generate", "grid", "tune")  # what the web pages ask for interactively (the Jobs page hides them)
DONE = ".done"  # in a command's folder once all its files are written


@dataclass(frozen=True)
class TaskConfig:
    """A command's arguments as the engine's own configs take them (a GenRequest, a TuneConfig, ...)."""

    name: str
    kind: str  # generate | grid | tune | train-dataset (loracam train on a prepared or kohya dataset)
    args: dict = field(default_factory=dict)
    photos: str | None = None  # none: what check_inputs looks at for studio jobs

    def __post_init__(self):
        if self.kind not in TASKS:
            raise LoracamError(f"unknown task {self.kind!r}; use one of {', '.join(TASKS)}")
        if not self.name or any(c in self.name for c in "/\\:") or self.name.startswith("."):
            raise LoracamError(f"job name {self.name!r}: a plain folder name (letters, digits, - and _)")

    @property
    def base(self) -> str:
        request = self.args.get("request", self.args)
        return request.get("base") or "toy"

    @property
    def device(self) -> str:
        return self.args.get("request", self.args).get("device", "auto")


def task_name(kind: str) -> str:
    """A new job's name for one command: its kind, the time, and 4 hex digits (two in one second differ)."""
    import secrets
    import time

    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _whole(run, folder: str, write) -> Path:
    """Run ``write(FOLDER)`` into an empty FOLDER and mark it finished; a finished FOLDER is kept as it is.

    The mark is written last, so a FOLDER without it is a killed run's half (this job's own files, nothing
    of the user's): it is emptied and written again. (Not a FOLDER.part renamed at the end: tune.json and
    the engine's messages name the folder they were written in.)"""
    final = run.folder / folder
    mark = final / DONE
    if mark.is_file():
        return final
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir(parents=True)
    write(final)
    atomic_write_bytes(mark, b"")
    return final


def _library(run, lora_dirs):
    from loracam.lora import LoraLibrary

    return LoraLibrary([Path(d) for d in lora_dirs], run.models.hash_cache)


def generate_step(run) -> dict:
    from loracam.generate import GenRequest
    from loracam.generate.api import generate

    req = from_dict(GenRequest, run.cfg.args, where=f"job {run.cfg.name}'s request")
    warnings: list[str] = []

    def write(out: Path) -> None:
        result = generate(req, run.models, _library(run, req.lora_dirs))
        result.save(out)
        warnings.extend(result.warnings)

    out = _whole(run, "images", write)
    for w in warnings:
        run.note("generate", f"warning: {w}")
    return {"images": len(list(out.glob("*.png")))}


def grid_step(run) -> dict:
    from loracam.generate import GenRequest
    from loracam.grid import AxisSpec, GridOptions, run_grid

    a = run.cfg.args
    req = from_dict(GenRequest, a["request"], where=f"job {run.cfg.name}'s request")
    specs = [AxisSpec.parse(s) if s else None for s in a.get("axes", [])]
    opts = from_dict(GridOptions, a.get("options", {}), where=f"job {run.cfg.name}'s grid options")
    said = {}

    def write(out: Path) -> None:
        res = run_grid(req, specs, opts, run.models, _library(run, req.lora_dirs), out, seeds=a.get("seeds"),
                       progress=lambda i, n: run.lease.renew() if i % 8 == 0 else None)  # a cancel stops it
        said.update(cells=len(res.paths["cells"]), rendered=res.rendered)
        shutil.rmtree(out / "cell-cache", ignore_errors=True)  # this job's cells are its own files already

    _whole(run, "grid", write)
    return said


def tune_step(run) -> dict:
    from loracam.tune.run import TuneConfig, run_tune

    cfg = from_dict(TuneConfig, run.cfg.args, where=f"job {run.cfg.name}'s tune options")
    said = {}

    def write(out: Path) -> None:
        res = run_tune(cfg, run.models, _library(run, cfg.lora_dirs), out, echo=lambda s: _said(run, s))
        said.update(renders=res.renders)

    _whole(run, "tune", write)
    return said


def _said(run, line: str) -> None:
    run.note("tune", line)
    run.lease.renew()  # tune reports every round: a cancel stops it there


def train_dataset_step(run) -> dict:
    """`loracam train DATASET` as a job: the LoRA goes to the job's lora folder; a rerun resumes training."""
    from loracam.train import TrainConfig, train

    out = run.folder / "lora" / f"{run.cfg.name}.safetensors"
    if out.is_file():
        return {"lora": str(out)}
    cfg = from_dict(TrainConfig, {**run.cfg.args, "output": str(out), "resume": True},
                    where=f"job {run.cfg.name}'s train options")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = train(cfg, echo=lambda s: run.note("train", s, check=False), progress=False, control=run.control)
    if result.stopped_early:
        run.heartbeat.check()  # cancelled or taken over: say which (the checkpoint is saved)
    if result.stopped_early or not out.is_file():
        raise LoracamError("training stopped before it wrote the LoRA; resume the job to continue it")
    return {"lora": str(out), "steps": result.steps}


# Paths in a command's arguments, made absolute when the job is made: a worker (another process, maybe
# another machine with the same mounts) runs it from another folder.
PATH_KEYS = ("dataset", "init_image", "mask", "lora_dirs", "upscaler_dirs", "controlnet_dirs")


def absolute_paths(args: dict) -> dict:
    out = {}
    for key, value in args.items():
        if isinstance(value, dict):
            out[key] = absolute_paths(value)
        elif key in PATH_KEYS and isinstance(value, str) and value:
            out[key] = str(Path(value).expanduser().resolve())
        elif key in PATH_KEYS and isinstance(value, (list, tuple)):
            out[key] = [str(Path(v).expanduser().resolve()) for v in value]
        elif key in ("base", "clip") and isinstance(value, str) and Path(value).expanduser().exists():
            out[key] = str(Path(value).expanduser().resolve())  # a file or folder; a hub id or toy stays
        elif key == "references" and isinstance(value, (list, tuple)):
            out[key] = [[n, str(Path(f).expanduser().resolve())] for n, f in value]
        else:
            out[key] = value
    return out


TASK_STEPS = {
    "generate": (("generate", generate_step),),
    "grid": (("grid", grid_step),),
    "tune": (("tune", tune_step),),
    "train-dataset": (("train", train_dataset_step),),
}
