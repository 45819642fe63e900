"""The judge's contact sheet: every image in ranking order, its rank and scores under it.

Kept images are framed green, dropped ones red with the reason. Small images (the toy's 64x96) are enlarged
by whole factors with nearest-neighbour, so their pixels stay crisp and readable; large ones are shrunk to
fit the cell. A header says what the numbers are measured against (the reference photos' own baseline).
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from loracam.judge.rank import Judged, Ranking

THUMB = 192  # the picture area of a cell, px
FRAME = 4
PAD = 8
LINE = 16
TEXT_LINES = 6
COLUMNS = 6
KEPT, DROPPED = (40, 160, 60), (210, 40, 40)
TEXT, MUTED = (20, 20, 20), (110, 110, 110)
CHARS = 28  # what fits a cell's width in the 13 px default font


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def thumbnail(image: Image.Image, side: int = THUMB) -> Image.Image:
    """``image`` fitted in side x side: enlarged by a whole factor with nearest when small, else shrunk."""
    image = image.convert("RGB")
    w, h = image.size
    if max(w, h) <= side // 2:
        k = side // max(w, h)
        return image.resize((w * k, h * k), Image.NEAREST)
    scale = min(side / w, side / h, 1.0)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def cell_lines(e: Judged) -> list[tuple[str, tuple[int, int, int]]]:
    """The text under one image: rank and score, or the reason it was dropped; then the scores."""
    s = e.scores
    lines: list[tuple[str, tuple[int, int, int]]] = []
    if e.kept:
        lines.append((f"#{e.rank}   score {e.combined:.3f}", TEXT))
    else:
        wrapped = textwrap.wrap(f"dropped: {e.reason}", CHARS)
        lines += [(t, DROPPED) for t in wrapped[:2]]
    if "identity" in s:
        lines.append((f"identity {s['identity']:.3f} ({s['identity_rel']:.0%} of ref)", TEXT))
    lines.append((f"sharp {s['sharpness']:.2f}  expo {s['exposure']:.2f}  art {s['artefacts']:.2f}", TEXT))
    extra = []
    if "adherence" in s:
        extra.append(f"prompt {s['adherence']:.0%}")
    if "aesthetic" in s:
        extra.append(f"aesth {s['aesthetic']:.1f}")
    if "face_size" in s:
        extra.append(f"face {s['face_size']:.2f}")
    if extra:
        lines.append(("  ".join(extra), TEXT))
    for note in e.notes[:1]:
        lines.append((textwrap.shorten(note, CHARS, placeholder="..."), MUTED))
    lines.append((textwrap.shorten(e.path.name, CHARS, placeholder="..."), MUTED))
    return lines[:TEXT_LINES]


def contact_sheet(ranking: Ranking, columns: int = COLUMNS) -> Image.Image:
    """One PNG-ready image with every judged image in ranking order."""
    entries = ranking.entries
    cols = max(1, min(columns, len(entries)))
    rows = max(1, -(-len(entries) // cols))
    cell_w = THUMB + 2 * FRAME + 2 * PAD
    cell_h = THUMB + 2 * FRAME + PAD + TEXT_LINES * LINE + PAD
    header = _header(ranking, cols * cell_w - 2 * PAD)
    top = PAD + len(header) * (LINE + 2) + PAD
    sheet = Image.new("RGB", (cols * cell_w, top + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, bold = _font(13), _font(15)
    for i, (text, size) in enumerate(header):
        draw.text((PAD, PAD + i * (LINE + 2)), text, fill=TEXT, font=bold if size else font)
    for k, e in enumerate(entries):
        x, y = (k % cols) * cell_w + PAD, top + (k // cols) * cell_h
        _cell(sheet, draw, e, x, y, font)
    return sheet


def _cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, e: Judged, x: int, y: int, font) -> None:
    from loracam.generate.images import load_image

    colour = KEPT if e.kept else DROPPED
    box = (x, y, x + THUMB + 2 * FRAME - 1, y + THUMB + 2 * FRAME - 1)
    draw.rectangle(box, outline=colour, width=FRAME)
    thumb = thumbnail(load_image(e.path, "image"))
    sheet.paste(thumb, (x + FRAME + (THUMB - thumb.width) // 2, y + FRAME + (THUMB - thumb.height) // 2))
    ty = y + THUMB + 2 * FRAME + 4
    for i, (text, fill) in enumerate(cell_lines(e)):
        draw.text((x, ty + i * LINE), text, fill=fill, font=font)


def _header(ranking: Ranking, width: int) -> list[tuple[str, int]]:
    """Lines over the grid: counts, the reference and its baseline, the formula (wrapped); (text, bold)."""
    kept = sum(e.kept for e in ranking.entries)
    ident = ranking.config.identity + (f" ({ranking.concept})" if ranking.concept else "")
    lines = [(f"loracam judge: {len(ranking.entries)} images, {kept} kept, {len(ranking.entries) - kept} dropped; "
              f"identity {ident}, subject {ranking.subject}", 1)]
    if ranking.reference:
        lines.append((ranking.reference + "; \"N% of ref\" under an image = its identity / that", 0))
    from loracam.judge.rank import FORMULA

    chars = max(40, width // 7)
    lines += [(t, 0) for t in textwrap.wrap(FORMULA, chars)]
    return lines
