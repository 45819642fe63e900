"""Build the toy base model from nothing: ``make toy-model`` / ``python -m loracam.toy.build``.

1. Render the base world (no held-out concepts) as a kohya dataset: one PNG and one caption each.
2. Train the VAE as an autoencoder on those renders. loracam's trainer, like sd-scripts, trains U-Nets and
   text encoders, not VAEs (SD's VAE was trained once, separately, too), so this step lives here.
3. Write a diffusers folder: the trained VAE, a random U-Net and CLIP text encoder of the toy's shape,
   SD1.5's scheduler and tokenizer.
4. Train U-Net and text encoder together with the public command, ``loracam train --full`` (four stages),
   then fine-tune the VAE's decoder alone (the latent space, and so the U-Net, stays as it is).
5. Export the result in fp16 to ``loracam/toy/model`` (what ``--base toy`` loads).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loracam.models.loader import TOY_DIR
from loracam.models.tiny import SD15_DIR, sd15_config
from loracam.toy.probe import to_tensor
from loracam.toy.world import H, W, render, sample_doll, tags



def toy_configs() -> dict[str, dict]:
    """The toy model's shape: SD1.5's classes, a 4x VAE (64x96 px -> 16x24 latents) and a small U-Net.

    The U-Net keeps SD1.5's four levels but no attention at the 16x24 level (the costly one on a CPU);
    cross-attention at 8x12 and 4x6 is where prompts steer colours, patterns and framing.
    """
    down = ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    up = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    unet = sd15_config("unet") | {
        "block_out_channels": [32, 64, 128, 128], "layers_per_block": 1, "down_block_types": down,
        "up_block_types": up, "cross_attention_dim": 64, "attention_head_dim": 8, "sample_size": [H // 4, W // 4],
    }
    vae = sd15_config("vae") | {
        "block_out_channels": [16, 32, 64], "norm_num_groups": 16, "layers_per_block": 1, "sample_size": H,
        "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    }
    text_encoder = sd15_config("text_encoder") | {
        "hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 4,
        "projection_dim": 64,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler": sd15_config("scheduler")}


# ---------------------------------------------------------------------------------------------
# 1. the dataset


def render_dataset(folder: Path, count: int, seed: int) -> Path:
    """``count`` base-world dolls as ``folder/1_doll/NNNNNN.png`` + ``.txt`` (kohya layout, 1 repeat)."""
    sub = folder / "1_doll"
    sub.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        doll = sample_doll(rng)
        Image.fromarray(render(doll)).save(sub / f"{i:06d}.png", compress_level=1)
        (sub / f"{i:06d}.txt").write_text(tags(doll) + "\n", encoding="utf-8")
    return folder


def load_images(folder: Path, limit: int) -> np.ndarray:
    paths = sorted((folder / "1_doll").glob("*.png"))[:limit]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


# ---------------------------------------------------------------------------------------------
# 2. the VAE


def vae_images(data: Path, open_world: int, seed: int) -> np.ndarray:
    """What the VAE trains on: 4000 base-world renders, plus ``open_world`` pictures of things the base
    world never shows (shapes.open_world: a VAE that has seen only the base world cannot encode a new
    garment, and then no LoRA can learn one)."""
    images = load_images(data, 4000)
    if open_world:
        from loracam.toy.shapes import open_world as pictures

        images = np.concatenate([images, pictures(open_world, seed + 1)])
    return images


def train_vae(images: np.ndarray, steps: int, batch: int = 32, lr: float = 2e-3, seed: int = 0, crop: int = 32,
              finetune_steps: int = 250, echo=print):
    """An AutoencoderKL of the toy shape trained for reconstruction (L1 + MSE, LDM's tiny KL weight).

    Phase 1 trains on random ``crop``-pixel squares (it is convolutional, and crops cost a fraction of whole
    images). Phase 2 fine-tunes on whole images: GroupNorm's statistics differ between crops and whole
    pictures, and without it decoded colours come out shifted (a yellow background turned olive).
    The scaling factor is set afterwards so the latents have unit variance, as SD's 0.18215 does.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(toy_configs()["vae"])
    with torch.no_grad():
        # Start the posterior nearly deterministic (log-variance -8): with SD's std of 1 at init the
        # sampled noise drowns the early latents and reconstruction takes several times longer to learn.
        vae.quant_conv.bias[vae.config.latent_channels:] = -8.0
    data = to_tensor(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to zero
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
    rng = np.random.default_rng(seed)
    vae.train()
    for step in range(steps):
        y0, x0 = int(rng.integers(0, H - crop + 1)) // 4 * 4, int(rng.integers(0, W - crop + 1)) // 4 * 4
        x = data[rng.integers(0, len(data), batch), :, y0:y0 + crop, x0:x0 + crop]
        loss = _vae_step(vae, opt, x)
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            echo(f"vae step {step}/{steps}: loss {loss:.4f}")
    ft = torch.optim.AdamW(vae.parameters(), lr=5e-4, weight_decay=0.0)
    rng = np.random.default_rng(seed + 1)
    for step in range(finetune_steps):
        loss = _vae_step(vae, ft, data[rng.integers(0, len(data), batch // 2)])
        for g in ft.param_groups:
            g["lr"] = 5e-4 * 0.5 * (1 + np.cos(np.pi * step / finetune_steps))
        if step % 50 == 0 or step == finetune_steps - 1:
            echo(f"vae whole-image step {step}/{finetune_steps}: loss {loss:.4f}")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(data[i:i + 64]).latent_dist.mean for i in range(0, min(len(data), 1024), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae


def finetune_decoder(vae, images: np.ndarray, steps: int, batch: int = 16, lr: float = 5e-4, seed: int = 0,
                     echo=print):
    """Sharpen the VAE's decoder after the U-Net is trained, the encoder frozen (SD's "ft-MSE" VAE idea).

    The latent space is the encoder's, so the trained U-Net stays valid; only what turns latents into
    pixels improves. The first VAE training stops early (the U-Net stages wait on it) and decodes soft:
    shoes, a few pixels each in a full-body shot, came back in the wrong colour in 7.5% of renders.
    """
    torch.manual_seed(seed)
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for q in params:
        q.requires_grad_(True)
    data = to_tensor(images)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
    rng = np.random.default_rng(seed)
    vae.train()
    for step in range(steps):
        # The same step as the VAE's own training: with the encoder frozen its latents are sampled (as the
        # trainer samples the latents the U-Net learns from) and its KL term has no gradient to give.
        loss = _vae_step(vae, opt, data[rng.integers(0, len(data), batch)])
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            echo(f"decoder step {step}/{steps}: loss {loss:.4f}")
    vae.eval()
    vae.requires_grad_(False)
    return vae


def _vae_step(vae, opt, x: torch.Tensor) -> float:
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.sample()).sample
    loss = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 1e-6 * post.kl().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# ---------------------------------------------------------------------------------------------
# 3. the starting point of the full training


def init_folder(vae, folder: Path, seed: int = 0) -> Path:
    """A diffusers folder: the trained VAE plus a random U-Net and text encoder of the toy shape."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    configs = toy_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    te_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "torch_dtype")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    pipe = StableDiffusionPipeline(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer"),
        scheduler=DDIMScheduler.from_config(configs["scheduler"]), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sharpen_decoder(trained: Path, target: Path, images: np.ndarray, steps: int, seed: int = 0) -> Path:
    """A copy of the trained diffusers folder whose VAE decoder is fine-tuned (``finetune_decoder``)."""
    from diffusers import AutoencoderKL

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(trained, tmp)
    vae = finetune_decoder(AutoencoderKL.from_pretrained(tmp / "vae"), images, steps, seed=seed)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# ---------------------------------------------------------------------------------------------
# 5. export


def _save_folder(src: Path, target: Path, dtype: torch.dtype) -> None:
    from diffusers import StableDiffusionPipeline

    from loracam.models.loader import LoadOptions, load_base

    model = load_base(str(src), LoadOptions(device=torch.device("cpu"), dtype=torch.float32))
    pipe = StableDiffusionPipeline(**model.components())
    pipe.to(dtype)
    pipe.save_pretrained(target, safe_serialization=True)


def export(trained: Path, target: Path = TOY_DIR) -> Path:
    """Copy a trained model (diffusers folder or single-file checkpoint) into the package, weights in fp16.

    fp16 halves the package; loading casts back to fp32 (the toy model runs in fp32 on CPUs). The
    tokenizer is left out: it is SD1.5's, which the package already holds once.
    """
    tmp = target.with_name(target.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_folder(trained, tmp, torch.float16)
    shutil.rmtree(tmp / "tokenizer")  # SD1.5's, already in loracam/models/configs/sd15 (the loader uses it)
    for cfg_path in tmp.glob("*/config.json"):  # diffusers records the build machine's path: not for a package
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("_name_or_path", None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One ``loracam train --full`` run; each stage starts from the previous one's model."""

    name: str
    steps: int
    schedule: str
    warmup: int
    extra: tuple[str, ...] = ()
    scheduler: dict | None = None  # replaces entries of the base's noise schedule before this stage
    seed_offset: int = 0  # added to --seed: a stage that restarts from a model should not replay its batches
    lr_scale: float = 1.0  # times --lr
    full_body_repeats: int = 1  # kohya repeats for the full-body renders (see emphasis_dataset)


# SD's "scaled_linear" schedule leaves a signal-to-noise ratio of ~0.005 per latent pixel at its last step;
# summed over the toy's 16x24 latent the *mean* colour is still readable from "pure" noise (SNR ~2), so
# the model learns to take the background colour from the noise instead of the prompt, and at sampling
# time (truly pure noise) paints random backgrounds. DDPM's linear schedule ends at ~4e-5 (Lin et al.,
# "Common diffusion noise schedules and sample steps are flawed", 2023, explain the effect).
LINEAR_SCHEDULE = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}


# Stage 1 learns the world's shapes and colours fast (high LR, cosine) on SD's own noise schedule. Stage 2
# moves to DDPM's linear schedule (see LINEAR_SCHEDULE) at a constant LR with min-SNR weighting (Hang et
# al.). Stage 3 switches to v-prediction (SD2's): at the low signal-to-noise ratios where a sample's
# composition and colours are decided, an epsilon-predicting model must be precise to within 1/sqrt(alpha)
# (x0 errors of ~3 at t=800 after stage 2, against a latent variance of 1.3), while a v-predicting one
# predicts the image itself there. A constant LR also means a stage cut short equals a shorter stage.
# Stage 4 anneals: the same objective with the LR decayed to zero (cosine) from a fresh optimizer. At a
# constant LR the weights keep wandering around the minimum; the decay settles them, which is where small
# details (a shoe's colour, a pattern on a full-body doll) come in.
# Stage 5 anneals again with the full-body renders three times over (60% of the samples instead of a
# third): shoes are drawn only there, on ~2% of the pixels, and after stage 4 the base still named shoe
# colours in about a quarter of full-body images.
STAGES = (
    Stage("stage1", 1500, "cosine", 200),
    Stage("stage2", 2500, "constant", 100, ("--min-snr-gamma", "5"), LINEAR_SCHEDULE),
    Stage("stage3", 5500, "constant", 100, ("--min-snr-gamma", "5"), {"prediction_type": "v_prediction"}),
    Stage("stage4", 4000, "cosine", 50, ("--min-snr-gamma", "5"), seed_offset=1),
    Stage("stage5", 3000, "cosine", 50, ("--min-snr-gamma", "5"), seed_offset=2, lr_scale=0.5, full_body_repeats=3),
)


def emphasis_dataset(data: Path, target: Path, full_body_repeats: int) -> Path:
    """``data`` re-foldered with the full-body renders in a ``N_full body`` folder (kohya's N repeats).

    Files are hard links (copies where the file system has none): the dataset is not written twice.
    """
    if (target / "done").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    full, rest = target / f"{full_body_repeats}_full body", target / "1_doll"
    full.mkdir(parents=True)
    rest.mkdir()
    for caption in sorted((data / "1_doll").glob("*.txt")):
        folder = full if ", full body," in caption.read_text(encoding="utf-8") else rest
        for src in (caption, caption.with_suffix(".png")):
            try:
                (folder / src.name).hardlink_to(src)
            except OSError:
                shutil.copy2(src, folder / src.name)
    (target / "done").write_text("")
    return target


def with_schedule(folder: Path, target: Path, changes: dict) -> Path:
    """A copy of a diffusers folder (or of a single-file checkpoint, as one) with ``changes`` to its scheduler."""
    if not (target / "model_index.json").exists():
        shutil.rmtree(target, ignore_errors=True)
        if folder.is_dir():
            shutil.copytree(folder, target)
        else:
            _save_folder(folder, target, torch.float32)
        cfg_path = target / "scheduler" / "scheduler_config.json"
        cfg_path.write_text(json.dumps(json.loads(cfg_path.read_text()) | changes, indent=2))
    return target


def train_stage(stage: Stage, data: Path, base: Path, out: Path, batch: int, lr: float, seed: int) -> int:
    cmd = [sys.executable, "-m", "loracam.train", str(data), "--base", str(base), "--full", "-o", str(out),
           "--resolution", f"{W}x{H}", "--batch-size", str(batch), "--max-steps", str(stage.steps),
           "--lr", str(lr * stage.lr_scale), "--te-lr", str(lr * stage.lr_scale / 2), "--train-text-encoder",
           "--lr-scheduler", stage.schedule,
           "--warmup-steps", str(stage.warmup), "--caption-dropout", "0.1", "--save-every", "500",
           "--mixed-precision", "no", "--seed", str(seed + stage.seed_offset), "--resume", *stage.extra]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loracam.toy.build", description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("build/toy"), help="where the dataset and runs go")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--decoder-steps", type=int, default=1500)
    ap.add_argument("--open-world", type=int, default=0, metavar="N",
                    help="add N open-world pictures (loracam/toy/shapes.py) to the VAE's training images; the "
                         "shipped model was built without them (0)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-export", action="store_true", help="leave loracam/toy/model as it is")
    args = ap.parse_args(argv)
    times: dict[str, float] = {}
    work = args.work.resolve()
    data = work / "data"
    t = time.time()
    if not (data / "1_doll" / f"{args.images - 1:06d}.txt").exists():
        render_dataset(data, args.images, args.seed)
    times["render"] = time.time() - t
    init = work / "init"
    t = time.time()
    if not (init / "model_index.json").exists():
        vae = train_vae(vae_images(data, args.open_world, args.seed), args.vae_steps, seed=args.seed)
        init_folder(vae, init, seed=args.seed)
    times["vae"] = time.time() - t
    base = init
    for stage in STAGES:
        out = work / f"toy-{stage.name}"
        t = time.time()
        if not (out / "model_index.json").exists():
            if stage.scheduler:
                base = with_schedule(base, work / f"toy-{stage.name}-base", stage.scheduler)
            stage_data = data
            if stage.full_body_repeats > 1:
                stage_data = emphasis_dataset(data, work / f"data-full-body-x{stage.full_body_repeats}",
                                              stage.full_body_repeats)
            if train_stage(stage, stage_data, base, out, args.batch_size, args.lr, args.seed) != 0:
                return 1
        times[stage.name] = time.time() - t
        base = out
    t = time.time()
    final = work / "toy-final"
    if not (final / "model_index.json").exists():
        sharpen_decoder(base, final, vae_images(data, args.open_world, args.seed), args.decoder_steps, seed=args.seed)
    times["decoder"] = time.time() - t
    base = final
    if not args.no_export:
        export(base)
    (work / "build_times.json").write_text(json.dumps(times, indent=1))
    print(f"toy model built: {json.dumps({k: round(v) for k, v in times.items()})} seconds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
