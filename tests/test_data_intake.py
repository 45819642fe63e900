"""Photo intake: formats and modes, EXIF orientation, rejections with reasons, duplicates and blur."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data

from loracam.data.intake import Photo, Rejection, blurry, hamming, list_photos, near_duplicates, phash, read_photo

MIN = (128, 128)


def test_exif_orientation_is_applied(tmp_path, astronaut):
    im = astronaut.resize((400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif)
    p = read_photo(tmp_path / "r.jpg", MIN)
    assert isinstance(p, Photo) and p.image.size == (200, 400) and p.rotated_by_exif


@pytest.mark.parametrize("make,mode", [
    (lambda a: a.convert("CMYK"), "CMYK"),
    (lambda a: a.convert("P"), "P"),
    (lambda a: a.convert("L"), "L"),
])
def test_modes_become_rgb(tmp_path, astronaut, make, mode):
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    make(astronaut).save(path)
    p = read_photo(path, MIN)
    assert isinstance(p, Photo) and p.image.mode == "RGB" and p.source_mode == mode


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((200, 200, 4), np.uint8)
    a[..., 0] = 255
    a[:100, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    p = read_photo(tmp_path / "a.png", MIN)
    px = np.asarray(p.image)
    assert tuple(px[10, 10]) == (255, 0, 0) and tuple(px[150, 10]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    a = (np.linspace(0, 65535, 200 * 200).reshape(200, 200)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    p = read_photo(tmp_path / "g16.png", MIN)
    px = np.asarray(p.image)[..., 0]
    assert px.min() == 0 and px.max() == 255 and 100 < px[100, 100] < 160


def test_webp_and_bmp(tmp_path, astronaut):
    for ext in ("webp", "bmp"):
        astronaut.save(tmp_path / f"x.{ext}")
        assert isinstance(read_photo(tmp_path / f"x.{ext}", MIN), Photo)


def test_rejections_have_reasons(tmp_path, astronaut):
    buf = io.BytesIO()
    astronaut.save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "text.jpg").write_text("this is a text file, renamed")
    astronaut.resize((60, 60)).save(tmp_path / "tiny.png")
    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")  # 100 MP, a few KB on disk
    reasons = {n: read_photo(tmp_path / n, MIN) for n in ("trunc.jpg", "text.jpg", "tiny.png", "bomb.png")}
    assert all(isinstance(r, Rejection) for r in reasons.values())
    assert "truncated" in reasons["trunc.jpg"].reason
    assert "not an image" in reasons["text.jpg"].reason
    assert reasons["tiny.png"].reason == "too small: 60x60, needs at least 128x128"
    assert "pixel limit" in reasons["bomb.png"].reason


def test_listing_reports_other_files_and_never_recurses(tmp_path, astronaut):
    astronaut.save(tmp_path / "b.png")
    astronaut.save(tmp_path / "a.jpg")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    (tmp_path / "a.txt").write_text("caption")
    (tmp_path / "sub").mkdir()
    astronaut.save(tmp_path / "sub" / "c.png")
    photos, skipped = list_photos(tmp_path)
    assert [p.name for p in photos] == ["a.jpg", "b.png"]
    assert [(r.name, "not a supported image type" in r.reason) for r in skipped] == [("notes.pdf", True)]


def test_near_duplicates_keep_the_better_copy(tmp_path, astronaut):
    def photo(name, im):
        p = Photo(name, tmp_path / name, im, "RGB", False)
        from loracam.data.intake import sharpness

        p.sharpness, p.phash = sharpness(im), phash(im)
        return p

    big = photo("big.png", astronaut)
    small = photo("small.png", astronaut.resize((256, 256)))
    soft = photo("soft.png", astronaut.filter(ImageFilter.GaussianBlur(1.5)))
    cat = photo("cat.png", Image.fromarray(data.chelsea()))
    mirrored = photo("mirror.png", astronaut.transpose(Image.FLIP_LEFT_RIGHT))
    dropped = near_duplicates([small, soft, big, cat, mirrored])
    assert dropped == {"small.png": "big.png", "soft.png": "big.png"}
    assert hamming(big.phash, mirrored.phash) > 6  # a mirror image is a different photo for training


def test_blurry_photos_are_flagged_relative_to_the_set(astronaut):
    import types

    sharp = [types.SimpleNamespace(name=f"s{i}", sharpness=800.0 + i) for i in range(4)]
    soft = types.SimpleNamespace(name="soft", sharpness=60.0)
    flagged = blurry(sharp + [soft])
    assert list(flagged) == ["soft"] and "median is 801" in flagged["soft"]
