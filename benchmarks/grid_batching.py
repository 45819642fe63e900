"""A 3x3 grid over two LoRA weights: batched (loracam) against cell by cell (A1111's way), one run.

Same model, seed, sampler, steps and size; the only difference is the batch size given to the grid
runner: 9 (every cell in one batch, per-sample LoRA weights) or 1 (nine renders one after another,
each with its LoRA weights fused, as A1111 does). Each repetition writes into a fresh folder so the
cell cache never answers. Target: >= 1.5x on 2 CPU cores with the tiny model; >= 3x on a GPU with
random:sd15 at 512x768 (run there when a device is available).
Usage: python benchmarks/grid_batching.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import write_result
from loracam.generate import GenRequest
from loracam.grid import AxisSpec, GridOptions, run_grid
from loracam.lora import LoraLibrary, random_lora, write_kohya
from loracam.models import ModelCache, pick_device, pick_dtype


def main() -> None:
    gpu = torch.cuda.is_available()
    ref, (w, h), steps, reps = ("random:sd15", (512, 768), 20, 3) if gpu else ("random:tiny", (128, 128), 20, 5)
    device = pick_device("auto")
    models = ModelCache()
    model = models.get(ref, device, pick_dtype("auto", device))
    work = Path(tempfile.mkdtemp())
    for name, seed in (("testdress", 1), ("myshoes", 2)):
        write_kohya(work / f"{name}.safetensors", random_lora(model.unet, model.text_encoder, dim=8, alpha=8, seed=seed), {})
    library = LoraLibrary([work], models.hash_cache)
    req = GenRequest(prompt="1girl, full body <lora:testdress:0.4> <lora:myshoes:0.4>", base=ref, steps=steps,
                     seed=1296893022, width=w, height=h, sampler="DPM++ 2M")
    specs = [AxisSpec.parse("lora:testdress=0.3-0.5 [3]"), AxisSpec.parse("lora:myshoes=0.4,0.45,0.5")]

    def grid(batch: int, i: int) -> float:
        t = time.perf_counter()
        run_grid(req, specs, GridOptions(batch_size=batch), models, library, work / f"out-{batch}-{i}")
        if gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    grid(9, -1), grid(1, -1)  # warm-up
    batched, single = [], []
    for i in range(reps):
        batched.append(grid(9, i))
        single.append(grid(1, i))
    b, s = statistics.median(batched), statistics.median(single)
    write_result("grid_batching", {"speedup": round(s / b, 3), "target": 3.0 if gpu else 1.5,
                                   "passes": s / b >= (3.0 if gpu else 1.5), "model": ref, "size": f"{w}x{h}",
                                   "steps": steps, "cells": 9, "batched_s": round(b, 3), "one_by_one_s": round(s, 3),
                                   "batched_all_s": [round(x, 3) for x in batched],
                                   "one_by_one_all_s": [round(x, 3) for x in single]})


if __name__ == "__main__":
    main()
