"""The toy doll's OpenPose skeleton: keypoints on the rendered parts, missing off the picture, the map's size."""

from dataclasses import replace

import numpy as np
import pytest

from loracam.control import openpose
from loracam.toy import skeleton, world
from loracam.toy.controlnet import CONTROLNET_DIR

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


# ---------------------------------------------------------------------------------------------
# the toy ControlNet trained on these maps (loracam/toy/controlnet.py)


def _tiny_controlnet():
    from diffusers import ControlNetModel

    return ControlNetModel(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                           layers_per_block=1, norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
                           conditioning_embedding_out_channels=(4, 8, 8))


def test_saving_a_controlnet_never_replaces_a_folder_unasked(tmp_path):
    from loracam.toy import controlnet

    out = tmp_path / "cn"
    controlnet.save(_tiny_controlnet(), out)
    assert (out / "config.json").exists() and (out / "diffusion_pytorch_model.safetensors").exists()
    assert "_name_or_path" not in (out / "config.json").read_text()
    before = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        controlnet.save(_tiny_controlnet(), out)
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == before
    controlnet.save(_tiny_controlnet(), out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cn"]  # no partial or old folder left behind
    with pytest.raises(SystemExit):  # the command refuses before training, not after
        controlnet.main(["-o", str(out), "--steps", "1"])


def test_the_wide_camera_keeps_the_full_body_box_in_the_frame():
    from loracam.toy import controlnet

    dolls = controlnet.placement_dolls(200, 5)
    assert all(d.framing == "full body" and d.scale >= controlnet.EVAL_MIN_SCALE for d in dolls)
    assert all("full_body" in world.boxes(d) for d in dolls)
    centres = [d.center for d in dolls]
    assert min(centres) < 0.3 and max(centres) > 0.7  # wider than the base world's 0.36-0.64


@pytest.mark.skipif(not CONTROLNET_DIR.exists(),
                    reason="the toy ControlNet is not built (make toy-controlnet)")
def test_the_shipped_controlnet_fits_the_toy_unet():
    import torch

    from loracam.models import ModelCache
    from loracam.toy import controlnet

    files = {p.name: p.stat().st_size for p in controlnet.CONTROLNET_DIR.iterdir()}
    assert set(files) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert sum(files.values()) <= 10_000_000
    net = controlnet.load()
    assert tuple(net.config.conditioning_embedding_out_channels) == controlnet.CONDITIONING_CHANNELS
    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    latents = torch.zeros(1, 4, 24, 16)
    ctx = controlnet.encode_text(model, [world.tags(world.Doll())])
    cond = controlnet.to_cond(skeleton.control_map(world.Doll())[None])
    assert cond.shape == (1, 3, 96, 64) and 0 <= float(cond.min()) and float(cond.max()) <= 1
    with torch.no_grad():
        down, mid = net(latents, torch.tensor([500]), encoder_hidden_states=ctx, controlnet_cond=cond,
                        return_dict=False)
        out = model.unet(latents, torch.tensor([500]), encoder_hidden_states=ctx,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert down[0].shape[-2:] == (24, 16) and out.shape == latents.shape
    assert float(mid.abs().max()) > 0  # trained: the zero convolutions have moved
