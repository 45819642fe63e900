"""The trainable LoRA (and LoCon) network: peft layers on kohya's targets, exported under kohya names.

peft does the injection (``add_adapter`` on the U-Net and the text encoder) with kohya's init (down
Kaiming-uniform, up zeros), so a network starts as an exact no-op. LoCon's separate rank for 3x3 convs
(kohya's ``conv_dim``/``conv_alpha``) is one peft ``rank_pattern``/``alpha_pattern`` entry per conv module.
Export names come from :func:`loracam.lora.naming.kohya_name`, never from diffusers'
``convert_state_dict_to_kohya`` (its SD1 text-encoder names lack ``text_model_`` and A1111 ignores them).

The network wraps the model's layers in place until :meth:`LoraNetwork.remove`: train on a model no other
job is using (the base models of ``loracam.models.ModelCache`` are shared).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from loracam.errors import LoracamError
from loracam.lora.formats import LoraModule
from loracam.lora.naming import kohya_targets
from loracam.models.families import FAMILIES

ADAPTER = "loracam"  # the peft adapter name, distinct from "default" so a user's own adapters never collide
COMPONENTS = ("unet", "te", "te2")  # te2: SDXL's bigG
TARGET_SETS = ("kohya", "attention")
# FaceChain's "attention" targets: the attention projections only.
_UNET_ATTENTION = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_TE_ATTENTION = re.compile(r"\.self_attn\.(q_proj|k_proj|v_proj|out_proj)$")
_PEFT_STATE = ("peft_config", "_hf_peft_config_loaded")  # what add_adapter sets on the model itself


@dataclass(frozen=True)
class NetworkConfig:
    """Which layers get a LoRA and at which rank; kohya's names and defaults (dim 4, alpha 1)."""

    dim: int = field(default=4, metadata={"help": "rank of every LoRA module (kohya network_dim)"})
    alpha: float = field(default=1.0, metadata={"help": "scale = alpha / dim (kohya network_alpha)"})
    conv_dim: int | None = field(
        default=None, metadata={"help": "LoCon: also the 3x3 convs of ResNet blocks and samplers, at this rank"})
    conv_alpha: float | None = field(
        default=None, metadata={"help": "LoCon alpha; kohya's default is 1 when conv_dim is set"})
    train_text_encoder: bool = field(default=False, metadata={"help": "also put LoRA on the text encoder"})
    targets: str = field(
        default="kohya",
        metadata={"help": "'kohya' (attention, feed-forward, proj_in/out) or 'attention' (FaceChain: q/k/v/out)"})

    def __post_init__(self) -> None:
        _check_int("dim", self.dim)
        _check_positive("alpha", self.alpha)
        if self.conv_dim is not None:
            _check_int("conv_dim", self.conv_dim)
        if self.conv_alpha is not None:
            if self.conv_dim is None:
                raise LoracamError("network conv_alpha is set but conv_dim is not: set conv_dim to train LoCon convs")
            _check_positive("conv_alpha", self.conv_alpha)
        if not isinstance(self.train_text_encoder, bool):
            raise LoracamError(f"network train_text_encoder must be true or false, not {self.train_text_encoder!r}")
        if self.targets not in TARGET_SETS:
            raise LoracamError(f"network targets must be one of {', '.join(TARGET_SETS)}, not {self.targets!r}")

    @property
    def locon(self) -> bool:
        return self.conv_dim is not None

    @property
    def conv_scale_alpha(self) -> float:
        """The alpha of the 3x3 conv modules: conv_alpha, or 1 as kohya defaults it."""
        return float(self.conv_alpha) if self.conv_alpha is not None else 1.0


def _check_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LoracamError(f"network {key} must be a whole number >= 1 (a LoRA rank), not {value!r}")


def _check_positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise LoracamError(
            f"network {key} must be a number > 0 (the LoRA's scale is alpha / rank), not {value!r}")


def _num(value: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5": how people type these in kohya's network_args."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def lora_metadata(cfg: NetworkConfig, family: str = "sd1", prediction: str = "epsilon",
                  zero_snr: bool = False) -> dict[str, str]:
    """The network's part of a kohya file's ss_* metadata (strings; network args as kohya's JSON), with the family's
    ss_base_model_version and SAI modelspec keys, which Forge and A1111 filter LoRAs by."""
    spec = FAMILIES[family]
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.dim),
        "ss_network_alpha": _num(cfg.alpha),
        "ss_base_model_version": spec.ss_base_model_version,
        "ss_v2": "False",
        "ss_v_parameterization": str(prediction == "v_prediction"),
        "ss_zero_terminal_snr": str(bool(zero_snr)),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": spec.modelspec_architecture,
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    }
    if prediction == "v_prediction":
        meta["modelspec.prediction_type"] = "v"
    if cfg.locon:
        # kohya stores the --network_args key=value strings as a JSON object of strings
        meta["ss_network_args"] = json.dumps({"conv_dim": str(cfg.conv_dim), "conv_alpha": _num(cfg.conv_scale_alpha)})
    return meta


# ---------------------------------------------------------------------------------------------
# targets


@dataclass
class _Target:
    name: str  # kohya name
    component: str  # "unet" | "te"
    path: str  # dotted module path inside its model
    conv: bool  # a LoCon 3x3 conv (rank conv_dim)
    base: nn.Module  # the original layer
    layer: Any = None  # the peft wrapper that replaced it (a peft LoraLayer)

    @property
    def down(self) -> nn.Parameter:
        return self.layer.lora_A[ADAPTER].weight  # [dim, in] or [dim, in, kh, kw]

    @property
    def up(self) -> nn.Parameter:
        return self.layer.lora_B[ADAPTER].weight  # [out, dim] or [out, dim, 1, 1]

    @property
    def alpha(self) -> float:
        return float(self.layer.lora_alpha[ADAPTER])


def _select_targets(unet: nn.Module, text_encoder: nn.Module | None, cfg: NetworkConfig,
                    text_encoder_2: nn.Module | None = None) -> list[_Target]:
    """The layers ``cfg`` puts a LoRA on, in model order (U-Net first), from kohya's default target list."""
    te = text_encoder if cfg.train_text_encoder else None
    te2 = text_encoder_2 if cfg.train_text_encoder else None
    paths = {c: ({id(m): p for p, m in root.named_modules()} if root is not None else {})
             for c, root in (("unet", unet), ("te", te), ("te2", te2))}
    out = []
    for name, module in kohya_targets(unet, te, conv=cfg.locon, text_encoder_2=te2):
        component = next(c for c in COMPONENTS if id(module) in paths[c])
        path = paths[component][id(module)]
        conv = isinstance(module, nn.Conv2d) and tuple(module.kernel_size) != (1, 1)
        if cfg.targets == "attention" and not conv:
            pattern = _UNET_ATTENTION if component == "unet" else _TE_ATTENTION
            if not pattern.search("." + path):
                continue
        out.append(_Target(name, component, path, conv, module))
    return out


# ---------------------------------------------------------------------------------------------
# the network


class LoraNetwork:
    """Trainable LoRA layers injected (by peft) into a U-Net and, optionally, its text encoder.

    Base weights are frozen; the LoRA weights are fp32 whatever the base precision (peft casts the layer
    input to them and the result back), as kohya trains its network.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None, cfg: NetworkConfig, seed: int = 0,
                 text_encoder_2: nn.Module | None = None):
        if cfg.train_text_encoder and text_encoder is None:
            raise LoracamError("train_text_encoder is on but there is no text encoder to train")
        self.cfg = cfg
        self.seed = seed
        self._models = {"unet": unet, "te": text_encoder if cfg.train_text_encoder else None,
                        "te2": text_encoder_2 if cfg.train_text_encoder else None}
        for component, model in self._models.items():
            if model is not None:
                _refuse_adapted(model, component)
        self._targets = _select_targets(unet, text_encoder, cfg, text_encoder_2)
        if not self._targets:
            raise LoracamError(f"network targets {cfg.targets!r} match no layer of this model; is it an SD1.x U-Net?")
        # What remove() must put back: requires_grad of every parameter (peft freezes all non-LoRA ones)
        # and the attributes add_adapter sets on the model.
        self._saved_grad = {c: [(p, p.requires_grad) for p in m.parameters()]
                            for c, m in self._models.items() if m is not None}
        self._saved_attrs = {c: {a: m.__dict__[a] for a in _PEFT_STATE if a in m.__dict__}
                             for c, m in self._models.items() if m is not None}
        self._removed = False
        try:
            with torch.random.fork_rng(devices=[]):
                # Only the CPU generator: peft creates (and initializes) the LoRA layers on the CPU, then moves
                # them to the base layer's device. torch.manual_seed would also reseed every GPU's generator.
                torch.default_generator.manual_seed(int(seed))
                for component in COMPONENTS:
                    targets = [t for t in self._targets if t.component == component]
                    if targets:
                        self._inject(self._models[component], targets)
        except BaseException:
            self.remove()  # never leave a half-wrapped model behind
            raise
        for t in self._targets:
            t.layer.lora_A[ADAPTER].to(torch.float32)
            t.layer.lora_B[ADAPTER].to(torch.float32)

    def _inject(self, model: nn.Module, targets: list[_Target]) -> None:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer

        conv = [re.escape(t.path) for t in targets if t.conv]  # peft's patterns are regexes, suffix-matched
        config = LoraConfig(
            r=self.cfg.dim,
            lora_alpha=float(self.cfg.alpha),
            target_modules=[t.path for t in targets],
            rank_pattern={p: self.cfg.conv_dim for p in conv},
            alpha_pattern={p: self.cfg.conv_scale_alpha for p in conv},
            init_lora_weights=True,
            lora_dropout=0.0,
            bias="none",
        )
        model.add_adapter(config, adapter_name=ADAPTER)
        for t in targets:
            layer = model.get_submodule(t.path)
            if not isinstance(layer, BaseTunerLayer) or layer.get_base_layer() is not t.base:
                raise RuntimeError(f"peft did not wrap {t.path} as expected (got {type(layer).__name__})")
            t.layer = layer
        wrapped = sum(isinstance(m, BaseTunerLayer) for m in model.modules())
        if wrapped != len(targets):  # peft matches by suffix: make sure nothing else was caught
            raise RuntimeError(f"peft wrapped {wrapped} layers, expected {len(targets)}")

    # -----------------------------------------------------------------------------------------
    # what the trainer uses

    @property
    def names(self) -> list[str]:
        """kohya names of every LoRA module, in kohya_targets' order (U-Net, its LoCon convs, text encoder)."""
        return [t.name for t in self._live()]

    @property
    def num_params(self) -> int:
        """Number of trainable values."""
        return sum(p.numel() for p in self.parameters())

    def parameters(self, component: str | None = None) -> list[nn.Parameter]:
        """The trainable LoRA parameters of "unet", "te", "te2" (SDXL's bigG), or (None) all: down, up per module."""
        if component not in (None, *COMPONENTS):
            raise ValueError(f"component must be 'unet', 'te', 'te2' or None, not {component!r}")
        return [p for t in self._live() if component in (None, t.component) for p in (t.down, t.up)]

    def param_groups(self, unet_lr: float, te_lr: float | None = None, te2_lr: float | None = None) -> list[dict]:
        """Optimizer groups: the U-Net's LoRA at unet_lr, the text encoder's at te_lr (default unet_lr), SDXL's
        second encoder's at te2_lr (default te_lr), as sd-scripts' --text_encoder_lr takes one value per encoder."""
        te_lr = unet_lr if te_lr is None else te_lr
        groups = [{"params": self.parameters("unet"), "lr": float(unet_lr), "name": "unet"},
                  {"params": self.parameters("te"), "lr": float(te_lr), "name": "te"},
                  {"params": self.parameters("te2"), "lr": float(te_lr if te2_lr is None else te2_lr), "name": "te2"}]
        return [g for g in groups if g["params"]]

    def modules(self) -> dict[str, LoraModule]:
        """kohya name -> LoraModule with fp32 CPU copies of the weights, ready for write_kohya."""
        return {t.name: LoraModule(t.name, _copy(t.down), _copy(t.up), t.alpha) for t in self._live()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors (fp32 CPU copies) under kohya keys, for resuming."""
        sd = {}
        for t in self._live():
            sd[f"{t.name}.lora_down.weight"] = _copy(t.down)
            sd[f"{t.name}.lora_up.weight"] = _copy(t.up)
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Set every trainable tensor from a :meth:`state_dict`; strict about keys and shapes."""
        params = {}
        for t in self._live():
            params[f"{t.name}.lora_down.weight"] = t.down
            params[f"{t.name}.lora_up.weight"] = t.up
        missing = [k for k in params if k not in sd]
        unexpected = [k for k in sd if k not in params]
        wrong = [f"{k} {list(sd[k].shape)} (network {list(p.shape)})"
                 for k, p in params.items() if k in sd and tuple(sd[k].shape) != tuple(p.shape)]
        if missing or unexpected or wrong:
            details = "; ".join(part for part in (
                _few("missing", missing), _few("unexpected", unexpected), _few("wrong shape", wrong)) if part)
            raise LoracamError(
                "the resume state was made with another network: rank/targets differ "
                f"({details}). Resume with the network settings it was trained with, or start a new run")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(sd[k].to(p.device, p.dtype))

    def set_enabled(self, on: bool) -> None:
        """Turn the LoRA off (exactly the base model's outputs) or back on, e.g. for previews."""
        for t in self._live():
            # peft's switch also clears requires_grad while off and sets it again when back on
            t.layer.enable_adapters(bool(on))

    def remove(self) -> None:
        """Take the LoRA layers out: the base model holds its original modules again, as before."""
        if self._removed:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for t in self._targets:
            model = self._models[t.component]
            parent_path, _, child = t.path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            if isinstance(getattr(parent, child), BaseTunerLayer):  # also after a failed injection
                setattr(parent, child, t.base)
            t.layer = None
        for component, model in self._models.items():
            if model is None:
                continue
            for attr in _PEFT_STATE:
                model.__dict__.pop(attr, None)
            model.__dict__.update(self._saved_attrs[component])
            for p, flag in self._saved_grad[component]:
                p.requires_grad_(flag)
        self._removed = True

    def _live(self) -> list[_Target]:
        if self._removed:
            raise RuntimeError("this LoRA network was removed from its model")
        return self._targets

    def __repr__(self) -> str:
        counts = {c: sum(t.component == c for t in self._targets) for c in COMPONENTS}
        return (f"LoraNetwork({counts['unet']} U-Net + {counts['te'] + counts['te2']} text-encoder modules, "
                f"dim {self.cfg.dim}, "
                f"alpha {_num(self.cfg.alpha)}" + (f", conv {self.cfg.conv_dim}/{_num(self.cfg.conv_scale_alpha)}"
                                                   if self.cfg.locon else "") + ")")


def _copy(p: torch.Tensor) -> torch.Tensor:
    return p.detach().to("cpu", torch.float32, copy=True)


def _few(label: str, items: list[str], shown: int = 3) -> str:
    if not items:
        return ""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"{len(items)} {label}: {', '.join(items[:shown])}{more}"


def _refuse_adapted(model: nn.Module, component: str) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise LoracamError(
            f"the {'U-Net' if component == 'unet' else 'text encoder'} already carries peft adapters (a LoRA "
            "loaded with diffusers?); train on a clean base model")
