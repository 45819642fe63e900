"""What tune leaves for the user to look at and override: per seed a grid of the answer's neighbourhood (A1111's
X/Y plot layout and infotext keys), one picture of the whole search, tune.json, and a line per seed."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from loracam.io import atomic_write_bytes

PANEL = (260, 150)  # one LoRA's plot, in pixels
OK, MISS, CHOSEN, LINE = (44, 160, 44), (214, 39, 40), (31, 119, 180), (150, 150, 150)


def write_outputs(res, render, cfg, echo) -> None:
    from loracam.tune.run import summary, write_json

    before = render.rendered
    if cfg.neighbourhood > 0:
        for s in res.seeds:
            res.files[f"grid-{s.seed}"] = neighbourhood_grid(res, s, render, cfg.neighbourhood)
    res.grid_renders = render.rendered - before
    res.files["search"] = search_picture(res, res.folder / "search.png")
    res.files["json"] = write_json(res.folder / "tune.json", summary(res))
    for line in report_lines(res):
        echo(line)


def report_lines(res) -> list[str]:
    lines = []
    for s in res.seeds:
        names = [lo.name for lo in res.loras]
        weights = ", ".join(f"{n} {w:g}" for n, w in zip(names, s.weights))
        prior = f", prior {s.reading.prior:.0%}" if s.reading.prior is not None else ""
        lines.append(f"seed {s.seed}: {weights} ({s.renders} renders; fidelity "
                     + " ".join(f"{f:.2f}" for f in s.reading.fidelity) + prior + ")")
        for i in s.unreached:
            tried = sorted({t.weights[i] for t in s.trials})
            lines.append(f"  {names[i]}: not reached at weight {tried[-1]:g} (nor at the {len(tried) - 1} lighter weights "
                         f"tried, down to {tried[0]:g}); its {res.judges[i]} judge never saw it with the others shown: "
                         "check its trigger word is in the prompt, its threshold, or tune it alone")
        if not s.ok:
            lines.append("  no render showed every LoRA; the closest one is given")
        lines.append(f"  {res.chosen_prompt(s)}")
    lines.append(f"{res.renders} search renders, {res.grid_renders} for the grids; {res.folder / 'tune.json'}")
    return lines


def neighbourhood_grid(res, s, render, step: float) -> Path:
    """Row i: LoRA i at the chosen weight - step, chosen, + step (the others at theirs)."""
    from loracam.generate.images import png_bytes
    from loracam.grid.draw import draw_grid, grid_infotext

    offsets = (-step, 0.0, step)
    items = [[(s.seed, tuple(round(max(0.0, w + d), 4) if j == i else w for j, w in enumerate(s.weights)))
              for d in offsets] for i in range(len(res.loras))]
    render([it for row in items for it in row])
    cells = [[[Image.open(render.path(*it)).convert("RGB") for it in row] for row in items]]
    x_labels = [f"{d:+g}" if d else "chosen" for d in offsets]
    y_labels = [f"{lo.name}: {s.weights[i]:g}" for i, lo in enumerate(res.loras)]
    grid = draw_grid(cells, x_labels, y_labels, [""])
    first = Image.open(render.path(*items[0][1])).info.get("parameters", "")
    info = grid_infotext(first, [("X", "Weight offset", ",".join(f"{d:+g}" for d in offsets)),
                                 ("Y", "LoRA", ",".join(lo.name for lo in res.loras))])
    path = res.folder / f"seed-{s.seed}-grid.png"
    return atomic_write_bytes(path, png_bytes(grid, info))


def search_picture(res, path: Path) -> Path:
    """Rows: seeds; columns: LoRAs. Each dot a render: that LoRA's weight across, its fidelity up; green when
    its judge saw it, red when not, ringed black when the render showed every LoRA; the grey line is the
    threshold, the blue one the answer."""
    from loracam.generate.images import png_with_text

    n, m = len(res.seeds), len(res.loras)
    top, left = 22, 70
    im = Image.new("RGB", (left + m * PANEL[0], top + n * PANEL[1]), "white")
    d = ImageDraw.Draw(im)
    wmax = max([1.0] + [w for s in res.seeds for t in s.trials for w in t.weights])
    for j, lo in enumerate(res.loras):
        d.text((left + j * PANEL[0] + 10, 4), f"{lo.name} ({res.judges[j]}): fidelity vs weight", fill="black")
    for i, s in enumerate(res.seeds):
        d.text((4, top + i * PANEL[1] + PANEL[1] // 2 - 6), f"seed\n{s.seed}", fill="black")
        working = {id(t) for t in s.trials if all(p for k, p in enumerate(t.reading.present) if k not in s.unreached)}
        for j in range(m):
            x0, y0 = left + j * PANEL[0] + 10, top + i * PANEL[1] + 8
            x1, y1 = x0 + PANEL[0] - 24, y0 + PANEL[1] - 28
            d.rectangle((x0, y0, x1, y1), outline="black")
            fx = lambda w: x0 + (x1 - x0) * w / wmax  # noqa: E731
            fy = lambda f: y1 - (y1 - y0) * f  # noqa: E731
            ty = fy(res.thresholds[j])
            for x in range(int(x0), int(x1), 6):
                d.line((x, ty, x + 3, ty), fill=LINE)
            cx = fx(s.weights[j])
            d.line((cx, y0, cx, y1), fill=CHOSEN, width=2)
            for t in s.trials:
                px, py = fx(t.weights[j]), fy(t.reading.fidelity[j])
                colour = OK if t.reading.present[j] else MISS
                ring = "black" if id(t) in working and j not in s.unreached else colour
                d.ellipse((px - 4, py - 4, px + 4, py + 4), fill=colour, outline=ring, width=2)
            d.text((x0 - 9, y0 - 4), "1", fill="black")
            d.text((x0 - 9, y1 - 8), "0", fill="black")
            d.text((x1 + 2, ty - 6), f"{res.thresholds[j]:g}", fill=LINE)
            d.text((x0, y1 + 4), f"weight 0 .. {wmax:g}", fill="black")
            d.text((x1 - 60, y1 + 4), f"chose {s.weights[j]:g}", fill=CHOSEN)
    return atomic_write_bytes(path, png_with_text(im, {}))
