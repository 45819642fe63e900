"""The training run: LoRA (or full) training with kohya sd-scripts' semantics, resumable at any point.

One function, ``train``, in the shape every trainer here has: resolve the config, read the data and
print the step arithmetic, load the base, build the network, cache what can be cached, then loop over
optimizer steps, saving checkpoints, previews and identity scores at step boundaries. Every random draw
(data order, caption shuffle, flips, noise, timesteps) is derived from (seed, epoch, micro-step), so a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from loracam.config import to_dict
from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes
from loracam.numerics import cpu_note, deterministic_training
from loracam.train.config import Resolved, TrainConfig, bucket_step, preset_steps, resolve
from loracam.train.events import EventLog, Progress
from loracam.train.optim import check_names, make_optimizer, make_scheduler
from loracam.train.state import Position, checkpoint_path, disk_guard, fingerprint, load_latest, save_state

Echo = Callable[[str], None]


@dataclass
class Control:
    """Commands a UI can set while training runs; the loop polls them at step boundaries."""

    stop: bool = False
    save_now: bool = False
    sample_now: bool = False


@dataclass
class TrainResult:
    output: Path
    steps: int
    plan_summary: str
    checkpoints: list[Path] = field(default_factory=list)
    scores: list = field(default_factory=list)
    selected: str = "last"
    stopped_early: bool = False
    main_process: bool = True


# ---------------------------------------------------------------------------------------------
# set-up


def _mixed_precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _check_output(cfg: TrainConfig) -> Path:
    if not cfg.output:
        raise LoracamError("give the output file with -o, e.g. -o mylora.safetensors")
    out = Path(cfg.output).expanduser().resolve()
    if not cfg.full and out.suffix != ".safetensors":
        raise LoracamError(f"-o {cfg.output}: a LoRA is written as a .safetensors file")
    if out.exists():
        if cfg.resume:
            raise LoracamError(f"{out} already exists: that run finished. To train more, start a new run with "
                               "another -o (its checkpoints stay where they are)")
        raise LoracamError(f"{out} already exists; choose another -o (or --resume to finish an interrupted run)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _data(cfg: TrainConfig, dataset: Path, family: str = "sd1", echo: Echo = print):
    from loracam.models.families import FAMILIES
    from loracam.train.data import DataConfig, TrainData

    native = FAMILIES[family].default_size
    prep = _prep_resolution(dataset)
    if family != "sd1" and cfg.resolution is None and prep and tuple(prep) != tuple(native):
        # prep's size is its SD1.5 default; an SDXL base trains at its own (sd-scripts' SDXL default, 1024)
        echo(f"resolution: {native[0]}x{native[1]}, {FAMILIES[family].short}'s own (prep made "
             f"{prep[0]}x{prep[1]}); pass --resolution to choose")
        prep = None
    res = tuple(cfg.resolution or prep or native)
    step = bucket_step(cfg, res)
    # sd-scripts' 256..1024 side limits assume SD-sized images; small models' buckets scale with them
    dcfg = DataConfig(resolution=res, bucket_no_upscale=cfg.bucket_no_upscale, batch_size=cfg.batch_size,
                      shuffle_caption=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens, flip=cfg.flip,
                      prior_loss_weight=cfg.prior_loss_weight, caption_dropout=cfg.caption_dropout,
                      bucket_step=step, min_bucket=min(256, step), max_bucket=max(1024, 2 * max(res)))
    return TrainData(dataset, dcfg, seed=cfg.seed), tuple(res)


def _prep_resolution(dataset: Path) -> tuple[int, int] | None:
    import json

    manifest = dataset / "manifest.json"
    if manifest.exists():
        res = json.loads(manifest.read_text()).get("config", {}).get("resolution")
        return tuple(res) if res else None
    return None


def _prep_identity(dataset: Path) -> dict:
    """The trigger, class and caption phrase prep recorded (for identity renders and metadata)."""
    import json

    manifest = dataset / "manifest.json"
    if not manifest.exists():
        return {}
    c = json.loads(manifest.read_text()).get("config", {})
    phrase = c.get("class_phrase") or ("a photo of a " + c.get("class_word", "person"))
    return {"trigger": c.get("trigger"), "class": c.get("class_word"), "subject": c.get("subject"), "phrase": phrase}


def _load_model(cfg: TrainConfig, device: torch.device, mixed: str = "no"):
    """A fresh (uncached) base: training changes it, so it must not be a shared cached model. In fp32; with bf16 or
    fp16 mixed precision a LoRA run keeps the frozen U-Net and text encoders in that precision (the LoRA weights
    stay fp32), as sd-scripts and diffusers' scripts do: half the memory, which is what lets 1024-px SDXL training
    fit an 8-12 GB card. The VAE stays fp32 (SDXL's overflows in fp16: sd-scripts' --no_half_vae)."""
    from loracam.models import HashCache, LoadOptions, default_cache_path, load_base

    model = load_base(cfg.base, LoadOptions(device, torch.float32, hash_cache=HashCache(default_cache_path()),
                                            prediction=cfg.prediction))
    weight = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed)
    if weight is not None and not cfg.full:
        for part in (model.unet, *model.text_encoders):
            part.to(weight)
        model.dtype = weight
    return model


def _total_steps(cfg: TrainConfig, r: Resolved, data, processes: int):
    if cfg.epochs is not None:
        return data.plan(cfg.epochs, 0, cfg.grad_accum, processes)
    steps = cfg.max_steps or preset_steps(r.preset, data.counts()["num_train_images"])
    return data.plan(None, steps, cfg.grad_accum, processes)


# ---------------------------------------------------------------------------------------------
# text and loss


def encode_captions(tokenizer, text_encoder, captions: list[str], clip_skip: int) -> torch.Tensor:
    """kohya's SD1.x training encoding: one 77-token chunk per caption, truncated; no A1111 emphasis parsing."""
    from types import SimpleNamespace

    from loracam.train.captions import ClipCaptions

    return ClipCaptions(SimpleNamespace(tokenizer=tokenizer), clip_skip).encode([text_encoder], captions).context


def snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, v_pred: bool) -> torch.Tensor:
    """min-SNR-gamma loss weights (Hang et al.), as sd-scripts applies them."""
    ac = alphas_cumprod.to(t.device)[t]
    snr = ac / (1 - ac)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if v_pred else clipped / snr


def _generator(seed: int, micro: int, rank: int) -> torch.Generator:
    # One generator per micro-batch, derived from its index: no RNG state to save for an exact resume.
    return torch.Generator().manual_seed((seed * 1_000_003 + micro * 7919 + rank) % (2**63 - 1))


def diffusion_loss(unet, noise_sched, latents, text, loss_weights, gen, cfg: TrainConfig, v_pred: bool,
                   added: dict | None = None):
    """Noise-prediction MSE (or v-prediction) with noise offset, min-SNR weighting and reg weights; ``added`` is
    the U-Net's extra conditioning (SDXL's pooled text and size ids)."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=gen).to(latents.device, latents.dtype)
    if cfg.noise_offset:
        offset = torch.randn((b, latents.shape[1], 1, 1), generator=gen).to(latents.device, latents.dtype)
        noise = noise + cfg.noise_offset * offset
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=gen).to(latents.device)
    noisy = noise_sched.add_noise(latents, noise, t)
    extra = {"added_cond_kwargs": added} if added is not None else {}
    pred = unet(noisy, t, encoder_hidden_states=text, return_dict=False, **extra)[0]
    target = noise_sched.get_velocity(latents, noise, t) if v_pred else noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    loss = loss * loss_weights.to(loss.device)
    if cfg.min_snr_gamma:
        loss = loss * snr_weights(noise_sched.alphas_cumprod, t, cfg.min_snr_gamma, v_pred)
    return loss.mean()


# ---------------------------------------------------------------------------------------------
# the run


def train(cfg: TrainConfig, echo: Echo = print, control: Control | None = None,
          progress: bool = True, scorer=None) -> TrainResult:
    """Train a LoRA (or, with cfg.full, the whole model) and return where it went.

    ``scorer`` is the identity judge of ``--select best``: anything with ``score(images) -> obj.score``
    (higher is more like the subject). None: dlib face embeddings against the dataset's photos (prep's
    manifest); the toy world passes its probe.
    """
    from accelerate import Accelerator

    from loracam.models import pick_device

    from loracam.models.loader import ref_family

    from loracam.models.families import FAMILIES

    family = ref_family(cfg.base)
    if not FAMILIES[family].trains:  # before the dataset is read or the model loaded
        raise LoracamError(FAMILIES[family].train_why)
    r = _resolve(cfg, family)
    cfg = r.cfg
    check_names(cfg.optimizer, cfg.lr_scheduler)
    dataset = Path(cfg.dataset)
    output = _check_output(cfg)
    device = pick_device(cfg.device)
    acc = Accelerator(mixed_precision=_mixed_precision(cfg, device), cpu=device.type == "cpu")
    data, resolution = _data(cfg, dataset, family, echo if acc.is_main_process else (lambda _: None))
    plan = _total_steps(cfg, r, data, acc.num_processes)
    summary = plan.summary(data.counts()["num_train_images"], _repeats_text(data), cfg.batch_size)
    if cfg.grad_accum > 1 or acc.num_processes > 1:
        summary += f" (gradient accumulation {cfg.grad_accum}, {acc.num_processes} processes)"
    if acc.is_main_process:
        echo(f"steps: {summary}")
        note = cpu_note() if device.type == "cpu" else None
        if note:
            echo(f"note: {note}")
        if r.lr_scale != 1.0:
            te = f", --te-lr {r.te_lr:g}" if r.train_text_encoder else ""
            echo(f"learning rate: the {cfg.subject or 'default'} preset's x{r.lr_scale:g} for this base "
                 f"(--lr {cfg.lr:g}{te}); pass --lr and --te-lr to choose your own")
    model = _load_model(cfg, acc.device, acc.mixed_precision)
    run = _Run(cfg, r, acc, data, plan, model, output, echo, control or Control(), progress, resolution, scorer)
    return run.execute(summary)


def _resolve(cfg: TrainConfig, family: str = "sd1") -> Resolved:
    # Full fine-tunes choose their own rates (the toy build passes them); only LoRAs take a base's scale.
    from loracam.models import preset_lr_scale

    return resolve(cfg, 1.0 if cfg.full else preset_lr_scale(cfg.base), family)


def _repeats_text(data) -> str:
    reps = sorted({s.repeats for s in data.samples if not s.is_reg})
    return "/".join(map(str, reps)) or "0"


class _Run:
    """The state of one training run; methods are the loop's steps."""

    def __init__(self, cfg, r, acc, data, plan, model, output, echo, control, progress, resolution, scorer=None):
        from diffusers import DDPMScheduler

        self.cfg, self.r, self.acc, self.data, self.plan = cfg, r, acc, data, plan
        self.model, self.output, self.echo, self.control = model, output, echo, control
        self.show_progress = progress and acc.is_main_process
        self.resolution = resolution
        self.noise_sched = DDPMScheduler.from_config(model.scheduler_config)
        self.v_pred = model.prediction_type == "v_prediction"
        self.identity = _prep_identity(Path(cfg.dataset))
        self.events = EventLog(output.with_name(output.stem + ".events.jsonl") if acc.is_main_process else None)
        self.result = TrainResult(output, 0, "", main_process=acc.is_main_process)
        self.text_cache: dict[str, tuple] = {}
        from loracam.train.captions import captions_for

        self.captions = captions_for(model, cfg.clip_skip)
        self.best_scores: list = []
        self.custom_scorer = scorer  # the identity judge; None: dlib against prep's face embeddings

    # -- building ------------------------------------------------------------------------------

    def _network(self):
        if self.cfg.full:
            from loracam.train.full import FullNetwork

            return FullNetwork(self.model, self.r.train_text_encoder)
        from loracam.train.network import LoraNetwork, NetworkConfig

        ncfg = NetworkConfig(dim=self.cfg.rank, alpha=self.cfg.alpha, conv_dim=self.cfg.conv_dim,
                             conv_alpha=self.cfg.conv_alpha, train_text_encoder=self.r.train_text_encoder,
                             targets=self.cfg.targets)
        self.network_cfg = ncfg
        return LoraNetwork(self.model.unet, self.model.text_encoder, ncfg, seed=self.cfg.seed,
                           text_encoder_2=self.model.text_encoder_2)

    def _fingerprint(self) -> str:
        c = self.cfg
        return fingerprint({
            "base": self.model.sha256 or self.model.ref, "samples": [(str(s.path), s.repeats, s.is_reg) for s in self.data.samples],
            "rank": c.rank, "alpha": c.alpha, "conv": (c.conv_dim, c.conv_alpha), "te": self.r.train_text_encoder,
            "targets": c.targets, "full": c.full, "seed": c.seed, "batch": c.batch_size, "accum": c.grad_accum,
            "resolution": self.resolution, "flip": c.flip, "shuffle": c.shuffle_caption,
            "dropout": c.caption_dropout, "bucket_step": c.bucket_step,
        })

    def _save_config(self) -> None:
        import json

        doc = {"config": to_dict(self.cfg), "plan": {"total_steps": self.plan.total_steps, "epochs": self.plan.epochs,
                                                   "steps_per_epoch": self.plan.steps_per_epoch},
               "base": {"name": self.model.name, "hash": self.model.short_hash}}
        path = self.output.with_name(self.output.stem + ".config.json")
        disk_guard(lambda: atomic_write_bytes(path, json.dumps(doc, indent=1).encode(), overwrite=True), path)

    # -- the loop ------------------------------------------------------------------------------

    def execute(self, summary: str) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        self.result.plan_summary = summary
        self.net = self._network()
        unet, tes = self.model.unet, self.model.text_encoders
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            if self.r.train_text_encoder:
                for te in tes:  # transformers 5 renamed it; 4.x only has the old name
                    (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()
        if cfg.channels_last:
            unet.to(memory_format=torch.channels_last)
        self.fp = self._fingerprint()
        if cfg.cache_latents:
            self.data.cache_latents(self.model.vae, acc.device, torch.float32)
        self._cache_text()
        groups = self.net.param_groups(cfg.lr, self.r.te_lr, cfg.te2_lr)
        optimizer = make_optimizer(cfg.optimizer, groups, cfg.weight_decay)
        # accelerate steps a wrapped schedule once per process for each optimizer step, so the schedule
        # is laid out over total x processes steps (as diffusers' training scripts do).
        n = acc.num_processes
        scheduler = make_scheduler(cfg.lr_scheduler, optimizer, cfg.warmup_steps * n, self.plan.total_steps * n)
        pos = self._resume(optimizer, scheduler)
        trained_tes = list(tes) if self.r.train_text_encoder else []
        prepared = acc.prepare(unet, *trained_tes, optimizer, scheduler)
        self.unet = prepared[0]
        self.tes = list(prepared[1:1 + len(trained_tes)]) if trained_tes else list(tes)
        optimizer, scheduler = prepared[-2], prepared[-1]
        if acc.is_main_process:
            self._save_config()
            self.events.write("start", total_steps=self.plan.total_steps, resumed_at=pos.step, summary=summary)
        bar = Progress(self.plan.total_steps, pos.step, self.show_progress)
        try:
            with deterministic_training(acc.device.type, cfg.deterministic):
                pos = self._loop(pos, optimizer, scheduler, bar)
        finally:
            bar.close()
        self._finish(pos, optimizer, scheduler)
        return self.result

    def _resume(self, optimizer, scheduler) -> Position:
        if not self.cfg.resume:
            return Position(0, 0, 0, 0)
        payload = load_latest(self.output, self.fp)
        if payload is None:
            self.echo("no checkpoint to resume from: starting at step 0")
            return Position(0, 0, 0, 0)
        self.net.load_state_dict(payload["trainable"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        pos = Position(**payload["position"])
        self.echo(f"resuming at step {pos.step} (epoch {pos.epoch + 1}, batch {pos.batch})")
        return pos

    def _loop(self, pos: Position, optimizer, scheduler, bar) -> Position:
        cfg, acc = self.cfg, self.acc
        total = self.plan.total_steps
        step, micro = pos.step, pos.micro
        epoch = pos.epoch
        t_last = time.time()
        while step < total:
            batches = self.data.epoch(epoch, acc.process_index, acc.num_processes)
            start = pos.batch if epoch == pos.epoch else 0
            losses = []
            for bi in range(start, len(batches)):
                sync = (bi + 1) % cfg.grad_accum == 0 or bi == len(batches) - 1
                loss = self._micro_step(batches[bi], epoch, bi, micro, sync)
                micro += 1
                losses.append(loss)
                if not sync:
                    continue
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                mean_loss = sum(losses) / len(losses)
                losses = []
                self._check_finite(mean_loss, step)
                lr = scheduler.get_last_lr()[0]
                now = time.time()
                self.events.write("step", step=step, epoch=epoch + 1, loss=round(mean_loss, 6), lr=lr,
                                  seconds=round(now - t_last, 4))
                t_last = now
                bar.update(mean_loss, lr)
                here = Position(step, epoch + (bi + 1 == len(batches)), 0 if bi + 1 == len(batches) else bi + 1, micro)
                self._at_step(here, optimizer, scheduler, epoch_end=bi + 1 == len(batches))
                if self.control.stop:
                    self._checkpoint(here, optimizer, scheduler)
                    self.result.stopped_early = True
                    return here
                if step >= total:
                    return here
            epoch += 1
        return Position(step, epoch, 0, micro)

    def _micro_step(self, keys, epoch: int, bi: int, micro: int, sync: bool) -> float:
        acc, cfg = self.acc, self.cfg
        batch = self.data.load(keys, epoch, bi)
        latents = batch.latents
        if latents is None:
            with torch.no_grad():
                pixels = batch.pixels.to(acc.device)
                latents = self.model.vae.encode(pixels).latent_dist.sample(_generator(cfg.seed, micro, 1 << 20))
                latents = latents * self.model.vae.config.scaling_factor
        latents = latents.to(acc.device)
        cond = self._text(batch.captions)
        added = self.captions.added(cond, batch, latents.dtype)
        gen = _generator(cfg.seed, micro, acc.process_index)
        ctx = acc.no_sync(self.unet) if not sync and acc.num_processes > 1 else nullcontext()
        with ctx, acc.autocast():
            loss = diffusion_loss(self.unet, self.noise_sched, latents, cond.context, batch.loss_weights, gen, cfg,
                                  self.v_pred, added)
            acc.backward(loss / cfg.grad_accum)
        return float(loss.detach())

    def _cache_text(self) -> None:
        """With frozen text encoders, every caption the run can meet encoded before the first step, as sd-scripts'
        --cache_text_encoder_outputs does (each one alone, so its embedding does not depend on the batch size); the
        steps then run the U-Net only. Shuffled captions change every epoch: those are encoded as they come."""
        captions = self.data.fixed_captions()
        if self.r.train_text_encoder or captions is None:
            return
        t0 = time.time()
        self.tes = list(self.model.text_encoders)  # frozen: the very modules the steps use
        for c in captions:
            self._text([c])
        self.echo(f"text encoders: {len(captions)} caption(s) encoded once, before training ({time.time() - t0:.1f} s)")

    def _text(self, captions: list[str]):
        """The batch's Conditioning; with frozen text encoders (every one: sd-scripts caches SDXL's outputs only
        when both are) each caption is encoded once."""
        from loracam.train.captions import Conditioning

        if self.r.train_text_encoder:
            return self.captions.encode(self.tes, captions)
        missing = [c for c in dict.fromkeys(captions) if c not in self.text_cache]
        if missing:
            with torch.no_grad():
                enc = self.captions.encode(self.tes, missing)
            for i, c in enumerate(missing):
                self.text_cache[c] = (enc.context[i], None if enc.pooled is None else enc.pooled[i])
        rows = [self.text_cache[c] for c in captions]
        pooled = None if rows[0][1] is None else torch.stack([r[1] for r in rows])
        return Conditioning(torch.stack([r[0] for r in rows]), pooled)

    def _check_finite(self, loss: float, step: int) -> None:
        if math.isfinite(loss):
            return
        last = self.result.checkpoints[-1] if self.result.checkpoints else None
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        fp16 = " or fp16 overflow (use --mixed-precision bf16 or no)" if self.acc.mixed_precision == "fp16" else ""
        raise LoracamError(
            f"the loss became {loss} at step {step}: training stopped. Likely causes: a learning rate too high "
            f"(--lr {self.cfg.lr:g}; try a third of it){fp16}, or a broken image in the dataset. {keep}; "
            "lower the learning rate and start again"
        )

    # -- step boundaries -----------------------------------------------------------------------

    def _at_step(self, pos: Position, optimizer, scheduler, epoch_end: bool) -> None:
        cfg = self.cfg
        by_steps = cfg.save_every_steps and pos.step % cfg.save_every_steps == 0
        by_epochs = cfg.save_every_epochs and epoch_end and pos.epoch % cfg.save_every_epochs == 0
        last = pos.step >= self.plan.total_steps
        if (by_steps or by_epochs or self.control.save_now) and not last:
            self.control.save_now = False
            self._checkpoint(pos, optimizer, scheduler, epoch=pos.epoch if by_epochs and not by_steps else None)
        if (cfg.preview_every and pos.step % cfg.preview_every == 0) or self.control.sample_now:
            self.control.sample_now = False
            self._previews(pos.step)

    def _checkpoint(self, pos: Position, optimizer, scheduler, epoch: int | None = None) -> None:
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return
        path = checkpoint_path(self.output, step=None if epoch else pos.step, epoch=epoch)
        self._write_lora(path, pos.step, overwrite=True)
        save_state(self.output, pos, self.fp, self.net.state_dict(), optimizer, scheduler, self.cfg.keep_states)
        self.result.checkpoints.append(path)
        self.events.write("checkpoint", step=pos.step, path=str(path))
        self._score(pos.step, path)

    def _write_lora(self, path: Path, step: int, overwrite: bool = False) -> None:
        if self.cfg.full:
            self.net.save(path, overwrite=overwrite)
            return
        from loracam.lora import write_kohya
        from loracam.train.metadata import lora_metadata

        meta = lora_metadata(self, step)
        disk_guard(lambda: write_kohya(path, self.net.modules(), meta, overwrite=overwrite), path)

    def _render_model(self):
        tes = [self.acc.unwrap_model(te) for te in self.tes]
        return replace(self.model, unet=self.acc.unwrap_model(self.unet), text_encoder=tes[0],
                       text_encoder_2=tes[1] if len(tes) > 1 else None)

    def _previews(self, step: int) -> None:
        if not self.acc.is_main_process or not self.cfg.preview_prompts:
            return
        from loracam.train.preview import render_previews

        paths = render_previews(self, step)
        self.events.write("preview", step=step, paths=[str(p) for p in paths])

    def _score(self, step: int, path: Path) -> None:
        if self.cfg.select == "last" or self.cfg.full:
            return
        from loracam.train.preview import identity_score

        score = identity_score(self, step, path)
        if score is not None:
            self.best_scores.append(score)
            self.events.write("identity", step=step, score=score.score, path=str(path))

    # -- the end -------------------------------------------------------------------------------

    def _finish(self, pos: Position, optimizer, scheduler) -> None:
        self.result.steps = pos.step
        if self.result.stopped_early:
            self.echo(f"stopped at step {pos.step}; run the same command with --resume to continue")
            return
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            if self.cfg.select != "last" and not self.cfg.full:
                last = checkpoint_path(self.output, step=pos.step)
                self._write_lora(last, pos.step, overwrite=True)
                self.result.checkpoints.append(last)
                self._score(pos.step, last)
                self._select()
            else:
                self._write_lora(self.output, pos.step)
            self.events.write("done", step=pos.step, output=str(self.output), selected=self.result.selected)
        self.events.close()
        self.result.scores = self.best_scores

    def _select(self) -> None:
        import shutil

        from loracam.judge.select import average_loras, curve_text, explain, pick

        chosen = pick(self.best_scores, self.cfg.select, self.cfg.select_k)
        self.echo(curve_text(self.best_scores))
        self.echo(explain(self.best_scores, self.cfg.select, self.cfg.select_k))
        if self.cfg.select == "average-top-k" and len(chosen) > 1:
            average_loras([c.path for c in chosen], self.output)
            self.result.selected = "average of steps " + ", ".join(str(c.step) for c in chosen)
        else:
            from loracam.io import atomic_write

            atomic_write(self.output, lambda tmp: shutil.copyfile(chosen[0].path, tmp))
            self.result.selected = f"step {chosen[0].step}"

