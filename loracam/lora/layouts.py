"""Tensor-name layouts of LoRA files (kohya, peft/diffusers, old diffusers) and the base family they fit.

Each layout parser turns a file's tensors into ``RawModule`` records: a component ("unet", "te", "te1",
"te2"), the module path with ``_`` separators and no prefix, and the down/up/alpha tensors. ``to_kohya``
then names the records the kohya way, which is how the rest of loracam refers to LoRA modules.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from loracam.errors import LoracamError
from loracam.models.families import family_of_metadata

# LyCORIS and other network types loracam does not apply: a key pattern -> what to call it.
UNSUPPORTED_VARIANTS: dict[str, str] = {
    r"\.hada_t\d": "LyCORIS LoHa with Tucker-decomposed convs (hada_t1 keys)",
    r"\.lokr_t\d": "LyCORIS LoKr with Tucker-decomposed convs (lokr_t2 keys)",
    r"\.lora_mid\.": "LyCORIS LoCon with CP decomposition (lora_mid keys)",
    r"\.oft_(blocks|diag)": "OFT (oft_blocks keys)",
    r"\.a1\.weight$": "LyCORIS GLoRA (a1/a2/b1/b2 keys)",
    r"\.(w|b)_norm$": "LyCORIS norm-layer network (w_norm keys)",
    r"^bundle_emb\.": "kohya LoRA with bundled textual-inversion embeddings (bundle_emb keys)",
    r"\.diff_b$": "LoRA with bias differences (diff_b keys)",
    r"\.diff$": "LyCORIS full-weight difference (diff keys)",
    r"\.lora_B(\.[\w-]+)?\.bias$": "peft LoRA with bias (lora_B.bias keys)",
}

# LyCORIS' "lycoris_" prefix names a diffusion transformer's modules (Z-Image LoKr files)
KOHYA_PREFIXES = {"lora_te1_": "te1", "lora_te2_": "te2", "lora_te_": "te", "lora_unet_": "unet", "lycoris_": "unet"}
# a transformer family's denoiser is diffusers' "transformer", ai-toolkit's and ComfyUI's "diffusion_model"
PEFT_PREFIXES = {"unet": "unet", "text_encoder": "te", "text_encoder_2": "te2", "transformer": "unet",
                 "diffusion_model": "unet"}
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' JSON copy of each component's LoraConfig


@dataclass
class RawModule:
    """One LoRA module as found in a file, before kohya naming."""

    component: str  # "unet" | "te" | "te1" | "te2"
    path: str  # module path, "_"-separated, no prefix: "down_blocks_0_attentions_0_proj_in"
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    hada: dict[str, torch.Tensor] | None = None  # LyCORIS LoHa's four factors, until loha_as_lora turns them into down/up
    lokr: dict[str, torch.Tensor] | None = None  # LyCORIS LoKr's factors, until lokr_as_lora does
    magnitude: torch.Tensor | None = None  # DoRA's magnitude (LyCORIS dora_scale, peft lora_magnitude_vector)
    kind: str = "LoRA"  # the network as the file stores it: "LoRA", "LoHa", "LoKr" (all read to down/up)


Tensors = Mapping[str, torch.Tensor]


def check_variant(keys: list[str], filename: str) -> None:
    """Reject network types loracam cannot apply, naming the variant."""
    for pattern, variant in UNSUPPORTED_VARIANTS.items():
        if any(re.search(pattern, k) for k in keys):
            raise LoracamError(
                f"{filename} is a {variant} network; loracam applies LoRA, LoCon, LoHa and LoKr (without Tucker "
                "convs), and their DoRA versions. "
                "Use a LoRA/LoCon version of it, or merge it into a checkpoint with another tool first"
            )


def detect_layout(keys: list[str]) -> str | None:
    """"kohya", "peft" or "diffusers-legacy" from the tensor names; None when none fits."""
    if any(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys):
        return "kohya"
    if any(re.search(r"\.lora_[AB](\.[\w-]+)?\.weight$", k) for k in keys):
        return "peft"
    if any(_LEGACY.match(k) for k in keys):
        return "diffusers-legacy"
    return None


def _unknown(filename: str, keys: list[str], layout: str) -> LoracamError:
    shown = ", ".join(keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")
    return LoracamError(
        f"{filename} looks like a {layout} LoRA but has tensors loracam does not understand: {shown}. "
        "It may be a newer or non-standard variant; re-save it as a kohya LoRA"
    )


# ---------------------------------------------------------------------------------------------
# kohya: <prefix><module>.lora_down.weight / .lora_up.weight / .alpha


def parse_kohya(tensors: Tensors, filename: str) -> list[RawModule]:
    """Records of a kohya file (``lora_unet_*``, ``lora_te_*``, SDXL ``lora_te1_*``/``lora_te2_*``)."""
    found: dict[str, RawModule] = {}
    bad = []
    for key, t in tensors.items():
        name, _, part = key.partition(".")
        prefix = next((p for p in KOHYA_PREFIXES if name.startswith(p)), None)
        if prefix is None or part not in ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale", *LOHA_PARTS,
                                          *LOKR_PARTS):
            bad.append(key)
            continue
        rec = found.setdefault(name, RawModule(KOHYA_PREFIXES[prefix], name[len(prefix):]))
        if part == "dora_scale":
            rec.magnitude = t
        elif part in LOHA_PARTS:
            rec.hada = (rec.hada or {}) | {part: t}
        elif part in LOKR_PARTS:
            rec.lokr = (rec.lokr or {}) | {part: t}
        else:
            _store(rec, part, t)
    if bad:
        raise _unknown(filename, bad, "kohya")
    for rec in found.values():
        if rec.hada is not None:
            loha_as_lora(rec, filename)
        if rec.lokr is not None:
            lokr_as_lora(rec, filename)
    return list(found.values())


# LyCORIS LoHa (kohya names, as A1111 and ComfyUI read it): delta_W = (alpha / r) x (w1_a @ w1_b) * (w2_a @ w2_b),
# an elementwise product of two rank-r products (convs without Tucker: w*_b flattened to [r, in x kh x kw]).
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def loha_as_lora(rec: RawModule, filename: str) -> None:
    """Give a LoHa record the down/up of a plain LoRA with the very same delta, so everything that applies LoRAs
    (fused, per sample, several at once) applies it unchanged: (A1 B1) * (A2 B2) = sum over i, j of
    (a1_i * a2_j)(b1_i * b2_j)^T, a product of rank r1 x r2 (the columns of A1, A2 and the rows of B1, B2
    multiplied pairwise). The file's scale alpha / r1 is kept: alpha becomes alpha / r1 x r1 r2."""
    missing = [p for p in LOHA_PARTS if p not in rec.hada]
    if missing:
        raise LoracamError(f"{filename} is incomplete: LoHa module {rec.path} has no {', '.join(missing)}; "
                           "export it again")
    w1a, w1b, w2a, w2b = (rec.hada[p].float() for p in LOHA_PARTS)
    (out, r1), (r2, width) = w1a.shape, w2b.shape
    if w1a.ndim != 2 or w1b.shape != (r1, width) or w2a.shape != (out, r2):
        raise LoracamError(f"{filename}: LoHa module {rec.path} has inconsistent shapes ({tuple(w1a.shape)}, "
                           f"{tuple(w1b.shape)}, {tuple(w2a.shape)}, {tuple(w2b.shape)}); the file is damaged")
    rec.up = (w1a[:, :, None] * w2a[:, None, :]).reshape(out, r1 * r2)
    rec.down = (w1b[:, None, :] * w2b[None, :, :]).reshape(r1 * r2, width)
    rec.alpha = (rec.alpha if rec.alpha is not None else r1) / r1 * (r1 * r2)
    rec.hada, rec.kind = None, "LoHa"


# LyCORIS LoKr: delta_W = scale x kron(W1, W2), each factor given whole (lokr_w1) or as a low-rank product
# (lokr_w1_a @ lokr_w1_b); convs flatten W2 to [c, d x kh x kw], which is the flattened 4-D Kronecker product.
# scale = alpha / dim, dim the rank of the decomposed factor (W2's when both are), 1 without alpha or a decomposed
# factor: how A1111's and ComfyUI's LoKr read these files.
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")


def lokr_as_lora(rec: RawModule, filename: str) -> None:
    """Give a LoKr record the down/up of a plain LoRA with the very same delta: kron(A1 B1, A2 B2) =
    kron(A1, A2) @ kron(B1, B2), a whole factor W taken as I @ W or W @ I, whichever is of lower rank."""
    parts = {k: v.float() for k, v in rec.lokr.items()}
    factors, dim = [], None
    for n in ("1", "2"):
        whole, a, b = parts.get(f"lokr_w{n}"), parts.get(f"lokr_w{n}_a"), parts.get(f"lokr_w{n}_b")
        if whole is not None:
            whole = whole.flatten(1)
            rows, cols = whole.shape
            factors.append((torch.eye(rows), whole) if rows <= cols else (whole, torch.eye(cols)))
        elif a is not None and b is not None and a.ndim == b.ndim == 2 and a.shape[1] == b.shape[0]:
            factors.append((a, b))
            dim = b.shape[0]
        else:
            raise LoracamError(f"{filename}: LoKr module {rec.path} has no usable factor {n} (lokr_w{n}, or "
                               f"lokr_w{n}_a and lokr_w{n}_b of one rank); the file is damaged or incomplete")
    (a1, b1), (a2, b2) = factors
    rec.up, rec.down = torch.kron(a1, a2), torch.kron(b1, b2)
    scale = rec.alpha / dim if rec.alpha is not None and dim else 1.0
    rec.alpha = scale * rec.down.shape[0]
    rec.lokr, rec.kind = None, "LoKr"


def _store(rec: RawModule, part: str, t: torch.Tensor) -> None:
    if part.startswith(("lora_down", "lora_A", "down")):
        rec.down = t
    elif part.startswith(("lora_up", "lora_B", "up")):
        rec.up = t
    else:
        rec.alpha = float(t.float().reshape(-1)[0])


# ---------------------------------------------------------------------------------------------
# peft / diffusers: [unet.|text_encoder.|text_encoder_2.]<module>.lora_A.weight / .lora_B.weight

_PEFT = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_A|lora_B)(?:\.[\w-]+)?\.weight$")
_PEFT_MAGNITUDE = re.compile(r"^(?P<mod>.+)\.lora_magnitude_vector(?:\.[\w-]+)?(?:\.weight)?$")  # peft's DoRA


def _split_component(path: str, prefixes: Mapping[str, str]) -> tuple[str, str]:
    """(component, module path) for a dotted key path that may start with a pipeline component."""
    head, _, rest = path.partition(".")
    if head in prefixes and rest:
        return prefixes[head], rest.removeprefix("base_model.model.")
    path = path.removeprefix("base_model.model.")  # peft's PeftModel.save_pretrained wrapper
    # saved from one model, without a component prefix: tell by the module path
    return ("te" if path.startswith(("text_model.", "encoder.layers.")) else "unet"), path


def parse_peft(tensors: Tensors, metadata: Mapping[str, str], filename: str) -> list[RawModule]:
    """Records of a peft/diffusers file; alphas from ``.alpha`` keys, diffusers' adapter metadata, or rank."""
    found: dict[tuple[str, str], RawModule] = {}
    alphas: dict[tuple[str, str], float] = {}
    bad = []
    for key, t in tensors.items():
        m = _PEFT.match(key) or _PEFT_MAGNITUDE.match(key)
        if m:
            comp, path = _split_component(m["mod"], PEFT_PREFIXES)
            rec = found.setdefault((comp, path), RawModule(comp, path.replace(".", "_")))
            if "part" in m.groupdict():
                _store(rec, m["part"], t)
            else:
                # peft's DoRA norms per output always; its conv magnitudes are [1, out, 1, 1], which would read as
                # LyCORIS' per-input [1, in, 1, 1]: kept 1-D ([out]), the per-output form
                rec.magnitude = t.reshape(-1)
        elif key.endswith(".alpha"):
            alphas[_split_component(key[: -len(".alpha")], PEFT_PREFIXES)] = float(t.float().reshape(-1)[0])
        else:
            bad.append(key)
    if bad:
        raise _unknown(filename, bad, "peft/diffusers")
    configs = _adapter_configs(metadata, filename)
    for (comp, path), rec in found.items():
        rec.alpha = alphas.get((comp, path))
        if rec.alpha is None and rec.down is not None:
            rec.alpha = _config_alpha(configs.get(comp), path, rec.down.shape[0], filename)
    return list(found.values())


def _adapter_configs(metadata: Mapping[str, str], filename: str) -> dict[str, dict]:
    """diffusers' saved LoraConfig per component ("unet.lora_alpha": ... -> {"unet": {"lora_alpha": ...}})."""
    raw = metadata.get(ADAPTER_METADATA_KEY)
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except ValueError:
        raise LoracamError(f"{filename} has unreadable LoRA adapter metadata; re-save the LoRA") from None
    out: dict[str, dict] = {}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in PEFT_PREFIXES and rest:
            out.setdefault(PEFT_PREFIXES[head], {})[rest] = value
    return out


def _config_alpha(cfg: dict | None, path: str, rank: int, filename: str) -> float:
    """The alpha peft would use for ``path``: alpha_pattern, else lora_alpha, else the rank (scale 1)."""
    if not cfg:
        return float(rank)
    alpha = float(cfg.get("lora_alpha") or rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):  # peft matches pattern keys as module-path suffixes
            alpha = float(value)
            break
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); kohya's scale is alpha/dim
    return alpha


# ---------------------------------------------------------------------------------------------
# old diffusers attention processors: unet.<...>.processor.to_q_lora.down.weight,
# text_encoder.<...>.q_proj.lora_linear_layer.down.weight, <...>.lora.down.weight

_LEGACY = re.compile(
    r"^(?P<stem>.+?\.(?:(?:to_q|to_k|to_v|to_out)_lora|lora_linear_layer|lora_layer|lora))\.(?P<part>down|up)\.weight$"
)
_LEGACY_PROC = re.compile(r"^(?P<mod>.+?)(?:\.processor)?\.(?P<proj>to_q|to_k|to_v|to_out)_lora$")
_LEGACY_PROJ = {
    "unet": {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    "te": {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}


def _legacy_module(stem: str) -> tuple[str, str]:
    """(component, dotted module path) of an old-diffusers key stem (everything before .down/.up/.alpha)."""
    comp, path = _split_component(stem, PEFT_PREFIXES)
    m = _LEGACY_PROC.match(path)
    if m:
        table = _LEGACY_PROJ["unet" if comp == "unet" else "te"]
        return comp, f"{m['mod']}.{table[m['proj']]}"
    for suffix in (".lora_linear_layer", ".lora_layer", ".lora"):
        if path.endswith(suffix):
            return comp, path[: -len(suffix)]
    return comp, path


def parse_legacy(tensors: Tensors, filename: str) -> list[RawModule]:
    """Records of the old diffusers attention-processor layout (alpha from ``.alpha`` keys, else rank)."""
    found: dict[tuple[str, str], RawModule] = {}
    alphas: dict[tuple[str, str], float] = {}
    bad = []
    for key, t in tensors.items():
        m = _LEGACY.match(key)
        if m:
            comp, path = _legacy_module(m["stem"])
            rec = found.setdefault((comp, path), RawModule(comp, path.replace(".", "_")))
            _store(rec, m["part"], t)
        elif key.endswith(".alpha"):
            alphas[_legacy_module(key[: -len(".alpha")])] = float(t.float().reshape(-1)[0])
        else:
            bad.append(key)
    if bad:
        raise _unknown(filename, bad, "diffusers (old attention-processor)")
    for k, rec in found.items():
        rec.alpha = alphas.get(k)
    return list(found.values())


PARSERS: dict[str, Callable[[Tensors, Mapping[str, str], str], list[RawModule]]] = {
    "kohya": lambda t, meta, f: parse_kohya(t, f),
    "peft": parse_peft,
    "diffusers-legacy": lambda t, meta, f: parse_legacy(t, f),
}


# ---------------------------------------------------------------------------------------------
# family


_SDXL_UNET = re.compile(r"^(input_blocks|middle_block|output_blocks|label_emb|add_embedding)|transformer_blocks_[1-9]")
_CROSS_KV = re.compile(r"attn2_to_[kv]$")
_TE_ATTN = re.compile(r"self_attn_[qkv]_proj$")
_WIDTH_FAMILY = {1024: "sd2", 2048: "sdxl", 1280: "sdxl"}


def _family_from_metadata(metadata: Mapping[str, str]) -> str | None:
    family = family_of_metadata(metadata)
    return family.name if family else None


def _widths(records: list[RawModule]) -> list[int]:
    """Context widths the LoRA was trained for: cross-attention k/v inputs and text-encoder widths."""
    out = []
    for r in records:
        if r.down is None or r.down.ndim < 2:
            continue
        if (r.component == "unet" and _CROSS_KV.search(r.path)) or (r.component == "te" and _TE_ATTN.search(r.path)):
            out.append(int(r.down.shape[1]))
    return out


def detect_family(records: list[RawModule], metadata: Mapping[str, str]) -> str:
    """A family of the table (loracam/models/families.py: "sd1", "sd2", "sdxl", ...) or "unknown": from
    SDXL-only names, kohya/modelspec metadata, then layer widths."""
    from loracam.lora.transformer import is_zimage_path

    if any(r.component == "te2" for r in records):
        return "sdxl"
    if any(r.component == "unet" and is_zimage_path(r.path) for r in records):
        return "zimage"
    meta = _family_from_metadata(metadata)
    if meta:
        return meta
    widths = _widths(records)
    for width in widths:
        if width in _WIDTH_FAMILY:
            return _WIDTH_FAMILY[width]
    if any(r.component == "unet" and _SDXL_UNET.search(r.path) for r in records):
        return "sdxl"
    return "sd1" if widths else "unknown"  # SD1 names and widths; a conv-only LoRA cannot tell


def to_kohya_name(rec: RawModule, family: str) -> str:
    """The kohya module name of a record; text-encoder names always carry ``text_model_``."""
    if rec.component == "unet":
        return "lora_unet_" + rec.path
    path = rec.path if rec.path.startswith("text_model_") else "text_model_" + rec.path
    if rec.component == "te2":
        return "lora_te2_" + path
    # diffusers' convert_state_dict_to_kohya writes lora_te1_ even for SD1.x; A1111 wants lora_te_ there
    return ("lora_te1_" if family == "sdxl" else "lora_te_") + path
