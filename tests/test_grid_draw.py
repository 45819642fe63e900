"""The X/Y/Z grid image (A1111 layout, interop.md §9), its infotext and its size budget."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from loracam.errors import LoracamError
from loracam.generate.infotext import format_infotext, parse_infotext
from loracam.grid.draw import check_size, draw_grid, grid_infotext

CW, CH = 160, 120  # font size (160 + 120) // 25 = 11
FONT_SIZE = (CW + CH) // 25
X_LABELS = ["CFG Scale: 5", "CFG Scale: 7", "CFG Scale: 9"]
Y_LABELS = ["Seed: 1", "Seed: 2"]
Z_LABELS = ["Steps: 20", "Steps: 30"]


def colour(z: int, y: int, x: int) -> tuple[int, int, int]:
    """A distinct, non-grey colour per cell, so no cell can be mistaken for background or text."""
    return (40 + 100 * z, 30 + 60 * y, 20 + 50 * x) if (z, y, x) != (0, 0, 0) else (200, 20, 20)


def make_cells(nz: int, ny: int, nx: int, w: int = CW, h: int = CH) -> list:
    return [[[Image.new("RGB", (w, h), colour(z, y, x)) for x in range(nx)] for y in range(ny)] for z in range(nz)]


def band(size: int = FONT_SIZE, lines: int = 1) -> int:
    """Expected band thickness for single-line labels: lines + gaps between them + padding of size // 2 each side."""
    ascent, descent = ImageFont.load_default(size=size).getmetrics()
    return lines * (ascent + descent) + (lines - 1) * (size // 4) + 2 * (size // 2)


def dark(a: np.ndarray) -> np.ndarray:
    """Text pixels: anything clearly darker than white."""
    return a.min(axis=-1) < 160


def test_grid_size_is_bands_plus_cells_plus_margins():
    m = 4
    grid = draw_grid(make_cells(2, 2, 3), X_LABELS, Y_LABELS, Z_LABELS, margin=m)
    y_band = CW * 3 // 4  # A1111's Y band: 3/4 of a cell
    sub_w = y_band + 3 * CW + 2 * m
    assert grid.size == (2 * sub_w + m, band() + band() + 2 * CH + m)
    bare = draw_grid(make_cells(2, 2, 3), [""] * 3, [""] * 2, [""] * 2, margin=m)
    assert bare.size == (2 * (3 * CW + 2 * m) + m, 2 * CH + m)
    assert grid.mode == "RGB"


def cell_box(z: int, y: int, x: int, m: int) -> tuple[int, int, int, int]:
    y_band = CW * 3 // 4
    left = z * (y_band + 3 * CW + 2 * m + m) + y_band + x * (CW + m)
    top = 2 * band() + y * (CH + m)
    return left, top, left + CW, top + CH


@pytest.mark.parametrize("m", [0, 6])
def test_each_cell_sits_at_its_place(m):
    a = np.asarray(draw_grid(make_cells(2, 2, 3), X_LABELS, Y_LABELS, Z_LABELS, margin=m))
    for z in range(2):
        for y in range(2):
            for x in range(3):
                l, t, r, b = cell_box(z, y, x, m)
                assert (a[t:b, l:r] == colour(z, y, x)).all(), (z, y, x)  # the whole cell, nothing drawn on it
                if m:  # the margin to the cell's right and below is white
                    assert (a[t:b, r:r + m] == 255).all()
                    assert (a[b:b + m, l:r] == 255).all()


def test_legend_bands_are_white_with_dark_text_in_place():
    m = 4
    a = np.asarray(draw_grid(make_cells(2, 2, 3), X_LABELS, Y_LABELS, Z_LABELS, margin=m))
    zb = xb = band()
    for z in range(2):
        sub_l = cell_box(z, 0, 0, m)[0] - CW * 3 // 4
        sub_r = cell_box(z, 0, 2, m)[2]
        z_band = a[:zb, sub_l:sub_r]
        x_band = a[zb:zb + xb, sub_l:sub_r]
        y_band = a[zb + xb:, sub_l:sub_l + CW * 3 // 4]
        for region in (z_band, x_band, y_band):
            # white paper with black (anti-aliased, so grey) text: no cell colour leaks into a band
            assert (region[..., 0] == region[..., 1]).all() and (region[..., 1] == region[..., 2]).all()
            assert (region[0, 0] == 255).all()
        assert dark(z_band).any()
        # the Z label is centred over its sub-grid
        cols = np.nonzero(dark(z_band).any(axis=0))[0]
        assert abs((cols.min() + cols.max()) / 2 - (sub_r - sub_l) / 2) < FONT_SIZE
        for x in range(3):
            l, _, r, _ = cell_box(z, 0, x, m)
            ink = dark(a[zb:zb + xb, l:r])
            assert ink.any(), (z, x)
            cols = np.nonzero(ink.any(axis=0))[0]
            assert abs((cols.min() + cols.max()) / 2 - CW / 2) < FONT_SIZE / 2  # centred over its column
        for y in range(2):
            _, t, _, b = cell_box(z, y, 0, m)
            ink = dark(a[t:b, sub_l:sub_l + CW * 3 // 4])
            assert ink.any(), (z, y)
            rows = np.nonzero(ink.any(axis=1))[0]
            assert abs((rows.min() + rows.max()) / 2 - CH / 2) < FONT_SIZE / 2  # centred on its row
        # nothing above the Y band's top-left corner but white
        assert (a[zb:zb + xb, sub_l:sub_l + CW * 3 // 4] == 255).all()


def test_long_labels_wrap_and_the_band_grows_without_clipping():
    long_x = "Prompt S/R: <lora:testdress:0.6> wearing a long red evening dress"
    word = "supercalifragilisticexpialidocious" * 2  # one word wider than a column: broken between letters
    cells = make_cells(1, 2, 3)
    short = draw_grid(cells, X_LABELS, Y_LABELS, [""])
    grid = draw_grid(cells, ["CFG Scale: 5", long_x, word], Y_LABELS, [""])
    assert grid.width == short.width  # columns keep their width ...
    xb = grid.height - 2 * CH
    assert xb >= band(lines=3) and xb > short.height - 2 * CH  # ... the band grows to hold the lines
    a = np.asarray(grid)
    y_band = CW * 3 // 4
    for x in (1, 2):
        l = y_band + x * CW
        # every text pixel of this label is inside its own column: the band shows the text, cells are untouched
        rows = np.nonzero(dark(a[:xb, l:l + CW]).any(axis=1))[0]
        assert rows.min() > 0 and rows.max() < xb - 1
        assert not dark(a[:xb, l - 1]).any() and not dark(a[:xb, l + CW - 1]).any()  # nothing crosses column edges
    for y in range(2):
        for x in range(3):
            assert (a[xb + y * CH:xb + (y + 1) * CH, y_band + x * CW:y_band + (x + 1) * CW] == colour(0, y, x)).all()


def test_long_y_labels_wrap_inside_the_y_band():
    long_y = "Prompt S/R: a portrait photo of sks woman in a garden"
    grid = draw_grid(make_cells(1, 2, 1), [""], [long_y, "Seed: 2"], [""])
    a = np.asarray(grid)
    y_band = grid.width - CW
    assert y_band >= CW * 3 // 4
    ink = dark(a[:CH, :y_band])
    rows = np.nonzero(ink.any(axis=1))[0]
    cols = np.nonzero(ink.any(axis=0))[0]
    assert rows.max() - rows.min() > 2 * FONT_SIZE  # several lines
    assert cols.min() > 0 and cols.max() < y_band - 1  # within the band, not touching the cell
    assert (a[:, y_band:] == np.array([[colour(0, 0, 0)]] * CH + [[colour(0, 1, 0)]] * CH)).all()


def test_single_value_axes_omit_their_band():
    one = make_cells(1, 1, 1)
    assert draw_grid(one, [""], [""], [""]).size == (CW, CH)
    assert draw_grid(make_cells(1, 2, 3), X_LABELS, Y_LABELS, [""]).size == (CW * 3 // 4 + 3 * CW, band() + 2 * CH)
    only_x = draw_grid(make_cells(1, 1, 3), X_LABELS, [""], [""])
    assert only_x.size == (3 * CW, band() + CH)
    assert (np.asarray(only_x)[band():, :CW] == colour(0, 0, 0)).all()  # the cell starts at the left edge
    only_z = draw_grid(make_cells(2, 1, 1), [""], [""], Z_LABELS)
    assert only_z.size == (2 * CW, band() + CH)
    # a single value with a real label keeps its band, as in A1111
    assert draw_grid(one, ["CFG Scale: 7"], [""], [""]).size == (CW, band() + CH)


def ink_height(img: Image.Image) -> int:
    rows = np.nonzero(dark(np.asarray(img.convert("RGB"))).any(axis=1))[0]
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("w,h", [(100, 100), (512, 768)])
def test_font_size_follows_cell_size(w, h):
    size = (w + h) // 25
    grid = draw_grid(make_cells(1, 1, 1, w, h), ["HHH"], [""], [""])
    reference = Image.new("RGB", (w, 3 * size), "white")
    ImageDraw.Draw(reference).text((0, size), "HHH", font=ImageFont.load_default(size=size), fill="black")
    drawn = grid.crop((0, 0, w, grid.height - h))
    assert ink_height(drawn) == ink_height(reference)
    assert grid.height - h == band(size)


def test_font_size_scales_between_cell_sizes():
    small = draw_grid(make_cells(1, 1, 1, 100, 100), ["HHH"], [""], [""])
    large = draw_grid(make_cells(1, 1, 1, 400, 400), ["HHH"], [""], [""])
    big_ink = ink_height(large.crop((0, 0, 400, large.height - 400)))
    ratio = big_ink / ink_height(small.crop((0, 0, 100, small.height - 100)))
    assert 3.3 < ratio < 4.7  # sizes 8 and 32


def test_cells_of_different_sizes_are_refused():
    cells = make_cells(1, 1, 2)
    cells[0][0][1] = Image.new("RGB", (CW, CH + 8), "red")
    with pytest.raises(LoracamError, match=r"y=0 x=1 is 160x128 .* 160x120"):
        draw_grid(cells, ["a", "b"], [""], [""])
    with pytest.raises(ValueError, match="2 x labels for 3"):
        draw_grid(make_cells(1, 1, 3), ["a", "b"], [""], [""])


CELL = format_infotext(
    "a photo of sks woman, <lora:sks_v1:0.8>\nin a garden", "blurry, lowres",
    {"Steps": 30, "Sampler": "DPM++ 2M", "CFG scale": 7, "Seed": 1234, "Size": "512x768"},
)


def test_grid_infotext_appends_the_a1111_keys():
    text = grid_infotext(CELL, [("Y", "Prompt S/R", "<lora:sks_v1:0.4>, <lora:sks_v1:0.8>"),
                                ("X", "CFG Scale", "5,7,9"), ("Z", "Nothing", "")])
    assert text.startswith(CELL)
    assert text[len(CELL):] == (', Script: X/Y/Z plot, X Type: CFG Scale, X Values: "5,7,9", '
                                'Y Type: Prompt S/R, Y Values: "<lora:sks_v1:0.4>, <lora:sks_v1:0.8>"')
    info = parse_infotext(text)
    assert info.prompt == "a photo of sks woman, <lora:sks_v1:0.8>\nin a garden"
    assert info.negative == "blurry, lowres"
    assert info.params == {"Steps": "30", "Sampler": "DPM++ 2M", "CFG scale": "7", "Seed": "1234",
                           "Size": "512x768", "Script": "X/Y/Z plot", "X Type": "CFG Scale", "X Values": "5,7,9",
                           "Y Type": "Prompt S/R", "Y Values": "<lora:sks_v1:0.4>, <lora:sks_v1:0.8>"}


def test_grid_infotext_quotes_like_a1111():
    tricky = '"red, long" dress,blue'
    text = grid_infotext(CELL, [("X", "Seed", "7"), ("Y", "Prompt S/R", tricky)])
    last = text.splitlines()[-1]
    assert "X Values: 7," in last  # nothing to quote: written bare, as A1111's quote() does
    assert r'Y Values: "\"red, long\" dress,blue"' in last
    info = parse_infotext(text)
    assert info.get("Y Values") == tricky and info.get("X Values") == "7"
    assert "Z Type" not in info.params and "Z Values" not in info.params


def test_grid_infotext_without_a_parameter_line_starts_one():
    text = grid_infotext("just a prompt", [("X", "Seed", "1,2")])
    info = parse_infotext(text)
    assert info.prompt == "just a prompt"
    assert info.params == {"Script": "X/Y/Z plot", "X Type": "Seed", "X Values": "1,2"}
    with pytest.raises(ValueError, match="W"):
        grid_infotext(CELL, [("W", "Seed", "1")])


def test_check_size_refuses_big_grids_with_the_numbers():
    check_size(190, 1024, 1024)  # 199.2 MP: allowed
    check_size(1, 100, 100, limit_pixels=10_000)  # exactly at the limit: allowed
    with pytest.raises(LoracamError) as err:
        check_size(300, 1024, 1024)
    msg = str(err.value)
    for part in ("300 cells", "1024x1024", "314.6 MP", "200.0 MP", "--force"):
        assert part in msg, part
    with pytest.raises(LoracamError, match="4 cells of 100x100"):
        check_size(4, 100, 100, limit_pixels=30_000)


def test_y_band_widens_when_a_wrapped_label_is_taller_than_its_row():
    w, h = 160, 40  # a 120 px band would need ~7 lines for this label; a 40 px row holds 3
    label = "Prompt S/R: a portrait photo of sks woman in a garden at golden hour, soft light, 85mm lens"
    grid = draw_grid(make_cells(1, 2, 1, w, h), [""], [label, "Seed: 2"], [""])
    y_band = grid.width - w
    assert y_band > w * 3 // 4
    a = np.asarray(grid)
    for y in range(2):  # each label stays on its own row
        rows = np.nonzero(dark(a[y * h:(y + 1) * h, :y_band]).any(axis=1))[0]
        assert rows.min() > 0 and rows.max() < h - 1, y
