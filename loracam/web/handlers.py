"""The pages' actions as plain methods (no gradio here: tests call them without a server or a browser).

Every page that renders or trains records a job in the studio folder's job store and queues it; the studio's
worker process runs it (loracam/studio/worker.py), so one process holds the model and the GPU, and a job
survives the web server. Studio and Train pages watch their job; Generate, Grid and Tune wait for theirs
(``follow``) and then show its files.

Every method opens its own JobStore: Gradio runs handlers on a thread pool and a SQLite connection belongs
to the thread that opened it."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from loracam.config import to_dict
from loracam.errors import LoracamError
from loracam.studio.store import JobStore
from loracam.web import guard, views

SUBJECTS = ("face", "pet", "garment")
UPLOADS = "uploads"  # below the studio folder: the photos of each job, as uploaded
FINISHED = ("done", "stopped", "failed", "cancelled")


@dataclass(frozen=True)
class WebConfig:
    studio: Path
    lora_dirs: tuple[Path, ...] = ()
    model_dirs: tuple[Path, ...] = ()  # base checkpoints (A1111's models/Stable-diffusion)
    limits: guard.Limits = field(default_factory=guard.Limits)
    refresh_seconds: float = 2.0  # how often the Studio and Jobs pages look at the store
    follow_seconds: float = 0.1  # how often a waiting Generate/Grid/Tune request looks at its job
    broker: str | None = None  # jobs go to the Celery workers on this Redis (loracam/workers); None: the local worker


class Handlers:
    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        self.studio = Path(cfg.studio).resolve()
        self.studio.mkdir(parents=True, exist_ok=True)
        self._hashes = None

    @contextmanager
    def store(self) -> Iterator[JobStore]:
        """The job store for one handler call (closed after it)."""
        store = JobStore(self.studio)
        try:
            yield store
        finally:
            store.close()

    @property
    def hash_cache(self):
        if self._hashes is None:
            from loracam.models import HashCache, default_cache_path

            self._hashes = HashCache(default_cache_path())
        return self._hashes

    # -- studio and train: photos in, a job watched ----------------------------------------------------------

    def styles(self, subject: str = "face") -> list[str]:
        from loracam.studio.styles import find_styles

        return sorted(n for n, s in find_styles([]).items() if s.base == "toy" and s.suits(subject))

    def start_studio(self, photos, name: str, subject: str, trigger: str, styles, train_steps, per_style,
                     keep) -> tuple[str, str]:
        """Check the uploads, keep them in the studio folder, record the job and queue it for the worker."""
        from loracam.studio.job import StudioConfig

        cfg = StudioConfig(name=_job_name(name), subject=subject, trigger=(trigger or "sks").strip(),
                           styles=tuple(styles or ()), train_steps=_int(train_steps),
                           per_style=_int(per_style), keep=int(keep or 6))
        return self._start_with_photos(cfg, photos)

    def start_train(self, photos, name: str, subject: str, trigger: str, class_word: str, base: str, steps,
                    rank, lr) -> tuple[str, str]:
        """A LoRA from photos: the studio's prep and train steps (kohya's options over the subject's rule)."""
        from loracam.studio.job import StudioConfig

        options = {k: v for k, v in (("rank", _int(rank)), ("lr", float(lr) if lr else None)) if v is not None}
        if "rank" in options:
            options["alpha"] = float(options["rank"])  # scale 1 at any rank, as the toy rule's alpha = rank
        cfg = StudioConfig(name=_job_name(name), kind="train", subject=subject, trigger=(trigger or "sks").strip(),
                           class_word=(class_word or "").strip() or None, base=base or "toy",
                           train_steps=_int(steps), train_options=options)
        return self._start_with_photos(cfg, photos)

    def _start_with_photos(self, cfg, photos) -> tuple[str, str]:
        from loracam.studio.job import create_job

        paths = guard.check_photos([Path(getattr(p, "name", p)) for p in photos or []], self.cfg.limits)
        with self.store() as store:
            if any(j.name == cfg.name for j in store.jobs()):
                raise LoracamError(f"a job named {cfg.name!r} exists; choose another name")
            folder = self._keep_photos(cfg.name, paths)
            try:
                create_job(store, replace(cfg, photos=str(folder)))
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # our copy of the uploads; the job was not made
                raise
            self._queue(store, cfg.name)
        return f"**{cfg.name}** queued: {len(paths)} photos, the worker runs it (follow it below)", cfg.name

    def _keep_photos(self, name: str, paths: list[Path]) -> Path:
        """The uploads copied under studio/uploads/NAME, written aside and renamed in whole."""
        final = guard.inside(self.studio, f"{UPLOADS}/{name}")
        if final.exists():
            raise LoracamError(f"photos for a job named {name!r} are already in the studio; choose another name")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
        for i, p in enumerate(paths):
            shutil.copyfile(p, tmp / f"{i:03d}-{Path(p).name}")
        tmp.rename(final)
        return final

    def _queue(self, store: JobStore, name: str) -> None:
        from loracam.workers.submit import queue_job

        queue_job(store, name, self.cfg.broker)

    # -- jobs ------------------------------------------------------------------------------------------------

    def jobs(self, requests: bool = True) -> list[list]:
        with self.store() as store:
            return views.jobs_table(store, requests)

    def job_names(self, kinds: tuple[str, ...] | None = None) -> list[str]:
        """Newest first, as the Jobs table lists them (without reading every job's steps)."""
        with self.store() as store:
            return [j.name for j in reversed(store.jobs()) if kinds is None or j.kind in kinds]

    def job(self, name: str | None) -> views.JobView | None:
        if not name:
            return None
        with self.store() as store:
            return views.job_view(store, name)

    def cancel(self, name: str) -> str:
        if not name:
            raise LoracamError("pick a job first")
        with self.store() as store:
            return store.cancel(name)

    def resume(self, name: str) -> str:
        if not name:
            raise LoracamError("pick a job first")
        with self.store() as store:
            self._queue(store, name)
        return f"job {name!r} queued again: the worker continues it from its first unfinished step"

    def job_file(self, name: str, relative: str) -> str:
        """A file of a job, by its path below the job's folder (what the client may ask for)."""
        path = guard.inside(guard.inside(self.studio, name), relative)
        if not path.is_file():
            raise LoracamError(f"job {name!r} has no file {relative!r}")
        return str(path)

    # -- one command as a job: generate, grid, tune -------------------------------------------------------

    def submit(self, kind: str, args: dict) -> str:
        """Record one engine command as a job and queue it; returns the job's name."""
        from loracam.workers.submit import submit_task

        with self.store() as store:
            return submit_task(store, kind, args, self.cfg.broker)

    def follow(self, name: str, poll: float | None = None, timeout: float | None = None) -> Iterator[str]:
        """What the job is doing, once per poll, until it is done; a job that stopped raises its message."""
        from loracam.studio.worker import worker_pid

        poll = self.cfg.follow_seconds if poll is None else poll
        began, said = time.monotonic(), None
        while True:
            with self.store() as store:
                job = store.job(name)
                if job.status == "done":
                    return
                if job.status in FINISHED:
                    raise LoracamError(f"job {name} {job.status}: {job.message or 'see the Jobs page'}")
                ahead = store.queued()
                ahead = ahead[:ahead.index(name)] if name in ahead else []
                last = store.events(name, last=1)
            if job.status == "running":
                now = f"running ({last[0][2]})" if last else "running"
            elif self.cfg.broker:
                now = f"queued for the workers on {self.cfg.broker}"
            elif worker_pid(self.studio) is None:
                now = (f"queued, and no worker serves {self.studio}: start one with `loracam studio worker "
                       f"--studio {self.studio}` (loracam web starts one unless --no-worker)")
            else:
                now = f"queued behind {', '.join(ahead)}" if ahead else "queued: the worker takes it next"
            if now != said:  # the page hears of changes only
                yield now
                said = now
            if timeout is not None and time.monotonic() - began > timeout:
                raise LoracamError(f"job {name} did not finish in {timeout:g} s; it is still in the queue")
            time.sleep(poll)

    def job_dir(self, name: str, sub: str) -> Path:
        with self.store() as store:
            return Path(store.job(name).folder) / sub

    def generate_request(self, prompt: str, negative: str, base: str, sampler: str, steps, cfg_scale, seed, width,
                         height, batch_size) -> dict:
        """The Generate page's fields as a GenRequest (checked here: a bad value is said before queueing)."""
        from loracam.generate import GenRequest

        req = GenRequest(prompt=prompt or "", negative=negative or "", base=_base(base), sampler=sampler,
                         steps=int(steps), cfg=float(cfg_scale), seed=int(seed), width=_int(width) or None,
                         height=_int(height) or None, batch_size=int(batch_size), lora_dirs=self.lora_dirs())
        return to_dict(req)

    def generated(self, name: str) -> tuple[list[tuple[str, str]], str]:
        """A finished generate job's images and their parameters (the infotext each PNG carries)."""
        paths = sorted(self.job_dir(name, "images").glob("*.png"))
        paths = [p for p in paths if "-control" not in p.name]
        return [(str(p), p.name) for p in paths], "\n\n".join(png_text(p) for p in paths)

    def grid_args(self, request: dict, axes: list[tuple[str, str]], seeds_row, vary_seeds: str = "") -> dict:
        """A grid job's arguments: the request, the axes as TYPE=VALUES (checked now), a seed row or none."""
        from loracam.grid import AxisSpec

        specs = [f"{kind}={values.strip()}" if kind and kind != "Nothing" and (values or "").strip() else None
                 for kind, values in axes]
        for s in specs:
            if s:
                AxisSpec.parse(s)
        row = _int(seeds_row)
        if row and any(specs):
            raise LoracamError("a seed row makes its own X axis: clear the axes, or set the seed row to 0")
        if not row and not any(specs):
            raise LoracamError("give at least one axis (a type and its values), or a seed row")
        return {"request": request, "axes": specs, "seeds": row or None, "options": {"vary_seeds": vary_seeds or ""}}

    def grid_result(self, name: str) -> tuple[str | None, list[tuple[str, str]]]:
        """A finished grid job: the grid picture and its cells (each a PNG with its own parameters)."""
        folder = self.job_dir(name, "grid")
        pngs = sorted(p for p in folder.glob("*.png") if "-control" not in p.name)
        grid = [p for p in pngs if "Script: X/Y/Z plot" in png_text(p)]  # the grid's infotext, A1111's key
        cells = [p for p in pngs if p not in grid]
        return (str(grid[-1]) if grid else None), list(zip(map(str, cells), _cell_captions(cells)))

    def tune_args(self, prompt: str, negative: str, base: str, seeds, budget) -> dict:
        from loracam.tune.run import TuneConfig, check_budget

        n = _int(seeds) or 3
        cfg = TuneConfig(prompt=prompt or "", negative=negative or "", base=_base(base), n_seeds=n,
                         budget=_int(budget) or 18, lora_dirs=self.lora_dirs())
        tags = re.findall(r"<lora:[^>]+>", cfg.prompt)
        if not tags:
            raise LoracamError("put the LoRAs to tune in the prompt as <lora:NAME:1> tags")
        check_budget(cfg.budget, len(tags))  # said now, not by a job that stops in the queue
        return to_dict(cfg)

    def tune_result(self, name: str) -> tuple[list[list], list[tuple[str, str]], str]:
        """A finished tune job: per seed the weights found, the pictures (search, grids), and the report."""
        folder = self.job_dir(name, "tune")
        data = json.loads((folder / "tune.json").read_text())
        rows = [[s["seed"], ", ".join(f"{k} {v:g}" for k, v in s["weights"].items()), _shown(s), s["renders"],
                 s["prompt"]] for s in data["seeds"]]
        pics = [(str(folder / "search.png"), "the search")] if (folder / "search.png").is_file() else []
        pics += [(str(p), p.stem) for p in sorted(folder.glob("grid-*.png"))]
        with self.store() as store:
            report = "\n".join(m for _, kind, m in store.events(name) if kind == "tune")
        return rows, pics, report

    # -- library ---------------------------------------------------------------------------------------------

    def lora_dirs(self) -> tuple[str, ...]:
        """The library's folders and the LoRAs this studio trained (each job's lora folder)."""
        trained = sorted(str(p) for p in self.studio.glob("*/lora") if p.is_dir())
        return tuple(str(d) for d in self.cfg.lora_dirs) + tuple(trained)

    def _studio_checkpoint(self, path: Path) -> bool:
        """A checkpoint a studio job saved while training: not listed (a prompt may still name it)."""
        from loracam.studio.job import is_checkpoint

        return Path(path).is_relative_to(self.studio) and is_checkpoint(path)

    def lora_names(self) -> list[str]:
        from loracam.lora import LoraLibrary

        library = LoraLibrary([Path(d) for d in self.lora_dirs()])
        hidden = {p.stem for p in library.files() if self._studio_checkpoint(p)}
        return [n for n in library.names() if n not in hidden]

    def library(self) -> list[list]:
        return views.library_rows([Path(d) for d in self.lora_dirs()], self.hash_cache, self._studio_checkpoint)

    def base_models(self) -> list[list]:
        return views.base_rows(list(self.cfg.model_dirs))

    def base_choices(self) -> list[tuple[str, str]]:
        """(label, value) for the pages' base pickers: the usable bases only."""
        return [(row[0] if row[0] != "toy" else "toy (built-in)", row[3]) for row in self.base_models()
                if not row[1].startswith(("not usable", "unreadable"))]

    def lora_details(self, file: str) -> tuple[dict, str | None]:
        """One LoRA of the library (by the file its row names): its metadata and hashes, and its preview."""
        from loracam.info import describe
        from loracam.lora import LoraLibrary

        known = {str(p) for p in LoraLibrary([Path(d) for d in self.lora_dirs()]).files()}
        if file not in known:  # only files the library lists: the row's path is the client's to change
            raise LoracamError(f"{file!r} is not a LoRA of the library")
        preview = views.lora_preview(Path(file))
        return describe(Path(file), self.hash_cache), str(preview) if preview else None

    def cell_params(self, path: str | None) -> tuple:
        """A grid cell's parameters for the Generate page; the cell must be a file of this studio."""
        if not path:
            raise LoracamError("click a cell of the grid first")
        cell = Path(path).resolve()
        if not cell.is_relative_to(self.studio) or not cell.is_file():
            raise LoracamError("that cell is not a file of this studio; render the grid again")
        return self.read_png(str(cell))

    def read_png(self, path: str | None) -> tuple | None:
        """A PNG's parameters, A1111's way: prompt, negative, sampler, steps, CFG, seed, size; None: no file."""
        from loracam.generate.infotext import parse_size, read_png_infotext
        from loracam.generate.samplers import parse_sampler

        if not path:
            return None
        info = read_png_infotext(Path(path))
        p = info.params
        try:
            sampler, _ = parse_sampler(p.get("Sampler", "Euler a"))
            width, height = parse_size(p["Size"]) if "Size" in p else (0, 0)
            return (info.prompt, info.negative, sampler, int(p.get("Steps", 20)), float(p.get("CFG scale", 7)),
                    int(p.get("Seed", -1)), width, height)
        except (ValueError, KeyError) as exc:
            raise LoracamError(f"the PNG's parameters have a malformed value ({exc})") from None


def _job_name(name: str | None) -> str:
    return (name or "").strip() or time.strftime("job-%Y%m%d-%H%M%S")


def _int(v) -> int | None:
    return int(v) if v not in (None, "") else None


def _base(name: str | None) -> str | None:
    return None if not name or name == "toy" else name


def _shown(seed: dict) -> str:
    """Which LoRAs the answer shows, in tune.json's terms (ok: every LoRA reached at some weight shows)."""
    if seed["not_reached"]:
        return "not reached: " + ", ".join(seed["not_reached"])
    return "all" if seed["ok"] else "no render showed all"


def png_text(p: Path) -> str:
    """The infotext a PNG carries (A1111's "parameters" text chunk), or "" when it has none."""
    from PIL import Image

    with Image.open(p) as im:
        return im.text.get("parameters", "") if hasattr(im, "text") else ""


def _cell_captions(cells: list[Path]) -> list[str]:
    """Each cell by what varies across the grid (its axes' values), as A1111's grid labels name them."""
    from loracam.generate.infotext import read_png_infotext

    infos = [read_png_infotext(p) for p in cells]
    keys = sorted({k for i in infos for k in i.params})
    varying = [k for k in keys if len({str(i.params.get(k)) for i in infos}) > 1 and k != "Lora hashes"]
    tags = len({i.prompt for i in infos}) > 1
    out = []
    for i in infos:
        parts = [f"{k} {i.params.get(k, '')}" for k in varying]
        if tags:  # a Prompt S/R or lora axis: the prompt's LoRA tags, or the prompt itself
            found = re.findall(r"<lora:[^>]+>", i.prompt)
            parts.insert(0, " ".join(found) if found else i.prompt[:40])
        out.append(", ".join(parts))
    return out
