"""``loracam demo``: the main job, end to end, on the built-in toy model.

A user's garment LoRA, the NGA way: photos of the testdress worn by different dolls -> ``prep --subject
garment --reg`` (garment-only crops + full-body reg images) -> ``train`` -> a seed row and an X/Y/Z grid
over the LoRA weight -> the probe's fidelity per weight -> a one-page report. Each step is the public
command a user would type (run as a subprocess), so the demo is also the end-to-end test of the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes, writable_dir

TRIGGER = "testdress"
# Upper body: at the toy's 64x96 a full-body doll's dress is ~20 px wide, and a LoRA trained on garment-only
# crops rarely carries the pattern down to that scale (benchmarks/toy_quality.py measures full-body fidelity).
PROMPT = "1girl, upper body, testdress, black hair, long hair, blue background"
WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Posed: full body, steered by the shipped "standing" template through the built-in toy ControlNet
POSED = "1girl, full body, testdress, black hair, long hair, blue background"
POSE = "standing"


@dataclass(frozen=True)
class DemoSettings:
    photos: int = 12
    steps: int = 1600  # on the toy base 800 steps read testdress in ~15% of upper-body images at weight 1
    batch_size: int = 4
    grid_seeds: int = 6
    sample_steps: int = 20
    # No learning rate: the garment preset's, scaled for the toy base by the trainer (models.preset_lr_scale),
    # as a user's `loracam train --subject garment` gets it.


def run_demo(output: Path, echo: Callable[[str], None] = print, settings: DemoSettings = DemoSettings()) -> Path:
    """Run every step into ``output`` (which must be new or empty) and return the report's path."""
    out = writable_dir(output)
    if any(out.iterdir()):
        raise LoracamError(f"{out} is not empty; the demo never overwrites: remove it or pass -o NEW_FOLDER")
    s = settings
    lora = out / f"{TRIGGER}.safetensors"
    weights = ",".join(f"{w:g}" for w in WEIGHTS)
    seeds = ",".join(str(1000 + i) for i in range(s.grid_seeds))
    steps = [
        ("photos", ["toy", "photos", out / "photos", "--concept", TRIGGER, "-n", s.photos]),
        ("prep", ["prep", out / "photos", "-o", out / "dataset", "--subject", "garment", "--trigger", TRIGGER,
                  "--class", "1girl", "--reg", "--boxes", out / "photos" / "boxes.json", "--resolution", "64x96"]),
        ("train", ["train", out / "dataset", "-o", lora, "--subject", "garment", "--max-steps", s.steps,
                   "--batch-size", s.batch_size, "--preview-every", max(1, s.steps // 3),
                   "--preview-prompt", PROMPT]),
        ("seed row", ["grid", f"{PROMPT} <lora:{TRIGGER}:0.8>", "--seeds", 6, "--lora-dir", out,
                      "--steps", s.sample_steps, "-o", out / "seed-row"]),
        ("grid", ["grid", f"{PROMPT} <lora:{TRIGGER}:1>", "--x", f"lora:{TRIGGER}={weights}", "--y",
                  f"Seed={seeds}", "--lora-dir", out, "--steps", s.sample_steps, "-o", out / "grid"]),
        ("judge", ["toy", "judge", out / "grid", "--concept", TRIGGER, "--lora", TRIGGER,
                   "--json", out / "fidelity.json"]),
        ("pose", ["grid", f"{POSED} <lora:{TRIGGER}:1>", "--controlnet", f"openpose:{POSE}", "--x",
                  "[ControlNet] Weight=0,1", "--y", "Seed=1000,1001,1002", "--lora-dir", out, "--steps",
                  s.sample_steps, "-o", out / "posed"]),
    ]
    times = {}
    for name, args in steps:
        times[name] = _run(name, [str(a) for a in args], out, echo)
    # finishing the weight-1 cell of the first seed: a garment detail pass, then the toy 4x upscaler
    raw = out / "grid" / f"{len(WEIGHTS) - 1:05d}-1000.png"  # cells are saved row by row: seed 1000, weight 1
    for name, args in (("detail", ["detail", raw, "--detail", "garment", "--lora-dir", out, "-o", out / "finished"]),
                       ("upscale", ["upscale", out / "finished" / raw.name, "--model", "toy-4x", "-o",
                                    out / "finished" / "4x"])):
        times[name] = _run(name, [str(a) for a in args], out, echo)
    side_by_side(raw, out / "finished" / raw.name, out / "finished" / "4x" / raw.name, out / "finished.png")
    report = _report(out, times, s)
    echo(f"demo done in {sum(times.values()):.0f} s: open {report}")
    return report


def _run(name: str, args: list[str], out: Path, echo) -> float:
    echo(f"\n== {name}: loracam {' '.join(_short(a, out) for a in args)}")
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and "%|" not in ln]  # no progress bars
    for line in lines[-8:]:
        echo(f"   {line}")
    if proc.returncode != 0:
        raise LoracamError(f"the demo's {name} step failed (exit {proc.returncode}); its output is above")
    return time.time() - t


CAPTION = 20  # px of caption band under the panels
PANEL_CAPTIONS = ("as rendered (nearest 4x)", "garment detail pass (nearest 4x)", "then toy-4x upscale")


def side_by_side(raw: Path, detailed: Path, upscaled: Path, target: Path) -> Path:
    """The raw render, the detailed one (both enlarged 4x by nearest, to compare pixels) and the toy-4x upscale."""
    from PIL import Image, ImageDraw

    from loracam.generate.images import png_with_text

    big = Image.open(upscaled).convert("RGB")
    panels = [Image.open(p).convert("RGB").resize(big.size, Image.NEAREST) for p in (raw, detailed)] + [big]
    sheet = Image.new("RGB", (big.width * 3 + 16, big.height + CAPTION), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, caption) in enumerate(zip(panels, PANEL_CAPTIONS)):
        sheet.paste(panel, (i * (big.width + 8), 0))
        draw.text((i * (big.width + 8) + 4, big.height + 5), caption, fill="black")
    return atomic_write_bytes(target, png_with_text(sheet, {}))


def _short(arg: str, out: Path) -> str:
    arg = arg.replace(str(out), out.name)
    return f'"{arg}"' if " " in arg else arg


def _report(out: Path, times: dict[str, float], s: DemoSettings) -> Path:
    fid = json.loads((out / "fidelity.json").read_text())
    curve = fid["fidelity"]
    prob = dict((w, p) for w, p in fid["probability"])
    best = next(((w, f) for w, f in curve if f >= 0.8), None)
    grid = sorted((out / "grid").glob("*.png"))[-1]
    posed = max((p for p in (out / "posed").glob("*.png") if "-control" not in p.name), key=lambda p: p.name)
    previews = sorted((out / f"{TRIGGER}.previews").glob("*.png"))
    rows = "\n".join(f"| {w:g} | {f:.0%} | {prob.get(w, 0):.2f} |" for w, f in curve)
    lines = [
        "# loracam demo: a garment LoRA on the built-in toy model", "",
        f"{s.photos} photos of the held-out *testdress* worn by different dolls were prepared the NGA way "
        "(garment-only crops, full-body crops as regularization images), a LoRA was trained on them "
        f"({s.steps} steps) and rendered over a grid of LoRA weights with {s.grid_seeds} seeds each. "
        "The toy world's attribute probe then read every grid cell.", "",
        "## Fidelity (the probe reads a testdress)", "",
        f"Prompt: `{PROMPT}`.", "",
        "| LoRA weight | fidelity | the probe's probability of a testdress |",
        "|---|---|---|", rows, "",
        (f"The smallest weight with at least 80% fidelity: **{best[0]:g}** ({best[1]:.0%})." if best else
         f"No weight reached 80% fidelity after {s.steps} steps; train longer (`loracam demo --steps 3000`)."), "",
        "## Files", "",
        "- contact sheet of the prepared dataset: `dataset/contact_sheet.png`",
        "- prep's report: `dataset/report.md`",
        f"- the LoRA (kohya format, loads in A1111/ComfyUI/diffusers): `{TRIGGER}.safetensors`",
        "- training previews: " + (", ".join(f"`{p.relative_to(out)}`" for p in previews[:6]) or "none"),
        f"- the seed row: `seed-row/`; the weight x seed grid: `{grid.relative_to(out)}`",
        "- finished: `finished.png` shows the weight-1 render of seed 1000 as rendered, after a garment detail "
        "pass (`loracam detail`) and after the toy 4x upscaler (`loracam upscale --model toy-4x`); the files "
        "are in `finished/`",
        f"- posed: `{posed.relative_to(out)}`: the LoRA at full body without (left) and with (right) the built-in "
        f"toy ControlNet steered by the `{POSE}` pose template (`loracam pose --list`); each cell's map is "
        "beside it (`posed/*-control0.png`)",
        "- the numbers: `fidelity.json`", "",
        "## Time (seconds)", "",
        "| step | seconds |", "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in times.items()), f"| total | {sum(times.values()):.1f} |", "",
    ]
    return atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
