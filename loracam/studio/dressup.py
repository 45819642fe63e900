"""The dress-up job: the NGA guide's hand workflow, done by loracam.

The guide wears several LoRAs at once (a face, a garment, shoes), each at the smallest weight that works:
render a row of seeds, keep the compositions that look right, sweep the LoRA weights on an X/Y/Z grid for
each kept seed, take the lightest weights at which every LoRA still shows, then finish (ESRGAN 4x). Here
each of those is a step: ``seeds`` -> ``pick`` -> ``weights`` -> ``choose`` -> ``finish`` -> ``gallery``.

What "shows" means: on the toy base, the probe reads each LoRA's concept (a LoRA whose trigger is one of
the toy world's held-out concepts); on a real base, the judge's combined score ranks (no identity term:
a dress has no face to compare), and the lightest weights within 5% of the best score are taken.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes

GRID_WEIGHTS = (0.6, 0.8, 1.0)
TUNED_STEP = 0.1  # with weights from `loracam tune`, the grid is theirs -/+ this
MAX_GRID_LORAS = 3  # X, Y and Z: the guide's grid; more LoRAs keep their first-row weight
NEAR_BEST = 0.95  # real bases: the lightest weights scoring at least this share of the best


def _loras(run) -> list[dict]:
    """Each LoRA's name, trigger, toy concept (or None) and starting weight, from its file's metadata."""
    from loracam.lora.formats import read_lora
    from loracam.toy.world import MYSHOES, SKS, TESTDRESS

    out = []
    for p in run.cfg.loras:
        path = Path(p)
        if not path.is_file():
            raise LoracamError(f"LoRA file {path} is gone; put it back and resume")
        meta = read_lora(path).metadata
        trigger = meta.get("loracam_trigger") or path.stem
        weight = float(meta.get("loracam_recommended_weight") or 0.8)
        if run.cfg.lora_weights:
            weight = run.cfg.lora_weights[len(out)]
        out.append({"name": path.stem, "path": str(path), "trigger": trigger, "weight": weight,
                    "concept": trigger if trigger in (TESTDRESS, MYSHOES, SKS) else None})
    if not out:
        raise LoracamError("give at least one --lora to wear")
    return out


def _prompt(run, loras: list[dict]) -> str:
    if run.cfg.prompt:
        return run.cfg.prompt
    if run.cfg.base != "toy":
        raise LoracamError("give --prompt for a real base (the LoRAs' triggers are added to it)")
    return ", ".join(["1girl", "full body", *(lo["trigger"] for lo in loras), "white background"])


def _tags(loras: list[dict], weights) -> str:
    return "".join(f" <lora:{lo['name']}:{w:g}>" for lo, w in zip(loras, weights))


def _render(run, items: list[tuple[int, tuple[float, ...]]], folder: Path, name) -> list[Path]:
    """(seed, weights) items rendered in batches with per-image LoRA weights; existing files are kept."""
    from loracam.generate.api import load_model, native_size, render_samples, shared_of
    from loracam.generate import GenRequest
    from loracam.generate.request import Sample
    from loracam.lora import LoraLibrary
    from loracam.prompts import extract_networks

    loras = _loras(run)
    prompt = _prompt(run, loras)
    style = run.styles()[0] if run.styles() else None
    toy = run.cfg.base == "toy"
    req = GenRequest(prompt=prompt, negative=run.cfg.negative, base=run.cfg.base,
                     sampler=style.sampler if style else "DPM++ 2M", schedule=style.schedule if style else "Automatic",
                     steps=style.steps if style else (20 if toy else 30), cfg=style.cfg if style else (5.0 if toy else 7.0),
                     width=style.size[0] if style else None, height=style.size[1] if style else None,
                     device=run.cfg.device)
    model = load_model(req, run.models)
    w, h = native_size(model)
    shared = shared_of(replace(req, width=req.width or w, height=req.height or h))
    library = LoraLibrary(sorted({Path(lo["path"]).parent for lo in loras}), run.models.hash_cache)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(s, wts) for s, wts in items if not (folder / name(s, wts)).is_file()]
    for start in range(0, len(todo), run.cfg.batch_size):
        run.lease.renew()
        batch = todo[start:start + run.cfg.batch_size]
        samples = []
        for seed, wts in batch:
            text = prompt + _tags(loras, wts)
            samples.append(Sample(text, req.negative, seed, req.cfg, tuple(extract_networks(text)[1])))
        from loracam.generate.images import png_bytes

        for (seed, wts), r in zip(batch, render_samples(model, shared, samples, library)):
            atomic_write_bytes(folder / name(seed, wts), png_bytes(r.image, r.infotext))
    return [folder / name(s, wts) for s, wts in items]


def _score(run, paths: list[Path], loras: list[dict]) -> list[float]:
    """Higher is better. Toy: the share of the LoRAs' concepts the probe reads, plus the judge's quality
    as a tie-break (x0.01); real: the judge's combined score."""
    if run.cfg.base == "toy" and any(lo["concept"] for lo in loras):
        from loracam.studio.probe_report import read_files
        from loracam.toy.judge import shows

        reads = read_files(paths)
        concepts = [lo["concept"] for lo in loras if lo["concept"]]
        return [sum(shows(r, c) for c in concepts) / len(concepts) for r in reads]
    from loracam.judge.rank import JudgeConfig, judge_images

    ranking = judge_images(paths, reference=None, config=JudgeConfig(identity="none", subject="garment",
                                                                      top=len(paths)))
    by = {Path(e.path).name: e.combined for e in ranking.entries}
    return [by.get(p.name) if by.get(p.name) is not None else float("-inf") for p in paths]


def seeds_step(run) -> dict:
    loras = _loras(run)
    first = tuple(lo["weight"] for lo in loras)
    seeds = [run.cfg.seed + i for i in range(run.cfg.seeds)]
    _render(run, [(s, first) for s in seeds], run.folder / "seeds", lambda s, w: f"{s}.png")
    return {"seeds": seeds, "weights": list(first), "prompt": _prompt(run, loras)}


def pick_step(run) -> dict:
    loras = _loras(run)
    seeds = [run.cfg.seed + i for i in range(run.cfg.seeds)]
    paths = [run.folder / "seeds" / f"{s}.png" for s in seeds]
    scores = _score(run, paths, loras)
    ranked = sorted(zip(seeds, scores), key=lambda t: (-t[1], t[0]))
    picked = [s for s, _ in ranked[: run.cfg.keep]]
    _write_json(run.folder / "seeds" / "picked.json", {"scores": dict(ranked), "picked": picked})
    run.note("pick", f"picked seeds {', '.join(map(str, picked))} of {len(seeds)}")
    return {"picked": picked}


def weights_step(run) -> dict:
    from loracam.grid.draw import draw_grid
    from PIL import Image

    loras = _loras(run)
    picked = json.loads((run.folder / "seeds" / "picked.json").read_text())["picked"]
    axes = [_axis(lo) if run.cfg.lora_weights else GRID_WEIGHTS for lo in loras[:MAX_GRID_LORAS]]
    axes += [(lo["weight"],) for lo in loras[MAX_GRID_LORAS:]]
    combos = list(itertools.product(*axes))
    name = lambda s, w: f"{s}-" + "-".join(f"{x:g}" for x in w) + ".png"  # noqa: E731
    for seed in picked:
        folder = run.folder / "weights" / str(seed)
        paths = _render(run, [(seed, c) for c in combos], folder, name)
        grid_png = folder.parent / f"{seed}-grid.png"
        if not grid_png.is_file():
            ims = {c: Image.open(p).convert("RGB") for c, p in zip(combos, paths)}
            xs, ys, zs = (axes + [(None,), (None,)])[:3]
            cells = [[[ims[tuple(v for v in (x, y, z)[: len(loras)] if v is not None) + tuple(
                lo["weight"] for lo in loras[MAX_GRID_LORAS:])] for x in xs] for y in ys] for z in zs]
            label = lambda i, v: f"{loras[i]['name']}: {v:g}" if v is not None else ""  # noqa: E731
            grid = draw_grid(cells, [label(0, x) for x in xs], [label(1, y) for y in ys], [label(2, z) for z in zs])
            from loracam.generate.images import png_with_text

            atomic_write_bytes(grid_png, png_with_text(grid, {}))
    return {"cells": len(combos) * len(picked)}


def _axis(lora: dict) -> tuple[float, ...]:
    """A tuned weight and its neighbours (never below 0.05: a LoRA at 0 is not worn)."""
    w = lora["weight"]
    return tuple(sorted({round(max(0.05, w + d), 2) for d in (-TUNED_STEP, 0.0, TUNED_STEP)}))


def tuned_weights(path: Path) -> tuple[tuple[str, ...], tuple[float, ...], str]:
    """(LoRA files, weights, prompt) from a `loracam tune` result: per LoRA the median of the weights chosen
    on the seeds where every LoRA showed (all seeds if none did)."""
    import statistics

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        loras = [lo["file"] for lo in data["loras"]]
        names = [lo["name"] for lo in data["loras"]]
        seeds = [s for s in data["seeds"] if s["ok"]] or data["seeds"]
        weights = tuple(round(statistics.median(s["weights"][n] for s in seeds), 2) for n in names)
        return tuple(loras), weights, data["prompt"]
    except (OSError, ValueError, KeyError, TypeError, statistics.StatisticsError) as exc:
        raise LoracamError(f"{path} is not a tune.json written by `loracam tune` ({exc}); give that file") from None


def choose_step(run) -> dict:
    loras = _loras(run)
    picked = json.loads((run.folder / "seeds" / "picked.json").read_text())["picked"]
    chosen = {}
    for seed in picked:
        cells = sorted(p for p in (run.folder / "weights" / str(seed)).glob("*.png"))
        scores = _score(run, cells, loras)
        best = max(scores)
        bar = best if run.cfg.base == "toy" else best * NEAR_BEST
        ok = [(p, s) for p, s in zip(cells, scores) if s >= bar]
        lightest = min(ok, key=lambda t: (_weight_sum(t[0]), -t[1], t[0].name))
        chosen[str(seed)] = {"file": lightest[0].name, "score": lightest[1], "best": best,
                             "weights": _weights_of(lightest[0])}
        run.note("choose", f"seed {seed}: weights {lightest[0].stem.split('-', 1)[1]} (score {lightest[1]:.2f}, "
                           f"best {best:.2f})")
    _write_json(run.folder / "weights" / "chosen.json", chosen)
    return {"chosen": chosen}


def _weights_of(p: Path) -> list[float]:
    return [float(x) for x in p.stem.split("-")[1:]]


def _weight_sum(p: Path) -> float:
    return sum(_weights_of(p))


def finish_step(run) -> dict:
    from loracam.finish.extras import upscale_files
    from loracam.generate.upscale import load_upscaler
    from loracam.models import pick_device

    chosen = json.loads((run.folder / "weights" / "chosen.json").read_text())
    style = run.styles()[0] if run.styles() else None
    model = style.upscale.model if style and style.upscale else ("toy-4x" if run.cfg.base == "toy" else "lanczos")
    scale = style.upscale.scale if style and style.upscale else (4.0 if run.cfg.base == "toy" else 2.0)
    out = run.folder / "final"
    out.mkdir(parents=True, exist_ok=True)
    todo = [run.folder / "weights" / seed / c["file"] for seed, c in chosen.items()]
    todo = [p for p in todo if not (out / p.name).is_file()]
    if todo:
        upscale_files(todo, load_upscaler(model, pick_device(run.cfg.device)), out, scale=scale)
    return {"final": len(chosen), "upscaler": model}


def gallery_step(run) -> dict:
    import html

    chosen = json.loads((run.folder / "weights" / "chosen.json").read_text())
    picked = json.loads((run.folder / "seeds" / "picked.json").read_text())
    e = html.escape
    rows = [f"<h1>{e(run.cfg.name)}: dress-up</h1>",
            f"<p>{len(run.cfg.loras)} LoRAs, {run.cfg.seeds} seeds in the first row; the judge kept "
            f"{', '.join(map(str, picked['picked']))}.</p>",
            "<p>" + " ".join(f"<img src='../seeds/{s}.png' title='seed {s}: {sc:.2f}' style='width:128px;"
                             f"image-rendering:pixelated;border:3px solid {'green' if int(s) in picked['picked'] else '#ccc'}'>"
                             for s, sc in picked["scores"].items()) + "</p>"]
    for seed, c in chosen.items():
        rows.append(f"<h2>seed {seed}: weights {', '.join(f'{w:g}' for w in c['weights'])}</h2>"
                    f"<img src='../final/{e(c['file'])}' style='width:256px;image-rendering:pixelated'> "
                    f"<img src='../weights/{seed}-grid.png' style='max-width:900px;image-rendering:pixelated'>")
    index = run.folder / "gallery" / "index.html"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.unlink(missing_ok=True)
    atomic_write_bytes(index, ("<!doctype html><html><head><meta charset='utf-8'><title>dress-up</title></head>"
                               "<body style='font-family:sans-serif'>" + "\n".join(rows) + "</body></html>").encode())
    return {"gallery": str(index)}


def _write_json(path: Path, data: dict) -> None:
    path.unlink(missing_ok=True)  # re-made whole when the step runs again
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


DRESSUP_STEPS = (("seeds", seeds_step), ("pick", pick_step), ("weights", weights_step), ("choose", choose_step),
                 ("finish", finish_step), ("gallery", gallery_step))
