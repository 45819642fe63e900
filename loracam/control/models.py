"""ControlNet models: found by name, file stem, hash or type in the ControlNet folders, loaded offline.

Formats: diffusers folders (config.json + weights); single files (.safetensors, or .pth/.pt loaded
weights-only: torch's safe loader, which runs no code) with lllyasviel's LDM names (``control_model.*``)
or diffusers' names. A single file's config comes from loracam's own metadata when it has it, else its family's
standard one: the SD1.5 ControlNet config loracam ships (loracam/models/configs/controlnet_sd15), or for an SDXL
ControlNet (told apart by its text width, 2048, and its added embedding) one made from SDXL's shipped U-Net config,
as diffusers' SDXL ControlNets are; nothing is fetched. A ControlNet of another family than the base is refused
with both named.
Union ControlNets (one model, several control types: loracam.control.union) load as diffusers' ControlNetUnionModel,
from a folder whose config names that class or a single file in diffusers' names (xinsir's); such a file answers for
every type it knows when no model of the unit's type is in the folders.
Infotexts name a model ``stem [hash]``, the hash A1111's: the first 8 hex of the sha256 of 64 KiB read at
offset 1 MiB of the file.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from loracam.control.union import is_union_state
from loracam.errors import LoracamError
from loracam.models.builtin import CONTROLNETS as BUILTINS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "models" / "configs" / "controlnet_sd15"
TOY_CONTROLNET = BUILTINS["toy-openpose"]
SUFFIXES = (".safetensors", ".pth", ".pt")
CONFIG_KEY = "loracam_controlnet_config"
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def a1111_hash(path: Path) -> str:
    """A1111's short model hash: sha256 of the 0x10000 bytes at 0x100000, first 8 hex (empty past the end)."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


@dataclass(frozen=True)
class NetFile:
    name: str  # what the infotext shows: the file's stem (a folder's name)
    path: Path  # a single file, or a diffusers folder

    @property
    def weights(self) -> Path:
        """The file the hash is taken of."""
        if self.path.is_dir():
            for w in _WEIGHT_FILES:
                if (self.path / w).exists():
                    return self.path / w
            raise LoracamError(f"{self.path} has a config.json but no ControlNet weights ({' or '.join(_WEIGHT_FILES)})")
        return self.path

    @property
    def is_union(self) -> bool:
        """Whether this is a union ControlNet (its folder's config class, or its file's tensor names)."""
        try:
            if self.path.is_dir():
                return json.loads((self.path / "config.json").read_text()).get("_class_name") == "ControlNetUnionModel"
            if self.path.suffix.lower() == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(self.path), framework="pt") as f:
                    return is_union_state(f.keys())
        except Exception:  # an unreadable file (any error safetensors or json raise) is reported when it is loaded
            return False
        return False

    @property
    def short_hash(self) -> str:
        return a1111_hash(self.weights)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.short_hash}]"


class ControlNets:
    """The ControlNets of some folders (plus the built-in toy one), loaded once each and kept."""

    def __init__(self, dirs: Sequence[Path] = ()):
        self.dirs = [Path(d) for d in dirs]
        self._loaded: dict[tuple, torch.nn.Module] = {}
        self._lock = threading.Lock()

    def files(self) -> list[NetFile]:
        out = [NetFile(n, p) for n, p in BUILTINS.items() if (p / "config.json").exists()]
        for d in self.dirs:
            if not d.is_dir():
                raise LoracamError(f"ControlNet folder not found: {d}")
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in SUFFIXES and f.is_file():
                    out.append(NetFile(f.stem, f))
                elif f.is_dir() and (f / "config.json").exists():
                    out.append(NetFile(f.name, f))
        return out

    def find(self, unit, keyword: str, base_name: str = "") -> NetFile:
        """The model a unit asks for: its ``model`` (a path, name, stem or hash), else by its type's keyword."""
        if unit.model:
            return self._named(unit.model)
        files = self.files()
        if base_name == "toy":  # the toy world's own ControlNets answer for the toy base first
            toy = [f for f in files if f.name.startswith("toy-") and keyword and keyword in f.name]
            if toy:
                return toy[0]
        hits = [f for f in files if keyword and keyword in f.name.lower() and not f.name.startswith("toy-")]
        if len(hits) > 1:
            sd15 = [f for f in hits if "sd15" in f.name.lower()]
            hits = sd15 if len(sd15) == 1 else hits
        if len(hits) == 1:
            return hits[0]
        union = [f for f in files if not hits and not f.name.startswith("toy-") and f.is_union]
        if len(union) == 1:  # a union model answers for every type when none of the unit's own type is there
            return union[0]
        where = ", ".join(map(str, self.dirs)) or "no --controlnet-dir given"
        if not hits:
            raise LoracamError(f"no {unit.kind} ControlNet found ({where}); put one there (e.g. "
                               f"control_v11p_sd15_{keyword or 'openpose'}.safetensors) or name it with "
                               f"{unit.kind}:SOURCE:model=NAME_OR_PATH")
        raise LoracamError(f"several {unit.kind} ControlNets match ({', '.join(f.name for f in hits)}); pick one with "
                           f"{unit.kind}:SOURCE:model=NAME")

    def _named(self, ref: str) -> NetFile:
        path = Path(ref)
        if path.exists():
            return NetFile(path.stem if path.is_file() else path.name, path)
        files = self.files()
        stem = ref.partition(" [")[0].strip()  # the infotext's label "stem [hash]", or either half of it
        for f in files:
            if f.name == stem or f.name.lower() == ref.lower():
                return f
        h = ref.strip().strip("[]").lower()
        if len(h) == 8:
            for f in files:
                if f.short_hash == h:
                    return f
        where = ", ".join(map(str, self.dirs)) or "no --controlnet-dir given"
        raise LoracamError(f"ControlNet {ref!r} not found ({where}); known: "
                           f"{', '.join(f.name for f in files) or 'none'}")

    def load(self, net: NetFile, device, dtype, unet_config) -> torch.nn.Module:
        """The ControlNetModel of ``net`` on ``device``/``dtype``, checked against the base U-Net."""
        key = (str(net.path.resolve()), str(device), str(dtype))
        with self._lock:
            if key not in self._loaded:
                model = load_controlnet(net.path, config_family(unet_config))
                check_fits(model.config, unet_config, net.name)
                if dtype != torch.float32:
                    model = model.half() if dtype == torch.float16 else model.to(dtype=dtype)
                self._loaded[key] = model.to(device).eval().requires_grad_(False)
            return self._loaded[key]


def load_controlnet(path: Path, base_family: str = "sd1"):
    """A ControlNetModel (or ControlNetUnionModel) from a diffusers folder or a single file (see the module's
    docstring), for a base of ``base_family``."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    if path.is_dir():
        cls = ControlNetUnionModel if NetFile(path.name, path).is_union else ControlNetModel
        try:
            model = cls.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise LoracamError(f"{path} could not be loaded as a diffusers ControlNet folder ({exc})") from None
        _same_family(config_family(model.config), base_family, path.name)
        return model
    state, meta = _read_state(path)
    family = _check_kind(state, path.name)
    _same_family(family, base_family, path.name)
    union = is_union_state(state)
    config = _config_of(path, meta, family, state["task_embedding"].shape[0] if union else 0)
    if any(k.startswith("control_model.") for k in state):
        from loracam.models.ldm import controlnet_from_ldm

        try:
            state = controlnet_from_ldm(state, config)
        except LoracamError as exc:
            raise LoracamError(f"{path.name}: {exc}") from None
    with torch.device("meta"):
        model = (ControlNetUnionModel if union else ControlNetModel).from_config(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        standard = "an SDXL" if family == "sdxl" else "an SD1.5"
        raise LoracamError(f"{path.name} does not fit {standard} ControlNet ({str(exc).splitlines()[0]}); a "
                           "smaller or other variant needs its config.json beside it as STEM.json") from None
    return model.float()


def _config_of(path: Path, meta: dict, family: str = "sd1", union_types: int = 0) -> dict:
    """The file's own config (loracam's metadata), a ``STEM.json`` diffusers config beside it, or its family's
    (a union file's: SDXL's with its number of control types)."""
    try:
        if CONFIG_KEY in meta:
            return json.loads(meta[CONFIG_KEY])
        side = path.with_suffix(".json")
        if side.exists():
            return json.loads(side.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise LoracamError(f"{path.name}: its ControlNet config is not valid JSON ({exc})") from None
    if family == "sdxl":
        return sdxl_controlnet_config(union_types=union_types)
    if union_types:
        raise LoracamError(f"{path.name} is a union ControlNet for SD1.x without its config: put its config.json "
                           "beside it as STEM.json")
    return json.loads((CONFIG_DIR / "config.json").read_text(encoding="utf-8"))


def sdxl_controlnet_config(unet_config: dict | None = None, union_types: int = 0) -> dict:
    """The ControlNet diffusers makes from an SDXL U-Net (ControlNetModel.from_unet): its encoder half and added
    embedding, a 3-channel hint encoder; the shipped SDXL base's U-Net by default. ``union_types``: a union model's
    (xinsir's: 6, ProMax 8) with diffusers' defaults for its transformer, which are xinsir's."""
    from diffusers import ControlNetModel, ControlNetUnionModel, UNet2DConditionModel

    from loracam.models import sdxl_configs

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config or sdxl_configs()["unet"])
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        config = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
        if union_types:  # its transformer runs at the first block's width (diffusers' default 320 is SDXL's)
            base = dict(ControlNetUnionModel.from_unet(unet, load_weights_from_unet=False).config)
            width = base["block_out_channels"][0]
            config = {k: v for k, v in base.items() if not k.startswith("_")} | {
                "num_control_type": union_types, "num_trans_channel": width, "num_proj_channel": width}
    return config


def config_family(config) -> str:
    """"sdxl" for a U-Net or ControlNet config that takes SDXL's pooled text and size ids, else by its text width."""
    if config.get("addition_embed_type") == "text_time":
        return "sdxl"
    return FAMILIES.get(config.get("cross_attention_dim"), ("sd1", ""))[0]


def _same_family(family: str, base_family: str, name: str) -> None:
    if family != base_family:
        from loracam.models.families import article, short_name

        raise LoracamError(f"{name} is {article(family)} {short_name(family)} ControlNet; "
                           f"the base model is {short_name(base_family)}: use a ControlNet made for "
                           f"{short_name(base_family)}")


def save_single_file(controlnet, path: Path) -> Path:
    """Write a ControlNetModel as an LDM single file (``control_model.*``, what A1111 and ComfyUI load), its
    diffusers config in the metadata so loracam loads other sizes than SD1.5's back offline."""
    from safetensors.torch import save_file

    from loracam.io import atomic_write
    from loracam.models.ldm import controlnet_to_ldm

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in controlnet_to_ldm(controlnet).items()}
    config = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
    meta = {CONFIG_KEY: json.dumps(config, sort_keys=True)}
    try:
        return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))
    except FileExistsError:
        raise LoracamError(f"{path} already exists; choose another name") from None


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as exc:  # safetensors raises several types for damaged files
            raise LoracamError(f"{path.name} could not be read as safetensors ({exc}); the file is damaged "
                               "or incomplete: download it again") from None
    if suffix in (".pth", ".pt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise LoracamError(f"{path.name} could not be loaded weights-only ({type(exc).__name__}); it is "
                               "damaged or holds more than tensors: use a .safetensors version") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise LoracamError(f"{path.name} holds a {type(state).__name__}, not a ControlNet's tensors")
        return state, {}
    raise LoracamError(f"{path.name}: ControlNets are .safetensors or .pth files, or diffusers folders")


# the text encoder's width a ControlNet's cross-attention reads: which base family it was made for
FAMILIES = {768: ("sd1", "SD1.x"), 1024: ("sd2", "SD2.x"), 2048: ("sdxl", "SDXL")}


def text_width(shapes, ldm: bool) -> int | None:
    """The cross-attention input width of a ControlNet's first cross-attention, from its tensors' shapes (SDXL's
    first block has none: the first one there is)."""
    prefix = "control_model." if ldm else ""
    probe = next((k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    return shapes[probe][1] if probe is not None else None


def family_of_keys(keys, width: int | None) -> str | None:
    """"sdxl" for a ControlNet with SDXL's added embedding (pooled text and size ids) or its text width, else the
    family of its text width (None when unknown)."""
    if any("label_emb" in k or "add_embedding" in k for k in keys) or width == 2048:
        return "sdxl"
    return FAMILIES[width][0] if width in FAMILIES else None


def _check_kind(state: dict, name: str) -> str:
    """The family of a ControlNet file ("sd1", "sdxl"); a file that is no ControlNet, or of SD2, is refused."""
    keys = list(state)
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k for k in keys):
        raise LoracamError(f"{name} is a LoRA, not a ControlNet: put it in --lora-dir and use <lora:NAME:W>")
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise LoracamError(f"{name} is a Stable Diffusion checkpoint, not a ControlNet: pass it as --base")
    ldm = any(k.startswith("control_model.") for k in keys)
    if not ldm and "controlnet_cond_embedding.conv_in.weight" not in state:
        raise LoracamError(f"{name} is not a ControlNet (no control_model.* or controlnet_cond_embedding "
                           "weights); T2I-Adapters and control-LoRAs are not supported")
    width = text_width({k: v.shape for k, v in state.items()}, ldm)
    if family_of_keys(keys, width) == "sdxl":
        return "sdxl"
    if width == 1024:
        raise LoracamError(f"{name} is an SD2.x ControlNet; loracam runs SD1.x and SDXL bases: use a ControlNet "
                           "for one of those")
    return "sd1"


def check_fits(config, unet_config, name: str) -> None:
    """A ControlNet adds its residuals to the U-Net's skip connections: the widths must be the U-Net's (its family
    was checked as it was loaded)."""
    mine = (list(config["block_out_channels"]), config["cross_attention_dim"], config["layers_per_block"])
    base = (list(unet_config["block_out_channels"]), unet_config["cross_attention_dim"], unet_config["layers_per_block"])
    if mine != base:
        raise LoracamError(f"{name} was made for another base (widths {mine[0]}, text width {mine[1]}; this base "
                           f"has {base[0]}, {base[1]}): use a ControlNet for this model's family")
