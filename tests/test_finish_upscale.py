"""Upscaling: every model layout users download loads through spandrel, tiles blend without seams, out-of-memory
halves the tile, outputs keep their infotext and get A1111's extras keys, and bad files say what they are."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from loracam.cli import app
from loracam.errors import LoracamError
from loracam.models.upscalers import import_spandrel
from loracam.generate.upscale import ModelUpscaler, TileOptions, load_upscaler, ramp, tile_spans, tiled, to_tensor
from loracam.generate.infotext import _PARAM, parse_infotext
from loracam.generate.images import png_bytes

runner = CliRunner()
CPU = torch.device("cpu")


def esrgan(scale: int = 4, seed: int = 0):
    """A small random RRDBNet in the old ESRGAN layout (model.0 ... model.10), as spandrel builds it."""
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    if scale == 2:  # x2plus: pixel-unshuffle by 2 (12 channels in), then the x4 network
        return ESRGAN(in_nc=12, out_nc=3, num_filters=8, num_blocks=1, scale=4, shuffle_factor=2).eval()
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale).eval()


def new_layout(old: dict) -> dict:
    """Real-ESRGAN's (basicsr) names for the same tensors: conv_first, body.N.rdbK.convJ, conv_body, ..."""
    table = [(r"^model\.0\.", "conv_first."), (r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", r"body.\1.rdb\2.conv\3."),
             (r"^model\.3\.", "conv_up1."), (r"^model\.6\.", "conv_up2."), (r"^model\.8\.", "conv_hr."),
             (r"^model\.10\.", "conv_last.")]
    blocks = max(int(m.group(1)) for k in old if (m := re.match(r"^model\.1\.sub\.(\d+)\.RDB", k))) + 1
    table.insert(2, (rf"^model\.1\.sub\.{blocks}\.", "conv_body."))
    out = {}
    for k, v in old.items():
        for pattern, repl in table:
            if re.match(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
    assert len(out) == len(old)
    return out


def compact(seed: int = 0, zero: bool = False):
    import_spandrel()
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    if zero:  # the network's residual is then 0: output = nearest-upsampled input
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
    return net.eval()


def picture(w: int = 24, h: int = 16, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3)).astype("uint8"))


@pytest.mark.parametrize("layout,suffix,scale", [
    ("esrgan-old", ".pth", 4), ("esrgan-old", ".safetensors", 4), ("real-esrgan", ".pth", 4),
    ("real-esrgan", ".safetensors", 4), ("real-esrgan-x2plus", ".pth", 2), ("compact", ".pth", 4),
    ("compact", ".safetensors", 4),
])
def test_every_layout_loads_and_runs_as_spandrel_runs_it(tmp_path, layout, suffix, scale):
    net = esrgan(scale) if layout.startswith(("esrgan", "real")) else compact()
    state = net.state_dict()
    if layout.startswith("real"):
        state = new_layout(state)
    path = tmp_path / f"RealESRGAN_{layout}{suffix}"
    if suffix == ".pth":
        torch.save({"params_ema": state} if layout.startswith("real") else state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    up = load_upscaler(str(path), CPU, TileOptions(tile=0))
    assert up.scale == scale and up.name == path.stem and up.dtype == torch.float32
    image = picture()
    out = up.upscale(image, (24 * scale, 16 * scale))
    with torch.no_grad():
        want = net(to_tensor(image)).clamp(0, 1)
    got = torch.from_numpy(np.asarray(out, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    assert out.size == (24 * scale, 16 * scale)
    assert (got - want).abs().max() <= 0.5 / 255 + 1e-6  # the same network; only 8-bit rounding differs


def test_models_get_rgb_and_reach_any_size_by_repeating_then_lanczos(tmp_path):
    path = tmp_path / "nearest_x4.pth"
    torch.save({"params": compact(zero=True).state_dict()}, path)
    up = load_upscaler(str(path), CPU)
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    assert np.asarray(up.upscale(red, (32, 32)))[5, 5].tolist() == [255, 0, 0]  # BGR would have made it blue
    image = picture()
    same = up.upscale(image, (96, 64))
    assert np.array_equal(np.asarray(same), np.asarray(image.resize((96, 64), Image.NEAREST)))
    calls = []
    real = up.run
    up.run = lambda x, *a: calls.append(tuple(x.shape)) or real(x, *a)
    assert up.upscale(image, (200, 120)).size == (200, 120)  # 4x twice (384x256), then down to the size asked
    assert calls == [(1, 3, 16, 24), (1, 3, 64, 96)]


def test_tile_layout_and_ramps():
    assert tile_spans(100, 0, 8) == ([0], 100) and tile_spans(64, 64, 8) == ([0], 64)
    assert tile_spans(768, 512, 32) == ([0, 368], 400)  # two even tiles, not 512 + a 512 that is mostly overlap
    starts, length = tile_spans(1000, 192, 8)
    assert length <= 192 and starts[-1] + length == 1000
    assert all(b - a <= length - 8 for a, b in zip(starts, starts[1:]))  # every overlap at least 8
    w = ramp(10, 3, rise=True, fall=False)
    assert w.tolist() == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 7) and (w > 0).all()
    assert ramp(6, 3, rise=False, fall=False).tolist() == [1.0] * 6


def test_tiled_equals_untiled_away_from_seams_and_blends_within_a_bound_at_them():
    """A random 2-conv compact net sees 4 px around a pixel (4 3x3 convs): farther than that from a tile's
    cut, the tile computes exactly what the whole image does; in float64 only rounding at 1e-12 remains."""
    net = compact(seed=3).double()
    x = to_tensor(picture(48, 40, seed=1)).double()
    with torch.no_grad():
        whole = net(x)
        parts = tiled(net, x, 4, tile=24, overlap=12)
    assert parts.shape == whole.shape
    diff = (parts - whole).abs()[0].amax(0)  # [H, W] in output pixels
    reach = 4 * 4  # 4 input px of receptive radius, x4
    near = torch.zeros_like(diff, dtype=torch.bool)
    for axis, n in ((0, 40), (1, 48)):
        starts, length = tile_spans(n, 24, 12)
        for cut in [s for s in starts if s > 0] + [s + length for s in starts if s + length < n]:
            band = slice(max(0, cut * 4 - reach), cut * 4 + reach)
            near[(band, slice(None)) if axis == 0 else (slice(None), band)] = True
    assert (~near).sum() > 1000 and diff[~near].max() < 1e-12
    assert diff[near].max() > 1e-6  # the seams are real: zero padding at a cut changes the tile's edge
    assert diff.max() < 0.5 * whole.abs().max()  # blended: no seam as large as the picture itself


def test_out_of_memory_halves_the_tile_and_says_so():
    net = compact(seed=2)
    desc = import_spandrel().ModelLoader().load_from_state_dict(net.state_dict())
    calls = []

    def fussy(x):
        calls.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return desc(x)

    up = ModelUpscaler(desc, "fussy", TileOptions(tile=64, overlap=4, min_tile=8))
    up.desc = fussy
    said = []
    out = up.run(to_tensor(picture(40, 40)), notes=said.append)
    assert said == ["out of memory with 64-pixel tiles: trying 32", "out of memory with 32-pixel tiles: trying 16"]
    assert out.shape == (1, 3, 160, 160) and max(calls[-4:]) == 16
    up.tiles = TileOptions(tile=64, overlap=4, min_tile=32)
    with pytest.raises(LoracamError, match="out of memory even with 32-pixel tiles"):
        up.run(to_tensor(picture(40, 40)), notes=said.append)


def test_cli_keeps_the_infotext_adds_extras_and_never_overwrites(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    info = "1girl, red dress\nNegative prompt: lowres\nSteps: 4, Sampler: Euler a, Seed: 3, Size: 24x16, Model: toy"
    (src / "00001-3.png").write_bytes(png_bytes(picture(), info))
    path = tmp_path / "x4.pth"
    torch.save({"params": compact(seed=4).state_dict()}, path)
    out = tmp_path / "out"
    for _ in range(2):
        r = runner.invoke(app, ["upscale", str(src), "--model", str(path), "-o", str(out)])
        assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["00001-3-1.png", "00001-3.png"]
    im = Image.open(out / "00001-3.png")
    assert im.size == (96, 64) and im.text["parameters"] == info
    assert parse_infotext(info).params["Seed"] == "3"
    extras = dict((k.strip(), v.strip()) for k, v in _PARAM.findall(im.text["extras"]))  # A1111's reader
    assert extras == {"Postprocess upscale by": "4", "Postprocess upscaler": "x4"}
    r = runner.invoke(app, ["upscale", str(src / "00001-3.png"), "--resize", "48x0", "-o", str(tmp_path / "o2")])
    assert r.exit_code == 0, r.output
    [small] = (tmp_path / "o2").iterdir()
    assert Image.open(small).size == (48, 32)
    assert "Postprocess upscale to: 48x32" in Image.open(small).text["extras"]  # the size it became
    assert "Postprocess upscaler: Lanczos" in Image.open(small).text["extras"]


def test_bad_inputs_say_what_is_wrong_and_write_nothing(tmp_path, tiny, monkeypatch):
    from loracam.lora import random_lora, write_kohya
    from loracam.models.ldm import save_single_file

    src = tmp_path / "in"
    src.mkdir()
    picture().save(src / "a.png")
    lora = write_kohya(tmp_path / "face.safetensors", random_lora(tiny.unet, tiny.text_encoder, dim=2, alpha=1), {})
    ckpt = save_single_file(tiny, tmp_path / "model.safetensors")
    broken = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": new_layout(esrgan().state_dict())}, broken)
    broken.write_bytes(broken.read_bytes()[:3000])
    out = tmp_path / "out"
    cases = [
        (["--model", str(lora)], "face.safetensors is a LoRA, not an upscaler"),
        (["--model", str(ckpt)], "model.safetensors is a Stable Diffusion checkpoint, not an upscaler"),
        (["--model", str(broken)], "damaged or not a model"),
        (["--model", "no-such-upscaler"], "unknown upscaler 'no-such-upscaler'"),
        (["--scale", "2", "--resize", "8x8"], "give --scale or --resize, not both"),
        (["--tile", "64", "--overlap", "40"], "--overlap 40 must be from 0 to under half the tile"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["upscale", str(src), *args, "-o", str(out)])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 24x16 picture is then a "decompression bomb"
    r = runner.invoke(app, ["upscale", str(src), "-o", str(out)])
    assert r.exit_code == 2 and "a.png is over the pixel limit" in r.output
    assert not out.exists() and sorted(p.name for p in src.iterdir()) == ["a.png"]
