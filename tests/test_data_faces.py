"""Faces for prep: detection rules (one dominant face, big enough), levelling, framings, identity."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from loracam.data.faces import Face, FaceAnalyzer, FaceFinding, identity_outliers
from loracam.data.geometry import Box, border_colour
from loracam.errors import LoracamError


@pytest.fixture(scope="module")
def astronaut_face(analyzer, astronaut) -> Face:
    return analyzer.find(astronaut).face


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def _scaled(image: Image.Image, factor: float) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _inside(box: Box, point) -> bool:
    return box.x0 <= point[0] <= box.x1 and box.y0 <= point[1] <= box.y1


# -- finding ---------------------------------------------------------------------------------------------


def test_astronaut_has_one_face_with_68_landmarks(analyzer, astronaut):
    found = analyzer.find(astronaut)
    assert found.reason is None and found.faces_seen == 1
    face = found.face
    assert face.landmarks.shape == (68, 2)
    assert _inside(face.box, face.landmarks.mean(axis=0))
    assert face.box.y1 < astronaut.height / 2  # the face, not the mission patch lower down
    assert 60 < face.box.width < 130 and face.score >= analyzer.min_score
    # every landmark near the box: they were fitted to this face
    assert np.all(np.abs(face.landmarks - np.array(face.box.center)) < face.box.width)


def test_mission_patch_is_a_hog_hit_but_not_a_face(analyzer, astronaut):
    # With no score floor HOG's weak hit on the patch (about the face's size) counts and looks like a
    # second person; the default analyzer must see a single face.
    trusting = FaceAnalyzer(min_score=0.0)
    assert trusting.find(astronaut).reason.startswith("2 people")
    assert analyzer.find(astronaut).faces_seen == 1


@pytest.mark.parametrize("which", ["astronaut", "hopper"])
def test_tilted_face_is_found_measured_and_levelled(analyzer, which, request):
    photo = request.getfixturevalue(which)
    upright = analyzer.find(photo).face
    tilted_photo = photo.rotate(20, resample=Image.BICUBIC, expand=True)  # +20 = counter-clockwise
    found = analyzer.find(tilted_photo)
    assert found.reason is None, found.reason  # the astronaut's HOG score drops below 0.5 here
    # the photo's own head tilt is a few degrees; the rotation must add -20 (image y points down)
    assert found.face.roll_degrees() - upright.roll_degrees() == pytest.approx(-20, abs=3)

    aligned, face = analyzer.align(tilted_photo, found.face)
    assert abs(face.roll_degrees()) < 2
    again = analyzer.find(aligned)  # an independent look at the levelled photo
    assert again.reason is None and abs(again.face.roll_degrees()) < 2
    assert np.abs(again.face.landmarks - face.landmarks).mean() < 0.05 * face.box.width
    assert face.box.iou(again.face.box) > 0.5
    # nothing was cut: magenta squares painted in the four corners all survive the turn
    marked = tilted_photo.copy()
    w, h = marked.size
    for x, y in ((0, 0), (w - 16, 0), (0, h - 16), (w - 16, h - 16)):
        marked.paste((255, 0, 255), (x, y, x + 16, y + 16))
    turned, _ = analyzer.align(marked, found.face)
    a = np.asarray(turned).astype(int)
    magenta = (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] > 200)
    for part in (magenta[:, : turned.width // 2], magenta[:, turned.width // 2:]):
        top, bottom = part[: turned.height // 2], part[turned.height // 2:]
        assert top.sum() > 0.7 * 256 and bottom.sum() > 0.7 * 256


def test_two_people_of_similar_size_are_rejected(analyzer, astronaut, hopper):
    found = analyzer.find(_side_by_side(astronaut, _scaled(hopper, 0.5)))
    assert found.face is None and found.faces_seen == 2
    assert re.fullmatch(r"2 people \(second face 0\.\dx the area of the largest\)", found.reason)


def test_a_much_smaller_second_face_is_kept(analyzer, astronaut, hopper):
    photo = _side_by_side(hopper, _scaled(astronaut, 0.5))
    found = analyzer.find(photo)
    assert found.reason is None and found.faces_seen == 2  # both seen ...
    assert found.face.box.x1 <= hopper.width and found.face.box.width > 150  # ... and the big one is the subject


def test_tiny_face_is_reported_with_its_size(analyzer, astronaut, astronaut_face):
    # a ~27 px face; HOG boxes come in pyramid steps (~27, 32, 37 px here), so the size is one that a step hits
    factor = 150 / astronaut.width
    found = analyzer.find(_scaled(astronaut, factor))
    assert found.face is None
    m = re.fullmatch(r"face too small: (\d+) px", found.reason or "")
    assert m, found.reason
    assert abs(int(m.group(1)) - astronaut_face.box.width * factor) <= 2


def test_min_face_px_is_the_limit(astronaut, astronaut_face):
    side = round(astronaut_face.box.width)
    assert FaceAnalyzer(min_face_px=side).find(astronaut).reason is None
    assert FaceAnalyzer(min_face_px=side + 1).find(astronaut).reason == f"face too small: {side} px"


@pytest.mark.parametrize("photo", [
    pytest.param(lambda: Image.fromarray(skimage.data.chelsea()), id="cat"),
    pytest.param(lambda: Image.new("RGB", (512, 512), (128, 128, 128)), id="grey"),
])
def test_no_face(analyzer, photo):
    assert analyzer.find(photo()) == FaceFinding(None, "no face found", 0)


def test_big_photo_is_searched_on_a_smaller_copy_but_answered_in_its_pixels(analyzer, astronaut, astronaut_face):
    big = _scaled(astronaut, 4)  # 2048 px: over the detection size, so boxes must be scaled back
    face = analyzer.find(big).face
    assert face is not None
    b = astronaut_face.box
    assert face.box.iou(Box(b.x0 * 4, b.y0 * 4, b.x1 * 4, b.y1 * 4)) > 0.6
    assert np.abs(face.landmarks - astronaut_face.landmarks * 4).mean() < 0.05 * face.box.width


def test_missing_models_say_what_to_install(tmp_path):
    with pytest.raises(LoracamError, match="pip install face-recognition-models dlib-bin"):
        FaceAnalyzer(models_dir=tmp_path)


# -- framing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aspect", [2 / 3, 1.0])
def test_crops_have_the_aspect_and_the_face_fraction(analyzer, astronaut, astronaut_face, aspect):
    aligned, face = analyzer.align(astronaut, astronaut_face)
    crops = analyzer.crops(aligned, face, aspect)
    assert set(crops) == {"closeup", "head_shoulders"}
    for name, (img, box) in crops.items():
        assert abs(img.width - img.height * aspect) <= 1, name
        assert img.size == (round(box.x1) - round(box.x0), round(box.y1) - round(box.y0))  # native pixels
    close, close_box = crops["closeup"]
    assert face.box.height / close.height == pytest.approx(0.35, abs=0.05)
    assert _inside(close_box, face.box.center)
    body, body_box = crops["head_shoulders"]
    assert face.box.height / body.height == pytest.approx(0.2, abs=0.05)
    # no resampling: inside the photo the crop is the photo's own pixels
    x0, y0 = max(0, round(close_box.x0)), max(0, round(close_box.y0))
    ox, oy = x0 - round(close_box.x0), y0 - round(close_box.y0)
    assert np.array_equal(np.asarray(close)[oy:oy + 20, ox:ox + 20], np.asarray(aligned)[y0:y0 + 20, x0:x0 + 20])


def test_framings_place_the_face_where_they_should(analyzer, astronaut):
    # on a roomy canvas neither frame needs to slide to stay inside, so where the face lands is the choice
    roomy = Image.new("RGB", (900, 1400), border_colour(astronaut))
    roomy.paste(astronaut, (194, 450))
    aligned, face = analyzer.align(roomy, analyzer.find(roomy).face)
    crops = analyzer.crops(aligned, face, 2 / 3)
    for name, where in (("closeup", 0.5), ("head_shoulders", 0.3)):
        _, box = crops[name]
        assert box.x0 > 0 and box.y0 > 0 and box.x1 < aligned.width and box.y1 < aligned.height
        assert (face.box.center[0] - box.x0) / box.width == pytest.approx(0.5, abs=0.02)
        assert (face.box.center[1] - box.y0) / box.height == pytest.approx(where, abs=0.02), name
    # head and shoulders: the face in the upper third, with room above it for hair
    _, box = crops["head_shoulders"]
    assert face.box.y0 - box.y0 > 0.5 * face.box.height and face.box.center[1] - box.y0 < box.height / 3


def test_face_at_the_edge_is_padded_with_the_border_colour(analyzer, astronaut):
    photo = astronaut.crop((100, 60, 400, 260))  # the face's box starts ~16 px below the top edge
    aligned, face = analyzer.align(photo, analyzer.find(photo).face)
    fill = np.array(border_colour(photo))
    assert np.array_equal(np.asarray(aligned)[0, 0], fill)  # align's new corners: the photo's own border colour
    img, box = analyzer.crops(aligned, face, 2 / 3)["closeup"]
    pad = -round(box.y0)
    assert pad >= 5  # the frame is taller than the photo: it must run past the top
    assert np.array_equal(border_colour(aligned), border_colour(photo))
    assert np.all(np.asarray(img)[:pad] == fill)
    assert not np.all(np.asarray(img)[pad + 5:pad + 10] == fill)  # the photo starts right after


# -- identity ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embeddings(analyzer, astronaut, hopper) -> dict[str, np.ndarray]:
    photos = {
        "astronaut": astronaut,
        "mirrored": ImageOps.mirror(astronaut),
        "jpeg30": _jpeg(astronaut, 30),
        "rotated6": astronaut.rotate(-6, resample=Image.BICUBIC, expand=True),
        "smaller": _scaled(astronaut, 0.85),
        "hopper": hopper,
    }
    out = {}
    for name, photo in photos.items():
        face = analyzer.find(photo).face
        out[name] = analyzer.embedding(photo, face)
    return out


def test_embedding_is_128d_and_close_for_the_same_person(embeddings):
    ref = embeddings["astronaut"]
    assert ref.shape == (128,)
    for name in ("mirrored", "jpeg30", "rotated6", "smaller"):
        assert np.linalg.norm(embeddings[name] - ref) < 0.6, name
    assert np.linalg.norm(embeddings["hopper"] - ref) > 0.6


def test_embedding_of_an_aligned_face_matches_the_original(analyzer, astronaut, astronaut_face, embeddings):
    aligned, face = analyzer.align(astronaut, astronaut_face)
    assert np.linalg.norm(analyzer.embedding(aligned, face) - embeddings["astronaut"]) < 0.3


def test_identity_outliers_flags_the_stranger(embeddings):
    names = ["astronaut", "mirrored", "jpeg30", "rotated6"]
    flagged = identity_outliers({n: embeddings[n] for n in names + ["hopper"]})
    assert list(flagged) == ["hopper"] and flagged["hopper"] > 0.6
    assert identity_outliers({n: embeddings[n] for n in names + ["smaller"]}) == {}


def test_identity_outliers_needs_three_photos():
    assert identity_outliers({"a": np.zeros(128), "b": np.ones(128)}) == {}
    far = identity_outliers({"a": np.zeros(3), "b": np.zeros(3), "c": np.array([0.0, 0.0, 0.7])}, threshold=0.6)
    assert far == {"c": pytest.approx(0.7)}


def test_windowed_alignment_gives_the_same_crops(analyzer):
    """align(window=...) renders only the face's neighbourhood; crops from it equal whole-photo ones."""
    from skimage import data

    from loracam.data.faces import crop_window

    photo = Image.new("RGB", (1800, 1800), (90, 110, 130))  # a phone photo: the face is small in it
    photo.paste(Image.fromarray(data.astronaut()), (640, 500))
    photo = photo.rotate(12, resample=Image.BICUBIC, expand=True)
    face = analyzer.find(photo).face
    full, fface = analyzer.align(photo, face)
    part, pface = analyzer.align(photo, face, window=crop_window(2 / 3))
    assert part.width * part.height < full.width * full.height / 2
    for kind in ("closeup", "head_shoulders"):
        a, _ = analyzer.crops(full, fface, 2 / 3)[kind]
        b, _ = analyzer.crops(part, pface, 2 / 3)[kind]
        assert a.size == b.size
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert np.percentile(diff, 99) <= 8, kind  # same pixels up to resampling at a shifted origin
