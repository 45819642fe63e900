"""The Gradio app: Studio (photos in, watch the job, gallery out), Train, Jobs, and the pages of
loracam/web/pages.py (Generate, Grid, Tune, Library).

Every page that computes queues a job for the studio's worker (loracam/web/handlers.py says why); the pages
only record, wait and show. Engine errors (LoracamError) reach the page as their message (gr.Error), never as
a traceback."""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from loracam.errors import LoracamError
from loracam.web import views
from loracam.web.handlers import SUBJECTS, Handlers, WebConfig

__all__ = ["WebConfig", "build_app", "user_errors"]


def user_errors(fn):
    """A LoracamError becomes the page's error message; anything else is Gradio's (a bug). Generators too:
    the pages that wait for their job yield its progress."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except LoracamError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LoracamError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


class Watch:
    """A job's progress panel (Studio and Train pages): steps and events, prep's contact sheet and decisions,
    the loss curve, the candidates as they render, the gallery, the downloads."""

    def __init__(self, h: Handlers, kinds: tuple[str, ...], elem: str, gallery: bool = True):
        self.h, self.kinds = h, kinds
        self.pick = gr.Dropdown(h.job_names(kinds), label="Watch job", allow_custom_value=False, elem_id=f"{elem}watch")
        self.summary = gr.Markdown(elem_id=f"{elem}job-summary")
        with gr.Row():
            self.sheet = gr.Image(label="Prep: the dataset's contact sheet", type="filepath", interactive=False)
            self.loss = gr.LinePlot(x="step", y="loss", label="Training loss", height=240)
        with gr.Accordion("Prep's decisions", open=False):
            self.prep = gr.Markdown()
        self.previews = gr.Gallery(label="Candidates as they render", columns=8, height=220, visible=gallery)
        self.gallery = gr.Gallery(label="The gallery: kept images and their scores", columns=6,
                                  elem_id=f"{elem}gallery", visible=gallery)
        self.downloads = gr.File(label="Download: the LoRA, the report and the images", file_count="multiple",
                                 interactive=False)
        self.outputs = [self.summary, self.sheet, self.loss, self.prep, self.previews, self.gallery, self.downloads]

    def show(self, job_name):
        v = self.h.job(job_name)
        if v is None:
            return "Pick a job, or start one.", None, None, "", [], [], None
        import pandas as pd

        curve = pd.DataFrame(v.loss, columns=["step", "loss"]) if v.loss else None
        return (v.summary, str(v.contact_sheet) if v.contact_sheet else None, curve, v.prep_report,
                [str(p) for p in v.previews], [(str(p), c) for p, c in v.gallery],
                [str(p) for p in v.downloads] or None)

    def choices(self, selected=None):
        return gr.update(choices=self.h.job_names(self.kinds), **({"value": selected} if selected else {}))


def studio_page(h: Handlers) -> Watch:
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
                watch = Watch(h, ("portrait", "dressup"), "")
    subject.change(lambda s: gr.update(choices=h.styles(s), value=[]), subject, styles, api_visibility="private")

    def start_and_watch(*args):
        message, job_name = h.start_studio(*args)
        return message, watch.choices(job_name)

    start.click(user_errors(start_and_watch), [photos, name, subject, trigger, styles, train_steps, per_style, keep],
                [started, watch.pick], api_name="start_studio")
    watch.pick.change(user_errors(watch.show), watch.pick, watch.outputs, api_visibility="private")
    return watch


def train_page(h: Handlers) -> Watch:
    """kohya_ss's job for most of its users: photos in, a LoRA out (loracam prep, then loracam train)."""
    with gr.Tab("Train", id="train"):
        with gr.Row():
            with gr.Column(scale=1):
                photos = gr.File(label="Photos (5-30) of a face, a pet or a garment", file_count="multiple",
                                 file_types=["image"], elem_id="train-photos")
                name = gr.Textbox(label="LoRA name (the job and the file)", elem_id="train-name")
                subject = gr.Radio(list(SUBJECTS), value="face", label="Subject (prep's crops and the preset)")
                with gr.Row():
                    trigger = gr.Textbox(label="Trigger word", value="sks")
                    class_word = gr.Textbox(label="Class word (empty: woman, dog, dress)")
                base = gr.Dropdown(h.base_choices(), value="toy", label="Base model")
                with gr.Accordion("Training (empty: the subject's preset)", open=False):
                    steps = gr.Number(label="Steps", precision=0)
                    rank = gr.Number(label="Rank (network dim); alpha = rank", precision=0)
                    lr = gr.Number(label="U-Net learning rate")
                start = gr.Button("Train the LoRA", variant="primary", elem_id="train-start")
                started = gr.Markdown()
            with gr.Column(scale=2):
                watch = Watch(h, ("train",), "train-", gallery=False)

    def start_and_watch(*args):
        message, job_name = h.start_train(*args)
        return message, watch.choices(job_name)

    start.click(user_errors(start_and_watch), [photos, name, subject, trigger, class_word, base, steps, rank, lr],
                [started, watch.pick], api_name="start_train")
    watch.pick.change(user_errors(watch.show), watch.pick, watch.outputs, api_visibility="private")
    return watch


def jobs_page(h: Handlers):
    with gr.Tab("Jobs", id="jobs"):
        requests = gr.Checkbox(False, label="Show the Generate, Grid and Tune requests too", elem_id="jobs-requests")
        table = gr.Dataframe(headers=views.JOB_COLUMNS, value=h.jobs(False), interactive=False, elem_id="jobs-table")
        with gr.Row():
            picked = gr.Dropdown(h.job_names(), label="Job")
            cancel = gr.Button("Cancel")
            resume = gr.Button("Resume")
        said = gr.Markdown()
    cancel.click(user_errors(h.cancel), picked, said, api_name="cancel")
    resume.click(user_errors(h.resume), picked, said, api_name="resume")
    requests.change(lambda r: h.jobs(r), requests, table, api_visibility="private")
    return table, picked, requests


def build_app(cfg: WebConfig) -> gr.Blocks:
    """The whole UI; the caller launches it (loracam/web/server.py)."""
    from loracam.web import pages

    h = Handlers(cfg)
    with gr.Blocks(title="loracam studio", analytics_enabled=False) as app:
        gr.Markdown("# loracam studio\nPhotos in, a trained LoRA and a gallery of the best portraits out.")
        with gr.Tabs() as tabs:
            studio = studio_page(h)
            train = train_page(h)
            table, picked, requests = jobs_page(h)
            gen = pages.generate_page(h)
            pages.grid_page(h, gen, tabs)
            pages.tune_page(h)
            pages.library_page(h)

        # the pages follow the store: the watched jobs and the queue, every refresh_seconds
        timer = gr.Timer(cfg.refresh_seconds)
        timer.tick(lambda a, b, r: (*studio.show(a), *train.show(b), h.jobs(r)), [studio.pick, train.pick, requests],
                   [*studio.outputs, *train.outputs, table], api_visibility="private", show_progress="hidden")
        _api(h)
        app.load(lambda: (studio.choices(), train.choices(), gr.update(choices=h.job_names())), None,
                 [studio.pick, train.pick, picked], api_visibility="private")
    return app


def _api(h: Handlers) -> None:
    """API-only endpoints: the list of jobs, one job as data, a file of a job (what gradio_client scripts use)."""
    api = gr.JSON(visible=False)
    gr.Button(visible=False).click(lambda: h.jobs(), None, api, api_name="jobs")
    gr.Button(visible=False).click(user_errors(lambda n: _job_json(h.job(n))), gr.Textbox(visible=False), api,
                                   api_name="job")
    fname, frel = gr.Textbox(visible=False), gr.Textbox(visible=False)
    gr.Button(visible=False).click(user_errors(h.job_file), [fname, frel], gr.File(visible=False), api_name="job_file")


def _job_json(v: views.JobView | None) -> dict:
    if v is None:
        raise LoracamError("name a job")
    return {"name": v.name, "status": v.status, "summary": v.summary, "loss_points": len(v.loss),
            "previews": [p.name for p in v.previews], "gallery": [{"file": str(p), "caption": c} for p, c in v.gallery],
            "downloads": [str(p) for p in v.downloads]}
