"""The toy world's openpose ControlNet: the doll lands where a skeleton says.

A ``diffusers.ControlNetModel`` made from the toy base's U-Net (``from_unet``: the encoder half copied, zero
convolutions on every output) with a conditioning embedding of three entries (16, 32, 64): two stride-2
convolutions, the 4x of the toy VAE (64x96 px -> 16x24 latents), where SD1.5's four entries match its 8x.

Training is ControlNet's own: the U-Net, VAE and text encoder frozen, the ControlNet's residuals added to the
U-Net's skip connections and middle block, and the toy base's last training objective (loracam/toy/build.py,
stages 3-5): v-prediction on DDPM's linear noise schedule with min-SNR-5 weighting. The data are fresh renders
of the whole world (``world.sample_mixed_doll``: every framing, pose and held-out concept), half of them with a
wider camera than the base world's (full-body dolls from 0.45 to 0.92 image heights, anywhere in the frame)
so that the net must place the doll rather than repeat the base's framing; the prompt is ``world.tags`` of the
doll, empty for a share of the samples (ControlNet's paper drops half) so the net learns to follow the map
alone; the control is ``skeleton.control_map`` as float RGB in [0, 1], diffusers' ControlNet convention. The
render pool is encoded once (latents, text embeddings, control maps), as loracam's trainer caches latents.

``placement`` measures what the net is for: full-body prompts on held-out dolls with the wider camera,
rendered with and without the net from the same noise; the toy locator's boxes on the result against where
the skeleton put the doll.

Shipped as ``controlnet_openpose/`` (a diffusers folder); rebuilt by ``make toy-controlnet``
(``python -m loracam.toy.controlnet --force``; ~30 min on one CPU thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loracam.toy import skeleton, world
from loracam.toy.world import H, W, Doll

CONTROLNET_DIR = Path(__file__).resolve().parent / "controlnet_openpose"
CONDITIONING_CHANNELS = (16, 32, 64)  # 3 entries: 2 stride-2 convs = the toy VAE's 4x
MIN_SNR_GAMMA = 5.0  # build.py's stages 2-5


# ---------------------------------------------------------------------------------------------
# data


def wide_camera(rng: np.random.Generator, framing: str, min_scale: float = 0.45) -> dict:
    """A camera from a wider range than the base world's (world._camera), the doll still inside the frame:
    full-body dolls from ``min_scale`` to 0.92 image heights tall, their full-body box anywhere in the
    picture; upper-body and close-up shots moved sideways further."""
    if framing == "full body":
        scale = rng.uniform(min_scale, 0.92)
        half = 0.22 * scale * H / W  # the full-body box's half width, in image widths
        return {"scale": scale, "top": rng.uniform(0.02, 0.98 - scale), "center": rng.uniform(half, 1 - half)}
    if framing == "upper body":
        scale = rng.uniform(1.4, 1.8)
        return {"scale": scale, "top": rng.uniform(0.02, 0.14), "center": rng.uniform(0.34, 0.66)}
    scale = rng.uniform(2.8, 3.5)
    head = rng.uniform(0.42, 0.6)
    return {"scale": scale, "top": head - 0.1 * scale, "center": rng.uniform(0.38, 0.62)}


def training_doll(rng: np.random.Generator, wide: float = 0.5) -> Doll:
    """A doll of the whole world; with probability ``wide`` its camera and pose come from the wider range."""
    doll = world.sample_mixed_doll(rng)
    if rng.random() < wide:
        doll = replace(doll, **wide_camera(rng, doll.framing), arms=float(rng.uniform(-0.06, 0.14)),
                       legs=float(rng.uniform(0.0, 0.05)))
    return doll


def to_cond(maps: np.ndarray) -> torch.Tensor:
    """uint8 [n, h, w, 3] control maps -> float [n, 3, h, w] in [0, 1] (diffusers' ControlNet input)."""
    return torch.from_numpy(np.ascontiguousarray(maps)).permute(0, 3, 1, 2).float() / 255.0


def encode_text(model, captions: list[str]) -> torch.Tensor:
    """The trainer's (and the engine's, for one 77-token chunk) prompt encoding, clip skip 1."""
    from loracam.train.trainer import encode_captions

    with torch.no_grad():
        return encode_captions(model.tokenizer, model.text_encoder, captions, 1)


class Pool:
    """Pre-encoded renders: latent mean and std [n, 4, 24, 16], control maps uint8 [n, h, w, 3], captions."""

    def __init__(self, model, n: int, seed: int, wide: float, echo=print):
        from loracam.toy.probe import to_tensor

        rng = np.random.default_rng(seed)
        t0 = time.time()
        self.dolls = [training_doll(rng, wide) for _ in range(n)]
        self.maps = np.stack([skeleton.control_map(d) for d in self.dolls])
        self.captions = [world.tags(d) for d in self.dolls]
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, n, 64):
                images = np.stack([world.render(d) for d in self.dolls[start:start + 64]])
                dist = model.vae.encode(to_tensor(images).to(model.dtype)).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
        sf = model.vae.config.scaling_factor
        self.mean, self.std = torch.cat(means) * sf, torch.cat(stds) * sf
        unique = sorted(set(self.captions) | {""})
        emb = torch.cat([encode_text(model, unique[i:i + 256]) for i in range(0, len(unique), 256)])
        self.text = {c: emb[i] for i, c in enumerate(unique)}
        echo(f"pool: {n} renders encoded ({len(unique)} captions) in {time.time() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# training


def new_controlnet(unet):
    from diffusers import ControlNetModel

    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS)


def train(model, steps: int, batch: int, lr: float, seed: int, pool: int, empty_prompt: float = 0.5,
          wide: float = 0.5, warmup: int = 100, log_every: int = 50, echo=None, controlnet=None):
    """Train a ControlNet on ``model`` (a loaded toy BaseModel, frozen); returns (controlnet, losses)."""
    from diffusers import DDPMScheduler

    from loracam.train.trainer import snr_weights

    echo = echo or (lambda line: print(line, flush=True))  # flushed: the log of a background run reads live
    torch.manual_seed(seed)
    for part in (model.unet, model.vae, model.text_encoder):
        part.requires_grad_(False)
        part.eval()
    data = Pool(model, pool, seed, wide, echo)
    net = controlnet if controlnet is not None else new_controlnet(model.unet)
    net.train()
    noise_sched = DDPMScheduler.from_config(model.scheduler_config)
    v_pred = model.prediction_type == "v_prediction"
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine to zero
        opt, lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    cond_all = to_cond(data.maps)
    losses, window = [], []
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, pool, (batch,), generator=g)
        latents = data.mean[idx] + data.std[idx] * torch.randn(data.mean[idx].shape, generator=g)
        captions = ["" if rng.random() < empty_prompt else data.captions[i] for i in idx.tolist()]
        ctx = torch.stack([data.text[c] for c in captions])
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=g)
        noisy = noise_sched.add_noise(latents, noise, t)
        down, mid = net(noisy, t, encoder_hidden_states=ctx, controlnet_cond=cond_all[idx], return_dict=False)
        pred = model.unet(noisy, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid, return_dict=False)[0]
        target = noise_sched.get_velocity(latents, noise, t) if v_pred else noise
        loss = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
        loss = (loss * snr_weights(noise_sched.alphas_cumprod, t, MIN_SNR_GAMMA, v_pred)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            losses.append(float(np.mean(window)))
            window = []
            el = time.time() - t0
            echo(f"step {step}/{steps}  loss {losses[-1]:.4f}  lr {sched.get_last_lr()[0]:.2e}  "
                 f"{el:.0f} s ({el / step:.3f} s/step)")
    return net.eval(), losses


# ---------------------------------------------------------------------------------------------
# sampling and placement


class FixedMaps:
    """A ControlNet in memory steering every sample by its own map, at ``scale``, through loracam's engine
    (the net under training is not a file the ControlNet library could find)."""

    def __init__(self, controlnet, cond: torch.Tensor, scale: float = 1.0):
        self.controlnet, self.cond, self.scale = controlnet, cond, scale

    def needs_own_image(self) -> bool:
        return False

    def guidance(self, size, samples, own=None, skip_own: bool = False):
        from loracam.control.guidance import Guidance, Steer
        from loracam.control.units import ControlUnit

        weights = torch.full((len(samples),), float(self.scale))
        return Guidance([Steer(ControlUnit("image", "in memory"), self.controlnet, self.cond, weights)])


def sample(model, prompts: list[str], seeds: list[int], controlnet=None, cond: torch.Tensor | None = None,
           scale: float = 1.0, steps: int = 20, cfg: float = 7.0, sampler: str = "DPM++ 2M") -> np.ndarray:
    """uint8 [n, 96, 64, 3]: ``prompts`` at CFG ``cfg`` (empty negative) rendered by loracam's engine, each
    steered by its own map in ``cond`` [n, 3, h, w] (times ``scale``) when ``controlnet`` is given."""
    from loracam.generate.engine import render
    from loracam.generate.request import Sample, Shared

    shared = Shared(W, H, steps, sampler, "Automatic")
    control = FixedMaps(controlnet, cond, scale) if controlnet is not None else None
    images = render(model, shared, [Sample(p, "", int(s), cfg) for p, s in zip(prompts, seeds)], control=control)
    return np.stack([np.asarray(im) for im in images])


def person_box(parts: dict) -> list[float] | None:
    """The union of the face, garment and shoes boxes found: the doll as the locator sees it."""
    found = [parts[p] for p in ("face", "garment", "shoes") if p in parts]
    if not found:
        return None
    return [min(b[0] for b in found), min(b[1] for b in found), max(b[2] for b in found), max(b[3] for b in found)]


def box_iou(a, b) -> float:
    if a is None or b is None:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def located(locator, images: np.ndarray, confidence: float = 0.5) -> list[list[float] | None]:
    """The locator's person box (``person_box`` of the parts it finds at ``confidence``) per image."""
    from loracam.toy.locator import PARTS

    conf, boxes = locator.predict(images)
    return [person_box({p: boxes[i, j].tolist() for j, p in enumerate(PARTS) if conf[i, j] >= confidence})
            for i in range(len(images))]


# The smallest doll placement asks for. The locator was trained on the world's full-body scales (0.72-0.92)
# and reads smaller dolls poorly: on 400 true renders (through the VAE) with the wide camera its person box
# scored IoU 0.40 at scales 0.45-0.55, 0.64 at 0.55-0.65, 0.83 at 0.65-0.72 and 0.91-0.96 above.
EVAL_MIN_SCALE = 0.65


def placement_dolls(n: int, seed: int) -> list[Doll]:
    """Full-body dolls of the base world with the wide camera and pose (``wide_camera``, EVAL_MIN_SCALE up)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d = world.sample_doll(rng, framing="full body")
        out.append(replace(d, **wide_camera(rng, d.framing, EVAL_MIN_SCALE), arms=float(rng.uniform(-0.06, 0.14)),
                           legs=float(rng.uniform(0.0, 0.05))))
    return out


def placement(controlnet, model, n: int = 48, seed: int = 4242, locator=None, scale: float = 1.0,
              batch: int = 16, images: dict | None = None) -> dict:
    """Mean box IoU between where a skeleton puts a full-body doll and where it is drawn, without and with
    ``controlnet``, on ``n`` held-out dolls (``placement_dolls(n, seed)``; the training pool's seeds are small).

    Truth: the union of the renderer's face, garment and shoes boxes (``world.boxes``, 40% visible, the
    locator's rule). Drawn: the union of the toy locator's boxes for those parts on the generated image.
    Prompts are the dolls' tags; each doll's noise seed is the same with and without. ``ceiling`` is the
    locator read on the true renders through the VAE: the best a perfectly placed image could score.
    ``images``, when a dict, receives the renders (keys "without", "with", "truth", "maps").
    """
    from loracam.toy.judge import round_trip
    from loracam.toy.locator import MIN_VISIBLE, Locator

    locator = locator or Locator.load()
    dolls = placement_dolls(n, seed)
    truth = [person_box({k: v for k, v in world.boxes(d, min_visible=MIN_VISIBLE).items()
                         if k in ("face", "garment", "shoes")}) for d in dolls]
    prompts = [world.tags(d) for d in dolls]
    seeds = [seed * 1000 + i for i in range(n)]
    maps = np.stack([skeleton.control_map(d) for d in dolls])
    cond = to_cond(maps)
    out: dict = {"n": n, "seed": seed}
    renders = {"truth": round_trip(model, np.stack([world.render(d) for d in dolls])), "maps": maps}
    for name, net in (("without", None), ("with", controlnet)):
        renders[name] = np.concatenate([
            sample(model, prompts[i:i + batch], seeds[i:i + batch], net, cond[i:i + batch], scale)
            for i in range(0, n, batch)])
    for name, key in (("without", "without"), ("with", "with"), ("truth", "ceiling")):
        got = located(locator, renders[name])
        out[key] = round(float(np.mean([box_iou(a, b) for a, b in zip(got, truth)])), 3)
    if images is not None:
        images.update(renders)
    return out


# ---------------------------------------------------------------------------------------------
# saving


def save(controlnet, output: Path, force: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """Write a diffusers folder atomically: into a temporary sibling, then renamed into place.

    An existing ``output`` is replaced only with ``force`` (``make toy-controlnet`` passes it to rebuild the
    shipped folder): the old folder is moved aside, the new one renamed in, the old one deleted, so a reader
    sees the old folder or the new one and never a half-written one.
    """
    from loracam.io import new_mode

    output = Path(output)
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists; pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if dtype == torch.float32:
        controlnet.save_pretrained(tmp, safe_serialization=True)
    else:  # a smaller copy; the net in memory stays as it is
        import copy

        copy.deepcopy(controlnet).to(dtype).save_pretrained(tmp, safe_serialization=True)
    for f in tmp.iterdir():  # safetensors leaves its temporary file's private 0600: a package file is readable
        f.chmod(new_mode())
    tmp.chmod(new_mode(folder=True))
    cfg_path = tmp / "config.json"  # diffusers records the build machine's path: not for a package
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("_name_or_path", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    if output.exists():
        output.rename(old)
    tmp.rename(output)
    shutil.rmtree(old, ignore_errors=True)
    return output


def load(path: Path = CONTROLNET_DIR, dtype: torch.dtype = torch.float32):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path, torch_dtype=dtype).eval()


def main(argv: list[str] | None = None) -> int:
    from loracam.models import ModelCache

    ap = argparse.ArgumentParser(prog="python -m loracam.toy.controlnet", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=12000, help="renders to encode once and draw batches from")
    ap.add_argument("--empty-prompt", type=float, default=0.5, help="share of samples trained with an empty prompt")
    ap.add_argument("--wide", type=float, default=0.5, help="share of samples with the wider camera and pose")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (the shipped folder was trained on 1; another count changes the order "
                         "of float sums, and so the bits)")
    ap.add_argument("--eval", type=int, default=48, metavar="N", help="placement dolls afterwards (0: none)")
    ap.add_argument("--init", type=Path, help="continue from this ControlNet folder")
    ap.add_argument("-o", "--output", type=Path, default=CONTROLNET_DIR)
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    args = ap.parse_args(argv)
    if args.output.exists() and not args.force:  # before the half hour of training, not after
        ap.error(f"{args.output} exists; pass --force to replace it")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    init = load(args.init) if args.init else None
    net, losses = train(model, args.steps, args.batch, args.lr, args.seed, args.pool, args.empty_prompt,
                        args.wide, controlnet=init)
    train_s = time.time() - t0
    print(f"trained in {train_s:.0f} s; loss first/last logged {losses[0]:.4f} / {losses[-1]:.4f}", flush=True)
    print(f"wrote {save(net, args.output, force=args.force)}", flush=True)
    if args.eval:
        t = time.time()
        print("placement IoU:", placement(net, model, n=args.eval), f"({time.time() - t:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
