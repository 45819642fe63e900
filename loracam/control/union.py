"""Union ControlNets (xinsir's controlnet-union-sdxl-1.0 and its ProMax): one model for several control types, told
which one by an index (diffusers' ControlNetUnionModel: a one-hot ``control_type`` and a task embedding).

The types, in the model's own order, under sd-webui-controlnet's names (its ``union_control_type``); ComfyUI's
SetUnionControlNetType strings and the lower-case tags are accepted too. The 6-type model stops at Segmentation;
ProMax adds Tile and Inpaint. A unit's type comes from its kind (openpose, canny, tile) unless it names one
(``union=Depth`` on an ``image:`` map: the map is already preprocessed, so only the user knows what it shows).
"""

from __future__ import annotations

from loracam.errors import LoracamError

TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")
ALIASES = {
    "openpose": 0, "pose": 0, "depth": 1, "soft edge": 2, "softedge": 2, "hed/pidi/scribble/ted": 2, "scribble": 2,
    "hard edge": 3, "canny": 3, "lineart": 3, "mlsd": 3, "canny/lineart/anime_lineart/mlsd": 3, "normal map": 4,
    "normal": 4, "normalmap": 4, "segmentation": 5, "segment": 5, "tile": 6, "inpaint": 7, "repaint": 7,
}
BY_KIND = {"openpose": 0, "canny": 3, "tile": 6}  # loracam's preprocessors -> the type their maps are


def check_type(name: str) -> str:
    """A union type's sd-webui-controlnet name for any of its spellings; "" stays "" (from the unit's kind)."""
    if not name.strip():
        return ""
    key = name.strip().lower()
    if key not in ALIASES:
        raise LoracamError(f"unknown union control type {name!r}; use one of {', '.join(TYPES)}")
    return TYPES[ALIASES[key]]


def type_index(unit, n_types: int, model_name: str) -> int:
    """The index a union model gets for ``unit``: its ``union`` type, else its kind's; within the model's types."""
    if unit.union:
        index = ALIASES[unit.union.lower()]
    elif unit.kind in BY_KIND:
        index = BY_KIND[unit.kind]
    else:
        raise LoracamError(f"{model_name} is a union ControlNet and an {unit.kind} map does not say what it shows: "
                           f"add union=TYPE to the unit ({', '.join(TYPES[:n_types])})")
    if index >= n_types:
        raise LoracamError(f"{model_name} knows {n_types} control types ({', '.join(TYPES[:n_types])}); "
                           f"{TYPES[index]} needs the ProMax model (8 types)")
    return index


def is_union_state(keys) -> bool:
    """A union ControlNet's tensors: its task embedding and control-type embedding (diffusers' names)."""
    return any(k == "task_embedding" or k.startswith("control_add_embedding.") for k in keys)
