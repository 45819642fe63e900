"""Method (a) of the NGA guide at its own length, one recipe at a time (results: results/nga_sweep.json).

toy_quality.py trains each LoRA for 2400 steps and judges the last one. This script trains a testdress LoRA
for 6000 steps (the guide asks for 5000+), keeps a checkpoint every 1500, and judges each on 32 full-body
prompts per point: fidelity at weights 0.6 / 0.8 / 1.0 and the prior drop at 1.0 (prompt following of
trigger-free prompts with the LoRA on, in points, against the base). Each variant changes one thing of the
benchmark's recipe (VARIANTS says what and why it was tried); all start from the same photos and prep.

python benchmarks/nga_sweep.py VARIANT [VARIANT ...] [--work DIR] [--steps N --every N]
~15 min a variant on one CPU thread (6000 steps at batch 4, then 13 x 32 renders a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment  # noqa: E402
from toy_quality import prep  # noqa: E402

from loracam.io import atomic_write_bytes  # noqa: E402
from loracam.lora import LoraLibrary  # noqa: E402
from loracam.models import ModelCache  # noqa: E402
from loracam.toy import judge  # noqa: E402
from loracam.toy.photos import write_photos  # noqa: E402
from loracam.toy.probe import Probe  # noqa: E402
from loracam.toy.world import TESTDRESS  # noqa: E402
from loracam.train import TrainConfig, train  # noqa: E402

RECIPE = {"lr": 2e-3, "te_lr": 1e-3, "seed": 0}  # toy_quality.py's; the rest is the garment preset's


def _reg_captions(ds: Path, caption_of) -> None:
    pngs = sorted((ds / "reg").glob("*/*.png"))
    for png, text in zip(pngs, caption_of(pngs)):
        png.with_suffix(".txt").write_text(text + "\n")


def trigger_reg(ds: Path, probe: Probe, models: ModelCache) -> None:
    """The guide's `5_testdress` reg folder: kohya captions its images with the folder's class, the trigger."""
    _reg_captions(ds, lambda pngs: [TESTDRESS] * len(pngs))


def tagged_reg(ds: Path, probe: Probe, models: ModelCache) -> None:
    """Reg images captioned as a tagger would (the probe's reading, without the garment): class + tags."""
    def tags(pngs):
        reads = probe.read([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
        return [f"1girl, {r['framing']}, {r['shoes']} shoes, {r['hair']} hair, {r['hair_style']} hair, "
                f"{r['background']} background" for r in reads]
    _reg_captions(ds, tags)


def class_reg(ds: Path, probe: Probe, models: ModelCache) -> None:
    """kohya's usual class images in place of the user's photos: 110 full-body dolls the base generates from
    random dolls' tags, captioned with those tags."""
    reg = next((ds / "reg").glob("*/"))
    shutil.rmtree(reg)
    reg.mkdir()
    model = models.get("toy", torch.device("cpu"), torch.float32)
    dolls = judge.prompt_dolls(110, seed=101, framing="full body")
    prompts = [judge.world.tags(d) for d in dolls]
    for i, (im, p) in enumerate(zip(judge.render_prompts(model, prompts, range(1000, 1110)), prompts)):
        Image.fromarray(im).save(reg / f"class_{i:03d}.png")
        (reg / f"class_{i:03d}.txt").write_text(p + "\n")


# name -> (dataset edit or None, training overrides, why it was tried)
VARIANTS = {
    "default": (None, {}, "the benchmark's recipe at 6000 steps"),
    "seed1": (None, {"seed": 1}, "does the default's result hold for another seed?"),
    "rank4": (None, {"rank": 4, "alpha": 2.0}, "a smaller U-Net update, for less prior drop"),
    "prior_loss_3": (None, {"prior_loss_weight": 3.0}, "the reg images weigh more, for less prior drop"),
    "locon": (None, {"conv_dim": 8, "conv_alpha": 4.0}, "kohya's LoCon: conv layers draw texture"),
    "te_heavy": (None, {"lr": 1e-3, "te_lr": 2e-3}, "the trigger bound in the text encoder, not the U-Net"),
    "attention": (None, {"targets": "attention"}, "the face preset's targets"),
    "trigger_reg": (trigger_reg, {}, "the guide's own reg folder name"),
    "tagged_reg": (tagged_reg, {}, "reg captions that name what trigger-free prompts name"),
    "class_reg": (class_reg, {}, "reg images that show what trigger-free prompts should keep"),
}


def dataset(work: Path, variant: str, probe: Probe, models: ModelCache) -> Path:
    base = work / "ds_crop_reg"
    if not base.exists():
        photos = work / "photos_testdress"
        if not photos.exists():
            write_photos(photos, TESTDRESS, 12, seed=1)  # toy_quality.py's photos
        prep(photos, base, "garment", TESTDRESS, reg=True)
    edit = VARIANTS[variant][0]
    if edit is None:
        return base
    ds = work / f"ds_{variant}"
    if not ds.exists():
        tmp = work / f".ds_{variant}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base, tmp)
        edit(tmp, probe, models)
        tmp.rename(ds)
    return ds


def run(variant: str, work: Path, steps: int, every: int, models: ModelCache, probe: Probe, n: int = 32) -> dict:
    out = work / variant
    out.mkdir(parents=True, exist_ok=True)
    lora = out / "td.safetensors"
    train_s = None  # None: trained by an earlier run in this work folder
    if not lora.exists():
        t = time.time()
        cfg = TrainConfig(dataset=str(dataset(work, variant, probe, models)), output=str(lora), subject="garment",
                          max_steps=steps, batch_size=4, resolution=(64, 96), save_every_steps=every,
                          **{**RECIPE, **VARIANTS[variant][1]})
        train(cfg, echo=lambda s: None, progress=False)
        train_s = round(time.time() - t)
    res = {"why": VARIANTS[variant][2], "overrides": VARIANTS[variant][1], "train_s": train_s, "checkpoints": {}}
    # CPU fp32, as the recorded numbers were rendered (a GPU's renders differ in the last bits)
    model = models.get("toy", torch.device("cpu"), torch.float32)
    full = judge.prompt_dolls(n, seed=11, framing="full body")
    prior_dolls = judge.prompt_dolls(n, seed=13, framing="full body")
    prior_prompts = [judge.world.tags(d) for d in prior_dolls]
    prior_base = judge.mean(judge.following(probe, judge.render_prompts(model, prior_prompts, range(n)), prior_dolls))
    for ck in sorted(out.glob("td-step*.safetensors")) + [lora]:
        lib_dir = out / "lib" / ck.stem
        lib_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(ck, lib_dir / "td.safetensors")
        lib = LoraLibrary([lib_dir], models.hash_cache)
        row = {}
        for w in (0.6, 0.8, 1.0):
            p = [judge.concept_prompt(x, TESTDRESS, "td", w)[1] for x in full]
            row[str(w)] = round(judge.fidelity(probe, judge.render_prompts(model, p, range(n), lib), TESTDRESS), 4)
        p = [f"{prompt} <lora:td:1>" for prompt in prior_prompts]
        prior = judge.mean(judge.following(probe, judge.render_prompts(model, p, range(n), lib), prior_dolls))
        step = steps if ck == lora else int(ck.stem.split("step")[1])
        res["checkpoints"][str(step)] = {"fidelity": row, "prior_drop_at_1": round(100 * (prior_base - prior), 1)}
        print(variant, step, res["checkpoints"][str(step)], flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    ap.add_argument("--work", type=Path, help="datasets and LoRAs go here (kept; a finished variant is not retrained)")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--every", type=int, default=1500)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="nga-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    models, probe = ModelCache(), Probe.load()
    path = RESULTS / "nga_sweep.json"
    for v in args.variants:
        res = run(v, work, args.steps, args.every, models, probe)
        res.update(steps=args.steps, images_per_point=32, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   environment=environment())
        # One file for all variants, each entry replaced whole when re-run; read just before writing, so
        # sweeps of other variants running beside this one keep theirs.
        doc = json.loads(path.read_text()) if path.exists() else {"benchmark": "nga_sweep", "variants": {}}
        doc["variants"][v] = res
        atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode(), overwrite=True)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
