"""`loracam gen` with detail passes: the engine renders each batch, then each image goes through the passes before
it is kept (ADetailer's place in A1111: after the image is made, before it is saved). The engine knows nothing of
passes; this layer hands it an ``after`` step and reads the passes back from an image's infotext."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from loracam.errors import LoracamError
from loracam.finish.detail import DetailPass, from_infotext, run_passes
from loracam.finish.detect import Detectors
from loracam.generate.api import GenResult, Rendered, generate as render, request_from_infotext as engine_request
from loracam.generate.api import with_params
from loracam.generate.infotext import Infotext, parse_infotext
from loracam.generate.request import GenRequest, Sample, Shared


def generate(req: GenRequest, models, library=None, progress=None,
             detail: Sequence[DetailPass] = ()) -> GenResult:
    """Render ``req``; with ``detail``, every image through those passes, ADetailer's keys in its infotext."""
    if not detail:
        return render(req, models, library, progress)
    return render(req, models, library, progress, after=DetailStep(tuple(detail), req.controlnet_dirs))


class DetailStep:
    """The engine's ``after`` step that runs the passes on each image of a batch (detectors and ControlNets loaded
    once per run)."""

    def __init__(self, passes: tuple[DetailPass, ...], controlnet_dirs: Sequence[str] = ()):
        self.passes, self.detectors = passes, Detectors()
        self.controls = None
        if any(p.control for p in passes):
            from loracam.control.models import ControlNets

            self.controls = ControlNets([Path(d) for d in controlnet_dirs])

    def __call__(self, rendered: list[Rendered], samples: Sequence[Sample], shared: Shared, model, library,
                 warnings: list[str]) -> list[Rendered]:
        return [self.one(r, s, shared, model, library, warnings) for r, s in zip(rendered, samples)]

    def one(self, r: Rendered, s: Sample, shared: Shared, model, library, warnings: list[str]) -> Rendered:
        done = run_passes(r.image, s, shared, self.passes, model, library, self.detectors,
                          f"the image of seed {s.seed}", self.controls)
        warnings += done.notes
        return replace(r, image=done.image, infotext=with_params(parse_infotext(r.infotext), done.params))


def request_from_infotext(info: Infotext, base: str | None, ckpt_dirs, models, image_path: Path | None = None,
                          detail: Sequence[DetailPass] | None = None,
                          **overrides) -> tuple[GenRequest, tuple[DetailPass, ...]]:
    """What re-renders an image (``gen --from``): the engine's request and the detail passes its infotext records
    (ADetailer's keys), unless ``detail`` is given (even empty), which replaces them."""
    req = engine_request(info, base, ckpt_dirs, models, image_path, **overrides)
    return req, tuple(from_infotext(info.params) if detail is None else detail)


def gen_config(table: dict, where: str, passes):
    """A gen --config table: the request and its ``detail`` passes (a list of tables of DetailPass's keys),
    --detail flags replacing the file's passes."""
    from loracam.config import from_dict

    table = dict(table)
    listed = table.pop("detail", [])
    if not isinstance(listed, list):
        raise LoracamError(f"{where}: detail must be a list of tables ([[detail]] detector = \"face\" ...)")
    req = from_dict(GenRequest, table, where=where)
    if passes is None:
        passes = tuple(from_dict(DetailPass, p, where=f"{where}: detail[{i}]") for i, p in enumerate(listed))
    return req, passes
