"""The metadata a trained LoRA carries: kohya's ss_* keys (interop.md §5) and loracam's own."""

from __future__ import annotations

import json
import time

from loracam import __version__
from loracam.config import to_dict


def lora_metadata(run, step: int) -> dict[str, str]:
    """ss_* keys as sd-scripts writes them, plus loracam_* keys (trigger, class, subject, weight, config)."""
    from loracam.train.network import lora_metadata as network_metadata

    cfg, data, plan = run.cfg, run.data, run.plan
    counts = data.counts()
    ident = run.identity
    output_name = run.output.stem
    meta = {
        **network_metadata(run.network_cfg, run.model.family, run.model.prediction_type,
                           bool(run.model.scheduler_config.get("rescale_betas_zero_snr"))),
        "ss_output_name": output_name,
        "ss_sd_model_name": run.model.name,
        "ss_new_sd_model_hash": run.model.sha256 or "",
        "ss_resolution": f"({run.resolution[0]}, {run.resolution[1]})",
        # sd-scripts' meaning: images x folder repeats (reg: before balancing), not distinct files
        "ss_num_train_images": counts["kohya_num_train_images"],
        "ss_num_reg_images": counts["kohya_num_reg_images"],
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_num_epochs": plan.epochs,
        "ss_epoch": min(plan.epochs, max(1, -(-step // max(1, plan.steps_per_epoch)))),
        "ss_steps": step,
        "ss_max_train_steps": plan.total_steps,
        "ss_batch_size_per_device": cfg.batch_size,
        "ss_gradient_accumulation_steps": cfg.grad_accum,
        "ss_learning_rate": cfg.lr,
        "ss_unet_lr": cfg.lr,
        "ss_text_encoder_lr": _te_lrs(run) if run.r.train_text_encoder else 0,
        "ss_optimizer": cfg.optimizer,
        "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_lr_warmup_steps": cfg.warmup_steps,
        "ss_noise_offset": cfg.noise_offset,
        "ss_min_snr_gamma": cfg.min_snr_gamma if cfg.min_snr_gamma else "None",
        "ss_prior_loss_weight": cfg.prior_loss_weight,
        "ss_clip_skip": cfg.clip_skip,
        "ss_seed": cfg.seed,
        "ss_mixed_precision": run.acc.mixed_precision,
        "ss_flip_aug": cfg.flip,
        "ss_shuffle_caption": cfg.shuffle_caption,
        "ss_keep_tokens": cfg.keep_tokens,
        "ss_cache_latents": cfg.cache_latents,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing,
        "ss_v2": False,
        "ss_tag_frequency": json.dumps(data.tag_frequency(), ensure_ascii=False),
        "ss_bucket_info": json.dumps({"buckets": {str(i): {"resolution": list(r), "count": n}
                                                  for i, (r, n) in enumerate(plan.bucket_counts.items())}}),
        "ss_training_started_at": str(int(run.events.t0)),
        "ss_training_finished_at": str(int(time.time())),
        "ss_session_id": run.fp,
        "loracam_version": __version__,
        "loracam_subject": ident.get("subject") or cfg.subject or "",
        "loracam_trigger": ident.get("trigger") or "",
        "loracam_class": ident.get("class") or "",
        "loracam_recommended_weight": run.r.preset.recommended_weight,
        "loracam_config": json.dumps(to_dict(cfg)),
    }
    return {k: (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in meta.items()}


def _te_lrs(run):
    """One rate, or sd-scripts' list of one per encoder when SDXL's two differ."""
    te2 = getattr(run.cfg, "te2_lr", None)
    if run.model.text_encoder_2 is not None and te2 is not None and te2 != run.r.te_lr:
        return json.dumps([run.r.te_lr, te2])
    return run.r.te_lr
