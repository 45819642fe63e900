"""What MKL's reproducible mode (MKL_CBWR=AUTO,STRICT, set by `import loracam`) costs on this CPU, in one run.

MKL reads the mode once per process, so each measurement is a fresh process: "reproducible" as loracam
starts, "fast" with LORACAM_REPRODUCIBLE=0 and no MKL_CBWR (MKL's default code paths). The two alternate
(fast, reproducible, fast, ...) so machine noise hits both alike; the cost is the ratio of medians. Work:
- train: LoRA training on the toy base (the garment preset's network, batch 4, 64x96, cached latents),
  seconds per step over the steps after the first;
- generate: the toy base, 20 steps Euler a, a batch of 8 at 64x96, seconds per image (median of 3 after a
  warm-up).
Each side also trains twice more to see whether two identical runs agree bit for bit.
Usage: python benchmarks/numerics_cost.py [--reps N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = {"reproducible": {}, "fast": {"LORACAM_REPRODUCIBLE": "0"}}


def worker(kind: str, work: Path, steps: int) -> dict:
    """One measurement, in this (fresh) process."""
    import loracam  # noqa: F401  sets (or, opted out, leaves) MKL_CBWR before torch loads
    import torch

    from loracam.numerics import mkl_mode

    if kind == "train":
        from loracam.train import TrainConfig, train
        from loracam.train.events import read_events

        out = work / f"lora-{time.time_ns()}.safetensors"
        train(TrainConfig(dataset=str(work / "ds"), output=str(out), subject="garment", max_steps=steps,
                          batch_size=4, seed=1), echo=lambda line: None, progress=False)
        ev = [e for e in read_events(out.with_name(out.stem + ".events.jsonl")) if e["event"] == "step"]
        return {"seconds": (ev[-1]["time"] - ev[0]["time"]) / (len(ev) - 1), "lora": str(out), "mkl_mode": mkl_mode()}
    from loracam.generate.engine import render
    from loracam.generate.request import Sample, Shared
    from loracam.models import ModelCache

    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    shared = Shared(64, 96, 20, "Euler a", "Automatic")
    samples = [Sample("1girl, full body, red dress, white shoes, black hair, blue background", "", 100 + i, 7.0)
               for i in range(8)]
    render(model, shared, samples)  # warm-up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        render(model, shared, samples)
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times) / len(samples), "mkl_mode": mkl_mode()}


def measure(kind: str, mode: str, work: Path, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "LORACAM_REPRODUCIBLE")}
    env.update(MODES[mode])
    done = subprocess.run([sys.executable, __file__, "--worker", kind, "--work", str(work), "--steps", str(steps)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--worker", choices=["train", "generate"])
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.steps)))
        return
    sys.path.insert(0, str(HERE))
    from _common import write_result

    work = Path(tempfile.mkdtemp(prefix="numerics-cost-"))
    try:
        import loracam  # noqa: F401
        from loracam.data.config import PrepConfig
        from loracam.data.prep import prepare
        from loracam.toy.photos import write_photos
        from loracam.toy.world import TESTDRESS

        write_photos(work / "photos", TESTDRESS, 12, seed=4)
        prepare(work / "photos", work / "ds", PrepConfig(subject="garment", trigger=TESTDRESS, class_word="1girl",
                                                         reg=True, resolution=(64, 96),
                                                         boxes=work / "photos" / "boxes.json"))
        times = {(k, m): [] for k in ("train", "generate") for m in MODES}
        loras = {m: [] for m in MODES}
        modes = {}
        for _ in range(args.reps):
            for kind in ("train", "generate"):
                for mode in MODES:
                    r = measure(kind, mode, work, args.steps)
                    times[(kind, mode)].append(r["seconds"])
                    modes[mode] = r["mkl_mode"]
                    if kind == "train":
                        loras[mode].append(r["lora"])
        result = {"reps": args.reps, "train_steps": args.steps, "mkl_mode": modes}
        for kind in ("train", "generate"):
            med = {m: statistics.median(times[(kind, m)]) for m in MODES}
            result[kind] = {"unit": "s/step" if kind == "train" else "s/image",
                            **{m: round(v, 4) for m, v in med.items()},
                            "cost": round(med["reproducible"] / med["fast"], 3),
                            **{f"{m}_all": [round(x, 4) for x in times[(kind, m)]] for m in MODES}}
        result["identical_runs"] = {m: _all_identical(loras[m]) for m in MODES}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_result("numerics_cost", result)


def _all_identical(paths: list[str]) -> bool:
    from safetensors.torch import load_file
    import torch

    first = load_file(paths[0])
    return all(all(torch.equal(first[k], t[k]) for k in first) for t in map(load_file, paths[1:]))


if __name__ == "__main__":
    main()
