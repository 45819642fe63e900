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
