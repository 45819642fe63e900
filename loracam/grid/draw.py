"""Drawing an X/Y/Z grid image laid out like A1111's ``xyz_grid`` (interop.md §9), and its infotext.

Layout: X across (columns), Y down (rows), one XY sub-grid per Z value placed left to right. Each sub-grid
has a white band on top with the X labels centred over their columns and a band on its left with the Y
labels centred on their rows; one band above everything holds the Z labels, centred over their sub-grids.
Font size is (cell_w + cell_h) // 25 as in A1111. Labels too wide for their space are wrapped and the band
grows to fit: text is never clipped. A band whose labels are all empty is left out (A1111 leaves out the
"Nothing" axes). ``margin`` (A1111's grid margin option) separates cells and sub-grids; margins are white.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from loracam.errors import LoracamError
from loracam.generate.infotext import parse_infotext, quote

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
AXES = ("X", "Y", "Z")
NO_AXIS = ("", "Nothing")  # axis types that mean "this axis is not used"


def grid_font_size(cell_w: int, cell_h: int) -> int:
    """A1111's legend font size for cells of this size."""
    return max(1, (cell_w + cell_h) // 25)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow >= 10.1 scales the default font when FreeType is available; older ones ignore the size.
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class _Text:
    """Measuring and drawing blocks of centred lines in one font."""

    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    size: int

    @property
    def line_h(self) -> int:
        ascent, descent = self.font.getmetrics()
        return ascent + descent

    @property
    def gap(self) -> int:  # between the lines of one label
        return self.size // 4

    @property
    def pad(self) -> int:  # around a block, inside its band (A1111's line_spacing)
        return self.size // 2

    def width(self, text: str) -> int:
        return int(round(self.font.getlength(text)))

    def wrap(self, text: str, max_w: int) -> list[str]:
        """Lines of at most max_w pixels, broken at spaces, and inside words only when one word is too wide."""
        if not text:
            return []
        lines: list[str] = []
        for paragraph in text.split("\n"):
            line = ""
            for word in paragraph.split(" "):
                candidate = f"{line} {word}" if line else word
                if self.width(candidate) <= max_w:
                    line = candidate
                    continue
                if line:
                    lines.append(line)
                line = ""
                for ch in word:  # a word wider than the space is broken between characters
                    if line and self.width(line + ch) > max_w:
                        lines.append(line)
                        line = ""
                    line += ch
            lines.append(line)
        return lines

    def block_h(self, lines: Sequence[str]) -> int:
        return 0 if not lines else len(lines) * self.line_h + (len(lines) - 1) * self.gap

    def draw(self, canvas: ImageDraw.ImageDraw, lines: Sequence[str], cx: float, cy: float) -> None:
        """Draws lines centred horizontally on cx, the whole block centred vertically on cy."""
        y = cy - self.block_h(lines) / 2
        for line in lines:
            canvas.text((cx, y), line, font=self.font, fill=TEXT, anchor="ma")
            y += self.line_h + self.gap


@dataclass(frozen=True)
class _Layout:
    """Where everything goes; all sizes in pixels."""

    cell_w: int
    cell_h: int
    nx: int
    ny: int
    nz: int
    margin: int
    x_lines: list[list[str]]
    y_lines: list[list[str]]
    z_lines: list[list[str]]
    x_band_h: int  # 0 when the X band is left out
    y_band_w: int
    z_band_h: int

    @property
    def sub_w(self) -> int:  # one XY sub-grid with its Y band
        return self.y_band_w + self.nx * self.cell_w + (self.nx - 1) * self.margin

    @property
    def size(self) -> tuple[int, int]:
        w = self.nz * self.sub_w + (self.nz - 1) * self.margin
        h = self.z_band_h + self.x_band_h + self.ny * self.cell_h + (self.ny - 1) * self.margin
        return w, h

    def sub_left(self, z: int) -> int:
        return z * (self.sub_w + self.margin)

    def cell_xy(self, z: int, y: int, x: int) -> tuple[int, int]:
        """Top-left corner of cell [z][y][x]."""
        left = self.sub_left(z) + self.y_band_w + x * (self.cell_w + self.margin)
        top = self.z_band_h + self.x_band_h + y * (self.cell_h + self.margin)
        return left, top


def _band_h(text: _Text, blocks: Sequence[Sequence[str]]) -> int:
    tallest = max((text.block_h(b) for b in blocks), default=0)
    return 0 if tallest == 0 else tallest + 2 * text.pad


def _y_band(text: _Text, labels: Sequence[str], cell_w: int, cell_h: int) -> tuple[int, list[list[str]]]:
    """The Y band's width and wrapped labels: A1111's 3/4 of a cell, widened until each label fits its row."""
    if not any(labels):
        return 0, [[] for _ in labels]
    natural = max(text.width(line) for label in labels for line in label.split("\n")) + 2 * text.pad
    band_w = max(cell_w * 3 // 4, 2 * text.pad + 1)
    while True:
        blocks = [text.wrap(label, band_w - 2 * text.pad) for label in labels]
        # A row holds the block when it fits the cell height; unwrapped (natural width) is the most we widen.
        if max(text.block_h(b) for b in blocks) <= cell_h or band_w >= natural:
            return band_w, blocks
        band_w = min(natural, band_w + max(1, text.size))


def _layout(nx: int, ny: int, nz: int, cell_w: int, cell_h: int, x_labels: Sequence[str],
            y_labels: Sequence[str], z_labels: Sequence[str], margin: int, text: _Text) -> _Layout:
    y_band_w, y_lines = _y_band(text, y_labels, cell_w, cell_h)
    x_lines = [text.wrap(label, cell_w - 2 * text.pad) for label in x_labels]
    sub_w = y_band_w + nx * cell_w + (nx - 1) * margin
    z_lines = [text.wrap(label, sub_w - 2 * text.pad) for label in z_labels]
    return _Layout(cell_w, cell_h, nx, ny, nz, margin, x_lines, y_lines, z_lines,
                   x_band_h=_band_h(text, x_lines), y_band_w=y_band_w, z_band_h=_band_h(text, z_lines))


def _check_cells(cells: Sequence[Sequence[Sequence[Image.Image]]], x_labels: Sequence[str],
                 y_labels: Sequence[str], z_labels: Sequence[str]) -> tuple[int, int, int, int, int]:
    """(nx, ny, nz, cell_w, cell_h) after checking the cells form a full box of one size matching the labels."""
    nz = len(cells)
    ny = len(cells[0]) if nz else 0
    nx = len(cells[0][0]) if ny else 0
    if not nx:
        raise ValueError("draw_grid needs at least one cell")
    for z, plane in enumerate(cells):
        if len(plane) != ny or any(len(row) != nx for row in plane):
            raise ValueError(f"grid plane z={z} is not {ny} rows of {nx} cells like plane 0")
    for axis, labels, n in (("x", x_labels, nx), ("y", y_labels, ny), ("z", z_labels, nz)):
        if len(labels) != n:
            raise ValueError(f"{len(labels)} {axis} labels for {n} {axis} values")
    cell_w, cell_h = cells[0][0][0].size
    for z, plane in enumerate(cells):
        for y, row in enumerate(plane):
            for x, im in enumerate(row):
                if im.size != (cell_w, cell_h):
                    raise LoracamError(
                        f"grid cell z={z} y={y} x={x} is {im.width}x{im.height} but cell 0,0,0 is "
                        f"{cell_w}x{cell_h}; a grid needs cells of one size, so sweep Size in separate grids"
                    )
    return nx, ny, nz, cell_w, cell_h


def draw_grid(cells: Sequence[Sequence[Sequence[Image.Image]]], x_labels: Sequence[str], y_labels: Sequence[str],
              z_labels: Sequence[str], margin: int = 0) -> Image.Image:
    """The X/Y/Z grid of cells[z][y][x] with A1111's legend bands, as one RGB image."""
    if margin < 0:
        raise ValueError(f"grid margin must be >= 0, got {margin}")
    nx, ny, nz, cell_w, cell_h = _check_cells(cells, x_labels, y_labels, z_labels)
    size = grid_font_size(cell_w, cell_h)
    text = _Text(_font(size), size)
    lay = _layout(nx, ny, nz, cell_w, cell_h, x_labels, y_labels, z_labels, margin, text)

    grid = Image.new("RGB", lay.size, BACKGROUND)
    canvas = ImageDraw.Draw(grid)
    for i, lines in enumerate(lay.z_lines):
        text.draw(canvas, lines, lay.sub_left(i) + lay.sub_w / 2, lay.z_band_h / 2)
    for z, plane in enumerate(cells):
        for y, row in enumerate(plane):
            for x, im in enumerate(row):
                grid.paste(im.convert("RGB"), lay.cell_xy(z, y, x))
        for x, lines in enumerate(lay.x_lines):
            left, _ = lay.cell_xy(z, 0, x)
            text.draw(canvas, lines, left + cell_w / 2, lay.z_band_h + lay.x_band_h / 2)
        for y, lines in enumerate(lay.y_lines):
            _, top = lay.cell_xy(z, y, 0)
            text.draw(canvas, lines, lay.sub_left(z) + lay.y_band_w / 2, top + cell_h / 2)
    return grid


def grid_infotext(first_cell_infotext: str, axes: Sequence[tuple[str, str, str]]) -> str:
    """The grid PNG's infotext: the first cell's, with A1111's X/Y/Z keys appended to its parameter line.

    ``axes`` holds (axis, type, values text) per axis, e.g. ("X", "CFG Scale", "5,7,9"); axes whose type is
    "" or "Nothing" are left out, as A1111 does.
    """
    by_axis: dict[str, tuple[str, str]] = {}
    for axis, kind, values in axes:
        if axis not in AXES:
            raise ValueError(f"grid axis must be one of {', '.join(AXES)}, got {axis!r}")
        if axis in by_axis:
            raise ValueError(f"grid axis {axis} given twice")
        if kind not in NO_AXIS:
            by_axis[axis] = (kind, values)
    pairs = ["Script: X/Y/Z plot"]
    for axis in AXES:  # A1111's order, whatever order the axes came in
        if axis in by_axis:
            kind, values = by_axis[axis]
            pairs += [f"{axis} Type: {quote(kind)}", f"{axis} Values: {quote(values)}"]
    extra = ", ".join(pairs)
    base = first_cell_infotext.rstrip("\n")
    if parse_infotext(base).params:  # the last line is a parameter line: extend it
        return f"{base}, {extra}"
    return f"{base}\n{extra}" if base else extra


def check_size(n_cells: int, cell_w: int, cell_h: int, limit_pixels: int = 200_000_000) -> None:
    """Refuses a grid whose cells add up to more than limit_pixels (A1111's img_max_size_mp)."""
    total = n_cells * cell_w * cell_h
    if total > limit_pixels:
        raise LoracamError(
            f"grid too large: {n_cells} cells of {cell_w}x{cell_h} make {total / 1e6:.1f} MP, over the limit of "
            f"{limit_pixels / 1e6:.1f} MP; use fewer axis values or a smaller size, or pass --force to render it "
            "anyway"
        )
