"""The LAION aesthetic predictor v2: a rating 1-10 of how good a picture looks, from the user's own files.

The predictor (christophschuhmann/improved-aesthetic-predictor) is a CLIP ViT-L/14 image embedding,
L2-normalised, into an MLP 768-1024-128-64-16-1 with no activations (dropout between the first four linears,
so the state dict's keys are ``layers.{0,2,4,6,7}``); its output is the predicted AVA rating, 1-10.

Given as ``CLIP_DIR:MLP.pth``: a transformers CLIP folder (a whole CLIPModel or a CLIPVisionModelWithProjection;
only the vision tower and its projection load) and the MLP's torch state dict. Nothing is downloaded. The MLP's
widths are read from the state dict, so a predictor trained on another CLIP works when its input width is
that CLIP's projection width.

Pixels are prepared as CLIP's image processor does (the folder's preprocessor_config.json when present,
else CLIP's defaults): shortest side resized to the input size (bicubic), centre crop, scaled to [0, 1],
normalised by CLIP's mean and standard deviation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from loracam.errors import LoracamError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MLP_KEYS = ("layers.0", "layers.2", "layers.4", "layers.6", "layers.7")
DROPOUT = {1: 0.2, 3: 0.2, 5: 0.1}  # the positions between the linears (inactive when rating)
BATCH = 16


def parse_spec(spec: str) -> tuple[Path, Path]:
    """``CLIP_DIR:MLP.pth`` -> (folder, file), both checked to exist."""
    clip, sep, mlp = spec.rpartition(":")
    if not sep or not clip or not mlp:
        raise LoracamError(f"--aesthetic {spec!r}: write CLIP_DIR:MLP.pth (a CLIP ViT-L/14 folder and the LAION "
                           "aesthetic MLP, e.g. sac+logos+ava1-l14-linearMSE.pth)")
    clip_dir, mlp_path = Path(clip).expanduser(), Path(mlp).expanduser()
    if not (clip_dir / "config.json").is_file():
        raise LoracamError(f"--aesthetic: {clip_dir} is not a transformers CLIP folder (no config.json); give the "
                           "folder of a CLIP ViT-L/14 model saved with save_pretrained")
    if not mlp_path.is_file():
        raise LoracamError(f"--aesthetic: the MLP file {mlp_path} does not exist; give the LAION aesthetic "
                           "predictor's .pth file")
    return clip_dir, mlp_path


def build_mlp(state: dict[str, torch.Tensor]) -> torch.nn.Sequential:
    """The predictor's Sequential (linears at 0, 2, 4, 6, 7; dropouts between), widths from ``state``."""
    missing = [f"{k}.weight" for k in MLP_KEYS if f"{k}.weight" not in state]
    if missing:
        raise LoracamError(f"the aesthetic MLP lacks {', '.join(missing)}; give the LAION aesthetic predictor's "
                           "state dict (keys layers.0, 2, 4, 6, 7)")
    layers: list[torch.nn.Module] = []
    for i in range(8):
        key = f"layers.{i}"
        if key in MLP_KEYS:
            out_w, in_w = state[f"{key}.weight"].shape
            layers.append(torch.nn.Linear(in_w, out_w))
        else:
            layers.append(torch.nn.Dropout(DROPOUT.get(i, 0.0)))
    mlp = torch.nn.Sequential()
    mlp.add_module("layers", torch.nn.Sequential(*layers))
    try:
        mlp.load_state_dict({k: v for k, v in state.items()})
    except RuntimeError as exc:
        raise LoracamError(f"the aesthetic MLP's weights do not fit one another ({exc}); give an unmodified "
                           "LAION aesthetic predictor file") from None
    return mlp.eval()


class AestheticPredictor:
    """CLIP image embeddings into the LAION MLP: ``rate(images)`` -> ratings (about 1-10)."""

    def __init__(self, clip_dir: Path, mlp_path: Path) -> None:
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import logging

        logging.set_verbosity_error()  # a whole CLIPModel's text weights are "unexpected" here, and that is fine
        try:
            self.clip = CLIPVisionModelWithProjection.from_pretrained(str(clip_dir), config=_vision_config(clip_dir))
            self.clip.eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise LoracamError(f"{clip_dir} could not be loaded as a CLIP model ({exc}); give a CLIP ViT-L/14 "
                               "folder saved with save_pretrained") from None
        try:
            state = torch.load(str(mlp_path), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a file that is not a state dict
            raise LoracamError(f"{mlp_path} could not be read as a torch state dict ({exc}); give the LAION "
                               "aesthetic predictor's .pth file") from None
        self.mlp = build_mlp(state)
        width = self.mlp.layers[0].in_features
        proj = int(self.clip.config.projection_dim)
        if width != proj:
            raise LoracamError(f"the aesthetic MLP takes {width}-d embeddings but {clip_dir.name}'s CLIP gives "
                               f"{proj}-d; pair the predictor with the CLIP it was trained on (ViT-L/14: 768)")
        self.resize, self.size, self.mean, self.std = _preprocessing(clip_dir, int(self.clip.config.image_size))

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP's input for ``images``: float [N, 3, size, size], normalised."""
        return clip_pixels(images, self.resize, self.size, self.mean, self.std)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings [N, D]."""
        parts = [self.clip(pixel_values=self.pixels(images[i:i + BATCH])).image_embeds
                 for i in range(0, len(images), BATCH)]
        emb = torch.cat(parts).float()
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def rate(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The predicted rating of each image (AVA's 1-10 scale)."""
        if not images:
            return np.zeros(0)
        return self.mlp(self.embed(images)).squeeze(-1).double().numpy()


def clip_pixels(images: Sequence[Image.Image], resize: int, size: int, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """CLIP's preprocessing: shortest side to ``resize`` (bicubic), centre crop ``size``, normalised; [N, 3, size, size]."""
    out = []
    for image in images:
        im = image.convert("RGB")
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        a = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / 255.0
        out.append((a - mean) / std)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _vision_config(clip_dir: Path):
    """A whole CLIPModel's vision config with the model's projection width (None for a vision-only folder).

    A CLIPModel keeps projection_dim at the top of its config; its vision_config may lack it, and the vision
    class's default (512) would then not fit the checkpoint's projection."""
    from transformers import CLIPConfig

    try:
        kind = json.loads((clip_dir / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise LoracamError(f"{clip_dir / 'config.json'} could not be read ({exc}); give a CLIP folder saved with "
                           "save_pretrained") from None
    if kind != "clip":
        return None
    full = CLIPConfig.from_pretrained(str(clip_dir))
    vision = full.vision_config
    vision.projection_dim = full.projection_dim
    return vision


def _preprocessing(clip_dir: Path, image_size: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(shortest side after resizing, crop side, mean, std) from the folder's preprocessor_config.json, else
    CLIP's defaults."""
    resize, size, mean, std = image_size, image_size, CLIP_MEAN, CLIP_STD
    path = clip_dir / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise LoracamError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
        crop = cfg.get("crop_size", size)
        size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
        short = cfg.get("size", size)
        resize = int(short.get("shortest_edge", size) if isinstance(short, dict) else short)
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    return max(resize, size), size, np.asarray(mean, np.float32), np.asarray(std, np.float32)
