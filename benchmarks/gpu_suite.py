"""Every GPU number the README and the issues ask for, in one command that fits a short GPU lease (<= 8 min).

On a CUDA machine: `python benchmarks/gpu_suite.py` -> benchmarks/results/gpu_suite.json, with the device and the
versions. Sections (a table: later benchmarks such as upscale, ControlNet or the studio add an entry):
- train: LoRA training on random:sd15 at 512x768, bf16, cached latents: batch 1 with gradient checkpointing
  (peak memory), batch 8 (samples/s and MFU by shared/docs/perf.md's FLOP counts); the cost of the
  deterministic kernels that exact resume needs (batch 8 with and without), and whether two deterministic
  runs come out bit-identical.
- generate: 512x768, 30 steps, DPM++ 2M Karras, CFG 7, batch 1 and 8 (s/image, MFU), loracam against a plain
  diffusers pipeline on the same model.
- grid: a 3x3 LoRA-weight grid batched (one batch of 9, per-sample LoRA weights) against cell by cell.
- upscale: an x4plus-shaped RRDBNet at 512x768 -> 2048x3072, fp16: megapixels/s, tiled against untiled.
- sdxl: random:sdxl at 1024x1024, 30 steps, batch 1 and 4 against diffusers' SDXL pipeline; LoRA training at 1024,
  batch 1, checkpointing, bf16 weights, Adafactor: peak memory (goal <= 8 GB) and samples/s with MFU.
- zimage: random:zimage at 1024x1024, Turbo's 9 steps without CFG, bf16, batch 1 and 4 against diffusers'
  ZImagePipeline (s/image, MFU by the transformer's counted forward FLOPs). Its LoRA training numbers wait for
  flow-matching training on Z-Image.
Random-weight models of the full SD1.5 architecture run at exactly the speed of trained ones.

On a CPU it runs as a smoke test at tiny sizes (random:tiny, 64x64, a few steps), which the test suite does so
the script cannot rot; its numbers mean nothing and go to --out (never over the GPU results).
Usage: python benchmarks/gpu_suite.py [--smoke] [--only train,generate] [--out FILE] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import loracam  # noqa: F401  before torch: reproducible MKL numerics, as every loracam entry point
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402

# shared/docs/perf.md: GFLOP per unit of work on the full SD1.5 architecture
GFLOP = {"train_512x768": 2861, "train_512x768_checkpointing": 3839, "image_512x768_30_steps": 81500,
         # SDXL's U-Net forward at 1024x1024 is 6,761 (perf.md); training = forward + backward (2x) = 3x, and
         # gradient checkpointing runs the forward once more: 4x
         "sdxl_forward_1024": 6761, "sdxl_train_1024_checkpointing": 4 * 6761,
         # Z-Image's transformer forward at 1024x1024 with a 64-token caption, counted by torch's FlopCounterMode
         # on the meta device (zimage_forward_gflop below; benchmarks/README.md, "gpu_suite: zimage")
         "zimage_forward_1024": 55_606}
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "4090": 165}  # dense, perf.md


@dataclass(frozen=True)
class Scale:
    """The sizes one run measures at: the real ones on a GPU, tiny ones for the CPU smoke test."""

    model: str
    width: int
    height: int
    train_steps: int
    train_images: int
    gen_steps: int
    gen_reps: int
    grid_steps: int
    precision: str  # training's mixed precision
    device: str
    sdxl_model: str = "random:sdxl"
    sdxl_size: int = 1024
    sdxl_steps: int = 30
    sdxl_train_steps: int = 12
    zimage_model: str = "random:zimage"
    zimage_size: int = 1024
    zimage_steps: int = 9


GPU = Scale("random:sd15", 512, 768, train_steps=20, train_images=16, gen_steps=30, gen_reps=3, grid_steps=20,
            precision="bf16", device="cuda")
SMOKE = Scale("random:tiny", 64, 64, train_steps=4, train_images=8, gen_steps=2, gen_reps=1, grid_steps=2,
              precision="no", device="cpu", sdxl_model="random:tiny-sdxl", sdxl_size=64, sdxl_steps=2,
              sdxl_train_steps=4, zimage_model="random:tiny-zimage", zimage_size=64, zimage_steps=2)


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def mfu(units_per_s: float, gflop_per_unit: float, s: Scale) -> float | None:
    """Achieved FLOP/s over the chip's dense bf16 peak; only for the full-size model on a known GPU."""
    if s.model != "random:sd15" or (s.width, s.height) != (512, 768) or not torch.cuda.is_available():
        return None
    peak = peak_tflops(torch.cuda.get_device_name(0))
    return round(units_per_s * gflop_per_unit / (peak * 1000), 4) if peak else None


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# train


def make_dataset(root: Path, s: Scale) -> Path:
    folder = root / "img" / "1_sks thing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(s.train_images):
        Image.fromarray(rng.integers(0, 255, (s.height, s.width, 3)).astype("uint8")).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"sks, thing number {i}")
    return root


def train_run(ds: Path, out: Path, s: Scale, batch: int, checkpointing: bool, deterministic: bool) -> dict:
    from loracam.train import TrainConfig, train
    from loracam.train.events import read_events

    cfg = TrainConfig(dataset=str(ds), output=str(out), base=s.model, resolution=(s.width, s.height),
                      batch_size=batch, max_steps=s.train_steps, lr_scheduler="constant", cache_latents=True,
                      mixed_precision=s.precision, gradient_checkpointing=checkpointing,
                      deterministic=deterministic, device=s.device, seed=7)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(cfg, echo=lambda line: None, progress=False)
    steps = [e for e in read_events(out.with_name(out.stem + ".events.jsonl")) if e["event"] == "step"]
    warm = steps[min(3, len(steps) - 2):]  # the first steps pick kernels and allocate
    rate = (len(warm) - 1) * batch / (warm[-1]["time"] - warm[0]["time"])
    gflop = GFLOP["train_512x768_checkpointing" if checkpointing else "train_512x768"]
    return {"batch": batch, "gradient_checkpointing": checkpointing, "deterministic": deterministic,
            "steps": len(steps), "samples_per_s": round(rate, 3), "mfu": mfu(rate, gflop, s),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}


def section_train(s: Scale, work: Path) -> dict:
    from safetensors.torch import load_file

    ds = make_dataset(work / "ds", s)
    runs = {
        "batch1_checkpointing": train_run(ds, work / "b1.safetensors", s, 1, True, True),
        "batch8": train_run(ds, work / "b8.safetensors", s, 8, False, True),
        "batch8_again": train_run(ds, work / "b8again.safetensors", s, 8, False, True),
        "batch8_nondeterministic": train_run(ds, work / "b8fast.safetensors", s, 8, False, False),
    }
    a, b, c = (load_file(str(work / f)) for f in ("b8.safetensors", "b8again.safetensors", "b8fast.safetensors"))
    det = statistics.mean([runs["batch8"]["samples_per_s"], runs["batch8_again"]["samples_per_s"]])
    return {
        "model": s.model, "resolution": f"{s.width}x{s.height}", "precision": s.precision, "cached_latents": True,
        "network": "loracam's default LoRA (kohya targets, rank 4, text encoder trained)", "runs": runs,
        "deterministic_runs_identical": all(torch.equal(a[k], b[k]) for k in a),
        "nondeterministic_run_identical": all(torch.equal(a[k], c[k]) for k in a),
        "deterministic_cost": round(runs["batch8_nondeterministic"]["samples_per_s"] / det, 3),  # >1: it costs
    }


# ---------------------------------------------------------------------------------------------
# generate


PROMPT = "masterpiece, best quality, 1girl, red dress, white shoes, blue background"
NEGATIVE = "lowres, bad anatomy"


def load_model(s: Scale):
    from loracam.models import ModelCache, pick_device, pick_dtype

    models = ModelCache()
    device = pick_device(s.device)
    return models, models.get(s.model, device, pick_dtype("auto", device))


def timed_reps(fn: Callable[[], None], reps: int) -> float:
    fn()  # warm-up: kernels, allocations
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def section_generate(s: Scale, work: Path) -> dict:
    from diffusers import StableDiffusionPipeline

    from loracam.generate.engine import render
    from loracam.generate.request import Sample, Shared
    from loracam.generate.samplers import build_scheduler

    _, model = load_model(s)
    shared = Shared(s.width, s.height, s.gen_steps, "DPM++ 2M", "Karras")
    pipe = StableDiffusionPipeline(**model.components())
    pipe.scheduler = build_scheduler(model.scheduler_config, "DPM++ 2M", "Karras")
    pipe.set_progress_bar_config(disable=True)
    out = {"model": s.model, "size": f"{s.width}x{s.height}", "steps": s.gen_steps, "sampler": "DPM++ 2M Karras",
           "dtype": str(model.unet.dtype).replace("torch.", "")}
    for batch in (1, 8):
        ours = timed_reps(lambda: render(model, shared, [Sample(PROMPT, NEGATIVE, 42 + i, 7.0) for i in range(batch)]),
                          s.gen_reps) / batch
        theirs = timed_reps(lambda: pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=s.gen_steps,
                                         height=s.height, width=s.width, guidance_scale=7.0,
                                         num_images_per_prompt=batch, generator=torch.Generator().manual_seed(42)),
                            s.gen_reps) / batch
        out[f"batch{batch}"] = {"loracam_s_per_image": round(ours, 4), "diffusers_s_per_image": round(theirs, 4),
                                "ratio": round(ours / theirs, 3),
                                "mfu": mfu(1 / ours, GFLOP["image_512x768_30_steps"] * s.gen_steps / 30, s)}
    return out


# ---------------------------------------------------------------------------------------------
# grid


def section_grid(s: Scale, work: Path) -> dict:
    from loracam.generate import GenRequest
    from loracam.grid import AxisSpec, GridOptions, run_grid
    from loracam.lora import LoraLibrary, random_lora, write_kohya

    models, model = load_model(s)
    for name, seed in (("testdress", 1), ("myshoes", 2)):
        lora = random_lora(model.unet, model.text_encoder, dim=8, alpha=8, seed=seed)
        write_kohya(work / f"{name}.safetensors", lora, {})
    library = LoraLibrary([work], models.hash_cache)
    req = GenRequest(prompt="1girl, full body <lora:testdress:0.4> <lora:myshoes:0.4>", base=s.model,
                     steps=s.grid_steps, seed=1296893022, width=s.width, height=s.height, sampler="DPM++ 2M",
                     device=s.device)
    specs = [AxisSpec.parse("lora:testdress=0.3-0.5 [3]"), AxisSpec.parse("lora:myshoes=0.4,0.45,0.5")]
    runs = iter(range(1000))

    def grid(batch: int) -> None:  # a fresh folder each time, so the cell cache never answers
        run_grid(req, specs, GridOptions(batch_size=batch), models, library, work / f"grid-{batch}-{next(runs)}")

    batched, single = timed_reps(lambda: grid(9), s.gen_reps), timed_reps(lambda: grid(1), s.gen_reps)
    return {"model": s.model, "size": f"{s.width}x{s.height}", "steps": s.grid_steps, "cells": 9,
            "batched_s": round(batched, 3), "one_by_one_s": round(single, 3), "speedup": round(single / batched, 3)}


# ---------------------------------------------------------------------------------------------
# upscale


def section_upscale(s: Scale, work: Path) -> dict:
    """RealESRGAN_x4plus's shape (64 features, 23 blocks; random weights) on a 512x768 image, fp16, tiled at the
    defaults and untiled: megapixels/s out, and the tiler's overhead (upscale_speed.py's measurement)."""
    from upscale_speed import measure, rrdb

    from loracam.generate.upscale import TileOptions

    device = torch.device(s.device)
    if s.model == "random:sd15":
        return measure("RRDBNet 64x23 (x4plus shape), random", rrdb(23, device), (s.width, s.height), 3)
    return measure("RRDBNet 64x1, random", rrdb(1, device), (32, 48), 1, TileOptions(tile=24, overlap=4, min_tile=8))


# ---------------------------------------------------------------------------------------------
# controlnet


def section_controlnet(s: Scale, work: Path) -> dict:
    """s/image with 0, 1 and 2 SD1.5-shaped random ControlNets at 512x768 (controlnet_overhead.py's measurement)."""
    from controlnet_overhead import measure

    _, model = load_model(s)
    return {"model": s.model, **measure(model, (s.width, s.height), s.gen_steps, 1, s.gen_reps)}


# ---------------------------------------------------------------------------------------------
# sdxl


def section_sdxl(s: Scale, work: Path) -> dict:
    """random:sdxl at 1024x1024: generation (30 steps, DPM++ 2M Karras, CFG 7, fp16; batch 1 and 4) against diffusers'
    StableDiffusionXLPipeline, then LoRA training at 1024 (batch 1, gradient checkpointing, bf16 with the frozen
    weights in bf16, cached latents and text, Adafactor): peak memory (goal <= 8 GB) and samples/s with MFU."""
    from diffusers import StableDiffusionXLPipeline

    from loracam.generate.engine import render
    from loracam.generate.request import Sample, Shared
    from loracam.generate.samplers import build_scheduler
    from loracam.models import ModelCache, pick_device, pick_dtype

    device = pick_device(s.device)
    model = ModelCache().get(s.sdxl_model, device, pick_dtype("auto", device))
    size, steps = s.sdxl_size, s.sdxl_steps
    shared = Shared(size, size, steps, "DPM++ 2M", "Karras")
    pipe = StableDiffusionXLPipeline(**model.components())
    pipe.scheduler = build_scheduler(model.scheduler_config, "DPM++ 2M", "Karras")
    pipe.set_progress_bar_config(disable=True)
    out = {"model": s.sdxl_model, "size": f"{size}x{size}", "steps": steps, "sampler": "DPM++ 2M Karras",
           "dtype": str(model.unet.dtype).replace("torch.", "")}
    for batch in (1, 4):
        reps = s.gen_reps if batch == 1 else 1  # a batch of 4 at 1024 is ~15 s a call on an H100: one timed call
        ours = timed_reps(lambda: render(model, shared, [Sample(PROMPT, NEGATIVE, 42 + i, 7.0) for i in range(batch)]),
                          reps) / batch
        theirs = timed_reps(lambda: pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=size,
                                         width=size, guidance_scale=7.0, num_images_per_prompt=batch,
                                         generator=torch.Generator().manual_seed(42)), reps) / batch
        # CFG: two U-Net rows an image a step
        out[f"batch{batch}"] = {"loracam_s_per_image": round(ours, 4), "diffusers_s_per_image": round(theirs, 4),
                                "ratio": round(ours / theirs, 3),
                                "mfu": mfu(1 / ours, GFLOP["sdxl_forward_1024"] * 2 * steps, s)}
    del pipe, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    out["train"] = sdxl_train_run(s, work)
    return out


def sdxl_train_run(s: Scale, work: Path) -> dict:
    from loracam.train import TrainConfig, train
    from loracam.train.events import read_events

    ds = make_dataset(work / "ds", replace(s, width=s.sdxl_size, height=s.sdxl_size, train_images=4))
    out = work / "xl.safetensors"
    cfg = TrainConfig(dataset=str(ds), output=str(out), base=s.sdxl_model, resolution=(s.sdxl_size, s.sdxl_size),
                      batch_size=1, max_steps=s.sdxl_train_steps, rank=8, alpha=8.0, lr=1e-4, optimizer="Adafactor",
                      lr_scheduler="constant", cache_latents=True, mixed_precision=s.precision,
                      gradient_checkpointing=True, train_text_encoder=False, device=s.device, seed=7)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(cfg, echo=lambda line: None, progress=False)
    steps = [e for e in read_events(out.with_name(out.stem + ".events.jsonl")) if e["event"] == "step"]
    warm = steps[min(3, len(steps) - 2):]
    rate = (len(warm) - 1) / (warm[-1]["time"] - warm[0]["time"])
    return {"resolution": f"{s.sdxl_size}x{s.sdxl_size}", "batch": 1, "gradient_checkpointing": True,
            "optimizer": "Adafactor", "rank": 8, "precision": s.precision, "steps": len(steps),
            "samples_per_s": round(rate, 3), "mfu": mfu(rate, GFLOP["sdxl_train_1024_checkpointing"], s),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
            "goal_peak_memory_gib": 8}


def section_zimage(s: Scale, work: Path) -> dict:
    """random:zimage at 1024x1024, Turbo's settings (9 steps, Euler at shift 3, CFG 1), bf16, batch 1 and 4, against
    diffusers' ZImagePipeline on the same components."""
    from diffusers import ZImagePipeline

    from loracam.generate.engine import render
    from loracam.generate.request import Sample, Shared
    from loracam.models import ModelCache, pick_device

    device = pick_device(s.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # Z-Image runs in bf16 (fp16 overflows)
    model = ModelCache().get(s.zimage_model, device, dtype)
    size, steps = s.zimage_size, s.zimage_steps
    shared = Shared(size, size, steps, "Euler", "Automatic")
    pipe = ZImagePipeline(**model.components())
    pipe.set_progress_bar_config(disable=True)
    out = {"model": s.zimage_model, "size": f"{size}x{size}", "steps": steps, "sampler": "Euler", "cfg": 1.0,
           "dtype": str(dtype).replace("torch.", "")}
    for batch in (1, 4):
        reps = s.gen_reps if batch == 1 else 1
        ours = timed_reps(lambda: render(model, shared, [Sample(PROMPT, "", 42 + i, 1.0) for i in range(batch)]),
                          reps) / batch
        theirs = timed_reps(lambda: pipe(PROMPT, num_inference_steps=steps, height=size, width=size,
                                         guidance_scale=0.0, num_images_per_prompt=batch,
                                         generator=torch.Generator().manual_seed(42)), reps) / batch
        full = s.zimage_model == "random:zimage" and size == 1024  # one transformer row an image a step
        out[f"batch{batch}"] = {"loracam_s_per_image": round(ours, 4), "diffusers_s_per_image": round(theirs, 4),
                                "ratio": round(ours / theirs, 3),
                                "mfu": _mfu_any(1 / ours, GFLOP["zimage_forward_1024"] * steps) if full else None}
    out["train"] = {"skipped": "flow-matching LoRA training on Z-Image is not built yet"}
    return out


def _mfu_any(units_per_s: float, gflop_per_unit: float) -> float | None:
    if not torch.cuda.is_available():
        return None
    peak = peak_tflops(torch.cuda.get_device_name(0))
    return round(units_per_s * gflop_per_unit / (peak * 1000), 4) if peak else None


def zimage_forward_gflop(size: int = 1024, caption_tokens: int = 64) -> float:
    """GFLOP of one ZImageTransformer2DModel forward (the shipped full config), counted on the meta device."""
    from diffusers import ZImageTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    from loracam.models.zimage import zimage_configs

    with torch.device("meta"):
        t = ZImageTransformer2DModel.from_config(zimage_configs()["transformer"])
        x = [torch.zeros(16, 1, size // 8, size // 8)]
        cap = [torch.zeros(caption_tokens, 2560)]
        with FlopCounterMode(display=False) as fc:
            t(x, torch.zeros(1), cap, return_dict=False)
    return fc.get_total_flops() / 1e9


SECTIONS: dict[str, Callable[[Scale, Path], dict]] = {
    "train": section_train,
    "generate": section_generate,
    "grid": section_grid,
    "upscale": section_upscale,
    "controlnet": section_controlnet,
    "sdxl": section_sdxl,
    "zimage": section_zimage,
}


def run(scale: Scale, only: list[str], out: Path, budget_s: float) -> dict:
    """Run the sections in order, writing the JSON after each, so a lease that ends early keeps what ran."""
    start = time.time()
    doc = {"benchmark": "gpu_suite", "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "scale": asdict(scale),
           "environment": environment(), "sections": {}}
    if torch.cuda.is_available():
        doc["environment"]["cuda"] = torch.version.cuda
    for name in only:
        if time.time() - start > budget_s:
            doc["sections"][name] = {"skipped": f"the {budget_s:.0f} s budget was spent"}
            continue
        work = Path(tempfile.mkdtemp(prefix=f"gpu-suite-{name}-"))
        t = time.time()
        try:
            result = SECTIONS[name](scale, work)
        except Exception as exc:  # one broken section must not lose the others' numbers
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result["seconds"] = round(time.time() - t, 1)
        doc["sections"][name] = result
        doc["total_seconds"] = round(time.time() - start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"== {name} ({result['seconds']} s)\n{json.dumps(result, indent=2)}", flush=True)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the default without CUDA)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, help="the JSON (default on a GPU: benchmarks/results/gpu_suite.json)")
    ap.add_argument("--budget", type=float, default=420, help="start no section after this many seconds")
    args = ap.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}; use {', '.join(SECTIONS)}")
    smoke = args.smoke or not torch.cuda.is_available()
    if smoke and args.out is None:
        ap.error("no CUDA GPU: this runs as a smoke test, whose numbers must not replace the GPU results; "
                 "give --out FILE")
    doc = run(SMOKE if smoke else GPU, only, args.out or RESULTS / "gpu_suite.json", args.budget)
    return 1 if any("error" in v for v in doc["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
