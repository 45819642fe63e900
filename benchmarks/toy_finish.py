"""What detail passes add, measured by the toy world's probe (issue: finish).

Three LoRAs as a user would train them (toy_quality.py's recipes, 2400 steps each): testdress (garment crops
+ full-body reg), myshoes (shoe crops + reg), sks (close-up face crops, rank 8 with its text encoder). Then, on
fresh dolls (48 per point), the probe's reading of each concept without and with a detail pass:
- sks on upper-body and full-body renders, with a face pass;
- myshoes on full-body renders, with a shoes pass; testdress on full-body renders, with a garment pass;
- what the passes change elsewhere: prompt following (framing, hair, background, dress colour, shoes) of the
  raw and the detailed images, in accuracy points lost;
- the three LoRAs together over a weight grid, each image detailed by all three passes (dress and shoes
  judged on full-body images, the face on upper-body ones, as toy_quality's composition);
- the toy locator's box IoU on fresh renders.
A pass's prompt says what its crop shows, as ADetailer users write one: the doll's tags at close-up framing
for the face, upper-body framing for the garment, its own full-body tags for the shoes; the pass's LoRA is
in it (at the image's weight or `--pass-weight`), and so are the image's other LoRAs (`--pass-loras own`
leaves them out). Detection, masks and paste-back are loracam's own, with ADetailer's defaults scaled to
64x96 (padding 4, blur 1, dilate 1) and denoising 0.4.
Usage: python benchmarks/toy_finish.py [--work DIR] [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402
from toy_quality import FACE_NETWORK, prep, train_lora  # noqa: E402

from loracam.finish.detail import DetailPass, run_passes  # noqa: E402
from loracam.generate.request import Sample, Shared  # noqa: E402
from loracam.finish.detect import Detectors  # noqa: E402
from loracam.lora import LoraLibrary  # noqa: E402
from loracam.models import ModelCache, pick_device, pick_dtype  # noqa: E402
from loracam.toy import judge, world  # noqa: E402
from loracam.toy.locator import Locator, evaluate as locator_iou  # noqa: E402
from loracam.toy.photos import write_photos  # noqa: E402
from loracam.toy.probe import Probe  # noqa: E402
from loracam.toy.world import MYSHOES, SKS, TESTDRESS  # noqa: E402

NAMES = {TESTDRESS: "testdress", MYSHOES: "myshoes", SKS: "sks"}
PASS_OF = {SKS: "face", TESTDRESS: "garment", MYSHOES: "shoes"}
PASS_FRAMING = {SKS: "close-up", TESTDRESS: "upper body", MYSHOES: None}  # None: the image's own framing
OUTSIDE = ("framing", "hair", "background", "dress", "shoes")
SETTINGS = judge.RenderSettings()
SHARED = Shared(64, 96, SETTINGS.steps, SETTINGS.sampler, "Automatic")  # how judge.render_prompts renders


def loras(work: Path, steps: int, probe: Probe) -> Path:
    """The three LoRAs, trained once into work/loras (kept for later runs)."""
    out = work / "loras"
    out.mkdir(parents=True, exist_ok=True)
    for concept, seed in ((TESTDRESS, 1), (MYSHOES, 2), (SKS, 3)):
        target = out / f"{NAMES[concept]}.safetensors"
        if target.exists():
            continue
        photos = work / f"photos_{NAMES[concept]}"
        if not photos.exists():
            write_photos(photos, concept, 12, seed=seed)
        t = time.time()
        if concept == SKS:
            train_lora(face_crops(photos, work / "ds_sks_faces"), target, "face", steps, save_every=max(1, steps // 4),
                       scorer=judge.ProbeIdentityScorer(probe), **FACE_NETWORK)
        else:
            subject = "garment" if concept == TESTDRESS else "shoes"
            train_lora(prep(photos, work / f"ds_{NAMES[concept]}", subject, concept, reg=True), target, subject, steps)
        print(f"trained {target.name} in {time.time() - t:.0f} s", flush=True)
    return out


def face_crops(photos: Path, out: Path) -> Path:
    """The sks training set as `prep --subject face` makes one from real photos (FaceChain's recipe): a
    close-up crop around each photo's face, here found by the toy locator (mediapipe finds no toy faces),
    the head box 0.68 of the crop's height, 2:3, captioned with the close-up framing."""
    locator = Locator.load()
    sub = out / "img" / "10_sks 1girl"
    sub.mkdir(parents=True)
    for p in sorted(photos.glob("*.png")):
        im = Image.open(p).convert("RGB")
        (x0, y0, x1, y1), _ = locator.locate(im)["face"]
        cx, cy, h = (x0 + x1) / 2, (y0 + y1) / 2, (y1 - y0) / 0.68
        w = h * 2 / 3
        box = (round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2))
        crop = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), im.getpixel((0, 0)))  # background fills
        crop.paste(im, (-box[0], -box[1]))
        crop.resize((64, 96), Image.LANCZOS).save(sub / p.name)
        (sub / p.name).with_suffix(".txt").write_text("sks, 1girl, close-up\n")
    return out


def wearing(doll, weights: dict[str, float]):
    """The doll wearing every concept in ``weights`` and its prompt with their LoRA tags."""
    for c in weights:
        doll = judge.concept_prompt(doll, c)[0]
    return doll, world.tags(doll) + "".join(f" <lora:{NAMES[c]}:{w:g}>" for c, w in weights.items() if w > 0)


def pass_for(doll, concept: str, weights: dict[str, float], pass_weight: float | None, pass_loras: str) -> DetailPass:
    """The pass for ``concept``: the doll's tags at the framing its crop shows, with the pass's own LoRA (at
    ``pass_weight`` when given) and, with ``pass_loras="all"``, the image's other LoRAs too, as ADetailer's
    default prompt (the image's) carries them. Both are measured: see benchmarks/README.md."""
    framing = PASS_FRAMING[concept] or doll.framing
    kept = weights if pass_loras == "all" else {concept: weights[concept]}
    tags = "".join(f" <lora:{NAMES[c]}:{(pass_weight or w) if c == concept else w:g}>" for c, w in kept.items())
    return DetailPass(PASS_OF[concept], prompt=world.tags(replace(doll, framing=framing)) + tags)


def render_and_detail(model, library, detectors, dolls, weights: dict[str, float], passes: tuple[str, ...],
                      pass_weight: float | None, pass_loras: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(raw, detailed) uint8 images of ``dolls`` wearing ``weights``, detailed by the passes of ``passes``."""
    worn = [wearing(d, weights) for d in dolls]
    raw = judge.render_prompts(model, [p for _, p in worn], range(len(worn)), library, SETTINGS)
    done = []
    for i, ((doll, prompt), image) in enumerate(zip(worn, raw)):
        made = Sample(prompt, judge.NEGATIVE, i, SETTINGS.cfg)
        plan = [pass_for(doll, c, weights, pass_weight, pass_loras) for c in passes]
        done.append(np.asarray(run_passes(Image.fromarray(image), made, SHARED, plan, model, library, detectors).image))
    return raw, np.stack(done)


def outside_change(probe, raw, detailed, dolls) -> dict[str, float]:
    """Prompt-following points lost from raw to detailed, per attribute."""
    a, b = judge.following(probe, raw, dolls, OUTSIDE), judge.following(probe, detailed, dolls, OUTSIDE)
    return {k: round(100 * (a[k] - b[k]), 1) for k in OUTSIDE if a[k] == a[k]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, help="where LoRAs are kept (trained once)")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--quick", action="store_true", help="16 images a point, 60-step LoRAs: checks the script")
    ap.add_argument("--pass-weight", type=float, help="the LoRA weight inside passes (default: the image's)")
    ap.add_argument("--pass-loras", choices=("all", "own"), default="all",
                    help="LoRAs in a pass's prompt: all of the image's (ADetailer's default prompt) or its own")
    args = ap.parse_args()
    n = 16 if args.quick else 48
    t0 = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="toy-finish-"))
    dev = pick_device("auto")
    models = ModelCache()
    model = models.get("toy", dev, pick_dtype("auto", dev))
    probe, detectors = Probe.load(), Detectors()
    library = LoraLibrary([loras(work, 60 if args.quick else args.steps, probe)], models.hash_cache)
    res: dict = {"images_per_point": n, "steps_per_lora": 60 if args.quick else args.steps,
                 "pass_weight": args.pass_weight, "pass_loras": args.pass_loras}
    res["detector_iou"] = locator_iou(Locator.load(), n=500)
    print("locator", res["detector_iou"], flush=True)

    upper = judge.prompt_dolls(n, seed=17, framing="upper body")
    full = judge.prompt_dolls(n, seed=11, framing="full body")
    cases = {"sks_upper_body": (SKS, upper), "sks_full_body": (SKS, full), "myshoes_full_body": (MYSHOES, full),
             "testdress_full_body": (TESTDRESS, full)}
    res["outside_change"] = {}
    for key, (concept, dolls) in cases.items():
        rows = {}
        for w in (1.0, 1.5):
            raw, det = render_and_detail(model, library, detectors, dolls, {concept: w}, (concept,), args.pass_weight)
            rows[w] = {"raw": round(judge.fidelity(probe, raw, concept), 4),
                       "detailed": round(judge.fidelity(probe, det, concept), 4)}
            if w == 1.0:
                worn = [wearing(d, {concept: w})[0] for d in dolls]
                res["outside_change"][key] = outside_change(probe, raw, det, worn)
        res[key] = {**rows[1.0], "by_weight": {str(w): r for w, r in rows.items()}}
        print(key, res[key], res["outside_change"][key], flush=True)

    # the three together, every image through all three passes
    combos = {}
    for wt in itertools.product((1.0, 1.5), repeat=3):
        wts = dict(zip((TESTDRESS, MYSHOES, SKS), wt))
        every = (SKS, TESTDRESS, MYSHOES)
        _, fb = render_and_detail(model, library, detectors, full, wts, every, args.pass_weight, args.pass_loras)
        _, ub = render_and_detail(model, library, detectors, upper, wts, every, args.pass_weight, args.pass_loras)
        combos[wt] = {TESTDRESS: judge.fidelity(probe, fb, TESTDRESS), MYSHOES: judge.fidelity(probe, fb, MYSHOES),
                      SKS: judge.fidelity(probe, ub, SKS)}
        print("composition", wt, {k: round(v, 3) for k, v in combos[wt].items()}, flush=True)
    best = max(combos, key=lambda wt: (min(combos[wt].values()), -sum(wt)))
    res["composition"] = {
        "weights": dict(zip(("testdress", "myshoes", "sks"), best)),
        "min_fidelity": round(min(combos[best].values()), 4),
        "fidelity": {NAMES[c]: round(v, 4) for c, v in combos[best].items()},
        "grid": {",".join(f"{w:g}" for w in wt): {NAMES[c]: round(v, 4) for c, v in s.items()}
                 for wt, s in combos.items()},
    }
    res["seconds"] = round(time.time() - t0)
    if args.quick:  # a check of the script, not a measurement: never over the recorded numbers
        print(res)
    else:
        write_result("toy_finish", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
