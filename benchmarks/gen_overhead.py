"""loracam's generation overhead against a plain diffusers pipeline call (target: ratio <= 1.10).

Same model, sampler, steps, size, prompt and seed; both paths encode the prompt, denoise with CFG and
decode to PIL. Runs alternate (loracam, diffusers, loracam, ...) after a warm-up so machine noise hits
both alike; the ratio is of medians. Configs: the tiny model (where per-step Python overhead weighs
most) and the full SD1.5 architecture with random weights (what users run; on a CPU at a small size).
Usage: python benchmarks/gen_overhead.py [--quick]
"""

from __future__ import annotations

import statistics
import sys

import torch

from _common import timed, write_result
from loracam.generate.engine import render
from loracam.generate.request import Sample, Shared
from loracam.generate.samplers import build_scheduler
from loracam.models import ModelCache, pick_device, pick_dtype

PROMPT = "masterpiece, best quality, 1girl, red dress, white shoes, blue background"
NEGATIVE = "lowres, bad anatomy"


def measure(ref: str, size: int, steps: int, reps: int, sampler: str = "DPM++ 2M") -> dict:
    """loracam against the family's own diffusers pipeline (StableDiffusionPipeline, StableDiffusionXLPipeline)."""
    import diffusers

    device = pick_device("auto")
    model = ModelCache().get(ref, device, pick_dtype("auto", device))
    shared = Shared(size, size, steps, sampler, "Karras")
    pipe = getattr(diffusers, model.spec.pipeline)(**model.components())
    pipe.scheduler = build_scheduler(model.scheduler_config, sampler, "Karras")
    pipe.set_progress_bar_config(disable=True)

    def ours():
        render(model, shared, [Sample(PROMPT, NEGATIVE, 42, 7.0)])

    def theirs():
        pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size, width=size,
             guidance_scale=7.0, generator=torch.Generator().manual_seed(42))

    ours(), theirs()  # warm-up: first calls allocate and pick kernels
    t_ours, t_theirs = [], []
    for _ in range(reps):
        t_ours.append(timed(ours))
        t_theirs.append(timed(theirs))
    med_o, med_t = statistics.median(t_ours), statistics.median(t_theirs)
    return {"model": ref, "size": f"{size}x{size}", "steps": steps, "sampler": f"{sampler} Karras",
            "reps": reps, "loracam_s": round(med_o, 4), "diffusers_s": round(med_t, 4),
            "ratio": round(med_o / med_t, 4), "loracam_all_s": [round(x, 4) for x in t_ours],
            "diffusers_all_s": [round(x, 4) for x in t_theirs]}


def main() -> None:
    quick = "--quick" in sys.argv
    gpu = torch.cuda.is_available()
    configs = [("random:tiny", 64, 20, 5 if quick else 15)]
    if gpu:
        configs.append(("random:sd15", 512, 30, 5))
    elif not quick:
        configs.append(("random:sd15", 256, 6, 3))
    runs = [measure(*c) for c in configs]
    worst = max(r["ratio"] for r in runs)
    write_result("gen_overhead", {"ratio": worst, "target": 1.10, "passes": worst <= 1.10, "runs": runs})


if __name__ == "__main__":
    main()
