"""The contact sheet: every photo with its crops; kept ones framed green, dropped ones red with the reason."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

GREEN, RED, GREY = (40, 170, 60), (210, 40, 40), (200, 200, 200)
FRAME = 5
PAD = 8
MIN_ROW_WIDTH = 480  # room for a one-line reason under a single thumbnail
CHAR_WIDTH = 8  # a safe upper bound for the default 14 px font


def _thumb(image: Image.Image, height: int, colour) -> Image.Image:
    w = max(1, round(image.width * height / image.height))
    small = image.convert("RGB").resize((w, height), Image.LANCZOS, reducing_gap=3.0)
    framed = Image.new("RGB", (w + 2 * FRAME, height + 2 * FRAME), colour)
    framed.paste(small, (FRAME, FRAME))
    return framed


def _placeholder(height: int) -> Image.Image:
    ph = Image.new("RGB", (height * 2 // 3 + 2 * FRAME, height + 2 * FRAME), RED)
    ImageDraw.Draw(ph).rectangle([FRAME, FRAME, ph.width - FRAME - 1, ph.height - FRAME - 1], fill=GREY)
    return ph


def _row(record, photo, height: int, font) -> Image.Image:
    kept = record.status == "kept"
    colour = GREEN if kept else RED
    tiles = [_thumb(photo.image, height, colour) if photo is not None else _placeholder(height)]
    tiles += [_thumb(c.image, height, GREEN if not c.is_reg else (90, 120, 220)) for c in record.crops
              if kept and c.image is not None]
    width = max(MIN_ROW_WIDTH, sum(t.width for t in tiles) + PAD * (len(tiles) + 1))
    label = f"{record.name}: " + ("kept: " + ", ".join(c.kind + (" (reg)" if c.is_reg else "") for c in record.crops)
                                  if kept else f"DROPPED: {record.reason}")
    lines = textwrap.wrap(label, width=(width - 2 * PAD) // CHAR_WIDTH) or [label]
    text_h = 18 * len(lines) + PAD
    row = Image.new("RGB", (width, height + 2 * FRAME + text_h + PAD), "white")
    x = PAD
    for t in tiles:
        row.paste(t, (x, PAD))
        x += t.width + PAD
    draw = ImageDraw.Draw(row)
    for i, line in enumerate(lines):
        draw.text((PAD, height + 2 * FRAME + PAD + 18 * i), line, fill=colour if not kept else (0, 0, 0), font=font)
    return row


def contact_sheet(records, photos: dict, height: int = 160) -> Image.Image:
    """One row per source photo (in manifest order), stacked vertically."""
    font = ImageFont.load_default(size=14)
    rows = [_row(r, photos.get(r.name), height, font) for r in records]
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet
