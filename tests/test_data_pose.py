"""Body-part boxes from pose: real portraits, a drawn figure, synthetic landmark sets, and the --boxes file."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

from loracam.data.geometry import Box
from loracam.data.pose import (INSTALL_HINT, LANDMARKS, PARTS, Pose, PoseAnalyzer, _quiet_native_logs,
                               boxes_from_json, locate_parts)
from loracam.errors import LoracamError

W, H = 600, 900  # the synthetic photo


def _grace() -> Image.Image:
    return Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")


PORTRAITS = {"astronaut": lambda: Image.fromarray(data.astronaut()), "grace_hopper": _grace}


@pytest.fixture(scope="module")
def analyzer():
    with PoseAnalyzer() as a:
        yield a


# A frontal standing figure in a 600x900 photo (the person's left is the image's right).
STANDING = {
    "nose": (300, 130), "left_eye_inner": (308, 120), "left_eye": (314, 120), "left_eye_outer": (320, 120),
    "right_eye_inner": (292, 120), "right_eye": (286, 120), "right_eye_outer": (280, 120),
    "left_ear": (330, 125), "right_ear": (270, 125), "mouth_left": (310, 145), "mouth_right": (290, 145),
    "left_shoulder": (360, 210), "right_shoulder": (240, 210), "left_elbow": (375, 330), "right_elbow": (225, 330),
    "left_wrist": (385, 440), "right_wrist": (215, 440), "left_pinky": (390, 458), "right_pinky": (210, 458),
    "left_index": (386, 462), "right_index": (214, 462), "left_thumb": (378, 455), "right_thumb": (222, 455),
    "left_hip": (335, 450), "right_hip": (265, 450), "left_knee": (340, 620), "right_knee": (260, 620),
    "left_ankle": (342, 790), "right_ankle": (258, 790), "left_heel": (338, 810), "right_heel": (262, 810),
    "left_foot_index": (365, 825), "right_foot_index": (235, 825),
}


def standing(vis: float = 0.95, low: tuple[str, ...] = (), low_vis: float = 0.2, dy: float = 0.0) -> Pose:
    """The standing figure, every landmark at ``vis`` except ``low`` ones; moved down by ``dy``."""
    points = np.array([STANDING[n] for n in LANDMARKS], dtype=float) + [0.0, dy]
    visibility = np.array([low_vis if n in low else vis for n in LANDMARKS])
    return Pose(points, visibility)


def _inside(box: Box, xy) -> bool:
    return box.x0 <= xy[0] <= box.x1 and box.y0 <= xy[1] <= box.y1


def _contains(outer: Box, inner: Box) -> bool:
    return outer.x0 <= inner.x0 and outer.y0 <= inner.y0 and inner.x1 <= outer.x1 and inner.y1 <= outer.y1


def _covered(region: Box, target: Box) -> float:
    """The share of ``target`` that lies inside ``region``."""
    inter = Box(max(region.x0, target.x0), max(region.y0, target.y0), min(region.x1, target.x1),
                min(region.y1, target.y1))
    return inter.area / target.area if inter.width > 0 and inter.height > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# real portraits (upper body only)


@pytest.mark.parametrize("name", sorted(PORTRAITS))
def test_portrait_pose_found_upper_body_only(analyzer, name):
    photo = PORTRAITS[name]()
    pose = analyzer.detect(photo)
    assert pose is not None
    assert pose.visible("nose") and pose.visible("left_shoulder") and pose.visible("right_shoulder")
    assert not pose.visible("left_ankle") and not pose.visible("right_ankle")
    nose = pose.point("nose")
    assert 0 < nose[0] < photo.width and 0 < nose[1] < photo.height / 2  # pixels, not normalised

    found = analyzer.regions(pose, photo.size)
    assert set(found.boxes) | set(found.missing) == set(PARTS)
    assert "ankles" in found.missing["full_body"] and "ankles" in found.missing["shoes"]
    assert "photo cut" in found.missing["shoes"]
    assert "knees" in found.missing["garment"]
    upper = found.boxes["upper_body"]
    assert upper.y0 < nose[1] - 0.1 * photo.height  # the head top lies well above the nose
    for n in ("nose", "left_shoulder", "right_shoulder"):
        assert _inside(upper, pose.point(n))
    assert 0 <= upper.x0 < upper.x1 <= photo.width and 0 <= upper.y0 < upper.y1 <= photo.height

    long = analyzer.regions(pose, photo.size, long_garment=True)
    assert "ankles" in long.missing["garment"]


def test_no_person_gives_none(analyzer):
    assert analyzer.detect(Image.new("RGB", (320, 480), (200, 210, 220))) is None


def test_detect_accepts_grey_and_rgba(analyzer):
    photo = Image.fromarray(data.astronaut())
    for mode in ("L", "RGBA"):
        pose = analyzer.detect(photo.convert(mode))
        assert pose is not None and pose.visible("nose")


# ---------------------------------------------------------------------------------------------
# a drawn figure: mediapipe finds no bare stick figure, but does find a drawn body under a real face


DOLL_JOINTS = {"left_shoulder": (360, 210), "right_shoulder": (240, 210), "left_hip": (335, 450),
               "right_hip": (265, 450), "left_knee": (360, 620), "right_knee": (240, 620),
               "left_ankle": (362, 790), "right_ankle": (238, 790)}
DOLL_DRESS = Box(180, 200, 420, 640)


def _doll() -> tuple[Image.Image, list[Box]]:
    """A figure in a red dress and white shoes, 600x900, with Grace Hopper's face; returns (photo, shoe boxes)."""
    im = Image.new("RGB", (W, H), (120, 160, 200))
    d = ImageDraw.Draw(im)
    skin = (225, 185, 150)
    shoes = []
    for side, toe in (("left", 30), ("right", -30)):
        d.line([DOLL_JOINTS[f"{side}_hip"], DOLL_JOINTS[f"{side}_knee"], DOLL_JOINTS[f"{side}_ankle"]],
               fill=skin, width=40, joint="curve")
        ax, ay = DOLL_JOINTS[f"{side}_ankle"]
        shoe = Box(min(ax - 22, ax + toe - 5), ay - 12, max(ax + 22, ax + toe + 5), ay + 35)
        d.rounded_rectangle(shoe.as_list(), 12, fill=(250, 250, 250), outline=(60, 60, 60), width=3)
        shoes.append(shoe)
    for arm in (((360, 210), (385, 330), (395, 440)), ((240, 210), (215, 330), (205, 440))):
        d.line(arm, fill=skin, width=34, joint="curve")
    d.polygon([(235, 200), (365, 200), (380, 450), (420, 640), (180, 640), (220, 450)], fill=(200, 40, 50))
    d.rectangle([285, 160, 315, 210], fill=skin)
    face = _grace().crop((170, 90, 370, 330)).resize((130, 156))
    im.paste(face, (300 - 65, 32))
    return im, shoes


def test_drawn_figure_with_a_real_face_is_found_and_cropped(analyzer):
    photo, shoes = _doll()
    pose = analyzer.detect(photo)
    assert pose is not None
    for name, (x, y) in DOLL_JOINTS.items():
        assert pose.visible(name), name
        px, py = pose.point(name)
        assert abs(px - x) < 45 and abs(py - y) < 60, (name, (px, py), (x, y))

    found = analyzer.regions(pose, photo.size)
    assert set(found.boxes) == set(PARTS), found.missing
    for shoe in shoes:
        assert _covered(found.boxes["shoes"], shoe) > 0.9
    assert _covered(found.boxes["garment"], DOLL_DRESS) > 0.9
    assert found.boxes["garment"].y1 < min(s.y0 for s in shoes)  # knee-length: the shoes stay out
    assert found.boxes["full_body"].y0 < 60 and found.boxes["full_body"].y1 >= max(s.y1 for s in shoes) - 5


def test_bare_stick_figure_is_not_a_person(analyzer):
    # Recorded behaviour: BlazePose's detector keys on a face, so line drawings find no pose. If this
    # starts failing, mediapipe has changed, and the drawn-figure tests above may be worth widening.
    im = Image.new("RGB", (W, H), (235, 235, 235))
    d = ImageDraw.Draw(im)
    j = STANDING
    for a, b in [("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
                 ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("left_shoulder", "left_hip"),
                 ("right_shoulder", "right_hip"), ("left_hip", "right_hip"), ("left_hip", "left_knee"),
                 ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle")]:
        d.line([j[a], j[b]], fill=(30, 30, 30), width=8)
    d.ellipse([250, 65, 350, 195], outline=(30, 30, 30), width=8)
    assert analyzer.detect(im) is None


# ---------------------------------------------------------------------------------------------
# geometry on synthetic landmarks


def test_full_standing_figure_gives_every_part():
    found = locate_parts(standing(), (W, H))
    assert set(found.boxes) == set(PARTS) and found.missing == {}
    for box in found.boxes.values():
        assert 0 <= box.x0 < box.x1 <= W and 0 <= box.y0 < box.y1 <= H


def test_full_body_holds_every_visible_landmark_and_the_head():
    full = locate_parts(standing(), (W, H)).boxes["full_body"]
    for name, xy in STANDING.items():
        assert _inside(full, xy), name
    assert full.y0 < STANDING["nose"][1] - 60  # room for the top of the head above the nose
    assert full.y1 > STANDING["left_foot_index"][1]


def test_hands_raised_overhead_stay_in_the_body_crops():
    pose = standing()
    points = pose.points.copy()
    for hand in ("left_wrist", "left_pinky", "left_index", "left_thumb"):
        points[LANDMARKS.index(hand)] = (390, 25)
    boxes = locate_parts(Pose(points, pose.visibility), (W, H)).boxes
    for part in ("full_body", "upper_body"):
        assert _inside(boxes[part], (390, 25)), part


def test_garment_spans_shoulders_to_knees_inside_the_full_body():
    boxes = locate_parts(standing(), (W, H)).boxes
    g = boxes["garment"]
    assert g.y0 < STANDING["left_shoulder"][1]  # a little above: straps, collar
    assert g.y0 > STANDING["nose"][1]  # but not the face
    assert STANDING["left_knee"][1] < g.y1 < STANDING["left_ankle"][1]
    assert g.x0 < STANDING["right_shoulder"][0] and g.x1 > STANDING["left_shoulder"][0]
    assert g.x0 < STANDING["right_hip"][0] and g.x1 > STANDING["left_hip"][0]
    assert _contains(boxes["full_body"], g)


def test_long_garment_reaches_the_ankles():
    short = locate_parts(standing(), (W, H)).boxes["garment"]
    long = locate_parts(standing(), (W, H), long_garment=True).boxes
    assert long["garment"].y1 > STANDING["left_ankle"][1] > short.y1
    assert long["garment"].y0 == short.y0
    assert _contains(long["full_body"], long["garment"])


def test_shoes_box_holds_both_feet_and_is_small():
    boxes = locate_parts(standing(), (W, H)).boxes
    shoes, full = boxes["shoes"], boxes["full_body"]
    for side in ("left", "right"):
        for part in ("ankle", "heel", "foot_index"):
            assert _inside(shoes, STANDING[f"{side}_{part}"]), (side, part)
    assert shoes.area < 0.15 * full.area and shoes.height < 0.2 * full.height
    assert shoes.y0 > STANDING["left_knee"][1]  # the shins are not the shoes


def test_upper_body_runs_from_the_head_to_the_hips():
    boxes = locate_parts(standing(), (W, H)).boxes
    upper = boxes["upper_body"]
    assert upper.y0 < STANDING["nose"][1] - 60 and upper.y0 >= boxes["full_body"].y0
    assert STANDING["left_hip"][1] <= upper.y1 < STANDING["left_knee"][1]


def test_boxes_stay_inside_a_photo_the_figure_fills():
    found = locate_parts(standing(dy=-60), (W, H - 110))  # head and feet close to the edges
    assert set(found.boxes) == set(PARTS)
    for box in found.boxes.values():
        assert 0 <= box.x0 < box.x1 <= W and 0 <= box.y0 < box.y1 <= H - 110


# ---------------------------------------------------------------------------------------------
# the visibility rule: unclear landmarks make a part missing, with the reason, never a guess

FEET = ("left_ankle", "right_ankle", "left_heel", "right_heel", "left_foot_index", "right_foot_index")


def test_hidden_feet_make_shoes_and_full_body_missing():
    found = locate_parts(standing(low=FEET), (W, H))
    assert set(found.missing) == {"shoes", "full_body"}
    assert found.missing["shoes"] == "ankles not visible (hidden or unclear in the photo)"
    assert "garment" in found.boxes and "upper_body" in found.boxes
    assert "ankles" in locate_parts(standing(low=FEET), (W, H), long_garment=True).missing["garment"]


def test_one_hidden_ankle_is_enough_to_miss_the_shoes():
    found = locate_parts(standing(low=("right_ankle",)), (W, H))
    assert "shoes" in found.missing and "shoes" not in found.boxes


def test_a_foot_needs_its_heel_or_toes():
    assert "shoes" in locate_parts(standing(low=("left_heel",)), (W, H)).boxes  # the toes still show its length
    found = locate_parts(standing(low=("left_heel", "left_foot_index")), (W, H))
    assert found.missing["shoes"].startswith("left foot not visible")


def test_hidden_knees_miss_the_garment_unless_long():
    found = locate_parts(standing(low=("left_knee", "right_knee")), (W, H))
    assert "knees not visible" in found.missing["garment"]
    assert "garment" in locate_parts(standing(low=("left_knee", "right_knee")), (W, H), long_garment=True).boxes


def test_photo_cut_below_the_knees_is_told_as_such():
    # Landmarks past the photo's edge do not count, whatever their visibility score.
    found = locate_parts(standing(), (W, 700))
    assert found.missing["shoes"] == "ankles not visible (photo cut below the knees)"
    assert "full_body" in found.missing and "garment" in found.boxes


def test_portrait_cut_above_the_hips_keeps_the_upper_body_to_the_edge():
    legs = ("left_hip", "right_hip", "left_knee", "right_knee") + FEET
    found = locate_parts(standing(low=legs, low_vis=0.05), (W, 400))
    assert found.boxes["upper_body"].y1 == 400
    assert "photo cut below the shoulders" in found.missing["garment"]


def test_hidden_hips_with_legs_in_view_miss_the_upper_body():
    found = locate_parts(standing(low=("left_hip", "right_hip")), (W, H))
    assert "hips" in found.missing["upper_body"] and "upper_body" not in found.boxes


def test_min_visibility_is_the_threshold():
    assert set(locate_parts(standing(vis=0.7), (W, H), min_visibility=0.5).boxes) == set(PARTS)
    found = locate_parts(standing(vis=0.7), (W, H), min_visibility=0.8)
    assert found.boxes == {} and set(found.missing) == set(PARTS)


def test_regions_is_locate_parts_at_the_analyzers_threshold(analyzer):
    pose = standing(vis=0.6)
    assert analyzer.regions(pose, (W, H)) == locate_parts(pose, (W, H), min_visibility=analyzer.min_visibility)


# ---------------------------------------------------------------------------------------------
# Pose itself


def test_pose_visible_by_name_and_frozen():
    pose = standing(low=("left_ankle",), low_vis=0.4)
    assert pose.visible("right_ankle") and not pose.visible("left_ankle")
    assert pose.visible("left_ankle", min_vis=0.3)
    assert pose.point("left_knee") == STANDING["left_knee"]
    with pytest.raises(ValueError, match="unknown pose landmark 'left_toe'.*left_foot_index"):
        pose.visible("left_toe")
    with pytest.raises(ValueError):
        pose.points[0, 0] = 1.0


def test_pose_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[33, 2\]"):
        Pose(np.zeros((17, 2)), np.zeros(17))


# ---------------------------------------------------------------------------------------------
# the analyzer's life cycle, its install message and its quiet logs


def test_closed_analyzer_refuses_and_native_chatter_is_filtered(capfd):
    with PoseAnalyzer() as a:
        assert a.detect(Image.fromarray(data.astronaut())) is not None
    a.close()  # twice is fine
    with pytest.raises(RuntimeError, match="after close"):
        a.detect(Image.new("RGB", (64, 64)))
    err = capfd.readouterr().err
    assert "inference_feedback_manager" not in err and "XNNPACK" not in err


def test_quiet_logs_replay_what_is_not_chatter(capfd):
    with _quiet_native_logs():
        os.write(2, b"W0000 00:00:1795256049.024857    8886 foo_calculator.cc:114] chatter\n")
        os.write(2, b"E0000 something really broke\n")
    err = capfd.readouterr().err
    assert "something really broke" in err and "chatter" not in err


@pytest.mark.parametrize("fake", [None, types.ModuleType("mediapipe")], ids=["not-installed", "no-solutions"])
def test_missing_mediapipe_names_the_install_command(monkeypatch, fake):
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    with pytest.raises(LoracamError) as err:
        PoseAnalyzer()
    assert INSTALL_HINT in str(err.value) and "pip install --no-deps mediapipe==0.10.21" in str(err.value)


def test_mediapipe_without_its_model_names_the_install_command(monkeypatch):
    def no_model(**kwargs):
        raise RuntimeError("pose_landmark_full.tflite not found")

    fake = types.SimpleNamespace(solutions=types.SimpleNamespace(pose=types.SimpleNamespace(Pose=no_model)))
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    with pytest.raises(LoracamError, match="tflite not found.*mediapipe==0.10.21"):
        PoseAnalyzer()


# ---------------------------------------------------------------------------------------------
# the user's --boxes file


def _write(tmp_path: Path, content) -> Path:
    path = tmp_path / "boxes.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_boxes_file_is_parsed_into_boxes(tmp_path):
    path = _write(tmp_path, {"a.jpg": {"garment": [10, 20, 110, 220.5], "shoes": [-5, 300, 60, 340]}, "b.png": {}})
    got = boxes_from_json(path)
    assert got == {"a.jpg": {"garment": Box(10, 20, 110, 220.5), "shoes": Box(-5, 300, 60, 340)}, "b.png": {}}


@pytest.mark.parametrize("entry, words", [
    ({"hat": [0, 0, 10, 10]}, "unknown part \"hat\""),
    ({"garment": [0, 0, 10]}, "needs 4 numbers"),
    ({"garment": [0, 0, "10", 10]}, "needs 4 numbers"),
    ({"garment": [0, True, 10, 10]}, "needs 4 numbers"),
    ({"shoes": [50, 0, 10, 10]}, "x1 (10) must be greater than x0 (50)"),
    ({"shoes": [0, 40, 10, 40]}, "y1 (40) must be greater than y0 (40)"),
    ([0, 0, 10, 10], "expected an object of part boxes"),
], ids=["unknown-part", "three-numbers", "string", "bool", "inverted-x", "empty-y", "not-an-object"])
def test_bad_box_entry_names_the_photo(tmp_path, entry, words):
    path = _write(tmp_path, {"good.jpg": {"garment": [0, 0, 10, 10]}, "IMG_7.jpg": entry})
    with pytest.raises(LoracamError) as err:
        boxes_from_json(path)
    msg = str(err.value)
    assert "IMG_7.jpg" in msg and words in msg and "good.jpg" not in msg


def test_every_bad_entry_is_named_at_once(tmp_path):
    path = _write(tmp_path, {"one.jpg": {"hat": [0, 0, 1, 1]}, "two.jpg": {"shoes": [5, 5, 1, 1]}})
    with pytest.raises(LoracamError, match=r"2 problem.*one\.jpg.*two\.jpg"):
        boxes_from_json(path)


def test_bad_json_names_the_photo_and_the_line(tmp_path):
    path = _write(tmp_path, '{"ok.jpg": {"garment": [0, 0, 10, 10]},\n "IMG_9.jpg": {"shoes": [0, 0, 10 10]}}')
    with pytest.raises(LoracamError, match=r'not valid JSON \(in the entry for "IMG_9.jpg"\).*line 2'):
        boxes_from_json(path)


@pytest.mark.parametrize("content, words", [("[1, 2]", "must map photo names"), (None, "cannot read")])
def test_boxes_file_that_is_not_a_mapping_or_missing(tmp_path, content, words):
    path = _write(tmp_path, content) if content else tmp_path / "nope.json"
    with pytest.raises(LoracamError, match=words):
        boxes_from_json(path)
