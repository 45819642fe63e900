"""Resolve a ``--base`` reference and load it: single file, diffusers folder, hub id, random:*, toy.

Every kind of reference has one loader in ``LOADERS``; ``resolve_ref`` decides the kind. Loading never
reaches the network unless the reference is a hub id the user named, and then only after a quick
reachability check, so an offline machine fails in seconds with a message instead of hanging.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from loracam.errors import LoracamError
from loracam.models.base import BaseModel
from loracam.models.families import (FAMILIES, Family, article, family_of_checkpoint, family_of_pipeline,
                                     require_supported, short_name)
from loracam.models.hashing import HashCache
from loracam.models.tiny import (SD15_DIR, SDXL_DIR, clip_tokenizer, sd15_configs, sdxl_configs,
                                 tiny_configs, tiny_sdxl_configs)
from loracam.models.zimage import build_random_zimage, tiny_zimage_configs, variant_of, zimage_configs

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
TOY_DIR = Path(__file__).resolve().parent.parent / "toy" / "model"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# A base's prediction, when its file does not say: what a checkpoint's v_pred / ztsnr marker keys would (empty
# tensors that ComfyUI, A1111 and Forge read for NoobAI-style bases, shared/docs/research/sdxl_flux.md s1.6;
# diffusers' from_single_file ignores them).
PREDICTIONS = ("epsilon", "v_prediction", "v_prediction+ztsnr")


@dataclass(frozen=True)
class LoadOptions:
    """How to load: where, in which precision, and what the user consented to."""

    device: torch.device
    dtype: torch.dtype
    allow_pickle: bool = False
    hash_cache: HashCache | None = None
    # what a checkpoint's v_pred / ztsnr marker keys would say, for files that lack them: None reads the file,
    # "epsilon", "v_prediction" or "v_prediction+ztsnr" overrides it
    prediction: str | None = None
    vae: str | None = None  # a separate VAE (file or diffusers folder) replacing the base's: --vae
    variant: str | None = None  # a family's variant when its files cannot tell (Z-Image: turbo | base)

    def __post_init__(self):
        if self.prediction is not None and self.prediction not in PREDICTIONS:  # before minutes of loading
            raise LoracamError(f"unknown prediction {self.prediction!r}; use {', '.join(PREDICTIONS)}")


@dataclass(frozen=True)
class Ref:
    kind: str  # file | folder | hub | random | toy
    value: str


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LoracamError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LoracamError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on a GPU (as A1111 runs SD1.5) and fp32 on a CPU, where fp16 is slow."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise LoracamError(f"unknown precision {name!r}; use auto, {', '.join(table)}")
    return table[name]


def resolve_ref(ref: str | None) -> Ref:
    """Classify a base reference; ``None`` means the default base, the built-in toy model."""
    if ref is None or ref == "toy":
        return Ref("toy", "toy")
    if ref.startswith("random:"):
        if ref not in RANDOM_CONFIGS:
            raise LoracamError(f"unknown random model {ref!r}; use {', '.join(RANDOM_CONFIGS)}")
        return Ref("random", ref)
    path = Path(ref).expanduser()
    if path.is_file():
        return Ref("file", str(path.resolve()))
    if path.is_dir():
        return Ref("folder", str(path.resolve()))
    if HUB_ID.match(ref) and not ref.startswith((".", "/", "~")) and not path.suffix:
        return Ref("hub", ref)
    raise LoracamError(
        f"base model not found: {ref!r} is not a file, a folder, a hub id (owner/name), "
        f"{', '.join(RANDOM_CONFIGS)} or toy"
    )


def ref_family(ref: str | None, allow_pickle: bool = False) -> str:
    """The family of the model a reference names, without loading it (tensor names, model_index.json), so a
    trainer can pick its family's presets and sizes first."""
    r = resolve_ref(ref)
    if r.kind == "random":
        return RANDOM_CONFIGS[r.value][0]
    if r.kind == "file":
        return checkpoint_family(checkpoint_keys(Path(r.value), allow_pickle), Path(r.value).name).name
    if r.kind == "folder" and (Path(r.value) / "model_index.json").exists():
        return folder_family(Path(r.value)).name
    if r.kind == "hub":
        return _hub_family(r.value, local_only=True) or "sd1"
    return "sd1"  # the toy base, or a folder load_base will explain


def ref_defaults(ref: str | None, variant: str | None = None, allow_pickle: bool = False) -> tuple[str, int, float]:
    """(sampler, steps, CFG scale) a render on this base defaults to: its family's (and variant's: Z-Image Turbo
    9 steps at CFG 1, Base 30 at 5), read without loading the model. A reference that cannot be read gets SD's
    defaults here; loading it then says what is wrong."""
    try:
        family = FAMILIES[ref_family(ref, allow_pickle)]
    except LoracamError:
        family = FAMILIES["sd1"]
    if family.name == "zimage":
        v = variant_of(Path(str(ref)).name, variant)  # the file's or folder's own name, not its parents'

        return family.default_sampler, v.steps, v.cfg
    return family.default_sampler, family.default_steps, family.default_cfg


def load_base(ref: str | None, opts: LoadOptions) -> BaseModel:
    """Load the model a reference names, with every problem reported as a LoracamError."""
    r = resolve_ref(ref)
    with _quiet_libraries():
        model = LOADERS[r.kind](r.value, opts)
    if opts.vae:
        with _quiet_libraries():
            use_vae(model, opts)
    for module in model.modules():
        module.eval()
        module.requires_grad_(False)
    return model


def use_vae(model: BaseModel, opts: LoadOptions) -> None:
    """Replace the base's VAE with ``opts.vae`` (A1111's SD VAE: sdxl-vae-fp16-fix and the like), a .safetensors
    file in LDM or diffusers names or a diffusers folder, built from the family's VAE config; its name and hash go
    into the infotext as A1111's "VAE" and "VAE hash"."""
    from diffusers import AutoencoderKL

    path = Path(opts.vae).expanduser()
    if not path.exists():
        raise LoracamError(f"--vae {opts.vae}: no such file or folder")
    try:
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
        else:
            if path.suffix.lower() not in SAFE_SUFFIXES:
                raise LoracamError(f"--vae {path.name}: loracam reads VAEs as .safetensors; use that version")
            checkpoint_keys(path, False)  # a damaged file is a message, not a traceback from safetensors
            with tempfile.TemporaryDirectory(prefix="loracam-vae-") as tmp:  # built like the base's own VAE
                (Path(tmp) / "vae").mkdir()
                (Path(tmp) / "vae" / "config.json").write_text(model.vae.to_json_string(), encoding="utf-8")
                vae = AutoencoderKL.from_single_file(str(path), config=tmp, subfolder="vae",
                                                     local_files_only=True, torch_dtype=torch.float32)
    except LoracamError:
        raise
    except Exception as exc:
        raise LoracamError(f"--vae {path.name} could not be loaded as {model.spec.short}'s VAE "
                           f"({type(exc).__name__}: {exc}); is it a VAE of this family?") from None
    if vae.config.latent_channels != model.vae.config.latent_channels:
        raise LoracamError(f"--vae {path.name} has {vae.config.latent_channels} latent channels; "
                           f"{model.spec.short} needs {model.vae.config.latent_channels}")
    model.vae = vae.to(opts.device, opts.dtype)
    model.extra["vae"] = path.name
    if opts.hash_cache and path.is_file():
        model.extra["vae_hash"] = opts.hash_cache.sha256(path)[:10]


# ---------------------------------------------------------------------------------------------
# random:* (untrained models of each family's architecture, for tests and timing)

# name -> (family, configs): tiny ones for tests, full-size ones for speed and memory numbers
RANDOM_CONFIGS: dict[str, tuple[str, Callable[[], dict[str, dict]]]] = {
    "random:tiny": ("sd1", tiny_configs),
    "random:sd15": ("sd1", sd15_configs),
    "random:tiny-sdxl": ("sdxl", tiny_sdxl_configs),
    "random:sdxl": ("sdxl", sdxl_configs),
    "random:tiny-zimage": ("zimage", tiny_zimage_configs),
    "random:zimage": ("zimage", zimage_configs),
}


def build_random(configs: dict[str, dict], seed: int = 0):
    """Build UNet, VAE, text encoder and tokenizer from config dicts with seeded random weights.

    The global RNG is forked, so building a model never changes the caller's random stream.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        te_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "torch_dtype")}
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    tokenizer = CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer")
    return unet, vae, text_encoder, tokenizer


def build_random_sdxl(configs: dict[str, dict], seed: int = 0) -> dict:
    """SDXL's components from config dicts with seeded random weights (the global RNG is forked)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def te(cfg, cls):
        return cls(CLIPTextConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "torch_dtype")}))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {"unet": UNet2DConditionModel.from_config(configs["unet"]),
                "vae": AutoencoderKL.from_config(configs["vae"]),
                "text_encoder": te(configs["text_encoder"], CLIPTextModel),
                "text_encoder_2": te(configs["text_encoder_2"], CLIPTextModelWithProjection),
                "tokenizer": clip_tokenizer(SDXL_DIR / "tokenizer"),
                "tokenizer_2": clip_tokenizer(SDXL_DIR / "tokenizer_2")}


def _load_random(value: str, opts: LoadOptions) -> BaseModel:
    family, make = RANDOM_CONFIGS[value]
    configs = make()
    if family == "sdxl":
        return _finish(value, value, build_random_sdxl(configs), configs["scheduler"], opts, family="sdxl")
    if family == "zimage":
        return _finish(value, value, build_random_zimage(configs), configs["scheduler"], opts, family="zimage")
    unet, vae, te, tok = build_random(configs)
    return _finish(value, value, {"unet": unet, "vae": vae, "text_encoder": te, "tokenizer": tok},
                   configs["scheduler"], opts)


# ---------------------------------------------------------------------------------------------
# single files


def checkpoint_keys(path: Path, allow_pickle: bool) -> dict[str, tuple]:
    """Tensor names and shapes of a checkpoint, read without loading the weights where possible."""
    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise LoracamError(
                f"{path.name} could not be read as safetensors ({exc}); the file is damaged or "
                "incomplete: download it again"
            ) from None
    if suffix in PICKLE_SUFFIXES:
        sd = _pickle_dict(path, allow_pickle)
        sd = sd.get("state_dict", sd)
        return {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
    raise LoracamError(
        f"{path.name}: unsupported checkpoint type {suffix!r}; use .safetensors (or .ckpt with --allow-pickle)"
    )


def _pickle_dict(path: Path, allow_pickle: bool) -> dict:
    """A pickle checkpoint's top-level dict, weights on the meta device (nothing is read but names)."""
    if not allow_pickle:
        raise LoracamError(
            f"{path.name} is a pickle checkpoint ({path.suffix.lower()}), which can run code when loaded. "
            "loracam only loads such files weights-only, and only when you pass --allow-pickle; "
            "better, use a .safetensors version of the model"
        )
    try:
        sd = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    except Exception as exc:
        raise LoracamError(
            f"{path.name} could not be loaded weights-only ({type(exc).__name__}: {exc}); "
            "it is damaged or holds more than plain tensors: use a .safetensors version"
        ) from None
    if not isinstance(sd, dict):
        raise LoracamError(f"{path.name} holds a {type(sd).__name__}, not a checkpoint's dict of tensors")
    return sd


def checkpoint_family(keys: dict[str, tuple], name: str) -> Family:
    """The family of a checkpoint by its tensor names (the table's markers); a LoRA, a file of no family loracam
    knows, or one of a family it does not run is a LoracamError that names it."""
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        raise LoracamError(f"{name} is a LoRA, not a base model: put it in --lora-dir and use <lora:NAME:W>")
    family = family_of_checkpoint(keys)
    if family is None:
        if not any(k.startswith("model.diffusion_model.") for k in keys):
            raise LoracamError(f"{name} is not a base model loracam knows (no SD U-Net or diffusion transformer "
                               "weights in it); is it a VAE, a text encoder or an upscaler?")
        family = FAMILIES["sd1"]  # an SD U-Net without SD1's markers: check_layout says what it lacks
    require_supported(family, name)
    if family.denoiser == "transformer":
        raise LoracamError(
            f"{name} is {article(family.name)} {family.short} diffusion-model file (ComfyUI's split files: this, the Qwen3 text "
            "encoder file and the VAE file); this version of loracam reads Z-Image as a diffusers folder only "
            "(Tongyi-MAI/Z-Image-Turbo's layout: model_index.json with transformer/, text_encoder/, tokenizer/, "
            "vae/, scheduler/): pass that folder with --base")
    return family


def detect_checkpoint_family(keys: dict[str, tuple], name: str) -> str:
    """The name of a checkpoint's family (``checkpoint_family``'s entry)."""
    return checkpoint_family(keys, name).name


def checkpoint_configs(path: Path, allow_pickle: bool = False, family: str = "sd1") -> dict[str, dict] | None:
    """Component configs a loracam-written checkpoint carries, else None (then it is taken as its family's
    standard size: SD1.5, SDXL base).

    .safetensors keep them in the header metadata; a pickle may hold them as a top-level JSON string
    next to its ``state_dict``.
    """
    from loracam.models.ldm import CONFIGS_KEY

    suffix = path.suffix.lower()
    if suffix in SAFE_SUFFIXES:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:  # checkpoint_keys has read it once already
            raw = (f.metadata() or {}).get(CONFIGS_KEY)
    elif suffix in PICKLE_SUFFIXES:
        raw = _pickle_dict(path, allow_pickle).get(CONFIGS_KEY)
    else:
        return None
    return None if raw is None else _parse_configs(raw, path.name, family)


def _parse_configs(raw, name: str, family: str = "sd1") -> dict[str, dict]:
    from loracam.models.ldm import CONFIGS_KEY

    need = ("unet", "vae", "text_encoder", "scheduler") + (("text_encoder_2",) if family == "sdxl" else ())
    try:
        configs = raw if isinstance(raw, dict) else json.loads(raw)
        missing = [c for c in need if not isinstance(configs.get(c), dict)]
    except (TypeError, ValueError, AttributeError):
        missing = ["all (it is not a JSON object)"]
    if missing:
        raise LoracamError(
            f"{name} has damaged '{CONFIGS_KEY}' metadata (missing: {', '.join(missing)}); save the model "
            f"again with loracam, or remove that metadata key to load it as a standard-size {short_name(family)} model"
        )
    return configs


def prediction_of(keys: dict[str, tuple], override: str | None) -> tuple[str, bool]:
    """(prediction type, zero terminal SNR) from ``override`` (one of PREDICTIONS), else the file's v_pred/ztsnr
    keys."""
    if override is not None:
        return override.split("+")[0], override.endswith("+ztsnr")
    return ("v_prediction" if "v_pred" in keys else "epsilon"), "ztsnr" in keys


def _load_file(value: str, opts: LoadOptions) -> BaseModel:
    import diffusers

    path = Path(value)
    keys = checkpoint_keys(path, opts.allow_pickle)
    family = checkpoint_family(keys, path.name)
    in_ch = keys.get("model.diffusion_model.input_blocks.0.0.weight", (0, 4))[1]
    configs = checkpoint_configs(path, opts.allow_pickle, family.name)
    check_layout(keys, configs, in_ch, path.name, family.name)
    prediction, zsnr = prediction_of(keys, None)  # the file's markers; _finish applies an override
    pipeline = getattr(diffusers, family.pipeline)
    if family.name == "sdxl":  # the shipped SDXL folder holds no BPE files: both tokenizers are CLIP's, shipped once
        extra = {"tokenizer": clip_tokenizer(SDXL_DIR / "tokenizer"),
                 "tokenizer_2": clip_tokenizer(SDXL_DIR / "tokenizer_2")}
    else:
        extra = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    with _config_folder(family.name, in_channels=in_ch, configs=configs) as cfg:
        try:
            pipe = pipeline.from_single_file(str(path), config=str(cfg), local_files_only=True,
                                             torch_dtype=torch.float32, **extra)
        except Exception as exc:
            raise LoracamError(
                f"{path.name} looks like {family.label} checkpoint but could not be loaded "
                f"({type(exc).__name__}: {exc}); it may be damaged or of an unsupported variant"
            ) from None
    sha = opts.hash_cache.sha256(path) if opts.hash_cache else None
    sched = dict(pipe.scheduler.config) | {"prediction_type": prediction}
    if zsnr:
        sched["rescale_betas_zero_snr"] = True
    return _finish(path.stem, str(path), _components(pipe), sched, opts, path=path, sha256=sha, family=family.name)


def _components(pipe) -> dict:
    """A pipeline's parts under BaseModel's names: a transformer family's denoiser goes where a U-Net would."""
    names = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
    parts = {n: getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None}
    if getattr(pipe, "transformer", None) is not None:
        parts["unet"] = pipe.transformer
    return parts


def check_layout(keys: dict[str, tuple], configs: dict[str, dict] | None, in_channels: int, name: str,
                 family: str = "sd1") -> None:
    """Refuse a checkpoint that lacks weights or has weights of other shapes than its configs say.

    from_single_file fills components built on the meta device with what the file has: a missing
    tensor stays empty without a warning and fails later with "Cannot copy out of meta tensor", and
    a wrong size names only the first tensor. Comparing names and shapes first gives one clear message.
    """
    from loracam.models.ldm import canonical_name, expected_ldm_shapes

    own = configs is not None
    label = short_name(family)
    if configs is None:
        configs = sdxl_configs() if family == "sdxl" else sd15_configs()
        configs["unet"]["in_channels"] = int(in_channels)  # inpainting models have 9
    expected = expected_ldm_shapes(configs, family)
    have = {canonical_name(k): v for k, v in keys.items()}
    # Sizes first: a model of other sizes also lacks some tensors (shortcut convs exist only where
    # widths change), and "incomplete" would be the wrong diagnosis.
    wrong = [k for k in expected if k in have and not _same_shape(k, have[k], expected[k])]
    if wrong:
        k = wrong[0]
        standard = "SDXL base's" if family == "sdxl" else "SD1.5's"
        what = ("the sizes in its own loracam_configs metadata: the file is damaged; save it again" if own else
                f"{standard} sizes: it is not a standard-size {label} model (if loracam wrote it, it has "
                "lost its loracam_configs metadata; save it again)")
        raise LoracamError(
            f"{name}: {len(wrong)} weights do not match {what}. E.g. {k} is {list(have[k])}, "
            f"expected {list(expected[k])}"
        )
    missing = [k for k in expected if k not in have]
    if missing:
        raise LoracamError(
            f"{name} lacks {len(missing)} of the {len(expected)} weights of {FAMILIES[family].label} "
            f"({_count_by_part(missing)}; e.g. {missing[0]}): the file is incomplete (a U-Net-only "
            "or partial export?); use a full checkpoint"
        )


def _count_by_part(names: list[str]) -> str:
    parts = {"model.diffusion_model.": "U-Net", "first_stage_model.": "VAE", "cond_stage_model.": "text encoder",
             "conditioner.embedders.0.": "CLIP-L text encoder", "conditioner.embedders.1.": "bigG text encoder"}
    counts = {label: sum(n.startswith(p) for n in names) for p, label in parts.items()}
    return ", ".join(f"{n} {label}" for label, n in counts.items() if n)


def _same_shape(key: str, have: tuple, want: tuple) -> bool:
    # LDM stores the VAE's mid-block attention projections as 1x1 convs, converted files sometimes
    # as plain matrices; diffusers reads both.
    if ".mid.attn_1." in key:
        return tuple(have[:2]) == tuple(want[:2]) and all(d == 1 for d in (*have[2:], *want[2:]))
    return tuple(have) == tuple(want)


@contextmanager
def _config_folder(family: str, in_channels: int, configs: dict[str, dict] | None = None):
    """The config folder from_single_file builds the components from.

    A loracam-written file carries its own configs (it may be of any size): they go into a temporary
    folder. Any other file is taken as its family's standard size (SD1.5, SDXL base): the shipped folder, or
    a temporary copy with a 9-channel U-Net for inpainting models.
    """
    shipped = SDXL_DIR if family == "sdxl" else SD15_DIR
    if configs is None and in_channels == 4:
        yield shipped
        return
    with tempfile.TemporaryDirectory(prefix="loracam-cfg-") as tmp:
        dst = Path(tmp) / shipped.name
        shutil.copytree(shipped, dst)
        if configs is None:
            unet = json.loads((shipped / "unet" / "config.json").read_text(encoding="utf-8"))
            configs = {"unet": unet | {"in_channels": int(in_channels)}}
        _write_configs(dst, configs)
        yield dst


def _write_configs(folder: Path, configs: dict[str, dict]) -> None:
    # The tokenizers and model_index.json stay the shipped ones: loracam's models use their family's.
    names = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
             "text_encoder_2": "config.json", "scheduler": "scheduler_config.json"}
    for component, cfg in configs.items():
        if component in names:
            (folder / component / names[component]).write_text(json.dumps(cfg), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# diffusers folders and hub ids


def _load_folder(value: str, opts: LoadOptions) -> BaseModel:
    path = Path(value)
    if not (path / "model_index.json").exists():
        hint = ""
        if any(path.glob("*.safetensors")):
            hint = "; to use a checkpoint file in it, pass the file itself"
        raise LoracamError(f"{path} is not a diffusers model folder (no model_index.json){hint}")
    family = folder_family(path)
    check_folder(path, family)
    return _from_pretrained(str(path), path.name, opts, local_only=True, family=family.name)


# What each part of a diffusers folder holds, for the message when one is missing (the hub layouts' names)
_PART_FILES = {"tokenizer": ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "vocab.txt",
                             "spiece.model")}
_WEIGHTS = (".safetensors", ".bin")


def check_folder(path: Path, family: Family) -> None:
    """Every component model_index.json names is there with its files, or one message listing what is missing and
    where it usually comes from (diffusers' own errors name one file of one part, or a tokenizer converter)."""
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    missing = []
    for part, spec in index.items():
        if part.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        folder = path / part
        files = {f.name for f in folder.iterdir()} if folder.is_dir() else set()
        if part.startswith("tokenizer"):
            ok = any(n in files for n in _PART_FILES["tokenizer"])
        elif part.startswith("scheduler"):
            ok = "scheduler_config.json" in files
        else:
            ok = "config.json" in files and any(n.endswith(_WEIGHTS) for n in files)
        if not ok:
            missing.append(f"{part}/ ({spec[1]})")
    if missing:
        where = {"zimage": "Tongyi-MAI/Z-Image-Turbo (or Z-Image) on the Hugging Face hub"}.get(
            family.name, "the model's diffusers repository")
        raise LoracamError(f"{path} is {article(family.name)} {family.short} folder without {', '.join(missing)}: each part is a subfolder "
                           f"with its config and weights (a tokenizer's tokenizer.json or vocab.json + merges.txt and "
                           f"tokenizer_config.json), as in {where}; copy the missing parts from there")


def folder_family(path: Path) -> Family:
    """The family of a diffusers folder by its pipeline class; one loracam does not run is refused by name."""
    try:
        pipeline = json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise LoracamError(f"{path}/model_index.json could not be read ({exc}); the folder is damaged") from None
    family = family_of_pipeline(pipeline)
    if family is None:
        raise LoracamError(f"{path} is a diffusers folder of a {pipeline or 'nameless'} pipeline, which loracam does "
                           f"not know; it runs {', '.join(f.short for f in FAMILIES.values() if f.supported)} "
                           "models")
    return require_supported(family, path.name)


def _load_hub(value: str, opts: LoadOptions) -> BaseModel:
    family = _hub_family(value, local_only=True)
    if family is not None:
        try:
            return _from_pretrained(value, value, opts, local_only=True, family=family)
        except LoracamError:
            pass  # only partly in the local hub cache: fetching it is what the user asked for by naming it
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not _reachable(endpoint):
        raise LoracamError(
            f"cannot fetch {value!r}: the model hub ({endpoint}) is not reachable from this machine and "
            "the model is not in the local cache. Download it where there is a network and pass its "
            "folder or .safetensors file with --base"
        )
    family = _hub_family(value, local_only=False)
    if family is None:
        raise LoracamError(f"could not fetch {value!r}'s model_index.json: is it a diffusers pipeline repository?")
    return _from_pretrained(value, value, opts, local_only=False, family=family)


def _hub_family(repo: str, local_only: bool) -> str | None:
    """The family of a hub model by its model_index.json, as for folders; None when that cannot be read."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(repo, local_files_only=local_only)
    except Exception:
        return None
    family = family_of_pipeline(index.get("_class_name"))
    if family is None:
        raise LoracamError(f"{repo} is a diffusers model of a {index.get('_class_name') or 'nameless'} pipeline, "
                           "which loracam does not know")
    return require_supported(family, repo).name


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _from_pretrained(src: str, name: str, opts: LoadOptions, local_only: bool, family: str = "sd1",
                     **components) -> BaseModel:
    import diffusers

    if family == "sd1":
        components |= {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    try:
        pipe = getattr(diffusers, FAMILIES[family].pipeline).from_pretrained(
            src, local_files_only=local_only, torch_dtype=torch.float32, **components)
    except Exception as exc:
        raise LoracamError(f"could not load the diffusers model {src!r}: {type(exc).__name__}: {exc}") from None
    return _finish(name, src, _components(pipe), dict(pipe.scheduler.config), opts, family=family)


# ---------------------------------------------------------------------------------------------
# the built-in toy model


def _load_toy(value: str, opts: LoadOptions) -> BaseModel:
    if not (TOY_DIR / "model_index.json").exists():
        raise LoracamError(
            "no base model given and the built-in toy model is not bundled in this version of loracam: "
            "pass --base with a .safetensors checkpoint, a diffusers folder, a hub id, or random:tiny "
            "(an untrained model that renders noise, for trying the commands)"
        )
    from transformers import CLIPTokenizer

    # The toy model uses SD1.5's tokenizer, which loracam already ships: the package keeps one copy.
    tokenizer = CLIPTokenizer.from_pretrained(SD15_DIR / "tokenizer")
    model = _from_pretrained(str(TOY_DIR), "toy", opts, local_only=True, tokenizer=tokenizer)
    model.ref = "toy"
    return model


def _finish(name, ref, parts: dict, sched_cfg, opts: LoadOptions, path=None, sha256=None,
            family: str = "sd1") -> BaseModel:
    # The VAE stays in the run's precision: SD1.5's decodes fine in fp16, and decode() redoes a decode in fp32
    # when it sees NaNs, as A1111 does (SDXL's VAE is the one that overflows: it says so then).
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if parts.get(part) is not None:
            parts[part].to(opts.device, opts.dtype)
    sched_cfg = dict(sched_cfg)
    if opts.prediction is not None:  # a folder's scheduler config or a file's markers say it; the override wins
        prediction, zsnr = prediction_of({}, opts.prediction)
        sched_cfg |= {"prediction_type": prediction, "rescale_betas_zero_snr": zsnr}
    extra = {}
    if FAMILIES[family].name == "zimage":
        extra["variant"] = variant_of(name, opts.variant).name
    return BaseModel(
        extra=extra, name=name, ref=ref, family=family, unet=parts["unet"], vae=parts["vae"], text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"], text_encoder_2=parts.get("text_encoder_2"), tokenizer_2=parts.get("tokenizer_2"),
        scheduler_config={k: v for k, v in dict(sched_cfg).items() if not k.startswith("_")},
        device=opts.device, dtype=opts.dtype, path=path, sha256=sha256,
    )


# The subject presets' learning rates are SD1.5's (kohya and FaceChain tune them on 860M-parameter
# U-Nets). The toy base's U-Net is 150x smaller (5.7M), and LoRAs on it move only at ~20x those
# rates: after 1200 steps a testdress LoRA at the garment preset's 1e-4 reads 0%, at 2e-3 84% (upper body,
# weight 1; benchmarks/README.md, "The presets on the toy base"). Keyed by the reference's kind.
PRESET_LR_SCALE: dict[str, float] = {"toy": 20.0}


def preset_lr_scale(ref: str | None) -> float:
    """The factor this base needs on the presets' learning rates (1 for real SD1.x checkpoints)."""
    return PRESET_LR_SCALE.get(resolve_ref(ref).kind, 1.0)


LOADERS: dict[str, Callable[[str, LoadOptions], BaseModel]] = {
    "file": _load_file,
    "folder": _load_folder,
    "hub": _load_hub,
    "random": _load_random,
    "toy": _load_toy,
}


@contextmanager
def _quiet_libraries():
    """diffusers/transformers print progress bars and advice meant for their own users; keep it quiet."""
    # Both libraries configure their root logger lazily on first use; do that first, or the level set
    # here would be overwritten by an import inside the block.
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.get_verbosity()
    tlog.get_verbosity()
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    bars = dlog.is_progress_bar_enabled()  # "Loading pipeline components" is a bar, not a log line
    tbars = tlog.is_progress_bar_enabled()  # and transformers' "Loading weights"
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)
        if bars:
            dlog.enable_progress_bar()
        if tbars:
            tlog.enable_progress_bar()
