"""Tiled upscaling against one untiled spandrel call on the same model and image (target: overhead <= 10%).

Both sides run the very same spandrel ImageModelDescriptor; the tiled side goes through loracam's tiler at
its defaults (512-pixel tiles, 32 overlap, feathered blending), the untiled side is `descriptor(image)`.
Alternating after a warm-up, median of the repetitions. Models: the shipped toy-4x (Real-ESRGAN compact,
48 features, 8 convs) on 512x768 (two tiles) and 1024x1536 inputs (six), and on a GPU a random-weight
RRDBNet shaped like RealESRGAN_x4plus_anime_6B (64 features, 6 blocks) on 512x768.
On a GPU the suite also reports megapixels/s for an x4plus-shaped model (23 blocks) in fp16 (gpu_suite.py).
Usage: python benchmarks/upscale_speed.py [--reps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import loracam  # noqa: F401  reproducible MKL numerics, as every entry point
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed, write_result  # noqa: E402

from loracam.models.upscalers import import_spandrel, load_descriptor  # noqa: E402
from loracam.generate.upscale import TileOptions, tiled  # noqa: E402
from loracam.toy.upscaler import TOY_UPSCALER  # noqa: E402


def rrdb(blocks: int, device: torch.device):
    """A random-weight RRDBNet of Real-ESRGAN's shape, loaded through spandrel like a downloaded file."""
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    state = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=blocks, scale=4).state_dict()
    return import_spandrel().ModelLoader(device).load_from_state_dict(state).eval()


def measure(name: str, desc, size: tuple[int, int], reps: int, tiles: TileOptions = TileOptions()) -> dict:
    device = next(desc.model.parameters()).device
    dtype = torch.float16 if device.type == "cuda" and desc.supports_half else torch.float32
    desc.to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size[1], size[0], generator=g).to(device, dtype)

    def whole():
        with torch.inference_mode():
            desc(x)

    def parts():
        with torch.inference_mode():
            tiled(desc, x, desc.scale, tiles.tile, tiles.overlap)

    whole(), parts()
    t_whole, t_parts = [], []
    for _ in range(reps):
        t_whole.append(timed(whole))
        t_parts.append(timed(parts))
    a, b = statistics.median(t_whole), statistics.median(t_parts)
    mp = size[0] * size[1] * desc.scale ** 2 / 1e6
    return {"model": name, "input": f"{size[0]}x{size[1]}", "dtype": str(dtype).replace("torch.", ""),
            "tile": tiles.tile, "overlap": tiles.overlap, "untiled_s": round(a, 4), "tiled_s": round(b, 4),
            "overhead": round(b / a - 1, 4), "tiled_output_mp_per_s": round(mp / b, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    toy = load_descriptor(TOY_UPSCALER, device)
    runs = [measure("toy-4x", toy, (512, 768), args.reps), measure("toy-4x", toy, (1024, 1536), args.reps)]
    if gpu:  # an RRDB at these sizes takes minutes a pass on two CPU cores
        runs.append(measure("RRDBNet 64x6 (anime_6B shape), random", rrdb(6, device), (512, 768), args.reps))
    worst = max(r["overhead"] for r in runs)
    write_result("upscale_speed", {"overhead": worst, "target": 0.10, "passes": worst <= 0.10, "runs": runs})


if __name__ == "__main__":
    main()
