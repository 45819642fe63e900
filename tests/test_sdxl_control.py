"""ControlNet on an SDXL base: parity with diffusers' SDXL ControlNet pipeline, SDXL files told from SD1.x ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from loracam.control.models import ControlNets, load_controlnet, save_single_file
from loracam.control.units import ControlUnit
from loracam.errors import LoracamError
from loracam.generate import Sample, Shared
from loracam.generate.api import render_samples
from loracam.generate.samplers import build_scheduler
from loracam.lora import LoraLibrary
from test_control import tiny_controlnet


def px(im) -> np.ndarray:
    return np.asarray(getattr(im, "image", im), dtype=np.int16)


@pytest.fixture(scope="module")
def xl_nets(tiny_sdxl, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("xlcn")
    net = tiny_controlnet(tiny_sdxl.unet, 1, hint=(4, 8))  # one stride-2 step: the tiny SDXL VAE's factor
    net.save_pretrained(root / "tiny_sdxl_canny")
    save_single_file(net, root / "tiny_sdxl_openpose.safetensors")
    tiny_controlnet(tiny.unet, 2).save_pretrained(root / "tiny_sd15_canny")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(root / "photo.png")
    return {"dir": root, "net": net, "photo": root / "photo.png"}


def test_an_sdxl_controlnet_matches_diffusers_sdxl_controlnet_pipeline(tiny_sdxl, xl_nets):
    from diffusers import StableDiffusionXLControlNetPipeline

    unit = ControlUnit("image", str(xl_nets["photo"]), model=str(xl_nets["dir"] / "tiny_sdxl_canny"))
    shared = Shared(64, 64, 3, "Euler", "Automatic", control=(unit,))
    [mine] = render_samples(tiny_sdxl, shared, [Sample("a photo of a cat", "ugly", 123, 7.0)], LoraLibrary([]))
    pipe = StableDiffusionXLControlNetPipeline(**tiny_sdxl.components(), controlnet=xl_nets["net"])
    pipe.scheduler = build_scheduler(tiny_sdxl.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a photo of a cat", image=Image.open(xl_nets["photo"]).convert("RGB"), negative_prompt="ugly",
               num_inference_steps=3, height=64, width=64, guidance_scale=7.0,
               generator=torch.Generator().manual_seed(123)).images[0]
    assert np.abs(px(mine) - px(ref)).max() <= 1
    [plain] = render_samples(tiny_sdxl, Shared(64, 64, 3, "Euler", "Automatic"),
                             [Sample("a photo of a cat", "ugly", 123, 7.0)], LoraLibrary([]))
    assert np.abs(px(mine) - px(plain)).mean() > 1  # the net steers: the parity is not trivial


def test_an_sdxl_controlnet_single_file_loads_back_exactly(xl_nets):
    back = load_controlnet(xl_nets["dir"] / "tiny_sdxl_openpose.safetensors", "sdxl")
    want = xl_nets["net"].state_dict()
    assert back.state_dict().keys() == want.keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in want.items())


def test_controlnets_of_the_other_family_are_refused_naming_both(tiny_sdxl, tiny, xl_nets):
    lib = ControlNets()
    with pytest.raises(LoracamError, match="tiny_sdxl_canny is an SDXL ControlNet; the base model is SD1.x"):
        lib.load(lib._named(str(xl_nets["dir"] / "tiny_sdxl_canny")), "cpu", torch.float32, tiny.unet.config)
    with pytest.raises(LoracamError, match="tiny_sdxl_openpose.safetensors is an SDXL ControlNet; the base model "
                                           "is SD1.x"):
        lib.load(lib._named(str(xl_nets["dir"] / "tiny_sdxl_openpose.safetensors")), "cpu", torch.float32,
                 tiny.unet.config)
    with pytest.raises(LoracamError, match="tiny_sd15_canny is an SD1.x ControlNet; the base model is SDXL"):
        lib.load(lib._named(str(xl_nets["dir"] / "tiny_sd15_canny")), "cpu", torch.float32, tiny_sdxl.unet.config)


def tiny_union(unet, seed: int, types: int = 6):
    """A random union ControlNet (xinsir's architecture) of the tiny SDXL U-Net's shape, zero convs randomised."""
    from diffusers import ControlNetUnionModel

    net = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    width = net.config.block_out_channels[0]  # its transformer runs at the first block's width (SDXL: 320)
    config = {k: v for k, v in net.config.items() if not k.startswith("_")}  # _use_default_values would win
    net = ControlNetUnionModel.from_config({**config, "num_control_type": types, "num_trans_channel": width,
                                            "num_proj_channel": width, "num_trans_head": 2})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            # the type's own weights larger, so that which type the model is told shows in its images
            typed = name == "task_embedding" or name.startswith("control_add_embedding.")
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 if typed else 0.05))
    return net.eval()


@pytest.fixture(scope="module")
def unions(tiny_sdxl, tmp_path_factory):
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("union")
    net = tiny_union(tiny_sdxl.unet, 5)
    net.save_pretrained(root / "folder" / "tiny-union-sdxl")
    (root / "files").mkdir()
    # xinsir's single file: diffusers' tensor names; a tiny one needs its config beside it (a full-size one does not:
    # test_a_full_size_union_file_gets_sdxls_config)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(root / "files" / "controlnet-union-sdxl-1.0.safetensors"))
    net.save_config(root / "files")
    (root / "files" / "config.json").rename(root / "files" / "controlnet-union-sdxl-1.0.json")
    rng = np.random.default_rng(2)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(root / "map.png")
    return {"root": root, "net": net, "map": root / "map.png"}


def test_a_union_controlnet_matches_diffusers_union_pipeline(tiny_sdxl, unions):
    """A union model steering by a ready map as Hard Edge (union=canny) gives StableDiffusionXLControlNetUnionPipeline's
    image with control_mode 3; another type is another image."""
    from diffusers import StableDiffusionXLControlNetUnionPipeline

    folder = str(unions["root"] / "folder" / "tiny-union-sdxl")
    sample = [Sample("a photo of a cat", "ugly", 7, 6.0)]

    def mine(union):
        unit = ControlUnit("image", str(unions["map"]), model=folder, union=union)
        return render_samples(tiny_sdxl, Shared(64, 64, 3, "Euler", "Automatic", control=(unit,)), sample,
                              LoraLibrary([]))[0]

    pipe = StableDiffusionXLControlNetUnionPipeline(**tiny_sdxl.components(), controlnet=unions["net"])
    pipe.scheduler = build_scheduler(tiny_sdxl.scheduler_config, "Euler", "Automatic")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a photo of a cat", control_image=[Image.open(unions["map"]).convert("RGB")], control_mode=[3],
               negative_prompt="ugly", num_inference_steps=3, height=64, width=64, guidance_scale=6.0,
               generator=torch.Generator().manual_seed(7)).images[0]
    hard = mine("canny")
    assert np.abs(px(hard) - px(ref)).max() <= 1
    assert "Union Control Type: Hard Edge" in hard.infotext
    plain = render_samples(tiny_sdxl, Shared(64, 64, 3, "Euler", "Automatic"), sample, LoraLibrary([]))[0]
    assert np.abs(px(hard) - px(plain)).mean() > 0.5  # the net steers: the parity is not trivial
    # the type reaches the model (through its time embedding and task embedding)
    assert np.abs(px(mine("Depth")) - px(hard)).mean() > 0.5  # so the parity above tells types apart


def test_a_union_file_answers_for_any_type_and_says_what_it_cannot(tiny_sdxl, unions):
    from loracam.control.guidance import Control

    lib = ControlNets([unions["root"] / "files"])
    f = lib.find(ControlUnit("canny", str(unions["map"])), "canny", tiny_sdxl.name)
    assert f.name == "controlnet-union-sdxl-1.0" and f.is_union
    back = lib.load(f, "cpu", torch.float32, tiny_sdxl.unet.config)
    want = unions["net"].state_dict()
    assert back.config.num_control_type == 6 and all(torch.equal(back.state_dict()[k], v) for k, v in want.items())
    control = Control([ControlUnit("openpose", "standing"), ControlUnit("canny", str(unions["map"]))], lib, tiny_sdxl)
    assert control.union == [0, 3]  # the type from the unit's kind
    with pytest.raises(LoracamError, match="an image map does not say what it shows: add union=TYPE"):
        Control([ControlUnit("image", str(unions["map"]))], lib, tiny_sdxl)
    with pytest.raises(LoracamError, match="knows 6 control types .* Tile needs the ProMax model"):
        Control([ControlUnit("tile", str(unions["map"]))], lib, tiny_sdxl)
    with pytest.raises(LoracamError, match="unknown union control type 'sketchy'"):
        ControlUnit.parse(f"image:{unions['map']}:union=sketchy")


def test_a_full_size_union_file_gets_sdxls_config():
    """A union file without a config (xinsir's controlnet-union-sdxl-1.0, ProMax) is built as diffusers builds one
    from SDXL's U-Net, with the file's number of types: its tensors fit that model by name and shape."""
    from diffusers import ControlNetUnionModel, UNet2DConditionModel

    from loracam.control.models import sdxl_controlnet_config
    from loracam.models import sdxl_configs

    with torch.device("meta"):
        want = ControlNetUnionModel.from_unet(UNet2DConditionModel.from_config(sdxl_configs()["unet"]),
                                              load_weights_from_unet=False).state_dict()
        config = sdxl_controlnet_config(union_types=8)
        got = ControlNetUnionModel.from_config(config).state_dict()
    shapes = lambda sd: {k: tuple(v.shape) for k, v in sd.items()}  # noqa: E731
    assert shapes(got) == {**shapes(want), "task_embedding": (8, 320),
                           "control_add_embedding.linear_1.weight": (1280, 8 * 256)}


def test_info_describes_a_union_file(unions):
    from loracam.info import describe
    from loracam.models import HashCache

    report = describe(unions["root"] / "files" / "controlnet-union-sdxl-1.0.safetensors", HashCache(None))
    assert report["kind"] == "controlnet" and report["family"] == "sdxl"
    assert report["union_types"] == "OpenPose, Depth, Soft Edge, Hard Edge, Normal Map, Segmentation"
    assert report["config"] == "controlnet-union-sdxl-1.0.json, beside it"
