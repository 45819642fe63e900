"""Generation: A1111 samplers and seeds, txt2img / img2img / inpainting, per-sample LoRA weights, infotext."""

from loracam.generate.api import GenResult, Rendered, generate, render_samples, request_from_infotext
from loracam.generate.infotext import Infotext, format_infotext, parse_infotext, read_png_infotext
from loracam.generate.request import GenRequest, Sample, Shared
from loracam.generate.samplers import SAMPLERS, SCHEDULES, parse_sampler

__all__ = [
    "GenRequest", "GenResult", "Infotext", "Rendered", "SAMPLERS", "SCHEDULES", "Sample", "Shared",
    "format_infotext", "generate", "parse_infotext", "parse_sampler", "read_png_infotext", "render_samples",
    "request_from_infotext",
]
