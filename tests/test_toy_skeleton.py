"""The toy doll's OpenPose skeleton: keypoints on the rendered parts, missing off the picture, the map's size."""

from dataclasses import replace

import numpy as np
import pytest

from loracam.control import openpose
from loracam.toy import skeleton, world

BIG = (256, 384)  # 4x the world's size: a keypoint's pixel is well inside its part
IDX = {name: k for k, name in enumerate(openpose.NAMES)}


def pixel(image: np.ndarray, point, size=BIG) -> tuple[int, ...]:
    return tuple(int(v) for v in image[int(point[1] * size[1]), int(point[0] * size[0])])


def close(a, b, tol=12) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) <= tol


def test_eyes_land_on_eye_coloured_pixels_in_a_close_up():
    doll = world.Doll(framing="close-up", scale=3.2, top=0.2, center=0.5, face="dee", background="grey")
    image = world.render(doll, BIG)
    person = skeleton.person(doll, BIG)
    eye = world.RGB[world.FACES["dee"][0]]
    for name in ("right_eye", "left_eye"):
        assert close(pixel(image, person.points[IDX[name]]), eye), name
    assert close(pixel(image, person.points[IDX["nose"]]), world.SKINS[doll.skin])
    # a close-up shows the head and shoulders, not the hands, hips or feet: those are off the picture
    for name in ("right_wrist", "left_wrist", "right_hip", "left_knee", "right_ankle", "left_ankle"):
        assert person.points[IDX[name]] is None, name


def test_limbs_land_on_the_rendered_doll():
    doll = world.Doll(dress="blue", shoes="red", skin=2, background="white", arms=0.06, legs=0.03,
                      scale=0.85, top=0.07, center=0.45)
    image = world.render(doll, BIG)
    person = skeleton.person(doll, BIG)
    skin = world.SKINS[2]
    for name in ("right_wrist", "left_wrist", "right_elbow", "left_elbow", "right_knee", "left_knee", "neck"):
        assert close(pixel(image, person.points[IDX[name]]), skin), name  # the neck: in the neckline's cut
    for name in ("right_ankle", "left_ankle"):  # the ankle sits at the top of the shoe
        x, y = person.points[IDX[name]]
        below = (x, y + 0.02 * doll.scale)  # 0.02 doll units lower: inside the shoe's ellipse
        assert close(pixel(image, below), world.RGB["red"]), name
    for name in ("right_shoulder", "left_shoulder", "right_hip", "left_hip"):
        assert close(pixel(image, person.points[IDX[name]]), world.RGB["blue"]), name  # under the dress
    assert all(p is not None for p in person.points)  # a full-body doll inside the frame: all 18 seen


def test_the_persons_right_is_the_images_left():
    person = skeleton.person(world.Doll())
    p = person.points
    for right, left in (("right_eye", "left_eye"), ("right_ear", "left_ear"), ("right_shoulder", "left_shoulder"),
                        ("right_wrist", "left_wrist"), ("right_hip", "left_hip"), ("right_ankle", "left_ankle")):
        assert p[IDX[right]][0] < p[IDX[left]][0], right
    assert p[IDX["nose"]][1] < p[IDX["neck"]][1] < p[IDX["right_hip"]][1] < p[IDX["right_knee"]][1] \
        < p[IDX["right_ankle"]][1]


def test_points_off_the_picture_are_missing():
    doll = world.Doll(center=0.02)  # the doll's right half is off the left edge
    person = skeleton.person(doll)
    assert person.points[IDX["right_wrist"]] is None and person.points[IDX["right_ear"]] is None
    assert person.points[IDX["left_wrist"]] is not None
    low = skeleton.person(world.Doll(top=0.5))  # the legs run off the bottom
    assert low.points[IDX["right_ankle"]] is None and low.points[IDX["nose"]] is not None
    for p in skeleton.person(world.Doll(framing="upper body", scale=1.7, top=0.05)).present():
        assert 0 <= p[0] < 1 and 0 <= p[1] < 1


def test_keypoints_follow_the_camera():
    a = skeleton.person(world.Doll(center=0.4))
    b = skeleton.person(world.Doll(center=0.6))
    assert b.points[0][0] - a.points[0][0] == pytest.approx(0.2)
    big = skeleton.person(world.Doll(scale=0.9, top=0.05)).box((64, 96))
    small = skeleton.person(world.Doll(scale=0.5, top=0.05)).box((64, 96))
    assert (big[3] - big[1]) == pytest.approx((small[3] - small[1]) * 0.9 / 0.5)


def test_the_control_map_is_the_render_size_and_drawn_where_the_doll_is():
    doll = world.Doll(center=0.35, top=0.1, scale=0.7)
    m = skeleton.control_map(doll)
    assert m.shape == (96, 64, 3) and m.dtype == np.uint8
    assert skeleton.control_map(doll, (128, 192)).shape == (192, 128, 3)
    lit = np.argwhere(m.max(-1) > 20)
    (y0, x0), (y1, x1) = lit.min(0), lit.max(0)
    x_lo, y_lo, x_hi, y_hi = skeleton.person(doll).box((64, 96))
    assert abs(x0 - x_lo) <= 2 and abs(x1 - x_hi) <= 2 and abs(y0 - y_lo) <= 2 and abs(y1 - y_hi) <= 2
    assert m.max() > 150  # the points are drawn in full colour, not washed out by the resize
    # the nose's red (point 0 is 255, 0, 0) is where the nose keypoint is
    nx, ny = skeleton.person(doll).points[0]
    r, g, b = (int(v) for v in m[int(ny * 96), int(nx * 64)])
    assert r > 100 and r > g and r > b
    blank = skeleton.control_map(replace(doll, center=5.0))
    assert blank.max() == 0  # a doll wholly off the picture leaves a black map
