"""kohya module names: how a model's layers are named in LoRA files, and which layers kohya targets.

A kohya name is a prefix (``lora_unet_``, ``lora_te_``; SDXL ``lora_te1_``/``lora_te2_``) followed by the
diffusers/transformers module path with ``.`` replaced by ``_``. Text-encoder names always contain
``text_model_`` (A1111 and kohya name CLIP's layers that way), even though transformers 5's CLIPTextModel
no longer has a ``text_model`` wrapper module.
"""

from __future__ import annotations

from typing import Iterator

from torch import nn

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"
SDXL_TE_PREFIXES = ("lora_te1_", "lora_te2_")

# kohya's default targets (sd-scripts networks/lora.py): every Linear and 1x1 Conv2d inside these blocks.
UNET_ATTN_BLOCKS = ("Transformer2DModel",)
TE_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
# LoCon (kohya's conv_dim) adds the 3x3 convs of these blocks.
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def kohya_name(component: str, path: str, prefix: str | None = None) -> str:
    """The kohya name of the module at dotted ``path`` in the U-Net ("unet") or a text encoder ("te"); ``prefix``
    is the text encoder's (``lora_te_``, SDXL's ``lora_te1_``/``lora_te2_``)."""
    if component == "unet":
        return UNET_PREFIX + path.replace(".", "_")
    if not path.startswith("text_model."):
        path = "text_model." + path  # transformers 5 dropped the wrapper; the files' names keep it
    return (prefix or TE_PREFIX) + path.replace(".", "_")


def is_sdxl_unet(unet: nn.Module) -> bool:
    """SDXL's U-Net takes pooled text and size ids (``text_time``): sd-scripts names its layers by SGM's paths."""
    return getattr(getattr(unet, "config", None), "addition_embed_type", None) == "text_time"


# a diffusion transformer's class -> its family, for the families whose LoRA targets are their own
TRANSFORMER_FAMILIES = {"ZImageTransformer2DModel": "zimage"}


def transformer_family(denoiser: nn.Module | None) -> str | None:
    return TRANSFORMER_FAMILIES.get(type(denoiser).__name__)


def unet_paths(unet: nn.Module) -> dict[str, str]:
    """Each U-Net layer's diffusers path -> the path its kohya name is made of: the diffusers path on SD1.x, SGM's
    (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``) on SDXL, as sd-scripts' SDXL U-Net names them."""
    if is_sdxl_unet(unet):
        from loracam.models.ldm import unet_module_names

        return unet_module_names(unet)
    return {path: path for path, _ in _layers(unet)}


def text_encoder_prefixes(unet: nn.Module) -> tuple[str, str]:
    """The kohya prefixes of the first and second text encoder for this U-Net's family."""
    return SDXL_TE_PREFIXES if is_sdxl_unet(unet) else (TE_PREFIX, SDXL_TE_PREFIXES[1])


def component_of(name: str) -> str:
    """"unet" or "te" for a kohya module name."""
    return "unet" if name.startswith(UNET_PREFIX) else "te"


def _layers(root: nn.Module | None) -> Iterator[tuple[str, nn.Module]]:
    if root is None:
        return
    for path, module in root.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            yield path, module


def model_modules(unet: nn.Module | None, text_encoder: nn.Module | None,
                  text_encoder_2: nn.Module | None = None) -> dict[str, tuple[str, nn.Module]]:
    """Every Linear and Conv2d of the U-Net and text encoders, by kohya name, with its component ("unet", "te":
    both of SDXL's encoders take the text-encoder multiplier). An SDXL U-Net's layers are found under sd-scripts'
    SGM names and, as aliases, under their diffusers paths (peft files converted to kohya names have those)."""
    out: dict[str, tuple[str, nn.Module]] = {}
    if unet is not None:
        names = unet_paths(unet)
        for path, module in _layers(unet):
            out.setdefault(kohya_name("unet", names.get(path, path)), ("unet", module))
        if is_sdxl_unet(unet):
            for path, module in _layers(unet):
                out.setdefault(kohya_name("unet", path), ("unet", module))
    prefixes = text_encoder_prefixes(unet) if unet is not None else (TE_PREFIX, SDXL_TE_PREFIXES[1])
    for prefix, root in zip(prefixes, (text_encoder, text_encoder_2)):
        for path, module in _layers(root):
            out.setdefault(kohya_name("te", path, prefix), ("te", module))
    return out


def _is_1x1(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or tuple(module.kernel_size) == (1, 1)


def _children_of(root: nn.Module, blocks: tuple[str, ...], keep) -> Iterator[tuple[str, nn.Module]]:
    for block_path, block in root.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child_path, child in _layers(block):
            if keep(child):
                yield f"{block_path}.{child_path}", child


def kohya_targets(unet: nn.Module, text_encoder: nn.Module | None, conv: bool = False,
                  text_encoder_2: nn.Module | None = None) -> list[tuple[str, nn.Module]]:
    """kohya's default LoRA targets as (kohya name, module), in model order (SD1.x, and SDXL under sd-scripts'
    names: the U-Net by SGM paths, CLIP-L as ``lora_te1_``, bigG as ``lora_te2_``).

    U-Net: every Linear/1x1 conv in each Transformer2DModel; text encoders: attention and MLP linears;
    with ``conv`` (LoCon), every layer of the ResNet blocks and down/up samplers, as kohya's conv_dim adds
    those whole blocks: their 3x3 convs (trained at conv_dim) and their time_emb_proj and 1x1
    conv_shortcut (at the network dim), 86 more modules on SD1.5.
    """
    found: dict[str, nn.Module] = {}
    family = transformer_family(unet)
    if family is not None:  # a diffusion transformer: its family's blocks (loracam.lora.transformer)
        from loracam.lora.transformer import targets

        for path, module in targets(unet, family):
            found.setdefault(kohya_name("unet", path), module)
        return list(found.items())
    names = unet_paths(unet)
    for path, module in _children_of(unet, UNET_ATTN_BLOCKS, _is_1x1):
        found.setdefault(kohya_name("unet", names[path]), module)
    if conv:
        for path, module in _children_of(unet, UNET_CONV_BLOCKS, lambda m: True):
            found.setdefault(kohya_name("unet", names[path]), module)
    for prefix, root in zip(text_encoder_prefixes(unet), (text_encoder, text_encoder_2)):
        if root is not None:
            for path, module in _children_of(root, TE_BLOCKS, lambda m: isinstance(m, nn.Linear)):
                found.setdefault(kohya_name("te", path, prefix), module)
    return list(found.items())
