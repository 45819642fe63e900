"""ControlNet in the engine: parity with diffusers, several nets, control modes, the guidance window, model
files (diffusers folders, LDM single files, .pth), infotext and --from, grids, hires, img2img, detail passes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from loracam.control.guidance import Guidance, Steer, soft_scales
from loracam.control.models import ControlNets, a1111_hash, load_controlnet, save_single_file
from loracam.control.resize import fit
from loracam.control.units import ControlUnit, parse_infotext_value
from loracam.errors import LoracamError
from loracam.generate import GenRequest, Sample, Shared, generate
from loracam.generate.api import render_samples
from loracam.generate.samplers import build_scheduler
from loracam.lora import LoraLibrary


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def tiny_controlnet(unet, seed: int, hint=(4, 8, 8, 16)):
    """A random ControlNet of the tiny U-Net's shape; the zero convolutions get weights too, or it would do nothing."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=hint)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def nets(tiny, tmp_path_factory):
    """Two tiny ControlNets saved as a diffusers folder and as an LDM single file, and a control map."""
    root = tmp_path_factory.mktemp("controlnets")
    a, b = tiny_controlnet(tiny.unet, 1), tiny_controlnet(tiny.unet, 2)
    a.save_pretrained(root / "tiny_sd15_canny")
    save_single_file(b, root / "tiny_sd15_openpose.safetensors")
    rng = np.random.default_rng(0)
    photo = root / "photo.png"
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(photo)
    return {"dir": root, "a": a, "b": b, "photo": photo}


def _map(path) -> Image.Image:
    return Image.open(path).convert("RGB")


# ---------------------------------------------------------------------------------------------
# parity with diffusers


def test_one_controlnet_matches_diffusers_pipeline(tiny, nets):
    from diffusers import StableDiffusionControlNetPipeline

    unit = ControlUnit("image", str(nets["photo"]), model=str(nets["dir"] / "tiny_sd15_canny"))
    shared = Shared(64, 64, 4, "Euler", "Automatic", control=(unit,))
    [mine] = render_samples(tiny, shared, [Sample("a photo of a cat", "ugly", 123, 7.0)], LoraLibrary([]))
    pipe = StableDiffusionControlNetPipeline(**tiny.components(), controlnet=nets["a"],
                                             )
    pipe.scheduler = build_scheduler(tiny.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a photo of a cat", _map(nets["photo"]), negative_prompt="ugly", num_inference_steps=4, height=64,
               width=64, guidance_scale=7.0, generator=torch.Generator().manual_seed(123)).images[0]
    assert np.abs(px(mine.image) - px(ref)).max() <= 1
    plain = render_samples(tiny, Shared(64, 64, 4, "Euler", "Automatic"), [Sample("a photo of a cat", "ugly", 123, 7.0)],
                           LoraLibrary([]))[0]
    assert np.abs(px(mine.image) - px(plain.image)).mean() > 2  # the net steers: the parity is not trivial


def test_two_controlnets_match_diffusers_multi_controlnet(tiny, nets):
    from diffusers import StableDiffusionControlNetPipeline

    units = (ControlUnit("image", str(nets["photo"]), 0.7, model="tiny_sd15_canny"),
             ControlUnit("image", str(nets["photo"]), 0.4, model="tiny_sd15_openpose"))
    shared = Shared(64, 64, 3, "Euler", "Automatic", control=units)
    [mine] = render_samples(tiny, shared, [Sample("a cat", "", 5, 6.0)], LoraLibrary([]), controls=ControlNets([nets["dir"]]))
    pipe = StableDiffusionControlNetPipeline(**tiny.components(), controlnet=[nets["a"], nets["b"]],
                                             )
    pipe.scheduler = build_scheduler(tiny.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", [_map(nets["photo"])] * 2, num_inference_steps=3, height=64, width=64, guidance_scale=6.0,
               controlnet_conditioning_scale=[0.7, 0.4], generator=torch.Generator().manual_seed(5)).images[0]
    assert np.abs(px(mine.image) - px(ref)).max() <= 1
    assert 'ControlNet 1: "Module: none, Model: tiny_sd15_openpose [' in mine.infotext


# ---------------------------------------------------------------------------------------------
# control modes and the guidance window, against the formulas of finish.md


class _Outputs(torch.nn.Module):
    """A stand-in ControlNet whose output k is the constant k + 1 (the middle block 100), recording its calls."""

    def __init__(self, n_down: int = 12):
        super().__init__()
        self.n_down, self.calls = n_down, []

    def forward(self, x, t, encoder_hidden_states, controlnet_cond, conditioning_scale, return_dict):
        self.calls.append(x.shape[0])
        down = [torch.full((x.shape[0], 1, 2, 2), float(k + 1)) for k in range(self.n_down)]
        return down, torch.full((x.shape[0], 1, 1, 1), 100.0)


@pytest.mark.parametrize("mode", ["Balanced", "My prompt is more important", "ControlNet is more important"])
def test_control_modes_scale_as_a1111(mode):
    net = _Outputs()
    unit = ControlUnit("image", "x.png", mode=mode)
    g = Guidance([Steer(unit, net, torch.zeros(1, 3, 8, 8), torch.tensor([0.5, 2.0]))])
    x = torch.zeros(4, 4, 2, 2)
    samples = torch.tensor([0, 1, 0, 1])  # rows: uncond 0, uncond 1, cond 0, cond 1
    uncond = torch.tensor([True, True, False, False])
    down, mid = g.residuals(x, 10, torch.zeros(4, 3, 8), samples, uncond, 0.5)
    for k in range(12):
        soft = 1.0 if mode == "Balanced" else 0.825 ** (12 - k)  # A1111: weight * 0.825^(12-i), middle block 1
        for row, w in ((2, 0.5), (3, 2.0)):
            assert float(down[k][row, 0, 0, 0]) == pytest.approx((k + 1) * w * soft, rel=1e-6)
        for row, w in ((0, 0.5), (1, 2.0)):
            want = 0.0 if mode == "ControlNet is more important" else (k + 1) * w * soft
            assert float(down[k][row, 0, 0, 0]) == pytest.approx(want, rel=1e-6)
    assert float(mid[3]) == pytest.approx(200.0)
    assert net.calls == ([2] if mode == "ControlNet is more important" else [4])  # cond rows only, or all


def test_soft_scales_reach_diffusers_guess_mode():
    # diffusers' guess mode multiplies output k of 13 by logspace(-1, 0, 13)[k] = 10^(-(12-k)/12); A1111's
    # 0.825 is 10^(-1/12) = 0.82540 rounded, and 12 powers of that rounding make at most 0.6%
    ours = soft_scales(13, "ControlNet is more important")
    theirs = np.logspace(-1, 0, 13)
    assert np.allclose(ours, theirs, rtol=6.5e-3) and ours[-1] == 1.0


def test_guidance_window_steps(tiny, nets):
    """Steps i of N with start <= i/N <= end run the ControlNet (sd-webui-controlnet's rule)."""
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *a, **k):
            seen.append(True)
            return self.inner(*a, **k)

    unit = ControlUnit("image", str(nets["photo"]), start=0.2, end=0.5, model="tiny_sd15_canny")
    lib = ControlNets([nets["dir"]])
    from loracam.control.guidance import Control

    control = Control((unit,), lib, tiny)
    control.nets[0] = Recorder(control.nets[0])
    steps_called = []
    original = Guidance.residuals

    def spy(self, x, t, ctx, samples, uncond, frac, added=None):
        n = len(seen)
        out = original(self, x, t, ctx, samples, uncond, frac, added)
        if len(seen) > n:
            steps_called.append(round(frac * 10))
        return out

    from loracam.generate.engine import render

    Guidance.residuals = spy
    try:
        render(tiny, Shared(64, 64, 10, "Euler", "Automatic", control=(unit,)), [Sample("cat", "", 1, 7.0)],
               control=control)
    finally:
        Guidance.residuals = original
    assert steps_called == [2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
# model files


def test_ldm_single_file_is_diffusers_readable_and_round_trips(tiny, tmp_path):
    """loracam's LDM names are the ones diffusers' own converter reads (SD's hint-encoder depth)."""
    from diffusers import ControlNetModel

    net = tiny_controlnet(tiny.unet, 3)
    path = save_single_file(net, tmp_path / "cn.safetensors")
    net.save_config(tmp_path / "cfg")
    theirs = ControlNetModel.from_single_file(str(path), config=str(tmp_path / "cfg"), local_files_only=True)
    ours = load_controlnet(path)
    ref = net.state_dict()
    for other in (theirs.state_dict(), ours.state_dict()):
        assert set(other) == set(ref) and all(torch.equal(other[k], ref[k]) for k in ref)


def test_pth_weights_only_with_a_config_beside_it(tiny, tmp_path):
    from loracam.models.ldm import controlnet_to_ldm

    net = tiny_controlnet(tiny.unet, 4, hint=(4, 8, 16))  # a two-stage hint encoder: not SD's shape
    torch.save({"state_dict": controlnet_to_ldm(net)}, tmp_path / "cn.pth")
    with pytest.raises(LoracamError, match="do not fit an SD1.x ControlNet"):
        load_controlnet(tmp_path / "cn.pth")  # without its config it is read as SD1.5 and does not fit
    (tmp_path / "cn.json").write_text(json.dumps(dict(net.config)))
    back = load_controlnet(tmp_path / "cn.pth").state_dict()
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_found_by_type_name_and_hash(nets):
    lib = ControlNets([nets["dir"]])
    canny = lib.find(ControlUnit("canny", "p.png"), "canny")
    assert canny.name == "tiny_sd15_canny" and re.fullmatch(r"tiny_sd15_canny \[[0-9a-f]{8}\]", canny.label)
    pose = lib.find(ControlUnit("image", "p.png", model="tiny_sd15_openpose"), "")
    assert lib.find(ControlUnit("image", "p.png", model=pose.short_hash), "").path == pose.path
    assert lib.find(ControlUnit("image", "p.png", model=pose.label), "").path == pose.path
    assert pose.short_hash == a1111_hash(pose.path)
    with pytest.raises(LoracamError, match="no tile ControlNet found.*model=NAME_OR_PATH"):
        lib.find(ControlUnit("tile", ""), "tile")
    with pytest.raises(LoracamError, match="not found.*known: .*tiny_sd15_canny"):
        lib.find(ControlUnit("image", "p.png", model="nope"), "")


def test_a1111_hash_is_of_64k_at_1m(tmp_path):
    import hashlib

    data = bytes(range(256)) * 8192  # 2 MiB
    (tmp_path / "f.safetensors").write_bytes(data)
    assert a1111_hash(tmp_path / "f.safetensors") == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_wrong_files_are_named(tiny, tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "lora.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "junk.safetensors")
    save_file({"control_model.label_emb.0.0.weight": torch.zeros(2, 2),
               "control_model.input_hint_block.0.weight": torch.zeros(2)}, tmp_path / "xl.safetensors")
    (tmp_path / "text.pth").write_bytes(b"not a pickle")
    for name, msg in (("lora", "is a LoRA"), ("junk", "not a ControlNet"), ("xl", "SDXL ControlNet"),
                      ("text", "weights-only")):
        path = tmp_path / (name + (".pth" if name == "text" else ".safetensors"))
        with pytest.raises(LoracamError, match=msg):
            load_controlnet(path)


def test_controlnet_for_another_base_is_refused(tiny, tmp_path):
    from diffusers import UNet2DConditionModel

    from loracam.models import tiny_configs

    other = UNet2DConditionModel.from_config({**tiny_configs()["unet"], "cross_attention_dim": 48})
    tiny_controlnet(other, 1).save_pretrained(tmp_path / "other_canny")
    unit = ControlUnit("image", "x.png", model=str(tmp_path / "other_canny"))
    with pytest.raises(LoracamError, match="made for another base"):
        ControlNets().load(ControlNets()._named(unit.model), "cpu", torch.float32, tiny.unet.config)


# ---------------------------------------------------------------------------------------------
# gen: infotext, --from, batches, hires, img2img, inpainting, detail


def test_infotext_is_sd_webui_controlnets(models, nets, tmp_path):
    unit = ControlUnit.parse(f"canny:{nets['photo']}:0.8:0:0.6:res=64:model=tiny_sd15_canny")
    req = GenRequest(prompt="cat", base="random:tiny", steps=3, seed=7, controlnet=(unit,),
                     controlnet_dirs=(str(nets["dir"]),))
    info = generate(req, models).images[0].infotext
    label = ControlNets([nets["dir"]]).find(unit, "canny").label
    want = (f'ControlNet 0: "Module: canny, Model: {label}, Weight: 0.8, Resize Mode: Crop and Resize, '
            'Processor Res: 64, Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 0.6, '
            'Pixel Perfect: False, Control Mode: Balanced"')
    assert want in info
    fields = parse_infotext_value(re.search(r'ControlNet 0: "([^"]*)"', info).group(1))
    assert fields["Weight"] == 0.8 and fields["Processor Res"] == 64 and fields["Pixel Perfect"] is False


def test_from_rerenders_the_same_pixels(nets, tmp_path):
    from typer.testing import CliRunner

    from loracam.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["gen", "a cat", "--base", "random:tiny", "--steps", "3", "--seed", "9",
                                 "--controlnet", f"canny:{nets['photo']}:0.9:res=64", "--control-mode",
                                 "My prompt is more important", "--controlnet-dir", str(nets["dir"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    first = out / "00000-9.png"
    edges = np.asarray(Image.open(out / "00000-9-control0.png"))
    assert set(np.unique(edges)) <= {0, 255} and edges.any()  # the canny map the user can look at
    again = tmp_path / "again"
    r = CliRunner().invoke(app, ["gen", "--from", str(first), "--controlnet-dir", str(nets["dir"]), "-o", str(again)])
    assert r.exit_code == 0, r.output
    a, b = Image.open(first), Image.open(again / "00000-9.png")
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.info["parameters"] == b.info["parameters"]
    (out / "00000-9-control0.png").unlink()
    r = CliRunner().invoke(app, ["gen", "--from", str(first), "--controlnet-dir", str(nets["dir"]), "-o", str(again)])
    assert r.exit_code != 0 and "control map" in r.output and "--controlnet" in r.output


def test_lora_weight_grid_batches_with_a_fixed_control(models, nets, tmp_path):
    """Cells with their own LoRA and ControlNet weights render in one batch, each equal to its lone render."""
    from loracam.lora import random_lora, write_kohya

    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    tiny = models.get("random:tiny", torch.device("cpu"), torch.float32)
    mods = random_lora(tiny.unet, tiny.text_encoder, dim=4, alpha=4.0, seed=1)
    write_kohya(lora_dir / "style.safetensors", mods, {"ss_network_dim": "4", "ss_network_alpha": "4"})
    unit = ControlUnit("image", str(nets["photo"]), model="tiny_sd15_canny")
    shared = Shared(64, 64, 3, "Euler", "Automatic", control=(unit,))
    from loracam.prompts import extract_networks

    def sample(w, cw):
        p = f"a cat <lora:style:{w}>"
        return Sample(p, "", 3, 7.0, tuple(extract_networks(p)[1]), (cw,))

    lib, cn = LoraLibrary([lora_dir]), ControlNets([nets["dir"]])
    cells = [sample(0.3, 1.0), sample(0.9, 1.0), sample(0.9, 0.4)]
    batch = render_samples(tiny, shared, cells, lib, controls=cn)
    alone = [render_samples(tiny, shared, [c], lib, controls=cn)[0] for c in cells]
    for b, a in zip(batch, alone):
        assert np.abs(px(b.image) - px(a.image)).max() <= 1
    assert np.abs(px(batch[1].image) - px(batch[2].image)).max() > 0  # the ControlNet weight did something
    assert "Weight: 0.4," in batch[2].infotext and "Weight: 1," in batch[1].infotext


def test_grid_controlnet_weight_axis(models, nets, tmp_path):
    from loracam.grid import AxisSpec, GridOptions, run_grid

    req = GenRequest(prompt="a cat", base="random:tiny", steps=3, seed=4,
                     controlnet=(ControlUnit("image", str(nets["photo"]), model="tiny_sd15_canny"),),
                     controlnet_dirs=(str(nets["dir"]),))
    res = run_grid(req, [AxisSpec.parse("[ControlNet] Weight=0,0.5,1")], GridOptions(), models, LoraLibrary([]),
                   tmp_path / "grid")
    cells = res.cells[0][0]
    assert [re.search(r"ControlNet 0: \"[^\"]*Weight: ([\d.]+)", c.infotext).group(1) for c in cells] == ["0", "0.5", "1"]
    plain = generate(GenRequest(prompt="a cat", base="random:tiny", steps=3, seed=4), models).images[0]
    assert np.abs(px(cells[0].image) - px(plain.image)).max() <= 1  # weight 0 is no control at all
    assert (tmp_path / "grid" / "00000-4-control0.png").exists()


def test_hires_tile_control_is_steered_by_each_first_pass(models, nets, tmp_path):
    """A tile unit with no source waits for the hires pass and steers each image by its own enlarged first pass:
    a batch of two equals the two rendered alone (one image's map steering both would not)."""
    tile = ControlUnit("tile", "", model="tiny_sd15_canny")
    req = GenRequest(prompt="a cat", base="random:tiny", steps=3, seed=2, hires_scale=1.5, hires_upscaler="Lanczos",
                     controlnet=(tile,), controlnet_dirs=(str(nets["dir"]),), batch_size=2)
    both = generate(req, models).images
    alone = [generate(GenRequest(**{**req.__dict__, "seed": s, "batch_size": 1}), models).images[0] for s in (2, 3)]
    for b, a in zip(both, alone):
        assert np.abs(px(b.image) - px(a.image)).max() <= 1
    assert both[0].image.size == (96, 96) and "Hires upscale: 1.5" in both[0].infotext
    assert "Module: tile_resample" in both[0].infotext and both[0].control_maps == [None]  # no map to save
    plain = generate(GenRequest(**{**req.__dict__, "controlnet": ()}), models).images[0]
    assert np.abs(px(both[0].image) - px(plain.image)).mean() > 0.5
    with pytest.raises(LoracamError, match="no source"):  # without hires there is nothing to steer by
        generate(GenRequest(**{**req.__dict__, "hires_scale": None}), models)
    # gen --from: the tile unit steers by the re-rendered first pass again; the same pixels
    from loracam.generate import read_png_infotext, request_from_infotext

    saved = generate(GenRequest(**{**req.__dict__, "batch_size": 1}), models).save(tmp_path / "out")[0]
    again = request_from_infotext(read_png_infotext(saved), None, [], models, saved,
                                  controlnet_dirs=(str(nets["dir"]),))
    assert np.array_equal(np.asarray(generate(again, models).images[0].image), np.asarray(Image.open(saved)))


def test_img2img_inpaint_and_tile_upscale(models, nets, tmp_path):
    src = tmp_path / "src.png"
    Image.fromarray((np.random.default_rng(1).random((64, 64, 3)) * 255).astype("uint8")).save(src)
    mask = tmp_path / "mask.png"
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 16:48] = 255
    Image.fromarray(m).save(mask)
    tile = ControlUnit("tile", "", model="tiny_sd15_canny")
    base = dict(prompt="a cat", base="random:tiny", steps=4, seed=3, init_image=str(src), denoising=0.6,
                controlnet_dirs=(str(nets["dir"]),))
    for extra in ({}, {"mask": str(mask)}):
        with_cn = generate(GenRequest(**base, **extra, controlnet=(tile,)), models).images[0]
        without = generate(GenRequest(**base, **extra), models).images[0]
        assert np.abs(px(with_cn.image) - px(without.image)).mean() > 0.5
        assert "Module: tile_resample" in with_cn.infotext
        # the tile map is the init image itself, saved beside the output for the user to see
        assert np.array_equal(with_cn.control_maps[0], np.asarray(Image.open(src).convert("RGB")))
    masked = generate(GenRequest(**base, mask=str(mask), controlnet=(tile,)), models).images[0]
    from loracam.generate.engine import blurred_mask

    outside = np.asarray(blurred_mask(Image.fromarray(m), 4)) == 0  # where the blurred mask is 0
    assert np.abs(px(masked.image)[outside] - px(Image.open(src))[outside]).max() <= 1  # the rest is kept


def test_detail_pass_carries_its_own_controlnet(models, nets, tmp_path):
    from loracam.cli_finish import detail_passes
    from loracam.finish.gen import generate

    mask = tmp_path / "m.png"
    m = np.zeros((64, 64), np.uint8)
    m[8:40, 8:40] = 255
    Image.fromarray(m).save(mask)
    passes = detail_passes([f"mask:{mask}"], 0.6, 0.3, None, None, ["tile:0.7:model=tiny_sd15_canny"])
    assert passes[0].control[0].weight == 0.7 and passes[0].control[0].source == ""
    req = GenRequest(prompt="a cat", base="random:tiny", steps=4, seed=1, controlnet_dirs=(str(nets["dir"]),))
    with_cn = generate(req, models, detail=passes).images[0]
    plain = generate(req, models, detail=detail_passes([f"mask:{mask}"], 0.6, 0.3, None, None)).images[0]
    assert "ADetailer ControlNet model: tiny_sd15_canny [" in with_cn.infotext
    assert "ADetailer ControlNet module: tile_resample" in with_cn.infotext
    assert "ADetailer ControlNet weight: 0.7" in with_cn.infotext
    assert np.abs(px(with_cn.image) - px(plain.image)).mean() > 0.1
    from loracam.finish.detail import from_infotext
    from loracam.generate.infotext import parse_infotext

    back = from_infotext(parse_infotext(with_cn.infotext).params)
    assert back[0].control[0].kind == "tile" and back[0].control[0].weight == 0.7
    with pytest.raises(LoracamError, match="its own region"):
        detail_passes(["face"], 0.4, 0.3, None, None, ["openpose:me.jpg"])


# ---------------------------------------------------------------------------------------------
# maps and bad input


def test_resize_modes():
    img = np.zeros((40, 20, 3), np.uint8)  # tall: 20 wide, 40 high
    img[:, :10] = 255  # left half white
    just = fit(img, (40, 40), "Just Resize")
    assert just.shape == (40, 40, 3) and just[:, :18].min() == 255 and just[:, 22:].max() == 0
    crop = fit(img, (40, 40), "Crop and Resize")  # scaled to 40x80, the middle 40 rows kept
    assert crop.shape == (40, 40, 3) and crop[:, :18].min() == 255 and crop[:, 22:].max() == 0
    fill = fit(img, (40, 40), "Resize and Fill")  # scaled to 20x40, black bars left and right
    assert fill.shape == (40, 40, 3) and fill[:, :10].max() == 0 and fill[:, 30:].max() == 0
    assert fill[:, 10:19].min() == 255
    with pytest.raises(LoracamError, match="Just Resize, Crop and Resize, Resize and Fill"):
        fit(img, (40, 40), "stretch")


def test_another_aspect_is_told(models, nets, tmp_path):
    wide = tmp_path / "wide.png"
    Image.new("RGB", (128, 64), "white").save(wide)
    req = GenRequest(prompt="cat", base="random:tiny", steps=2, seed=1, controlnet_dirs=(str(nets["dir"]),),
                     controlnet=(ControlUnit("image", str(wide), model="tiny_sd15_canny", resize="Resize and Fill"),))
    res = generate(req, models)
    assert any("128x64" in w and "padded with black" in w for w in res.warnings)
    assert res.images[0].control_maps[0][:16].max() == 0 and res.images[0].control_maps[0][24:40].min() == 255


def test_canny_thresholds_are_adjustable(tmp_path):
    import cv2

    from loracam.control.preprocess import control_map

    rng = np.random.default_rng(3)
    photo = tmp_path / "p.png"
    Image.fromarray(cv2.GaussianBlur((rng.random((64, 64, 3)) * 255).astype("uint8"), (5, 5), 2)).save(photo)
    default = control_map(ControlUnit("canny", str(photo), processor_res=64), (64, 64))
    assert default.thresholds == (100, 200) and default.module == "canny"
    assert np.array_equal(default.image[..., 0], cv2.Canny(np.asarray(Image.open(photo)), 100, 200))
    low = control_map(ControlUnit.parse(f"canny:{photo}:res=64:low=10:high=30"), (64, 64))
    assert low.image.sum() > default.image.sum()


@pytest.mark.parametrize("spec,msg", [
    ("openpose", "TYPE:SOURCE"), ("depth:x.png", "unknown ControlNet type 'depth'"),
    ("canny:x.png:1:0", "WEIGHT, or WEIGHT:START:END"), ("canny:x.png:1:0.6:0.2", "start < end"),
    ("canny:x.png:-1", "0 or more"), ("canny:x.png:bogus=1", "unknown key 'bogus'"),
    ("canny:x.png:mode=louder", "unknown control mode"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(LoracamError, match=msg):
        ControlUnit.parse(spec)


def test_unknown_template_lists_the_shipped_ones(models, nets):
    req = GenRequest(prompt="cat", base="random:tiny", steps=2, controlnet=(ControlUnit("openpose", "dancing"),),
                     controlnet_dirs=(str(nets["dir"]),))
    with pytest.raises(LoracamError, match="neither a file nor a pose template.*standing"):
        generate(req, models)


def test_loracam_detail_on_a_controlnet_image_brings_its_own(nets, tmp_path):
    """`loracam detail` re-renders regions only: the image's ControlNet maps need not be beside it."""
    from typer.testing import CliRunner

    from loracam.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["gen", "a cat", "--base", "random:tiny", "--steps", "3", "--seed", "2",
                                 "--controlnet", f"image:{nets['photo']}:model=tiny_sd15_canny",
                                 "--controlnet-dir", str(nets["dir"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    (out / "00000-2-control0.png").unlink()
    mask = tmp_path / "m.png"
    m = np.zeros((64, 64), np.uint8)
    m[10:40, 10:40] = 255
    Image.fromarray(m).save(mask)
    r = CliRunner().invoke(app, ["detail", str(out / "00000-2.png"), "--detail", f"mask:{mask}", "--detail-controlnet",
                                 "tile:0.5:model=tiny_sd15_canny", "--controlnet-dir", str(nets["dir"]),
                                 "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    [done] = list((tmp_path / "d").glob("*.png"))
    text = Image.open(done).info["parameters"]
    assert "ControlNet 0: " in text and "ADetailer ControlNet weight: 0.5" in text


def test_openpose_from_a_photo_a_json_and_a_template(models, nets, tmp_path):
    from skimage import data

    from loracam.control.openpose import COLOURS
    from loracam.control.templates import load_template

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    (tmp_path / "pose.json").write_text(json.dumps(load_template("standing").to_json()))
    base = dict(prompt="a person", base="random:tiny", steps=2, seed=1, width=64, height=96,
                controlnet_dirs=(str(nets["dir"]),))
    maps = {}
    for name in ("astronaut.png", "pose.json", "standing"):
        src = str(tmp_path / name) if "." in name else name
        res = generate(GenRequest(**base, controlnet=(ControlUnit("openpose", src),)), models)
        assert "Module: openpose, Model: tiny_sd15_openpose [" in res.images[0].infotext
        maps[name] = res.images[0].control_maps[0]
        assert maps[name].shape == (96, 64, 3)
    # a template and the same pose as JSON steer with the very same map
    assert np.array_equal(maps["pose.json"], maps["standing"])
    # the astronaut's map holds the neck-to-nose limb's colour, shaded 0.6 (limb 12 of the convention)
    neck_nose = np.array([int(c * 0.6) for c in COLOURS[12]])
    assert (np.abs(maps["astronaut.png"].astype(int) - neck_nose).sum(-1) < 40).any()
    with pytest.raises(LoracamError, match="no person"):
        generate(GenRequest(**base, controlnet=(ControlUnit("openpose", str(tmp_path / "coffee.png")),)), models)


def test_a_missing_source_is_named_before_any_model_loads(models, tmp_path):
    req = GenRequest(prompt="cat", base="random:tiny", steps=2, controlnet=(ControlUnit("canny", str(tmp_path / "no.png")),))
    with pytest.raises(LoracamError, match="canny ControlNet's source .*no.png is not found"):
        generate(req, models)  # no --controlnet-dir either: the source is what the user must fix first


def test_the_toy_controlnet_puts_the_dolls_where_their_skeletons_are(tmp_path):
    """The shipped toy-openpose, found by type on the toy base, steering through gen from a user's pose JSON:
    four held-out full-body dolls land on their skeletons (benchmark on 48: box IoU 0.50 -> 0.86)."""
    from loracam.control.openpose import Pose
    from loracam.models import ModelCache
    from loracam.toy import judge, skeleton, world
    from loracam.toy.controlnet import box_iou, located, person_box, placement_dolls
    from loracam.toy.locator import MIN_VISIBLE, Locator

    toy = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    locator, ious = Locator.load(), {"without": [], "with": []}
    for i, doll in enumerate(placement_dolls(4, 11)):
        pose = tmp_path / f"pose{i}.json"
        pose.write_text(json.dumps(Pose((skeleton.person(doll),), 512, 768).to_json()))
        truth = person_box({k: v for k, v in world.boxes(doll, min_visible=MIN_VISIBLE).items()
                            if k in ("face", "garment", "shoes")})
        for key, units in (("without", ()), ("with", (ControlUnit("openpose", str(pose)),))):
            shared = Shared(64, 96, 20, "DPM++ 2M", "Automatic", control=units)
            [r] = render_samples(toy, shared, [Sample(world.tags(doll), judge.NEGATIVE, 500 + i, 5.0)], LoraLibrary([]))
            ious[key].append(box_iou(located(locator, np.array(r.image)[None])[0], truth))
            if units:
                assert "Model: toy-openpose [" in r.infotext
    # measured: without 0.65, 0.60, 0.43, 0.57 (mean 0.56), with 0.92, 0.84, 0.91, 0.87 (mean 0.89)
    assert np.mean(ious["with"]) > np.mean(ious["without"]) + 0.15 and min(ious["with"]) > 0.7


def test_info_describes_a_controlnet_file(tiny, tmp_path):
    from loracam.info import describe
    from loracam.models import HashCache

    path = save_single_file(tiny_controlnet(tiny.unet, 5), tmp_path / "control_tiny_openpose.safetensors")
    report = describe(path, HashCache(None))
    assert report["kind"] == "controlnet" and report["names"].startswith("LDM")
    assert report["infotext_model"] == f"control_tiny_openpose [{a1111_hash(path)}]"
    assert report["config"] == "in the file (loracam)" and report["hint_convs"] == 8


def test_a_source_is_preprocessed_once_for_both_hires_passes(models, nets, monkeypatch):
    """The first pass and the hires pass fit one preprocessed map (a photo's pose is detected once)."""
    from dataclasses import replace as dc_replace

    from loracam.control import preprocess

    calls = []
    canny = preprocess.PREPROCESSORS["canny"]
    monkeypatch.setitem(preprocess.PREPROCESSORS, "canny",
                        dc_replace(canny, make=lambda u, own: calls.append(u) or canny.make(u, own)))
    unit = ControlUnit("canny", str(nets["photo"]), model="tiny_sd15_canny", processor_res=64)
    req = GenRequest(prompt="a cat", base="random:tiny", steps=2, seed=1, hires_scale=1.5, hires_upscaler="Lanczos",
                     controlnet=(unit,), controlnet_dirs=(str(nets["dir"]),))
    generate(req, models)
    assert len(calls) == 1
