"""Generation with 0, 1 and 2 ControlNets on the same model, seeds and steps: the cost of control.

A ControlNet is a copy of the U-Net's encoder and middle block run beside the U-Net at every step, so each
unit should add well under one U-Net's time (SD1.5: ~45% of the U-Net's FLOPs). Measured on the toy base
(64x96, 20 steps DPM++ 2M, batch 4) with ControlNets of its shape and random weights (the cost does not
depend on the weights), median of the repetitions, the three cases alternating. On a GPU, gpu_suite.py's
``controlnet`` section runs the same on random:sd15 at 512x768 with SD1.5-shaped ControlNets (s/image).
Usage: python benchmarks/controlnet_overhead.py [--reps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import loracam  # noqa: F401  reproducible MKL numerics, as every entry point
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed, write_result  # noqa: E402

PROMPT = "1girl, full body, red dress, white shoes, black hair, long hair, white background"


def random_controlnets(model, folder: Path, n: int) -> list[str]:
    """``n`` random-weight ControlNets of the model's shape, saved as diffusers folders; their paths."""
    from diffusers import ControlNetModel

    stages = int(np.log2(model.vae_scale_factor)) + 1
    hint = (16, 32, 96, 256)[:stages]
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        net = ControlNetModel.from_unet(model.unet, conditioning_embedding_out_channels=hint)
        for p in net.parameters():
            p.data.normal_(0, 0.02)
        net.save_pretrained(folder / f"random_{i}")
        paths.append(str(folder / f"random_{i}"))
    return paths


def measure(model, size: tuple[int, int], steps: int, batch: int, reps: int) -> dict:
    """Seconds per image with 0, 1 and 2 ControlNets, and the ratios to none."""
    from loracam.control.models import ControlNets
    from loracam.control.units import ControlUnit
    from loracam.generate.api import render_samples
    from loracam.generate.request import Sample, Shared
    from loracam.lora import LoraLibrary

    work = Path(tempfile.mkdtemp(prefix="cn-overhead-"))
    nets = random_controlnets(model, work, 2)
    photo = work / "map.png"
    Image.fromarray((np.random.default_rng(0).random((size[1], size[0], 3)) * 255).astype("uint8")).save(photo)
    units = [ControlUnit("image", str(photo), model=p) for p in nets]
    samples = [Sample(PROMPT, "", 42 + i, 7.0) for i in range(batch)]
    library, controls = LoraLibrary([]), ControlNets()
    cases = {n: Shared(size[0], size[1], steps, "DPM++ 2M", "Karras", control=tuple(units[:n])) for n in (0, 1, 2)}
    runs = {n: (lambda sh=sh: render_samples(model, sh, samples, library, controls=controls)) for n, sh in cases.items()}
    for fn in runs.values():
        fn()  # warm-up: loading, kernels
    times = {n: [] for n in runs}
    for _ in range(reps):
        for n, fn in runs.items():
            times[n].append(timed(fn))
    per = {n: statistics.median(t) / batch for n, t in times.items()}
    return {"size": f"{size[0]}x{size[1]}", "steps": steps, "batch": batch, "reps": reps,
            "s_per_image": {f"{n}_controlnets": round(v, 4) for n, v in per.items()},
            "ratio_to_none": {f"{n}_controlnets": round(v / per[0], 3) for n, v in per.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from loracam.models import ModelCache

    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    result = measure(model, (64, 96), 20, 4, args.reps)
    write_result("controlnet_overhead", {"model": "toy (CPU)", **result,
                                         "gpu": "not measured here: gpu_suite.py's controlnet section"})


if __name__ == "__main__":
    main()
