"""The Gradio app: Studio (photos in, watch the job, gallery out), Jobs, Generate and Library pages.

Studio jobs are recorded in the studio folder's job store and queued; the studio's worker process runs them
(loracam/studio/worker.py), so they survive the web server. Generate renders in the server, one request at
a time (the GPU's concurrency), as A1111 does: a picture takes seconds, not a job's minutes.

Every handler opens its own JobStore: Gradio runs handlers on a thread pool and a SQLite connection belongs
to the thread that opened it. Engine errors (LoracamError) reach the page as their message (gr.Error), never
as a traceback."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr

from loracam.errors import LoracamError
from loracam.studio.store import JobStore
from loracam.web import guard, views

SUBJECTS = ("face", "pet", "garment")
UPLOADS = "uploads"  # below the studio folder: the photos of each job, as uploaded
GENERATED = "generated"  # below the studio folder: what the Generate page renders


@dataclass(frozen=True)
class WebConfig:
    studio: Path
    lora_dirs: tuple[Path, ...] = ()
    limits: guard.Limits = field(default_factory=guard.Limits)
    refresh_seconds: float = 2.0  # how often the Studio and Jobs pages look at the store


def user_errors(fn):
    """A LoracamError becomes the page's error message; anything else is Gradio's (a bug)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoracamError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


class Handlers:
    """The pages' actions, each a plain method (tests call them without a browser too)."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        self.studio = Path(cfg.studio).resolve()
        self.studio.mkdir(parents=True, exist_ok=True)
        self._models = None

    @contextmanager
    def store(self) -> Iterator[JobStore]:
        """The job store for one handler call (closed after it)."""
        store = JobStore(self.studio)
        try:
            yield store
        finally:
            store.close()

    # -- studio ----------------------------------------------------------------------------------------------

    def styles(self, subject: str = "face") -> list[str]:
        from loracam.studio.styles import find_styles

        return sorted(n for n, s in find_styles([]).items() if s.base == "toy" and s.suits(subject))

    def start_studio(self, photos, name: str, subject: str, trigger: str, styles, train_steps, per_style,
                     keep) -> tuple[str, str]:
        """Check the uploads, keep them in the studio folder, record the job and queue it for the worker."""
        from loracam.studio.job import StudioConfig, create_job

        name = (name or "").strip() or time.strftime("job-%Y%m%d-%H%M%S")
        paths = guard.check_photos([Path(getattr(p, "name", p)) for p in photos or []], self.cfg.limits)
        cfg = StudioConfig(name=name, subject=subject, trigger=(trigger or "sks").strip(), styles=tuple(styles or ()),
                           train_steps=int(train_steps) if train_steps else None,
                           per_style=int(per_style) if per_style else None, keep=int(keep or 6))
        with self.store() as store:
            if any(j.name == name for j in store.jobs()):
                raise LoracamError(f"a job named {name!r} exists; choose another name")
            folder = self._keep_photos(name, paths)
            try:
                create_job(store, replace(cfg, photos=str(folder)))
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # our copy of the uploads; the job was not made
                raise
            store.enqueue(name)
        return f"**{name}** queued: {len(paths)} photos, the worker runs it (follow it below)", name

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

    # -- jobs ------------------------------------------------------------------------------------------------

    def jobs(self) -> list[list]:
        with self.store() as store:
            return views.jobs_table(store)

    def job_names(self) -> list[str]:
        """Newest first, as the Jobs table lists them (without reading every job's steps)."""
        with self.store() as store:
            return [job.name for job in reversed(store.jobs())]

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
            store.enqueue(name)
        return f"job {name!r} queued again: the worker continues it from its first unfinished step"

    def job_file(self, name: str, relative: str) -> str:
        """A file of a job, by its path below the job's folder (what the client may ask for)."""
        path = guard.inside(guard.inside(self.studio, name), relative)
        if not path.is_file():
            raise LoracamError(f"job {name!r} has no file {relative!r}")
        return str(path)

    # -- generate --------------------------------------------------------------------------------------------

    @property
    def models(self):
        if self._models is None:
            from loracam.models import HashCache, ModelCache, default_cache_path

            self._models = ModelCache(HashCache(default_cache_path()))
        return self._models

    def lora_names(self) -> list[str]:
        from loracam.lora import LoraLibrary

        return LoraLibrary(list(self.cfg.lora_dirs)).names()

    def generate(self, prompt: str, negative: str, sampler: str, steps, cfg_scale, seed, width, height,
                 batch_size) -> tuple[list[tuple[str, str]], str]:
        from loracam.generate import GenRequest
        from loracam.generate.api import generate, save_rendered
        from loracam.lora import LoraLibrary

        req = GenRequest(prompt=prompt, negative=negative or "", sampler=sampler, steps=int(steps), cfg=float(cfg_scale),
                         seed=int(seed), width=int(width) or None, height=int(height) or None,
                         batch_size=int(batch_size), lora_dirs=tuple(str(d) for d in self.cfg.lora_dirs))
        library = LoraLibrary(list(self.cfg.lora_dirs), self.models.hash_cache)
        result = generate(req, self.models, library)
        out = self.studio / GENERATED
        paths = [save_rendered(r, out) for r in result.images]
        infotext = "\n\n".join(r.infotext for r in result.images)
        if result.warnings:
            infotext = "\n".join(f"warning: {w}" for w in result.warnings) + "\n\n" + infotext
        return [(str(p), p.name) for p in paths], infotext

    def read_png(self, path: str | None) -> tuple:
        """A dropped PNG's parameters, A1111's way: prompt, negative, sampler, steps, CFG, seed, size."""
        from loracam.generate.infotext import parse_size, read_png_infotext
        from loracam.generate.samplers import parse_sampler

        if not path:
            return (gr.skip(),) * 8
        info = read_png_infotext(Path(path))
        p = info.params
        try:
            sampler, _ = parse_sampler(p.get("Sampler", "Euler a"))
            width, height = parse_size(p["Size"]) if "Size" in p else (0, 0)
            return (info.prompt, info.negative, sampler, int(p.get("Steps", 20)), float(p.get("CFG scale", 7)),
                    int(p.get("Seed", -1)), width, height)
        except (ValueError, KeyError) as exc:
            raise LoracamError(f"the PNG's parameters have a malformed value ({exc})") from None

    # -- library ---------------------------------------------------------------------------------------------

    def library(self) -> list[list]:
        return views.library_rows(list(self.cfg.lora_dirs), self.models.hash_cache)

    def lora_details(self, file: str) -> tuple[dict, str | None]:
        """One LoRA of the library (by the file its row names): its metadata and hashes, and its preview."""
        from loracam.info import describe
        from loracam.lora import LoraLibrary

        known = {str(p) for p in LoraLibrary(list(self.cfg.lora_dirs)).files()}
        if file not in known:  # only files the library lists: the row's path is the client's to change
            raise LoracamError(f"{file!r} is not a LoRA of the library")
        preview = views.lora_preview(Path(file))
        return describe(Path(file), self.models.hash_cache), str(preview) if preview else None


def build_app(cfg: WebConfig) -> gr.Blocks:
    """The whole UI; the caller launches it (loracam/web/server.py)."""
    from loracam.generate.samplers import SAMPLERS

    h = Handlers(cfg)
    with gr.Blocks(title="loracam studio", analytics_enabled=False) as app:
        gr.Markdown("# loracam studio\nPhotos in, a trained LoRA and a gallery of the best portraits out.")
        with gr.Tab("Studio", id="studio"):
            with gr.Row():
                with gr.Column(scale=1):
                    photos = gr.File(label="Photos of the subject (5-30)", file_count="multiple", file_types=["image"],
                                     elem_id="photos")
                    name = gr.Textbox(label="Job name", placeholder="e.g. anna (default: the date and time)",
                                      elem_id="job-name")
                    subject = gr.Radio(list(SUBJECTS), value="face", label="Subject")
                    trigger = gr.Textbox(label="Trigger word", value="sks")
                    styles = gr.CheckboxGroup(h.styles("face"), label="Styles (none: every style that suits)")
                    with gr.Accordion("Advanced", open=False):
                        train_steps = gr.Number(label="Training steps (empty: the subject's rule)", precision=0)
                        per_style = gr.Number(label="Candidates a style (empty: the style's)", precision=0)
                        keep = gr.Number(label="Kept a style", value=6, precision=0)
                    start = gr.Button("Start the studio job", variant="primary", elem_id="start")
                    started = gr.Markdown()
                with gr.Column(scale=2):
                    watch = gr.Dropdown(h.job_names(), label="Watch job", allow_custom_value=False, elem_id="watch")
                    summary = gr.Markdown(elem_id="job-summary")
                    with gr.Row():
                        sheet = gr.Image(label="Prep: the dataset's contact sheet", type="filepath", interactive=False)
                        loss = gr.LinePlot(x="step", y="loss", label="Training loss", height=240)
                    with gr.Accordion("Prep's decisions", open=False):
                        prep = gr.Markdown()
                    previews = gr.Gallery(label="Candidates as they render", columns=8, height=220)
                    gallery = gr.Gallery(label="The gallery: kept images and their scores", columns=6,
                                         elem_id="gallery")
                    downloads = gr.File(label="Download: the LoRA, the report and the images", file_count="multiple",
                                        interactive=False)

        def show(job_name):
            v = h.job(job_name)
            if v is None:
                return "Pick a job, or start one.", None, None, "", [], [], None
            import pandas as pd

            curve = pd.DataFrame(v.loss, columns=["step", "loss"]) if v.loss else None
            return (v.summary, str(v.contact_sheet) if v.contact_sheet else None, curve, v.prep_report,
                    [str(p) for p in v.previews], [(str(p), c) for p, c in v.gallery],
                    [str(p) for p in v.downloads] or None)

        job_outputs = [summary, sheet, loss, prep, previews, gallery, downloads]
        subject.change(lambda s: gr.update(choices=h.styles(s), value=[]), subject, styles, api_name=False)
        def start_and_watch(*args):
            message, job_name = h.start_studio(*args)
            return message, gr.update(choices=h.job_names(), value=job_name)

        start.click(user_errors(start_and_watch), [photos, name, subject, trigger, styles, train_steps, per_style,
                                                   keep], [started, watch], api_name="start_studio")
        watch.change(user_errors(show), watch, job_outputs, api_name=False)

        with gr.Tab("Jobs", id="jobs"):
            table = gr.Dataframe(headers=views.JOB_COLUMNS, value=h.jobs(), interactive=False, elem_id="jobs-table")
            with gr.Row():
                picked = gr.Dropdown(h.job_names(), label="Job")
                cancel = gr.Button("Cancel")
                resume = gr.Button("Resume")
            said = gr.Markdown()
        cancel.click(user_errors(h.cancel), picked, said, api_name="cancel")
        resume.click(user_errors(h.resume), picked, said, api_name="resume")

        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", lines=3, value="1girl, upper body, red dress, white background")
                    negative = gr.Textbox(label="Negative prompt", lines=2)
                    with gr.Row():
                        lora_pick = gr.Dropdown(h.lora_names(), label="LoRA")
                        lora_weight = gr.Slider(0, 2, value=0.8, step=0.05, label="Weight")
                        add_lora = gr.Button("Add to prompt")
                    with gr.Row():
                        sampler = gr.Dropdown(list(SAMPLERS), value="DPM++ 2M", label="Sampler")
                        steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                        cfg_scale = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale")
                    with gr.Row():
                        seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
                        width = gr.Number(0, label="Width (0: the model's)", precision=0)
                        height = gr.Number(0, label="Height (0: the model's)", precision=0)
                        batch = gr.Slider(1, 8, value=1, step=1, label="Batch size")
                    go = gr.Button("Generate", variant="primary")
                    png = gr.Image(label="Drop a PNG to load its parameters", type="filepath", sources=["upload"])
                with gr.Column(scale=2):
                    images = gr.Gallery(label="Images", columns=4, elem_id="generated")
                    infotext = gr.Textbox(label="Parameters", lines=6)
        add_lora.click(lambda p, n, w: f"{p} <lora:{n}:{w:g}>" if n else p, [prompt, lora_pick, lora_weight], prompt,
                       api_name=False)
        go.click(user_errors(h.generate), [prompt, negative, sampler, steps, cfg_scale, seed, width, height, batch],
                 [images, infotext], api_name="generate", concurrency_id="gpu", concurrency_limit=1)
        png.upload(user_errors(h.read_png), png, [prompt, negative, sampler, steps, cfg_scale, seed, width, height],
                   api_name="read_png")

        with gr.Tab("Library", id="library") as lib_tab:
            lib = gr.Dataframe(headers=["name", "family", "dim", "hash", "about", "file"], value=h.library,
                               interactive=False, elem_id="library-table")
            gr.Markdown("LoRAs from " + (", ".join(f"`{d}`" for d in cfg.lora_dirs) or "no folder: start with "
                                         "`loracam web --lora-dir DIR`") + ". Click a row for its metadata.")
            with gr.Row():
                lora_meta = gr.JSON(label="Metadata and hashes")
                lora_prev = gr.Image(label="Preview (NAME.preview.png beside the file)", type="filepath",
                                     interactive=False)

        def pick_lora(evt: gr.SelectData, rows):
            return h.lora_details(rows.iloc[evt.index[0], -1] if hasattr(rows, "iloc") else rows[evt.index[0]][-1])

        lib.select(user_errors(pick_lora), lib, [lora_meta, lora_prev], api_name=False)

        lib_tab.select(h.library, None, lib, api_name=False)  # a LoRA trained since the page loaded shows

        # the pages follow the store: the watched job and the queue, every refresh_seconds
        timer = gr.Timer(cfg.refresh_seconds)
        timer.tick(lambda n: (*show(n), h.jobs()), watch, [*job_outputs, table], api_name=False, show_progress="hidden")
        # API-only: the list of jobs, one job as data, and a file of a job (what gradio_client scripts use)
        api = gr.JSON(visible=False)
        gr.Button(visible=False).click(lambda: h.jobs(), None, api, api_name="jobs")
        gr.Button(visible=False).click(user_errors(lambda n: _job_json(h.job(n))), gr.Textbox(visible=False), api,
                                       api_name="job")
        fname, frel = gr.Textbox(visible=False), gr.Textbox(visible=False)
        gr.Button(visible=False).click(user_errors(h.job_file), [fname, frel], gr.File(visible=False),
                                       api_name="job_file")
        def job_choices():
            names = h.job_names()
            return gr.update(choices=names), gr.update(choices=names)

        app.load(job_choices, None, [watch, picked], api_name=False)
    return app


def _job_json(v: views.JobView | None) -> dict:
    if v is None:
        raise LoracamError("name a job")
    return {"name": v.name, "status": v.status, "summary": v.summary, "loss_points": len(v.loss),
            "previews": [p.name for p in v.previews], "gallery": [{"file": str(p), "caption": c} for p, c in v.gallery],
            "downloads": [str(p) for p in v.downloads]}
