"""Upscaler model files: any single-image model spandrel knows, read offline, with clear errors for the rest.

spandrel (chaiNNer's loader, also ComfyUI's) reads .pth/.pt/.ckpt (restricted unpickling: weights only) and
.safetensors, unwraps the usual wrappers (``params_ema``, ``params``, ``model``, ...) and recognises the
architecture from the tensor names: old and new ESRGAN layouts, Real-ESRGAN x4plus/x2plus, SRVGGNetCompact,
SwinIR, HAT, DAT, ... Its package imports torchvision for two architectures loracam never runs (LaMa
inpainting, RestoreFormer face restoration); where torchvision is missing, a stand-in that fails if those
are ever used is in sys.modules during the import only (shared/docs/environment.md).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from loracam.errors import LoracamError

MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
INSTALL = "pip install --no-deps spandrel==0.4.2 einops (loracam's make setup does this)"


def import_spandrel():
    """The spandrel package; with a stand-in torchvision while importing it where the real one is missing."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    if importlib.util.find_spec("spandrel") is None:
        raise LoracamError(f"upscaler models need the spandrel package: {INSTALL}")
    if importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    stand_in = _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        import spandrel
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return spandrel


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def missing(*_a, **_k):
        raise RuntimeError("this model architecture needs torchvision, which is not installed")

    root, transforms, functional = (types.ModuleType(n) for n in
                                    ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"))
    functional.InterpolationMode = type("InterpolationMode", (), {"BILINEAR": "bilinear", "NEAREST": "nearest"})
    functional.rotate = functional.normalize = missing
    root.transforms, transforms.functional = transforms, functional
    return {m.__name__: m for m in (root, transforms, functional)}


def load_descriptor(path: Path, device):
    """spandrel's ImageModelDescriptor for an upscaler file, or a LoracamError that says what the file is."""
    path = Path(path)
    if not path.is_file():
        raise LoracamError(f"upscaler model {path} does not exist; give a .pth or .safetensors file, "
                           "or one of the built-in upscalers")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise LoracamError(f"{path.name}: upscaler models are {', '.join(MODEL_SUFFIXES)} files")
    spandrel = import_spandrel()
    loader = spandrel.ModelLoader(device="cpu")
    try:
        state = loader.load_state_dict_from_file(str(path))
    except Exception as exc:  # torch.load, safetensors and zip raise many kinds; all mean "unreadable"
        raise LoracamError(f"{path.name} could not be read as a model file ({type(exc).__name__}: "
                           f"{str(exc)[:160]}); it is damaged or not a model: download it again") from None
    try:
        desc = loader.load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise LoracamError(f"{path.name} is {what_is(state.keys())}, not an upscaler model "
                           "(ESRGAN, Real-ESRGAN, SwinIR, ...)") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        raise LoracamError(f"{path.name} looks like a {_arch_guess(state)} upscaler but its tensors do not fit "
                           f"({str(exc)[:160]}); the file is damaged or incomplete: download it again") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.purpose not in ("SR", "Restoration"):
        raise LoracamError(f"{path.name} is a {desc.architecture.name} model for {desc.purpose.lower()}, "
                           "not an upscaler")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise LoracamError(f"{path.name} works on {desc.input_channels}-channel images; loracam upscales RGB")
    return desc.to(device).eval()


def what_is(keys) -> str:
    """A user's word for a state dict spandrel does not know, from its tensor names."""
    keys = list(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("model.diffusion_model.") or has("conditioner.embedders."):
        return "a Stable Diffusion checkpoint"
    if has("lora_unet_") or has("lora_te") or any(".lora_A." in k or ".lora_down." in k for k in keys):
        return "a LoRA"
    if has("control_model.") or has("controlnet_"):
        return "a ControlNet"
    if has("encoder.down_blocks.") or has("first_stage_model.") or has("decoder.conv_in."):
        return "a VAE"
    return "a model whose layout spandrel does not know"


def _arch_guess(state) -> str:
    keys = list(state.keys())
    if any(k.startswith(("conv_first.", "model.0.")) for k in keys):
        return "ESRGAN"
    if any(k.startswith("body.") for k in keys):
        return "SRVGG (Real-ESRGAN compact)"
    return "known"
