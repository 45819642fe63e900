"""SDXL on the CPU, in one run: generation against diffusers' StableDiffusionXLPipeline (target ratio <= 1.10) and
LoRA training against the per-step work of diffusers' train_dreambooth_lora_sdxl.py (target ratio >= 1.0).

Generation: gen_overhead's measurement (same model, sampler, steps, size, prompt, negative, seed; alternating runs
after a warm-up; medians) on random:tiny-sdxl and on random:sdxl (the full SDXL architecture, random weights) at a
small size. Training: the same attention-only LoRA (to_q, to_k, to_v, to_out.0, the script's targets), rank, batch,
size and AdamW on the same images. The baseline does what the diffusers script does each step with frozen text
encoders: VAE-encode the batch (its text embeddings and size ids are computed once before the loop, as the script
does for its instance prompt), add noise, U-Net forward/backward with pooled text and size ids, AdamW. loracam
caches latents (sd-scripts' cache_latents) and frozen-text outputs. Models are loaded one at a time: the full
SDXL is ~13 GB in fp32.
Usage: python benchmarks/sdxl_cpu.py [--quick]  (--quick: the tiny model only)
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import write_result
from gen_overhead import measure
from loracam.models import LoadOptions, load_base
from loracam.train import TrainConfig, train
from loracam.train.events import read_events
from train_throughput import make_dataset, timed_steps

TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def loracam_rate(ds: Path, work: Path, ref: str, size: int, batch: int, steps: int, rank: int) -> float:
    out = work / f"lora{len(list(work.glob('*.safetensors')))}.safetensors"
    cfg = TrainConfig(dataset=str(ds), output=str(out), base=ref, max_steps=steps, batch_size=batch,
                      resolution=(size, size), rank=rank, alpha=float(rank), lr=1e-4, targets="attention",
                      train_text_encoder=False, lr_scheduler="constant", device="cpu")
    train(cfg, echo=lambda s: None, progress=False)
    ev = [e for e in read_events(out.with_name(out.stem + ".events.jsonl")) if e["event"] == "step"]
    return batch / statistics.median(e["seconds"] for e in ev[2:])  # after two warm-up steps


def baseline_rate(ds: Path, ref: str, size: int, batch: int, steps: int, rank: int) -> float:
    """train_dreambooth_lora_sdxl.py's inner loop with frozen text encoders, on the same images."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    m = load_base(ref, LoadOptions(torch.device("cpu"), torch.float32))
    unet, vae = m.unet, m.vae
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    files = sorted((ds / "img" / "10_sks thing").glob("*.png"))
    with torch.no_grad():  # the script's compute_text_embeddings, once: prompt embeds, pooled embeds, time ids
        ids1 = m.tokenizer(["sks thing"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        ids2 = m.tokenizer_2(["sks thing"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        h1 = m.text_encoder(ids1, output_hidden_states=True).hidden_states[-2]
        out2 = m.text_encoder_2(ids2, output_hidden_states=True)
        ctx = torch.cat([h1, out2.hidden_states[-2]], dim=-1).repeat(batch, 1, 1)
        added = {"text_embeds": out2.text_embeds.repeat(batch, 1),
                 "time_ids": torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(batch, 1)}
    text = {"encoder_hidden_states": ctx, "added_cond_kwargs": added}
    times = timed_steps(unet, vae, DDPMScheduler.from_config(m.scheduler_config), files, batch, steps, lambda idx: text)
    return batch / statistics.median(times[2:])


def train_run(ref: str, size: int, batch: int, steps: int, rank: int, rounds: int = 2) -> dict:
    """Rounds of (baseline, loracam), each a fresh model, rates from median step times after two warm-up steps:
    alternating so that a machine that warms up (or is disturbed) favours neither side."""
    work = Path(tempfile.mkdtemp())
    ours, base = [], []
    try:
        ds = make_dataset(work / "ds", 8, size)
        for _ in range(rounds):
            base.append(baseline_rate(ds, ref, size, batch, steps, rank))
            gc.collect()
            ours.append(loracam_rate(ds, work, ref, size, batch, steps, rank))
            gc.collect()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        gc.collect()
    o, b = statistics.median(ours), statistics.median(base)
    return {"model": ref, "resolution": f"{size}x{size}", "batch": batch, "steps": steps, "rank": rank,
            "rounds": rounds, "targets": "attention (to_q, to_k, to_v, to_out.0)", "loracam_samples_per_s": round(o, 4),
            "baseline_samples_per_s": round(b, 4), "ratio": round(o / b, 3),
            "loracam_all": [round(x, 4) for x in ours], "baseline_all": [round(x, 4) for x in base]}


def main() -> None:
    quick = "--quick" in sys.argv
    t0 = time.time()
    gen = [measure("random:tiny-sdxl", 64, 20, 5 if quick else 11)]
    training = [train_run("random:tiny-sdxl", 128, 4, 20 if quick else 30, 4)]
    if not quick:
        gc.collect()
        gen.append(measure("random:sdxl", 128, 4, 2))
        gc.collect()
        training.append(train_run("random:sdxl", 128, 1, 7, 4))
    worst_gen = max(r["ratio"] for r in gen)
    worst_train = min(r["ratio"] for r in training)
    write_result("sdxl_cpu", {
        "generation": {"ratio": worst_gen, "target": 1.10, "passes": worst_gen <= 1.10, "runs": gen},
        "training": {"ratio": worst_train, "target": 1.0, "passes": worst_train >= 1.0, "runs": training},
        "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
