"""The studio's ranking, measured in the toy world: do the kept images show the concept and the style?

`python benchmarks/toy_studio.py [--work DIR] [--per-style K] [--quick]` -> results/toy_studio.json.

Two studio jobs on the toy base, through the public CLI as a user runs them (`loracam studio run`), each
over the six toy styles with K candidates a style and the judge's best 6 kept:
- face: 12 photos of the held-out sks face (`loracam toy photos --concept sks`);
- garment: 12 photos of the held-out testdress (`--concept testdress`, prep's garment crops + reg images).
Then the toy probe reads every candidate. For each style: ``kept`` = the share of the kept 6 in which the
probe reads the concept and every attribute the style names (its [expect]: framing, background, hair...);
``random`` = the same share for 6 candidates picked at random from the same renders, as its expectation
(the share over all K candidates: every 6-subset is equally likely). Bars: kept >= 5/6 per style, and
kept > random. It also times `loracam demo` from an empty folder (the face job plus its photos).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from loracam.studio.probe_report import read_files, verdicts  # noqa: E402
from loracam.studio.styles import find_styles  # noqa: E402

STYLES = ("toy-studio", "toy-garden", "toy-sunset", "toy-pastel", "toy-ocean", "toy-lemon")
JOBS = {"sks": ("face", "sks"), "testdress": ("garment", "testdress")}


def cli(*args) -> float:
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "loracam.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"loracam {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t


def measure(job: Path, concept: str, subject: str, keep: int) -> dict:
    styles = find_styles()
    out = {}
    for name in STYLES:
        expect = styles[name].expect_for(subject)
        cands = sorted(p for p in (job / "candidates" / name).glob("*.png") if "-control" not in p.name)
        ranking = json.loads((job / "judge" / name / "ranking.json").read_text())
        kept_names = [Path(e["path"]).name for e in sorted((e for e in ranking["entries"] if e.get("rank")),
                                                           key=lambda e: e["rank"])][:keep]
        marks = dict(zip((p.name for p in cands), verdicts(read_files(cands), concept, expect)))
        good = {n: c and a for n, (c, a) in marks.items()}
        out[name] = {"kept": round(sum(good[n] for n in kept_names) / keep, 4),
                     "random": round(sum(good.values()) / len(good), 4),
                     "kept_concept": round(sum(marks[n][0] for n in kept_names) / keep, 4),
                     "kept_attributes": round(sum(marks[n][1] for n in kept_names) / keep, 4),
                     "candidates": len(cands), "expect": expect}
        print(concept, name, out[name], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="keep the jobs here (default: a temporary folder)")
    ap.add_argument("--per-style", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="30 training steps and 6 candidates: checks the script")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="toy-studio-"))
    work.mkdir(parents=True, exist_ok=True)
    per_style = 6 if args.quick else args.per_style
    extra = ["--train-steps", 30] if args.quick else []
    # times of runs made earlier into the same --work folder are kept there, so a rerun of one job keeps the rest
    times_file = work / "times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    res: dict = {"per_style": per_style, "keep": 6, "styles": {}, "times": times, "quick": args.quick}
    demo = work / "demo"
    if not demo.exists():
        res["times"]["demo"] = round(cli("demo", "-o", demo, *(["--steps", 30, "--per-style", 6] if args.quick else [])), 1)
        times_file.write_text(json.dumps(times))
    for concept, (subject, trigger) in JOBS.items():
        photos = work / f"photos-{concept}"
        if not photos.exists():
            cli("toy", "photos", photos, "--concept", concept, "-n", 12, "--size", "384x576", "--seed", 5)
        studio = work / "studio"
        if not (studio / concept / "gallery" / "index.html").exists():
            res["times"][f"job_{concept}"] = round(cli(
                "studio", "run", photos, "--name", concept, "--subject", subject, "--trigger", trigger, "--studio",
                studio, "--styles", ",".join(STYLES), "--per-style", per_style, "--keep", 6, *extra), 1)
            times_file.write_text(json.dumps(times))
        res["styles"][concept] = measure(studio / concept, concept, subject, 6)
    flat = [v for c in res["styles"].values() for v in c.values()]
    res["bars"] = {"kept_at_least_5_of_6_every_style": all(v["kept"] >= 5 / 6 - 1e-9 for v in flat),
                   "ranking_beats_random_every_style": all(v["kept"] > v["random"] for v in flat)}
    write_result("toy_studio", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
