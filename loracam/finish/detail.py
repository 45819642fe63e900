"""Detail passes: ADetailer's algorithm (Bing-su/adetailer 25.3.0), run by loracam's own engine.

For each pass in order, on the finished image: detect -> keep detections by confidence, area ratio and top k
-> one mask each (box or shape, offset, dilate/erode) -> for mask j in turn: blur it, crop its region plus
padding (widened to the working size's aspect), inpaint the crop at the working size ("only masked"),
seed + j, the pass's prompt (default: the image's own; ``[SEP]`` gives each detection its own part,
``[PROMPT]`` stands for the image's prompt), paste it back and composite the original over it with the
blurred mask: pixels where that mask is 0 are the original's, bit for bit. The result feeds mask j + 1.

Why it works where a LoRA alone fails: a face of 20 pixels is rendered again at the model's full size, so
the identity survives the VAE (the toy world's sks face: 8% of upper-body round trips, 100% of close-ups).

Pixel defaults (dilate/erode 4, mask blur 4, padding 32) are ADetailer's for a 512-pixel image; they are
scaled to the image's short side (a 64-pixel toy image gets 1, 1 and 4) unless given, and the infotext
records the values used. No detection leaves the image as it was and says so; it is never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from loracam import __version__
from loracam.control.units import ControlUnit
from loracam.errors import LoracamError
from loracam.finish import masks
from loracam.finish.detect import Detection, Detectors, resolve

if TYPE_CHECKING:  # generate.request holds DetailPass in its GenRequest: import it only where used
    from loracam.generate.request import Sample, Shared

Notes = Callable[[str], None]
ORDINALS = ("", " 2nd", " 3rd", " 4th", " 5th", " 6th", " 7th", " 8th", " 9th", " 10th")


@dataclass(frozen=True)
class DetailPass:
    """One ADetailer tab: what to find and how to repaint it."""

    detector: str
    prompt: str = ""  # "": the image's own prompt
    negative: str = ""  # "": the image's own negative prompt
    confidence: float = 0.3
    top_k: int = 0  # 0: every detection; else the k largest
    min_ratio: float = 0.0  # of the image's area
    max_ratio: float = 1.0
    x_offset: int = 0
    y_offset: int = 0  # + is up, as in ADetailer
    dilate_erode: int | None = None  # None: 4 px at 512 px, scaled
    mask_blur: int | None = None  # None: 4 px at 512 px, scaled
    denoising: float = 0.4
    padding: int | None = None  # None: 32 px at 512 px, scaled
    inpaint_size: tuple[int, int] | None = None  # None: the image's own size
    steps: int | None = None  # None: the image's
    cfg: float | None = None
    control: tuple[ControlUnit, ...] = ()  # ADetailer's ControlNet: steered by the region itself (one unit)

    def __post_init__(self):
        resolve(self.detector)  # an unknown detector fails before anything renders
        if len(self.control) > 1 or any(u.source and not u.premade for u in self.control):
            raise LoracamError("a detail pass takes one ControlNet, steered by its own region: give TYPE[:WEIGHT], "
                               "no source")
        if not 0.0 <= self.confidence <= 1.0 or not 0.0 <= self.denoising <= 1.0:
            raise LoracamError("a detail pass's confidence and denoising are between 0 and 1")
        if not 0.0 <= self.min_ratio <= self.max_ratio <= 1.0:
            raise LoracamError("a detail pass's mask ratios need 0 <= min <= max <= 1")
        if self.top_k < 0:
            raise LoracamError("a detail pass's top k is 0 (all) or more")

    @classmethod
    def parse(cls, spec: str, **defaults) -> "DetailPass":
        """``DETECTOR[:PROMPT]`` as ``--detail`` takes it; ``mask:FILE[:PROMPT]`` keeps its file."""
        head, _, prompt = spec.partition(":")
        if head.strip().lower() == "mask":
            path, _, prompt = prompt.partition(":")
            head = f"mask:{path}"
        return cls(detector=head.strip(), prompt=prompt.strip(), **defaults)

    def scaled(self, size: tuple[int, int]) -> "DetailPass":
        """The pass with its pixel defaults scaled to an image of ``size``."""
        k = min(size) / 512
        px = lambda given, at512: given if given is not None else max(1, round(at512 * k))  # noqa: E731
        return replace(self, dilate_erode=px(self.dilate_erode, 4), mask_blur=px(self.mask_blur, 4),
                       padding=px(self.padding, 32))


@dataclass
class Detailed:
    image: Image.Image
    params: dict = field(default_factory=dict)  # ADetailer's infotext keys of the passes that ran
    notes: list[str] = field(default_factory=list)


def run_passes(image: Image.Image, made: Sample, shared: Shared, passes: Sequence[DetailPass], model, library,
               detectors: Detectors, name: str = "the image", controls=None) -> Detailed:
    """Every pass on one finished image, made as ``made`` with ``shared`` (the image's final size, the hires
    pass's when hires fix ran, is the passes' working size); the image is unchanged where nothing is found."""
    shared = finished(shared, model.vae_scale_factor)
    out = Detailed(image.convert("RGB"))
    base_kind = "toy" if model.name == "toy" else None
    for i, p in enumerate(passes):
        p = p.scaled(out.image.size)
        detector = resolve(p.detector, base_kind)
        found = select(detectors.detect(detector, out.image, p.confidence), p, out.image.size)
        shapes = [m for m in (mask_of(d, p, out.image.size) for d in found) if m.any()]
        if not shapes:
            out.notes.append(f"detail pass {i + 1} ({detector}): nothing found in {name}; left as it was")
        for j, shape in enumerate(shapes):
            out.image = inpaint_region(out.image, shape, p, made, shared, j, model, library, controls)
        out.params.update(infotext(p, detector, i, _control_label(p, controls, model)))
    if out.params:
        out.params["ADetailer version"] = f"loracam {__version__}"
    return out


def finished(shared: Shared, factor: int) -> Shared:
    """The render's settings as the passes inherit them: the finished image's size, but the first pass's steps
    (ADetailer takes txt2img's p.steps, never the hires steps)."""
    if shared.hires is None:
        return shared
    width, height = shared.hires.size(shared.width, shared.height, factor)
    return replace(shared, width=width, height=height, hires=None)


def select(found: list[Detection], p: DetailPass, size: tuple[int, int]) -> list[Detection]:
    """ADetailer's filters: confidence, area ratio, then the k largest (0: all), largest first."""
    area = size[0] * size[1]
    kept = [d for d in found if d.score >= p.confidence and p.min_ratio <= d.area / area <= p.max_ratio]
    kept.sort(key=lambda d: d.area, reverse=True)
    return kept[: p.top_k] if p.top_k else kept


def mask_of(d: Detection, p: DetailPass, size: tuple[int, int]) -> np.ndarray:
    m = d.mask if d.mask is not None else masks.box_mask(size, d.box)
    return masks.dilate_erode(masks.offset(m, p.x_offset, p.y_offset), p.dilate_erode)


def inpaint_region(image: Image.Image, shape: np.ndarray, p: DetailPass, made: Sample, shared: Shared, j: int,
                   model, library, controls=None) -> Image.Image:
    """One mask: A1111's inpaint "only masked" at the working size, pasted back under the blurred mask."""
    from loracam.generate.api import render_samples
    from loracam.generate.engine import InitImages
    from loracam.generate.request import Sample, Shared
    from loracam.prompts import extract_networks

    soft = masks.blur(shape, p.mask_blur)
    work = tuple(p.inpaint_size or (shared.width, shared.height))
    f = model.vae_scale_factor
    work = (work[0] // f * f, work[1] // f * f)
    region = masks.crop_region(soft, p.padding, work)
    crop = image.crop(region).resize(work, Image.LANCZOS)
    crop_mask = Image.fromarray(soft).crop(region).resize(work, Image.BILINEAR)
    prompt, negative = part(p.prompt, made.prompt, j), part(p.negative, made.negative, j)
    loras = tuple(extract_networks(prompt)[1] + extract_networks(negative)[1])
    sample = Sample(prompt, negative, (made.seed + j) % 2**32, p.cfg if p.cfg is not None else made.cfg, loras)
    inpaint = Shared(work[0], work[1], p.steps or shared.steps, shared.sampler, shared.schedule, shared.clip_skip,
                     denoising=p.denoising, mask_blur=0,  # already blurred, at the image's scale
                     control=p.control)
    [rendered] = render_samples(model, inpaint, [sample], library, InitImages(crop, crop_mask, composite=False),
                                controls=controls)
    return masks.paste(image, rendered.image, region, soft)


def part(text: str, own: str, j: int) -> str:
    """A pass's prompt for detection j: "" is the image's own, [SEP] splits, [PROMPT] is the image's."""
    if not text.strip():
        return own
    parts = [t.strip() for t in text.split("[SEP]")]
    return parts[min(j, len(parts) - 1)].replace("[PROMPT]", own)


def _control_label(p: DetailPass, controls, model) -> str | None:
    """The detail pass's ControlNet as the infotext names it (``stem [hash]``), or None."""
    if not p.control:
        return None
    from loracam.control.models import ControlNets
    from loracam.control.preprocess import PREPROCESSORS

    u = p.control[0]
    return (controls or ControlNets()).find(u, PREPROCESSORS[u.kind].keyword, model.name).label


def infotext(p: DetailPass, detector: str, index: int, control_label: str | None = None) -> dict:
    """ADetailer's keys for one pass (2nd, 3rd ... suffixes), with its omissions at defaults."""
    suffix = ORDINALS[index] if index < len(ORDINALS) else f" {index + 1}th"
    keys = {
        "model": detector, "prompt": p.prompt or None, "negative prompt": p.negative or None,
        "confidence": f"{p.confidence:g}",
        "mask only top k": p.top_k or None, "method to decide top k masks": "Area" if p.top_k else None,
        "mask min ratio": f"{p.min_ratio:g}" if p.min_ratio else None,
        "mask max ratio": f"{p.max_ratio:g}" if p.max_ratio != 1 else None,
        "x offset": p.x_offset or None, "y offset": p.y_offset or None,
        "dilate erode": p.dilate_erode, "mask blur": p.mask_blur, "denoising strength": f"{p.denoising:g}",
        "inpaint only masked": True, "inpaint padding": p.padding,
        "use inpaint width height": True if p.inpaint_size else None,
        "inpaint width": p.inpaint_size[0] if p.inpaint_size else None,
        "inpaint height": p.inpaint_size[1] if p.inpaint_size else None,
        "use separate steps": True if p.steps else None, "steps": p.steps,
        "use separate CFG scale": True if p.cfg is not None else None, "CFG scale": p.cfg,
    }
    if p.control:
        from loracam.control.preprocess import PREPROCESSORS

        u = p.control[0]
        keys.update({"ControlNet model": control_label, "ControlNet module": PREPROCESSORS[u.kind].module,
                     "ControlNet weight": f"{u.weight:g}", "ControlNet guidance start": f"{u.start:g}",
                     "ControlNet guidance end": f"{u.end:g}"})
    return {f"ADetailer {k}{suffix}": v for k, v in keys.items() if v is not None}


def _control_from(get) -> tuple[ControlUnit, ...]:
    """A pass's ControlNet from ADetailer's keys ("None" or absent: none); its model found by name or hash."""
    model = get("ControlNet model")
    if model in (None, "None", "none"):
        return ()
    from loracam.control.store import MODULE_KINDS

    return (ControlUnit(kind=MODULE_KINDS.get(get("ControlNet module", "none"), "image"), model=model,
                        weight=float(get("ControlNet weight", 1)), start=float(get("ControlNet guidance start", 0)),
                        end=float(get("ControlNet guidance end", 1))),)


def from_infotext(params: dict[str, str]) -> tuple[DetailPass, ...]:
    """The passes an infotext's ADetailer keys describe (ours and A1111's, legacy names included)."""
    passes = []
    for i, suffix in enumerate(ORDINALS):
        get = lambda k, d=None: params.get(f"ADetailer {k}{suffix}", d)  # noqa: E731
        if get("model") is None:
            break
        size = (int(get("inpaint width")), int(get("inpaint height"))) if get("inpaint width") else None
        dilate = get("dilate erode") or get("dilate/erode")
        passes.append(DetailPass(
            detector=get("model"), prompt=get("prompt", ""), negative=get("negative prompt", ""),
            confidence=float(get("confidence", 0.3)), top_k=int(get("mask only top k", get("mask only top k largest", 0))),
            min_ratio=float(get("mask min ratio", 0)), max_ratio=float(get("mask max ratio", 1)),
            x_offset=int(get("x offset", 0)), y_offset=int(get("y offset", 0)),
            dilate_erode=int(dilate) if dilate is not None else None,
            mask_blur=int(get("mask blur")) if get("mask blur") else None,
            denoising=float(get("denoising strength", 0.4)),
            padding=int(get("inpaint padding")) if get("inpaint padding") else None, inpaint_size=size,
            steps=int(get("steps")) if get("steps") else None, cfg=float(get("CFG scale")) if get("CFG scale") else None,
            control=_control_from(get),
        ))
    return tuple(passes)
