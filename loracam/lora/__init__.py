"""LoRA files: read any common layout, write kohya files with hashes, apply several LoRAs with per-sample weights."""

from loracam.lora.apply import LoraStack, RowMultipliers
from loracam.lora.formats import LoraFile, LoraModule, random_lora, read_lora, write_kohya
from loracam.lora.library import LoraLibrary
from loracam.lora.naming import kohya_name, kohya_targets

__all__ = [
    "LoraFile", "LoraLibrary", "LoraModule", "LoraStack", "RowMultipliers", "kohya_name", "kohya_targets",
    "random_lora", "read_lora", "write_kohya",
]
