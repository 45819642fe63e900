"""The job's gallery: ``gallery/index.html`` with the kept images per style, their scores and parameters, the
judge's contact sheets, the dataset's contact sheet and the training curve; ``gallery/report.json`` with the
numbers (in the toy world, the probe's reading of every kept image, which is what the demo reports).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from loracam.generate.images import png_with_text
from loracam.io import atomic_write_bytes

CURVE_SIZE = (640, 240)


def write_gallery(run) -> Path:
    out = run.folder / "gallery"
    out.mkdir(parents=True, exist_ok=True)
    curve = training_curve(run.folder / "lora", out / "training.png")
    styles = [_style_entry(run, s) for s in run.styles()]
    report = {"job": run.cfg.name, "subject": run.cfg.subject, "base": run.cfg.base, "styles": styles}
    if run.cfg.base == "toy":
        from loracam.studio.probe_report import probe_reading

        report["probe"] = probe_reading(run, styles)
    (out / "report.json").unlink(missing_ok=True)  # the gallery step is re-made whole on resume
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode())
    index = out / "index.html"
    index.unlink(missing_ok=True)
    atomic_write_bytes(index, _html(run, styles, report, curve).encode())
    return index


def _style_entry(run, style) -> dict:
    ranking = json.loads((run.folder / "judge" / style.name / "ranking.json").read_text())
    by_name = {Path(e["path"]).name: e for e in ranking["entries"]}
    kept = []
    for p in sorted((run.folder / "final" / style.name).glob("*.png")):
        e = by_name.get(p.name, {})
        kept.append({"file": f"final/{style.name}/{p.name}", "rank": e.get("rank"), "combined": e.get("combined"),
                     "scores": e.get("scores", {}), "infotext": _infotext(p)})
    kept.sort(key=lambda k: (k["rank"] is None, k["rank"] or 0))
    dropped = sum(1 for e in ranking["entries"] if not e.get("kept", True))
    return {"style": style.name, "description": style.description, "kept": kept,
            "candidates": len(ranking["entries"]), "dropped": dropped, "baseline": ranking.get("baseline"),
            "sheet": f"judge/{style.name}/sheet.png", "expect": _expect(run, style)}


def _expect(run, style) -> dict:
    return style.expect.for_subject(run.cfg.subject) if style.expect is not None else {}


def _infotext(path: Path) -> str:
    with Image.open(path) as im:
        return im.info.get("parameters", "")


def training_curve(lora_dir: Path, target: Path) -> Path | None:
    """Loss (a running mean over a tenth of the steps: per-step loss is mostly the noise level drawn) and
    identity scores against step, as a PNG."""
    from loracam.train.events import read_events

    logs = sorted(lora_dir.glob("*.events.jsonl"))
    if not logs:
        return None
    events = read_events(logs[0])
    steps = [(e["step"], e["loss"]) for e in events if e.get("event") == "step" and "loss" in e]
    scores = [(e["step"], e["score"]) for e in events if e.get("event") == "identity" and e.get("score") is not None
              and not math.isnan(e["score"])]
    if not steps:
        return None
    im = Image.new("RGB", CURVE_SIZE, "white")
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = 50, 20, CURVE_SIZE[0] - 50, CURVE_SIZE[1] - 30
    d.rectangle((x0, y0, x1, y1), outline="black")
    last = max(s for s, _ in steps)
    window = max(1, len(steps) // 10)
    smooth = [(steps[i][0], sum(v for _, v in steps[max(0, i - window + 1): i + 1]) / len(steps[max(0, i - window + 1): i + 1]))
              for i in range(len(steps))]
    lo, hi = min(v for _, v in smooth), max(v for _, v in smooth)
    fx = lambda s: x0 + (x1 - x0) * s / max(1, last)  # noqa: E731
    fy = lambda v, a, b: y1 - (y1 - y0) * (v - a) / ((b - a) or 1)  # noqa: E731
    d.line([(fx(s), fy(v, lo, hi)) for s, v in smooth], fill=(40, 90, 220), width=2)
    d.text((x0, 4), f"loss (running mean of {window}): {hi:.3f} .. {lo:.3f}", fill=(40, 90, 220))
    d.text((x0, y1 + 8), f"step 0 .. {last}", fill="black")
    if scores:
        slo, shi = min(v for _, v in scores), max(v for _, v in scores)
        for s, v in scores:
            cx, cy = fx(s), fy(v, slo - 0.05, shi + 0.05)
            d.ellipse((cx - 4, cy - 4, cx + 4, cy + 4), fill=(214, 39, 40))
        d.text((x1 - 260, y1 + 8), f"identity score per checkpoint (dots): {slo:.2f} .. {shi:.2f}",
               fill=(214, 39, 40))
    target.unlink(missing_ok=True)
    return atomic_write_bytes(target, png_with_text(im, {}))


def _html(run, styles: list[dict], report: dict, curve: Path | None) -> str:
    e = html.escape
    cfg = run.cfg
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>loracam studio: {e(cfg.name)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:6px;"
        "vertical-align:top;width:270px}img.final{width:256px;image-rendering:pixelated;border:1px solid #ccc}"
        "figcaption{font-size:12px}details{font-size:11px;word-break:break-word}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        f"<h1>{e(cfg.name)}: {e(cfg.subject)} portraits</h1>",
        f"<p>Base model <code>{e(cfg.base)}</code>, trigger <code>{e(cfg.trigger)}</code>, "
        f"{len(styles)} styles, the best {cfg.keep} of each style's candidates as the judge ranked them "
        "(<code>judge/STYLE/ranking.json</code>).</p>",
    ]
    if "probe" in report:
        parts.append(_probe_table(report["probe"]))
    parts.append("<h2>Training</h2><p>")
    if curve is not None:
        parts.append("<img src='training.png' alt='training curve'> ")
    parts.append("<a href='../dataset/contact_sheet.png'>the prepared photos</a> · "
                 "<a href='../dataset/report.md'>prep's report</a></p>")
    for s in styles:
        parts.append(f"<h2>{e(s['style'])}</h2><p>{e(s['description'])} — kept {len(s['kept'])} of "
                     f"{s['candidates']} candidates ({s['dropped']} dropped by the filters)"
                     + (f"; the reference photos' own identity similarity: {s['baseline']:.2f}" if s["baseline"] is not None else "")
                     + f".</p><details><summary>all {s['candidates']} candidates as the judge saw them (its contact "
                     f"sheet)</summary><a href='../{e(s['sheet'])}'><img src='../{e(s['sheet'])}' style='max-width:100%'>"
                     "</a></details>")
        for k in s["kept"]:
            scores = ", ".join(f"{n} {v:.2f}" for n, v in k["scores"].items() if isinstance(v, (int, float)))
            combined = f"{k['combined']:.3f}" if isinstance(k["combined"], (int, float)) else "n/a"
            parts.append(f"<figure><img class='final' src='../{e(k['file'])}'><figcaption>#{k['rank']} · score "
                         f"{combined}<br>{e(scores)}<details><summary>parameters</summary>{e(k['infotext'])}"
                         "</details></figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _probe_table(probe: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(style)}</td><td>{v['concept']}/{v['n']}</td><td>{v['attributes']}/{v['n']}</td>"
                   f"<td>{v['both']}/{v['n']}</td></tr>" for style, v in probe["styles"].items())
    return ("<h2>What the toy probe reads in the kept images</h2><table><tr><th>style</th><th>shows "
            f"{html.escape(probe['concept'])}</th><th>shows the style's attributes</th><th>both</th></tr>{rows}</table>")
