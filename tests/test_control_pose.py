"""OpenPose poses: the drawing pixel by pixel, the JSON, mediapipe photos, the shipped templates and `loracam pose`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from loracam.cli import app
from loracam.control.openpose import COLOURS, N_POINTS, NAMES, Person, Pose
from loracam.control.photo import describe, keypoint_count, pose_from_photo
from loracam.control.templates import POSES_DIR, TEMPLATES, load_template, template_names
from loracam.data.pose import LANDMARKS, PoseAnalyzer
from loracam.data.pose import Pose as Landmarks
from loracam.errors import LoracamError

ROOT = Path(__file__).resolve().parent.parent
P = {name: k for k, name in enumerate(NAMES)}
runner = CliRunner()


@pytest.fixture(scope="module")
def analyzer():
    with PoseAnalyzer() as a:
        yield a


def person(pixels: dict[str, tuple[float, float]], size: tuple[int, int]) -> Person:
    """A Person with the named points at these pixel positions on a canvas of ``size``; the rest missing."""
    points = [None] * N_POINTS
    for name, (x, y) in pixels.items():
        points[P[name]] = (x / size[0], y / size[1])
    return Person(tuple(points))


def rgb(canvas: np.ndarray, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in canvas[y, x])


# ---------------------------------------------------------------------------------------------
# the drawing, against pixels worked out by hand

SIZE = (100, 80)
ARM = {"neck": (30, 40), "right_shoulder": (70, 40), "right_elbow": (70, 70)}


def test_drawing_points_limbs_and_background():
    canvas = Pose((person(ARM, SIZE),), *SIZE).draw()
    assert canvas.shape == (80, 100, 3) and canvas.dtype == np.uint8
    # points: a filled circle of radius 4 in the point's full colour, drawn over the limbs that end there
    assert rgb(canvas, 30, 40) == (255, 85, 0)  # neck, colour 1
    assert rgb(canvas, 70, 40) == (255, 170, 0)  # right shoulder, colour 2
    assert rgb(canvas, 70, 70) == (255, 255, 0)  # right elbow, colour 3
    assert rgb(canvas, 70 + 3, 40) == (255, 170, 0) and rgb(canvas, 70 + 6, 40) == (0, 0, 0)  # radius 4
    # limbs: at 0.6 of their colour, truncated: neck-shoulder is limb 0 (255, 0, 0), shoulder-elbow limb 2
    assert rgb(canvas, 50, 40) == (153, 0, 0)
    assert rgb(canvas, 70, 55) == (153, 102, 0)
    # the stick is 4 pixels either side of the limb's line, not more
    assert rgb(canvas, 50, 40 + 3) == (153, 0, 0) and rgb(canvas, 50, 40 + 6) == (0, 0, 0)
    assert rgb(canvas, 70 - 3, 55) == (153, 102, 0) and rgb(canvas, 70 - 6, 55) == (0, 0, 0)
    # the rest stays black, and nothing else is drawn (the elbow-wrist limb has no wrist)
    assert rgb(canvas, 5, 75) == (0, 0, 0) and rgb(canvas, 95, 5) == (0, 0, 0)
    colours = {tuple(c) for c in canvas.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (153, 0, 0), (153, 102, 0)}


def test_a_limb_with_a_missing_end_is_not_drawn():
    without_elbow = {k: v for k, v in ARM.items() if k != "right_elbow"}
    canvas = Pose((person(without_elbow, SIZE),), *SIZE).draw()
    assert rgb(canvas, 70, 55) == (0, 0, 0) and rgb(canvas, 70, 70) == (0, 0, 0)
    assert rgb(canvas, 50, 40) == (153, 0, 0)  # the limb whose ends are both there still is
    assert {tuple(c) for c in canvas.reshape(-1, 3)} == {(0, 0, 0), (255, 85, 0), (255, 170, 0), (153, 0, 0)}


def test_colours_follow_the_limb_order():
    # the nose-right eye limb is limb 13, colour 13 at 0.6: (85, 0, 255) -> (51, 0, 153)
    face = person({"nose": (20, 40), "right_eye": (60, 40)}, SIZE)
    canvas = Pose((face,), *SIZE).draw()
    assert rgb(canvas, 40, 40) == (51, 0, 153)
    assert rgb(canvas, 20, 40) == COLOURS[0] and rgb(canvas, 60, 40) == COLOURS[14]


def test_drawing_at_another_size_scales_the_positions():
    canvas = Pose((person(ARM, SIZE),), *SIZE).draw((200, 160))
    assert canvas.shape == (160, 200, 3)
    assert rgb(canvas, 60, 80) == (255, 85, 0) and rgb(canvas, 100, 80) == (153, 0, 0)


# ---------------------------------------------------------------------------------------------
# OpenPose JSON


def test_json_round_trip_draws_the_same_pixels(tmp_path):
    pose = load_template("two_standing")
    path = tmp_path / "pose.json"
    path.write_text(json.dumps(pose.to_json()))
    again = Pose.load(path)
    assert again.size == (512, 768) and len(again.people) == 2
    assert np.array_equal(again.draw(), pose.draw())
    flat = pose.to_json()["people"][0]["pose_keypoints_2d"]
    assert len(flat) == 3 * N_POINTS and set(flat[2::3]) <= {0.0, 1.0}


def test_missing_points_are_written_as_zeros():
    doc = Pose((person(ARM, SIZE),), *SIZE).to_json()
    flat = doc["people"][0]["pose_keypoints_2d"]
    assert flat[3 * P["neck"]: 3 * P["neck"] + 3] == [30.0, 40.0, 1.0]
    assert flat[3 * P["nose"]: 3 * P["nose"] + 3] == [0.0, 0.0, 0.0]
    assert set(doc) == {"people", "canvas_width", "canvas_height"} and doc["canvas_width"] == 100


def test_normalised_coordinates_are_read_as_fractions():
    pose = Pose((person(ARM, SIZE),), *SIZE)
    doc = pose.to_json()
    flat = doc["people"][0]["pose_keypoints_2d"]
    doc["people"][0]["pose_keypoints_2d"] = [v / (SIZE[0] if k % 3 == 0 else SIZE[1]) if k % 3 < 2 else v
                                             for k, v in enumerate(flat)]
    assert max(doc["people"][0]["pose_keypoints_2d"]) <= 1.0
    assert np.array_equal(Pose.from_json(doc).draw(), pose.draw())


def test_a_one_element_list_is_read(tmp_path):
    pose = load_template("standing")
    path = tmp_path / "sent.json"
    path.write_text(json.dumps([pose.to_json()]))  # sd-webui-controlnet's "send pose" shape
    assert np.array_equal(Pose.load(path).draw(), pose.draw())


@pytest.mark.parametrize("text, words", [
    ("{not json", "not readable JSON"),
    ('{"people": []}', "not OpenPose JSON"),
    ('{"people": [{"pose_keypoints_2d": [1, 2, 1]}], "canvas_width": 512, "canvas_height": 768}', "54 numbers"),
    ('{"people": [{"pose_keypoints_2d": ' + json.dumps(["a"] * 54) + '}], "canvas_width": 9, "canvas_height": 9}',
     "must all be numbers"),
    ('[{"people": []}, {"people": []}]', "not OpenPose JSON"),
])
def test_malformed_json_gives_a_clear_error(tmp_path, text, words):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(LoracamError, match=words) as caught:
        Pose.load(path)
    assert str(path) in str(caught.value)


def test_a_missing_pose_file_says_so(tmp_path):
    with pytest.raises(LoracamError, match="not found"):
        Pose.load(tmp_path / "nope.json")


# ---------------------------------------------------------------------------------------------
# from photos, with mediapipe


def _below(pose: Pose, upper: str, lower: str) -> bool:
    return pose.people[0].points[P[upper]][1] < pose.people[0].points[P[lower]][1]


def _x(pose: Pose, name: str) -> float:
    return pose.people[0].points[P[name]][0]


def test_astronaut_keypoints_land_where_the_body_is(analyzer):
    photo = Image.fromarray(data.astronaut())
    pose = pose_from_photo(photo, analyzer)
    assert pose.size == photo.size and len(pose.people) == 1
    pts = pose.people[0].points
    for name in ("nose", "neck", "right_shoulder", "left_shoulder", "right_eye", "left_eye"):
        assert pts[P[name]] is not None, name
    for name in ("right_knee", "left_knee", "right_ankle", "left_ankle"):  # a portrait: cut at the waist
        assert pts[P[name]] is None, name
    assert _below(pose, "nose", "neck") and _below(pose, "right_eye", "nose")
    rs, ls = pts[P["right_shoulder"]], pts[P["left_shoulder"]]
    assert pts[P["neck"]] == pytest.approx(((rs[0] + ls[0]) / 2, (rs[1] + ls[1]) / 2))
    assert rs[0] < ls[0] and _x(pose, "right_eye") < _x(pose, "left_eye")  # her right: the image's left
    nose = np.array(pts[P["nose"]])
    for eye in ("right_eye", "left_eye"):
        assert np.linalg.norm(np.array(pts[P[eye]]) - nose) < 0.1  # within a tenth of the photo of the nose
    # her face is in the upper middle of the photo (about x 0.35-0.6, y 0.15-0.35)
    assert 0.3 < nose[0] < 0.6 and 0.1 < nose[1] < 0.4
    found, total = keypoint_count(pose)
    assert describe(pose).startswith(f"{found} of {total} keypoints (1 person)") and 6 <= found < total


def test_drawn_full_figure_gives_legs_in_order(analyzer):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_pose import DOLL_JOINTS, _doll

    photo, _ = _doll()
    pose = pose_from_photo(photo, analyzer)
    pts = pose.people[0].points
    for mp_name, (x, y) in DOLL_JOINTS.items():
        side, joint = mp_name.split("_")
        got = pts[P[f"{side}_{joint}"]]  # mediapipe's "left_knee" is OpenPose's left knee too: no mirroring
        assert got is not None, mp_name
        assert abs(got[0] * photo.width - x) < 45 and abs(got[1] * photo.height - y) < 60, (mp_name, got)
    for side in ("right", "left"):
        assert _below(pose, f"{side}_hip", f"{side}_knee") and _below(pose, f"{side}_knee", f"{side}_ankle")
    assert _x(pose, "right_hip") < _x(pose, "left_hip") and _x(pose, "right_ankle") < _x(pose, "left_ankle")


@pytest.mark.parametrize("photo", [Image.new("RGB", (320, 480), (200, 210, 220)), Image.fromarray(data.coffee())],
                         ids=["flat", "coffee"])
def test_no_person_is_a_clear_error(analyzer, photo):
    with pytest.raises(LoracamError) as caught:
        pose_from_photo(photo, analyzer, where="cup.png")
    message = str(caught.value)
    assert "no person was found in cup.png" in message
    assert "loracam pose --list" in message and "OpenPose JSON" in message


class _Fixed:
    """A stand-in analyzer that 'finds' a given set of landmarks."""

    def __init__(self, found):
        self.found = found

    def detect(self, image):
        return self.found


def _landmarks(vis: float = 0.9, **moved) -> Landmarks:
    points = np.array([[100.0 + 2 * i, 100.0 + 5 * i] for i in range(len(LANDMARKS))])
    for name, xy in moved.items():
        points[LANDMARKS.index(name)] = xy
    return Landmarks(points, np.full(len(LANDMARKS), vis))


def test_points_outside_the_photo_or_unsure_are_missing():
    photo = Image.new("RGB", (400, 600))
    found = _landmarks(left_shoulder=(-20, 150), right_ankle=(200, 650))
    vis = found.visibility.copy()
    vis[LANDMARKS.index("left_knee")] = 0.4
    pose = pose_from_photo(photo, _Fixed(Landmarks(found.points, vis)))
    pts = pose.people[0].points
    assert pts[P["left_shoulder"]] is None and pts[P["right_ankle"]] is None and pts[P["left_knee"]] is None
    assert pts[P["neck"]] is None  # the neck needs both shoulders
    assert pts[P["right_shoulder"]] == pytest.approx((found.points[12][0] / 400, found.points[12][1] / 600))
    assert keypoint_count(pose) == (N_POINTS - 4, N_POINTS)
    assert "missing: neck, left shoulder, right ankle, left knee" in describe(pose)


def test_a_person_with_nothing_sure_is_not_an_empty_pose():
    with pytest.raises(LoracamError, match="no person was clearly seen.*loracam pose --list"):
        pose_from_photo(Image.new("RGB", (400, 600)), _Fixed(_landmarks(vis=0.3)))


# ---------------------------------------------------------------------------------------------
# the shipped templates

PEOPLE = {"two_standing": 2, "two_half_body": 2}


def _angle(p: Person, a: str, b: str, c: str) -> float:
    """The angle at ``b`` (degrees, in canvas pixels of 512x768) between b->a and b->c."""
    (ax, ay), (bx, by), (cx, cy) = (np.array(p.points[P[n]]) * (512, 768) for n in (a, b, c))
    u, v = (ax - bx, ay - by), (cx - bx, cy - by)
    return math.degrees(math.acos((u[0] * v[0] + u[1] * v[1]) / math.hypot(*u) / math.hypot(*v)))


def test_the_table_names_the_required_templates():
    assert {"standing", "sitting", "walking", "half_body", "close_up"} <= set(template_names())
    assert sum(1 for n in template_names() if n.startswith("two_")) >= 2
    assert {p.name for p in POSES_DIR.glob("*.json")} == {t.file for t in TEMPLATES.values()}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_template_is_a_plausible_pose(name):
    doc = json.loads((POSES_DIR / TEMPLATES[name].file).read_text())
    assert set(doc) == {"people", "canvas_width", "canvas_height"}  # plain OpenPose JSON, nothing else
    pose = load_template(name)
    assert pose.size == (512, 768) and len(pose.people) == PEOPLE.get(name, 1)
    assert TEMPLATES[name].description
    for p in pose.people:
        assert len(p.present()) >= 7
        for x, y in p.present():
            assert 0 <= x < 1 and 0 <= y < 1
        pts = p.points
        assert pts[P["nose"]][1] < pts[P["neck"]][1]  # upright
        assert pts[P["right_shoulder"]][0] < pts[P["left_shoulder"]][0]  # facing the camera
        for side in ("right", "left"):  # no hand or foot floating without the joint above it
            assert pts[P[f"{side}_wrist"]] is None or pts[P[f"{side}_elbow"]] is not None
            assert pts[P[f"{side}_ankle"]] is None or pts[P[f"{side}_knee"]] is not None
    drawing = pose.draw()
    assert drawing.shape == (768, 512, 3) and drawing.any()


def test_template_shapes_match_their_names():
    standing = load_template("standing").people[0]
    assert len(standing.present()) == N_POINTS
    assert _angle(standing, "right_hip", "right_knee", "right_ankle") > 170
    assert standing.points[P["left_ankle"]][1] > 0.85  # the whole body fills the height

    sitting = load_template("sitting").people[0]
    for side in ("right", "left"):
        assert _angle(sitting, f"{side}_hip", f"{side}_knee", f"{side}_ankle") < 130  # knees bent

    walking = load_template("walking").people[0]
    ra, la = walking.points[P["right_ankle"]], walking.points[P["left_ankle"]]
    assert abs(ra[0] - la[0]) > 0.2 and abs(ra[1] - la[1]) > 0.03  # a stride: feet apart, one ahead
    assert min(_angle(walking, "left_hip", "left_knee", "left_ankle"),
               _angle(walking, "right_hip", "right_knee", "right_ankle")) < 170  # the back knee bends

    half = load_template("half_body").people[0]
    assert half.points[P["right_hip"]] and half.points[P["left_hip"]]
    assert all(half.points[P[n]] is None for n in ("right_knee", "left_knee", "right_ankle", "left_ankle"))

    close = load_template("close_up").people[0]
    ears = abs(close.points[P["right_ear"]][0] - close.points[P["left_ear"]][0])
    assert ears > 0.3  # a large face: the ears a third of the width apart
    assert close.points[P["right_shoulder"]][1] > 0.6 and close.points[P["right_elbow"]] is None


def test_templates_are_what_the_generator_makes():
    sys.path.insert(0, str(ROOT / "tools"))
    import make_pose_templates

    for name in TEMPLATES:
        shipped = json.loads((POSES_DIR / TEMPLATES[name].file).read_text())
        assert make_pose_templates.build(name).to_json() == shipped, name


@pytest.mark.parametrize("spelling", ["Half Body", "half-body", "HALF_BODY", " half body "])
def test_template_names_are_forgiving(spelling):
    assert load_template(spelling) == load_template("half_body")


def test_unknown_template_lists_the_names():
    with pytest.raises(LoracamError) as caught:
        load_template("handstand")
    message = str(caught.value)
    assert "handstand" in message and "loracam pose --list" in message
    assert all(name in message for name in TEMPLATES)


# ---------------------------------------------------------------------------------------------
# the command


def run(*args):
    return runner.invoke(app, ["pose", *(str(a) for a in args)])


def test_cli_pose_from_a_photo_writes_json_and_preview(tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    out = tmp_path / "out" / "me.json"
    r = run(photo, "-o", out)
    assert r.exit_code == 0, r.output
    png = out.with_suffix(".png")
    assert str(out) in r.output and str(png) in r.output and "keypoints" in r.output
    pose = Pose.load(out)
    assert pose.size == (512, 512) and len(pose.people) == 1
    preview = np.asarray(Image.open(png))
    assert preview.shape == (512, 512, 3) and np.array_equal(preview, pose.draw())

    before = out.read_bytes()
    r = run(photo, "-o", out)
    assert r.exit_code != 0 and "already exists" in r.output and "does not overwrite" in r.output
    assert out.read_bytes() == before


def test_cli_refuses_when_only_the_preview_exists(tmp_path):
    (tmp_path / "x.png").write_bytes(b"mine")
    r = run("--template", "standing", "-o", tmp_path / "x.json")
    assert r.exit_code != 0 and "x.png already exists" in r.output
    assert not (tmp_path / "x.json").exists() and (tmp_path / "x.png").read_bytes() == b"mine"


def test_cli_no_person_exits_with_the_message(tmp_path):
    photo = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(photo)
    r = run(photo, "-o", tmp_path / "cup.json")
    assert r.exit_code != 0 and "no person was found" in r.output and "loracam pose --list" in r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coffee.png"]


def test_cli_list_shows_names_people_and_descriptions():
    r = run("--list")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for name, entry in TEMPLATES.items():
        [line] = [ln for ln in lines if ln.split()[:1] == [name]]
        assert line.split()[1] == str(PEOPLE.get(name, 1)) and entry.description in line


def test_cli_template_export(tmp_path):
    out = tmp_path / "pose.json"
    r = run("--template", "half body", "-o", out)
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text()) == load_template("half_body").to_json()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pose.png")), load_template("half_body").draw())


@pytest.mark.parametrize("args, words", [
    ((), "give one of"),
    (("--list", "--template", "standing"), "give one of"),
    (("--template", "handstand"), "loracam pose --list"),
    (("--template", "standing", "-o", "pose.txt"), "must end in .json"),
])
def test_cli_bad_arguments(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code != 0 and words in r.output and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []
