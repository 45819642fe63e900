"""Training: LoRA and full fine-tuning with kohya sd-scripts' semantics, resumable, with previews."""

from loracam.train.config import PRESETS, TrainConfig
from loracam.train.trainer import Control, TrainResult, train

__all__ = ["Control", "PRESETS", "TrainConfig", "TrainResult", "train"]
