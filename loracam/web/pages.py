"""The hobbyist's pages: Generate, Grid, Tune (each queues one command as a job and waits for it) and Library.

A page that waits yields the job's progress while it is queued or running, then its files. Waiting only
reads the store, so these handlers have no concurrency limit: the worker runs one job at a time anyway, and
a second user's request queues in the store (where the Jobs page shows it), not in the server."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from loracam.web import views
from loracam.web.app import user_errors
from loracam.web.handlers import Handlers

PARAMS = ("prompt", "negative", "sampler", "steps", "cfg_scale", "seed", "width", "height")  # what a PNG fills


@dataclass
class GenFields:
    """The Generate page's inputs (Grid sends a cell's parameters to them)."""

    prompt: gr.Textbox
    negative: gr.Textbox
    base: gr.Dropdown
    sampler: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    width: gr.Number
    height: gr.Number

    def params(self) -> list:
        """What a PNG's infotext fills."""
        return [getattr(self, n) for n in PARAMS]

    def request(self) -> list:
        """Every field of the request, in _request's order."""
        return [self.prompt, self.negative, self.base, self.sampler, self.steps, self.cfg_scale, self.seed,
                self.width, self.height]


def request_fields(h: Handlers, prompt: str, elem: str) -> GenFields:
    """Prompt, base and sampler settings as A1111's txt2img lays them out (Generate's and Grid's)."""
    from loracam.generate.samplers import SAMPLERS

    p = gr.Textbox(label="Prompt", lines=3, value=prompt, elem_id=f"{elem}prompt")
    n = gr.Textbox(label="Negative prompt", lines=2)
    base = gr.Dropdown(h.base_choices(), value="toy", label="Base model")
    with gr.Row():
        sampler = gr.Dropdown(list(SAMPLERS), value="DPM++ 2M", label="Sampler")
        steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
        cfg_scale = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale")
    with gr.Row():
        seed = gr.Number(-1, label="Seed (-1: random)", precision=0)
        width = gr.Number(0, label="Width (0: the model's)", precision=0)
        height = gr.Number(0, label="Height (0: the model's)", precision=0)
    return GenFields(p, n, base, sampler, steps, cfg_scale, seed, width, height)


def lora_adder(h: Handlers, prompt: gr.Textbox) -> gr.Dropdown:
    """A LoRA picker and weight that append <lora:NAME:W> to the prompt (A1111's extra networks card)."""
    with gr.Row():
        pick = gr.Dropdown(h.lora_names(), label="LoRA")
        weight = gr.Slider(0, 2, value=0.8, step=0.05, label="Weight")
        add = gr.Button("Add to prompt")
    add.click(lambda p, n, w: f"{p} <lora:{n}:{w:g}>" if n else p, [prompt, pick, weight], prompt, api_visibility="private")
    return pick


def _fresh_loras(h: Handlers, tab: gr.Tab, pick: gr.Dropdown) -> None:
    """The picker lists the LoRAs there are when the page is opened (one trained since shows)."""
    tab.select(lambda: gr.update(choices=h.lora_names()), None, pick, api_visibility="private")


def _request(h: Handlers, f: tuple, batch=1) -> dict:
    prompt, negative, base, sampler, steps, cfg_scale, seed, width, height = f
    return h.generate_request(prompt, negative, base, sampler, steps, cfg_scale, seed, width, height, batch)


def _waiting(h: Handlers, kind: str, args: dict, blanks: int):
    """Queue the job, then yield (blank outputs..., status) while it waits and runs; returns its name."""
    name = h.submit(kind, args)
    for message in h.follow(name):
        yield (*[gr.skip()] * blanks, f"job `{name}`: {message}")
    return name


def generate_page(h: Handlers) -> GenFields:
    with gr.Tab("Generate", id="generate") as tab:
        with gr.Row():
            with gr.Column(scale=2):
                f = request_fields(h, "1girl, upper body, red dress, white background", "gen-")
                _fresh_loras(h, tab, lora_adder(h, f.prompt))
                batch = gr.Slider(1, 8, value=1, step=1, label="Batch size")
                go = gr.Button("Generate", variant="primary", elem_id="gen-go")
                png = gr.Image(label="Drop a PNG to load its parameters", type="filepath", sources=["upload"])
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="gen-status")
                images = gr.Gallery(label="Images", columns=4, height=480, object_fit="contain", elem_id="generated")
                infotext = gr.Textbox(label="Parameters", lines=6)

    def run(prompt, negative, base, sampler, steps, cfg_scale, seed, width, height, batch_size):
        args = _request(h, (prompt, negative, base, sampler, steps, cfg_scale, seed, width, height), batch_size)
        name = yield from _waiting(h, "generate", args, 2)
        shown, text = h.generated(name)
        yield shown, text, f"job `{name}`: done"

    go.click(user_errors(run), [*f.request(), batch], [images, infotext, status], api_name="generate",
             concurrency_limit=None)

    def load_png(path):
        got = h.read_png(path)
        return got if got is not None else (gr.skip(),) * len(PARAMS)

    png.upload(user_errors(load_png), png, f.params(), api_name="read_png")
    return f


def grid_page(h: Handlers, gen: GenFields, tabs: gr.Tabs) -> None:
    """A1111's X/Y/Z plot: three axes of a type and its values; a cell clicked shows its parameters and sends
    them to Generate."""
    from loracam.grid.axes import AXIS_TYPES

    fixed = ["Nothing", *[t for t in AXIS_TYPES if "NAME" not in t and not t.endswith(" N")]]
    types = lambda: fixed + [f"lora:{n}" for n in h.lora_names()]  # noqa: E731
    with gr.Tab("Grid", id="grid") as tab:
        with gr.Row():
            with gr.Column(scale=2):
                f = request_fields(h, "1girl, upper body, red dress, white background", "grid-")
                _fresh_loras(h, tab, lora_adder(h, f.prompt))
                axes = []
                for axis, kind, values in (("X", "CFG Scale", "3,5,7"), ("Y", "Nothing", ""), ("Z", "Nothing", "")):
                    with gr.Row():
                        axes.append(gr.Dropdown(types(), value=kind, label=f"{axis} type", allow_custom_value=True,
                                                elem_id=f"grid-{axis.lower()}-type"))
                        axes.append(gr.Textbox(value=values, label=f"{axis} values (5,7,9 or 0.3-0.9 [4])",
                                               elem_id=f"grid-{axis.lower()}-values"))
                seed_row = gr.Number(0, label="Or a seed row: N random seeds (no axes), to pick a composition",
                                     precision=0)
                go = gr.Button("Render the grid", variant="primary", elem_id="grid-go")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="grid-status")
                picture = gr.Image(label="The grid", type="filepath", interactive=False, elem_id="grid-picture")
                cells = gr.Gallery(label="Cells: click one for its parameters", columns=6, elem_id="grid-cells")
                cell_info = gr.Textbox(label="The cell's parameters", lines=4, elem_id="grid-cell-info")
                send = gr.Button("Send to Generate", elem_id="grid-send")
        cell_files = gr.State([])
        picked = gr.State(None)
    tab.select(lambda: [gr.update(choices=types())] * 3, None, axes[::2], api_visibility="private")

    def run(prompt, negative, base, sampler, steps, cfg_scale, seed, width, height, xt, xv, yt, yv, zt, zv, row):
        req = _request(h, (prompt, negative, base, sampler, steps, cfg_scale, seed, width, height))
        args = h.grid_args(req, [(xt, xv), (yt, yv), (zt, zv)], row)
        name = yield from _waiting(h, "grid", args, 3)
        grid, cell_list = h.grid_result(name)
        yield grid, cell_list, [p for p, _ in cell_list], f"job `{name}`: done, {len(cell_list)} cells"

    go.click(user_errors(run), [*f.request(), *axes, seed_row], [picture, cells, cell_files, status], api_name="grid",
             concurrency_limit=None)

    def select(evt: gr.SelectData, files):
        path = files[evt.index] if files and evt.index < len(files) else None
        from loracam.web.handlers import png_text

        return (png_text(path) if path else ""), path

    cells.select(select, cell_files, [cell_info, picked], api_visibility="private")

    send.click(user_errors(lambda path: (*h.cell_params(path), gr.Tabs(selected="generate"))), picked,
               [*gen.params(), tabs], api_visibility="private")


def tune_page(h: Handlers) -> None:
    """loracam tune: per seed, the lightest weights at which every LoRA of the prompt shows."""
    with gr.Tab("Tune", id="tune") as tab:
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt with its LoRAs as <lora:NAME:1> tags", lines=3,
                                    value="1girl, full body", elem_id="tune-prompt")
                _fresh_loras(h, tab, lora_adder(h, prompt))
                negative = gr.Textbox(label="Negative prompt", lines=1)
                base = gr.Dropdown(h.base_choices(), value="toy", label="Base model")
                with gr.Row():
                    seeds = gr.Number(3, label="Seeds (random)", precision=0)
                    budget = gr.Number(18, label="Renders a seed (the guide's two grids: 54)", precision=0)
                go = gr.Button("Tune the weights", variant="primary", elem_id="tune-go")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="tune-status")
                table = gr.Dataframe(headers=["seed", "weights", "shown", "renders", "prompt"],
                                     interactive=False, elem_id="tune-table")
                pictures = gr.Gallery(label="The search and the grid around each answer", columns=2, height=420,
                                      object_fit="contain")
                report = gr.Textbox(label="Report", lines=8)

    def run(prompt_text, negative_text, base_name, n_seeds, n_budget):
        args = h.tune_args(prompt_text, negative_text, base_name, n_seeds, n_budget)
        name = yield from _waiting(h, "tune", args, 3)
        rows, pics, text = h.tune_result(name)
        yield rows, pics, text, f"job `{name}`: done"

    go.click(user_errors(run), [prompt, negative, base, seeds, budget], [table, pictures, report, status],
             api_name="tune", concurrency_limit=None)


def library_page(h: Handlers) -> None:
    with gr.Tab("Library", id="library") as tab:
        gr.Markdown("LoRAs from " + (", ".join(f"`{d}`" for d in h.cfg.lora_dirs) or "no folder (add them with "
                                     "`loracam web --lora-dir DIR`)") + " and the ones this studio trained. "
                    "Click a row for its metadata.")
        lib = gr.Dataframe(headers=["name", "family", "dim", "hash", "about", "file"], value=h.library,
                           interactive=False, elem_id="library-table")
        with gr.Row():
            meta = gr.JSON(label="Metadata and hashes")
            preview = gr.Image(label="Preview (NAME.preview.png beside the file)", type="filepath", interactive=False)
        gr.Markdown("Base models: the built-in toy and checkpoints from " + (", ".join(
            f"`{d}`" for d in h.cfg.model_dirs) or "no folder (add them with `loracam web --model-dir DIR`)"))
        bases = gr.Dataframe(headers=views.BASE_COLUMNS, value=h.base_models, interactive=False,
                             elem_id="bases-table")

    def pick(evt: gr.SelectData, rows):
        return h.lora_details(rows.iloc[evt.index[0], -1] if hasattr(rows, "iloc") else rows[evt.index[0]][-1])

    lib.select(user_errors(pick), lib, [meta, preview], api_visibility="private")
    tab.select(lambda: (h.library(), h.base_models()), None, [lib, bases], api_visibility="private")  # new LoRAs show
