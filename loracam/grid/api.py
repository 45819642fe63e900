"""``run_grid``: a prompt and up to three axes in, cell PNGs and an A1111-style grid PNG out."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from loracam.errors import LoracamError
from loracam.generate import GenRequest
from loracam.generate.api import native_size
from loracam.generate.images import save_png
from loracam.grid.axes import parse_axis, seed_row
from loracam.grid.draw import check_size, draw_grid, grid_infotext
from loracam.grid.plan import GridOptions, GridResult, GridRunner, base_cell, cells_of, save_cells
from loracam.models import pick_device, pick_dtype


@dataclass(frozen=True)
class AxisSpec:
    """One axis as the user typed it: ``TYPE=VALUES`` (``lora:testdress=0.3-0.5 [3]``)."""

    kind: str
    values: str

    @classmethod
    def parse(cls, text: str) -> "AxisSpec":
        kind, sep, values = text.partition("=")
        if not sep or not kind.strip():
            raise LoracamError(f"axis {text!r}: write TYPE=VALUES, e.g. 'CFG Scale=5,7,9' or 'lora:face=0.5-0.9 [3]'")
        return cls(kind.strip(), values.strip())


def run_grid(req: GenRequest, specs: list[AxisSpec | None], opts: GridOptions, models, library,
             outdir: Path, seeds: int | None = None, progress=None) -> GridResult:
    """Render a grid; save every cell and the grid image into ``outdir`` (nothing is overwritten)."""
    device = pick_device(req.device)
    dtype = pick_dtype(req.precision, device)
    model = models.get(req.base, device, dtype)
    w, h = req.width or native_size(model)[0], req.height or native_size(model)[1]
    rng = random.Random()
    base = base_cell(req, w, h, rng)
    if seeds is not None:
        if any(specs):
            raise LoracamError("--seeds makes its own row of seeds; use it without --x/--y/--z")
        axes = [seed_row(seeds, rng)]
    else:
        axes = [parse_axis(s.kind, s.values, base) if s else None for s in specs]
    axes = axes + [None] * (3 - len(axes))
    cells = cells_of(base, axes, opts, rng, random_seed=req.seed == -1)
    n = sum(len(row) for plane in cells for row in plane)
    for name in sorted({r.name for plane in cells for row in plane for c in row for r in c.loras}):
        library.find(name)  # a LoRA that no file provides fails now, before any cell renders
    if not opts.force:
        check_size(n, w, h)
    controls = None
    if req.controlnet:
        from loracam.control.models import ControlNets

        controls = ControlNets([Path(d) for d in req.controlnet_dirs])
    runner = GridRunner(models, library, (device, dtype), outdir / "cell-cache", progress, controls)
    result = runner.run(cells, opts)
    labels = [[a.format(v) for v in a.values] if a else [""] for a in axes]
    result.grid = draw_grid(_same_size(result), labels[0], labels[1], labels[2])
    first = result.cells[0][0][0]
    rows = []
    for xyz, axis, spec in zip("XYZ", axes, specs + [None] * 3):
        if axis is not None:  # the values as typed; a --seeds row has none typed, so its seeds are listed
            rows.append((xyz, axis.kind, spec.values if spec else ",".join(str(v) for v in axis.values)))
    info = grid_infotext(first.infotext, rows)
    result.paths["cells"] = save_cells(result, outdir)
    result.paths["grid"] = save_png(result.grid, info, outdir, first.seed)
    return result


def _same_size(result: GridResult):
    """Cell images for the grid picture, scaled to the first cell's size when a Size axis varies them
    (each cell is still saved at its own size)."""
    first = result.cells[0][0][0].image.size
    return [[[r.image if r.image.size == first else r.image.resize(first) for r in row] for row in plane]
            for plane in result.cells]
