"""The toy ControlNet (toy-openpose) through loracam's own gen path: does the doll land where the skeleton says,
do LoRAs still show under control, and what do the shipped pose templates give (issue: ControlNet).

Every image is rendered by ``render_samples`` with an ``openpose`` unit whose source is an OpenPose JSON at
512x768, as a user's would be (the doll's skeleton from the renderer's geometry, or a shipped template), the
judge's settings (20 steps DPM++ 2M, CFG 5), the same seed without and with the unit.
- placement: held-out full-body dolls (wide camera and pose: loracam.toy.controlnet.placement_dolls); box IoU
  between the union of the renderer's face/garment/shoes boxes and the toy locator's on the render; the
  ceiling is the locator on the true renders after the VAE;
- fidelity: the probe's reading of testdress (full body, weight 1) and sks (upper body, weight 1) without and
  with the doll's own skeleton steering;
- templates: standing, walking (full body), half_body (upper body) and close_up, 8 dolls each, IoU between the
  template's keypoint box and the located doll, and a gallery picture (template map, then the renders).
Usage: python benchmarks/toy_controlnet.py [--work DIR] [--n 48]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_result  # noqa: E402

import torch  # noqa: E402

from loracam.control.models import ControlNets  # noqa: E402
from loracam.control import resize  # noqa: E402
from loracam.control.openpose import Pose  # noqa: E402
from loracam.control.templates import load_template  # noqa: E402
from loracam.control.units import ControlUnit  # noqa: E402
from loracam.generate.api import render_samples  # noqa: E402
from loracam.generate.request import Sample, Shared  # noqa: E402
from loracam.lora import LoraLibrary  # noqa: E402
from loracam.models import ModelCache  # noqa: E402
from loracam.prompts import extract_networks  # noqa: E402
from loracam.toy import judge, skeleton, world  # noqa: E402
from loracam.toy.controlnet import box_iou, located, person_box, placement_dolls, wide_camera  # noqa: E402
from loracam.toy.locator import MIN_VISIBLE, Locator  # noqa: E402
from loracam.toy.probe import Probe  # noqa: E402
from loracam.toy.world import SKS, TESTDRESS  # noqa: E402

SETTINGS = judge.RenderSettings()
TEMPLATES = (("standing", "full body"), ("walking", "full body"), ("half_body", "upper body"),
             ("close_up", "close-up"))


class Renderer:
    """One image at a time through loracam's gen path (each has its own pose, and a batch shares its maps)."""

    def __init__(self, model, library: LoraLibrary, work: Path):
        self.model, self.library, self.work = model, library, work
        self.controls = ControlNets()
        self.n = 0

    def pose_file(self, pose: Pose) -> str:
        self.n += 1
        path = self.work / f"pose{self.n}.json"
        path.write_text(json.dumps(pose.to_json()))
        return str(path)

    def __call__(self, prompt: str, seed: int, pose: Pose | None = None) -> np.ndarray:
        unit = (ControlUnit("openpose", self.pose_file(pose)),) if pose is not None else ()
        shared = Shared(64, 96, SETTINGS.steps, SETTINGS.sampler, "Automatic", control=unit)
        loras = tuple(extract_networks(prompt)[1])
        [r] = render_samples(self.model, shared, [Sample(prompt, judge.NEGATIVE, seed, SETTINGS.cfg, loras)],
                             self.library, controls=self.controls)
        return np.asarray(r.image)


def doll_pose(doll) -> Pose:
    """The doll's skeleton as a user's OpenPose JSON would hold it: 512x768, the processor's resolution."""
    return Pose((skeleton.person(doll),), 512, 768)


def truth_box(doll) -> list[float] | None:
    return person_box({k: v for k, v in world.boxes(doll, min_visible=MIN_VISIBLE).items()
                       if k in ("face", "garment", "shoes")})


def both(render: Renderer, prompts, dolls, seed0: int) -> dict[str, np.ndarray]:
    out = {"without": [], "with": []}
    for i, (p, d) in enumerate(zip(prompts, dolls)):
        out["without"].append(render(p, seed0 + i))
        out["with"].append(render(p, seed0 + i, doll_pose(d)))
    return {k: np.stack(v) for k, v in out.items()}


def placement(render: Renderer, locator, model, n: int) -> tuple[dict, dict]:
    dolls = placement_dolls(n, 4242)
    images = both(render, [world.tags(d) for d in dolls], dolls, 4242000)
    truth = [truth_box(d) for d in dolls]
    out = {k: round(float(np.mean([box_iou(a, b) for a, b in zip(located(locator, v), truth)])), 3)
           for k, v in images.items()}
    real = judge.round_trip(model, np.stack([world.render(d) for d in dolls]))
    out["ceiling"] = round(float(np.mean([box_iou(a, b) for a, b in zip(located(locator, real), truth)])), 3)
    return out, images


def fidelity(render: Renderer, probe: Probe, locator, n: int) -> dict:
    out = {}
    rng = np.random.default_rng(77)
    for concept, framing in ((TESTDRESS, "full body"), (SKS, "upper body")):
        dolls = []
        for _ in range(n):
            d = world.sample_doll(rng, held_out=True, framing=framing)
            dolls.append(replace(d, **wide_camera(rng, framing, 0.65)))
        worn = [judge.concept_prompt(d, concept, world.TESTDRESS if concept == TESTDRESS else "sks", 1.0) for d in dolls]
        images = both(render, [p for _, p in worn], [d for d, _ in worn], 7700)
        out[concept] = {k: round(judge.fidelity(probe, list(v), concept), 3) for k, v in images.items()}
        if framing == "full body":
            truth = [truth_box(d) for d, _ in worn]
            out[concept]["placement_iou"] = {k: round(float(np.mean([box_iou(a, b) for a, b in zip(
                located(locator, v), truth)])), 3) for k, v in images.items()}
    return out


def templates(render: Renderer, locator, k: int, gallery: Path) -> dict:
    """Each template steering k dolls (testdress on full/upper body, sks close-ups); IoU against the box of the
    template's keypoints on the 64x96 picture, and the gallery."""
    rng = np.random.default_rng(99)
    out, rows = {}, []
    for name, framing in TEMPLATES:
        pose = load_template(name)
        x0, y0, x1, y1 = pose.people[0].box((64, 96))
        concept = SKS if framing == "close-up" else TESTDRESS
        dolls = [world.sample_doll(rng, held_out=True, framing=framing) for _ in range(k)]
        worn = [judge.concept_prompt(d, concept, "sks" if concept == SKS else "testdress", 1.0)[1] for d in dolls]
        made = {"without": np.stack([render(p, 9900 + i) for i, p in enumerate(worn)]),
                "with": np.stack([render(p, 9900 + i, pose) for i, p in enumerate(worn)])}
        out[name] = {key: round(float(np.mean([box_iou(b, [x0, y0, x1, y1]) for b in located(locator, v)])), 3)
                     for key, v in made.items()}
        steer = resize.fit(pose.draw(), (64, 96))  # the map that steered: drawn at 512x768, then fitted
        rows.append([steer] + list(made["with"]))
    sheet = Image.new("RGB", (66 * (k + 1), 98 * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(Image.fromarray(np.asarray(im)), (66 * c + 1, 98 * r + 1))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(gallery)
    return out


def training_record(log: Path) -> dict | None:
    """What the shipped net's training log (`make toy-controlnet`'s output, kept in results/) says it cost."""
    import re

    if not log.exists():
        return None
    text = log.read_text()
    last = re.findall(r"step (\d+)/(\d+)\s+loss ([\d.]+).*?(\d+) s \(([\d.]+) s/step\)", text)[-1]
    total = re.search(r"trained in (\d+) s", text)
    pool = re.search(r"pool: (\d+) renders encoded .* in (\d+) s", text)
    return {"log": log.name, "steps": int(last[1]), "final_loss": float(last[2]), "s_per_step": float(last[4]),
            "steps_s": int(last[3]), "pool_renders": int(pool.group(1)), "pool_s": int(pool.group(2)),
            "total_s": int(total.group(1)), "threads": 1, "machine": "2-core CPU, the other core busy",
            "command": "OMP_NUM_THREADS=1 python -m loracam.toy.controlnet (make toy-controlnet)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="holds loras/ (toy_finish.py trains them there)")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=2400, help="LoRA training steps when they must be trained")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="toy-controlnet-"))
    from toy_finish import loras

    probe = Probe.load()
    lora_dir = loras(work, args.steps, probe)
    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    locator = Locator.load()
    render = Renderer(model, LoraLibrary([lora_dir]), Path(tempfile.mkdtemp(prefix="poses-")))
    t = time.time()
    place, images = placement(render, locator, model, args.n)
    fid = fidelity(render, probe, locator, args.n)
    gallery = RESULTS / "toy_controlnet_gallery.png"
    tmpl = templates(render, locator, 8, gallery)
    training = training_record(RESULTS / "toy_controlnet_train.log")
    write_result("toy_controlnet", {
        "n": args.n, "settings": {"steps": SETTINGS.steps, "sampler": SETTINGS.sampler, "cfg": SETTINGS.cfg},
        "placement_iou": {"without": place["without"], "with": place["with"]}, "placement_ceiling": place["ceiling"],
        "fidelity": {world_name: {k: v for k, v in d.items() if k in ("without", "with")}
                     for world_name, d in ((("testdress", fid[TESTDRESS]), ("sks", fid[SKS])))},
        "testdress_placement_iou": fid[TESTDRESS].get("placement_iou"),
        "templates_iou": tmpl, "gallery": str(gallery.relative_to(RESULTS.parent.parent)),
        "training": training, "eval_seconds": round(time.time() - t),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
