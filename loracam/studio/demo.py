"""``loracam demo``: the studio job on the built-in toy world, end to end.

Photos of a doll with the held-out *sks* face (the toy world's stand-in for a person) -> ``loracam studio run``:
prep (close-up face crops, identity checked), a LoRA (its checkpoint picked by identity), candidates in six
toy styles, the judge's pick of the best per style, the toy 4x upscaler, a gallery. Each step is the public
command a user would type, run as a subprocess, so the demo is also the end-to-end test of the CLI. The
report adds the probe's reading of the gallery: does each kept image show sks, and its style's background?
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

NAME = "sks"
STYLES = ("toy-studio", "toy-garden", "toy-sunset", "toy-pastel", "toy-ocean", "toy-lemon")


@dataclass(frozen=True)
class DemoSettings:
    photos: int = 12
    per_style: int = 12
    keep: int = 6
    train_steps: int | None = None  # None: the toy face rule (loracam.studio.portrait.TOY_TRAINING)
    styles: tuple[str, ...] = STYLES


def run_demo(output: Path, echo: Callable[[str], None] = print, settings: DemoSettings = DemoSettings()) -> Path:
    """Run every step into ``output`` (which must be new or empty) and return the report's path."""
    out = writable_dir(output)
    if any(out.iterdir()):
        raise LoracamError(f"{out} is not empty; the demo never overwrites: remove it or pass -o NEW_FOLDER")
    s = settings
    job = ["studio", "run", out / "photos", "--name", NAME, "--subject", "face", "--trigger", NAME,
           "--studio", out / "studio", "--styles", ",".join(s.styles), "--per-style", s.per_style, "--keep", s.keep]
    if s.train_steps:
        job += ["--train-steps", s.train_steps]
    steps = [
        ("photos", ["toy", "photos", out / "photos", "--concept", NAME, "-n", s.photos, "--size", "384x576"]),
        ("studio job", job),
    ]
    times = {}
    for name, args in steps:
        times[name] = _run(name, [str(a) for a in args], out, echo)
    report = _report(out, times, s)
    echo(f"demo done in {sum(times.values()):.0f} s: open {report} and {out / 'studio' / NAME / 'gallery' / 'index.html'}")
    return report


def _run(name: str, args: list[str], out: Path, echo) -> float:
    echo(f"\n== {name}: loracam {' '.join(_short(a, out) for a in args)}")
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and "%|" not in ln]  # no progress bars
    for line in lines[-14:]:
        echo(f"   {line}")
    if proc.returncode != 0:
        raise LoracamError(f"the demo's {name} step failed (exit {proc.returncode}); its output is above")
    return time.time() - t


def _short(arg: str, out: Path) -> str:
    arg = arg.replace(str(out), out.name)
    return f'"{arg}"' if " " in arg else arg


def _report(out: Path, times: dict[str, float], s: DemoSettings) -> Path:
    from loracam.studio.store import JobStore

    job = out / "studio" / NAME
    report = json.loads((job / "gallery" / "report.json").read_text())
    probe = report["probe"]["styles"]
    store = JobStore(out / "studio")
    step_times = {st.name: st.detail.get("seconds") for st in store.steps(NAME)}
    train = next((st.detail for st in store.steps(NAME) if st.name == "train"), {})
    rows = "\n".join(f"| {name} | {v['concept']}/{v['n']} | {v['attributes']}/{v['n']} | {v['both']}/{v['n']} |"
                     for name, v in probe.items())
    total = sum(v["n"] for v in probe.values())
    both = sum(v["both"] for v in probe.values())
    lines = [
        "# loracam demo: the studio job on the built-in toy world", "",
        f"{s.photos} photos of a doll with the held-out *sks* face went through `loracam studio run`: prep "
        "(close-up face crops found by the toy locator, identity outliers dropped), a LoRA "
        f"({train.get('steps', '?')} steps, checkpoint: {train.get('selected', 'last')}), {s.per_style} candidates in "
        f"each of {len(probe)} styles, the judge's best {s.keep} per style (identity against the photos' own baseline, "
        "quality, the style's prompt), upscaled 4x by the toy upscaler.", "",
        f"Open the gallery: `studio/{NAME}/gallery/index.html`.", "",
        "## What the toy probe reads in the kept images", "",
        "| style | shows sks | shows the style's attributes | both |", "|---|---|---|---|", rows, "",
        f"In all: {both} of {total} kept images show both the sks face and their style's attributes.", "",
        "## Files", "",
        f"- the prepared photos: `studio/{NAME}/dataset/contact_sheet.png` and `report.md`",
        f"- the LoRA (kohya format, loads in A1111/ComfyUI/diffusers): `studio/{NAME}/lora/{NAME}.safetensors`",
        f"- every candidate: `studio/{NAME}/candidates/STYLE/`; the judge's ranking and contact sheet: "
        f"`studio/{NAME}/judge/STYLE/ranking.json`, `sheet.png`",
        f"- the finished images: `studio/{NAME}/final/STYLE/` (PNG with infotext and the upscaler's Extras keys)",
        f"- the job: `loracam studio status {NAME} --studio {out.name}/studio`", "",
        "## Time (seconds)", "",
        "| step | seconds |", "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in times.items()),
        *(f"| studio: {k} | {v} |" for k, v in step_times.items()),
        f"| total | {sum(times.values()):.1f} |", "",
    ]
    return atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
