"""Running an X/Y/Z grid: cells from axes, batched where they can share a batch, cached by fingerprint.

A1111 renders cells one after another. Here cells that share base model, size, sampler, schedule, steps,
clip skip and denoising go through the engine together: their prompts, seeds, CFG scales and LoRA
weights differ per sample inside one batch (generate.render_samples). A cell is stored under a
fingerprint of everything that decides its pixels (its parameters, the model's and LoRAs' hashes), so
re-running a grid after changing one axis renders only the cells that changed.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from loracam import __version__
from loracam.errors import LoracamError
from loracam.generate import GenRequest
from loracam.generate.api import Rendered, render_samples, save_rendered
from loracam.generate.samplers import parse_sampler
from loracam.grid.axes import Axis, Cell
from loracam.io import atomic_write_bytes, writable_dir

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GridOptions:
    keep_random_seeds: bool = False  # -1 stays random per cell (A1111's "keep -1 for seeds")
    vary_seeds: str = ""  # "x", "y", "z" or a mix: add the cell's index on that axis to its seed
    batch_size: int = 8  # the most cells per batch; halved on out-of-memory
    force: bool = False  # render grids over the pixel budget


@dataclass
class GridResult:
    cells: list[list[list[Rendered]]]  # [z][y][x]
    rendered: int  # cells rendered this run (the rest came from the cache)
    grid: Image.Image | None = None
    paths: dict = field(default_factory=dict)


def base_cell(req: GenRequest, width: int, height: int, rng: random.Random) -> Cell:
    """The cell the axes start from: the request itself, with a random seed resolved once."""
    sampler, schedule = parse_sampler(req.sampler, req.schedule)
    seed = req.seed if req.seed != -1 else rng.randrange(2**32 - 1)
    # loras left empty: Cell reads them from the prompt's and the negative prompt's tags, as gen does
    return Cell(prompt=req.prompt, negative=req.negative, seed=seed, cfg=req.cfg, steps=req.steps, sampler=sampler,
                schedule=schedule, width=width, height=height, clip_skip=req.clip_skip, denoising=None, base=req.base,
                hires=req.hires, control=tuple(req.controlnet))


def cells_of(base: Cell, axes: Sequence[Axis | None], opts: GridOptions, rng: random.Random,
             random_seed: bool) -> list[list[list[Cell]]]:
    """cells[z][y][x]: axes applied x, then y, then z, as A1111's script does."""
    ax = [a if a is not None else None for a in axes] + [None] * (3 - len(axes))
    xs, ys, zs = ((a.values if a else (None,)) for a in ax)
    grid = []
    for iz, z in enumerate(zs):
        plane = []
        for iy, y in enumerate(ys):
            row = []
            for ix, x in enumerate(xs):
                cell = base
                if random_seed and opts.keep_random_seeds:
                    cell = replace(cell, seed=rng.randrange(2**32 - 1))
                for axis, value in ((ax[0], x), (ax[1], y), (ax[2], z)):
                    if axis is not None:
                        cell = axis.apply(cell, value)
                offset = sum(i for i, k in ((ix, "x"), (iy, "y"), (iz, "z")) if k in opts.vary_seeds)
                row.append(replace(cell, seed=(cell.seed + offset) % 2**32) if offset else cell)
            plane.append(row)
        grid.append(plane)
    return grid


def shared_key(cell: Cell) -> tuple:
    """What every cell of one batch must have in common: the model, and what fixes shapes and timesteps."""
    return (cell.base, cell.shared())


def fingerprint(cell: Cell, model_id: str, lora_hashes: dict[str, str]) -> str:
    """Everything that decides a cell's pixels, hashed: its parameters, the model and its LoRAs' files."""
    doc = {"cell": asdict(cell), "model": model_id, "loras": {r.name: lora_hashes.get(r.name) for r in cell.loras},
           "engine": __version__}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


class GridRunner:
    """Renders the cells of a grid with one model cache and one LoRA library."""

    def __init__(self, models, library, device_dtype, cache_dir: Path | None, progress: Progress | None = None,
                 controls=None):
        self.models, self.library, self.controls = models, library, controls
        self.device, self.dtype = device_dtype
        self.cache_dir = cache_dir
        self.progress = progress

    def run(self, cells: list[list[list[Cell]]], opts: GridOptions) -> GridResult:
        flat = [(iz, iy, ix, c) for iz, plane in enumerate(cells) for iy, row in enumerate(plane)
                for ix, c in enumerate(row)]
        out: dict[tuple, Rendered] = {}
        todo = []
        for iz, iy, ix, cell in flat:
            fp = self._fingerprint(cell)
            hit = self._cached(fp)
            if hit is not None:
                out[(iz, iy, ix)] = hit
            else:
                todo.append(((iz, iy, ix), cell, fp))
        groups: dict[tuple, list] = {}
        for item in todo:
            groups.setdefault(shared_key(item[1]), []).append(item)
        done = 0
        for key, items in groups.items():
            for (pos, cell, fp), rendered in zip(items, self._render_group(items, opts.batch_size)):
                out[pos] = rendered
                self._store(fp, rendered)
                done += 1
                if self.progress:
                    self.progress(done, len(todo))
        result = [[[out[(iz, iy, ix)] for ix in range(len(row))] for iy, row in enumerate(plane)]
                  for iz, plane in enumerate(cells)]
        return GridResult(result, rendered=len(todo))

    def _model(self, ref):
        return self.models.get(ref, self.device, self.dtype)

    def _fingerprint(self, cell: Cell) -> str:
        hashes = {r.name: self.library.short_hash(r.name) for r in cell.loras}
        # a control image edited in place must not be answered from the cache: its bytes count, not its name
        hashes.update({f"control {i}": self.models.hash_cache.sha256(Path(u.source))
                       for i, u in enumerate(cell.control) if u.source and Path(u.source).is_file()})
        return fingerprint(cell, self._model_id(cell.base), hashes)

    def _model_id(self, ref: str | None) -> str:
        """A model's identity without loading it: its file's sha256, or the built-in name."""
        from loracam.models import resolve_ref

        r = resolve_ref(ref)
        return self.models.hash_cache.sha256(Path(r.value)) if r.kind == "file" else f"{r.kind}:{r.value}"

    def _render_group(self, items: list, batch_size: int) -> list[Rendered]:
        """Render cells that share a batch, batch_size at a time, halving the batch on out-of-memory."""
        import torch

        cell0 = items[0][1]
        model = self._model(cell0.base)
        shared = cell0.shared()
        samples = [c.sample() for _, c, _ in items]
        out: list[Rendered] = []
        start, size = 0, max(1, batch_size)
        while start < len(samples):
            chunk = samples[start : start + size]
            try:
                out += render_samples(model, shared, chunk, self.library, controls=self.controls)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise LoracamError("out of GPU memory even at batch size 1: lower the size or steps") from None
                torch.cuda.empty_cache()
                size //= 2
                continue
            start += len(chunk)
        return out

    # -- the cell cache ------------------------------------------------------------------------

    def _cached(self, fp: str) -> Rendered | None:
        if self.cache_dir is None:
            return None
        path = self.cache_dir / f"{fp}.png"
        if not path.exists():
            return None
        with Image.open(path) as im:
            im.load()
            text = im.info.get("parameters", "")
            seed = json.loads(im.info.get("loracam_seed", "0"))
            return Rendered(im.convert("RGB"), seed, text)

    def _store(self, fp: str, r: Rendered) -> None:
        if self.cache_dir is None:
            return
        from PIL import PngImagePlugin
        import io

        writable_dir(self.cache_dir, "cell cache folder")
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", r.infotext)
        info.add_text("loracam_seed", json.dumps(r.seed))
        buf = io.BytesIO()
        r.image.save(buf, "PNG", pnginfo=info)
        path = self.cache_dir / f"{fp}.png"
        if not path.exists():
            atomic_write_bytes(path, buf.getvalue())


def save_cells(result: GridResult, outdir: Path) -> list[Path]:
    """Every cell as its own numbered PNG with its full infotext (re-render one with gen --from), and its
    ControlNet maps beside it when it was rendered in this run."""
    return [save_rendered(r, outdir) for plane in result.cells for row in plane for r in row]

