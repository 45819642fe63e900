"""LoRA training throughput: loracam against a minimal diffusers-example-style loop (target ratio >= 1.0).

Both train the same LoRA (attention-only targets, as diffusers' train_text_to_image_lora.py does; same
rank, batch size, resolution, optimizer) on the same model and images, in one process. The baseline
does what the diffusers example does each step: VAE-encode the batch, encode the captions with the
frozen text encoder, add noise, U-Net forward/backward, AdamW. loracam caches latents and frozen-text
embeddings before the loop (sd-scripts' cache_latents), which is the point of the comparison.
samples/s is measured over the steps after the first (warm-up), from loracam's own event log and from
the baseline's wall clock.
Usage: python benchmarks/train_throughput.py [--quick]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from _common import write_result
from loracam.models import LoadOptions, load_base
from loracam.train import TrainConfig, train
from loracam.train.events import read_events


def make_dataset(root: Path, n: int, size: int) -> Path:
    folder = root / "img" / "10_sks thing"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3)).astype("uint8")).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"sks, thing number {i}")
    return root


def loracam_rate(ds: Path, work: Path, ref: str, size: int, batch: int, steps: int, rank: int) -> float:
    out = work / "lora.safetensors"
    cfg = TrainConfig(dataset=str(ds), output=str(out), base=ref, max_steps=steps, batch_size=batch,
                      resolution=(size, size), rank=rank, alpha=float(rank), lr=1e-4, targets="attention",
                      train_text_encoder=False, lr_scheduler="constant", device="cpu")
    train(cfg, echo=lambda s: None, progress=False)
    ev = [e for e in read_events(out.with_name("lora.events.jsonl")) if e["event"] == "step"]
    span = ev[-1]["time"] - ev[0]["time"]  # steps 2..N
    return (len(ev) - 1) * batch / span


def baseline_rate(ds: Path, ref: str, size: int, batch: int, steps: int, rank: int) -> float:
    """The diffusers example's inner loop, on the same images and captions."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    m = load_base(ref, LoadOptions(torch.device("cpu"), torch.float32))
    unet, vae, te, tok = m.unet, m.vae, m.text_encoder, m.tokenizer
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    files = sorted((ds / "img" / "10_sks thing").glob("*.png"))
    captions = [f.with_suffix(".txt").read_text() for f in files]

    def text(idx: list[int]) -> dict:
        ids = tok([captions[i] for i in idx], padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
        return {"encoder_hidden_states": te(ids)[0]}

    times = timed_steps(unet, vae, DDPMScheduler.from_config(m.scheduler_config), files, batch, steps, text)
    return (steps - 1) * batch / sum(times[1:])


def timed_steps(unet, vae, sched, files: list[Path], batch: int, steps: int, condition) -> list[float]:
    """The diffusers example scripts' training step, timed: VAE-encode the batch, its text conditioning
    (``condition(indices)``: the U-Net's text keyword arguments, computed in the step as the SD1 script does, or
    precomputed as the SDXL dreambooth script does), noise, U-Net forward/backward, AdamW. Seconds per step."""
    pixels = [torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for f in files]
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-4)
    unet.train()
    times = []
    for step in range(steps):
        idx = [(step * batch + i) % len(files) for i in range(batch)]
        t0 = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(torch.stack([pixels[i] for i in idx])).latent_dist.sample() * vae.config.scaling_factor
            text = condition(idx)
        noise = torch.randn_like(latents)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,))
        pred = unet(sched.add_noise(latents, noise, t), t, **text).sample
        F.mse_loss(pred.float(), noise.float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    quick = "--quick" in sys.argv
    configs = [("random:tiny", 128, 4, 30 if quick else 60, 4)]
    if not quick:
        configs.append(("random:sd15", 128, 2, 6, 4))
    runs = []
    for ref, size, batch, steps, rank in configs:
        work = Path(tempfile.mkdtemp())
        try:
            ds = make_dataset(work / "ds", 16, size)
            ours = loracam_rate(ds, work, ref, size, batch, steps, rank)
            base = baseline_rate(ds, ref, size, batch, steps, rank)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        runs.append({"model": ref, "resolution": f"{size}x{size}", "batch": batch, "steps": steps, "rank": rank,
                     "targets": "attention (to_q, to_k, to_v, to_out.0)", "loracam_samples_per_s": round(ours, 3),
                     "baseline_samples_per_s": round(base, 3), "ratio": round(ours / base, 3)})
    worst = min(r["ratio"] for r in runs)
    write_result("train_throughput", {"ratio": worst, "target": 1.0, "passes": worst >= 1.0, "runs": runs})


if __name__ == "__main__":
    main()
