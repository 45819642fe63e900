"""Taggers that describe dataset images: a WD14 booru tagger (ONNX) and a BLIP captioner (transformers).

Nothing is downloaded unless the caller passes ``allow_download=True``: a hub id is otherwise resolved
from the local hub cache only, so a missing model is a clear error rather than a silent large download.
"""

from __future__ import annotations

import csv
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from loracam.data.tags import split_tags
from loracam.errors import LoracamError


class Tagger(Protocol):
    """Anything that turns images into tags for their captions."""

    name: str

    def tag(self, images: Sequence[Image.Image]) -> list[list[tuple[str, float]]]:
        """Per image, (tag, confidence) above the tagger's threshold, most confident first."""
        ...


# ---------------------------------------------------------------------------------------------
# model files: a local path, or a hub id resolved from the cache unless a download is allowed

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_file(repo_id: str, filename: str, allow_download: bool) -> Path:
    """``filename`` of hub repo ``repo_id`` from the local cache, or downloaded if that is allowed."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=True))
    except HFValidationError as exc:  # looked like owner/name, but is not a well-formed repository id
        raise LoracamError(f"{repo_id!r} is neither a local path nor a valid hub id ({exc})") from None
    except LocalEntryNotFoundError:
        if not allow_download:
            raise LoracamError(
                f"{repo_id} ({filename}) is neither a local path nor in the local Hugging Face cache; "
                "allow the download (allow_download=True, --allow-download) or download the repository "
                "where there is a network and pass its folder"
            ) from None
    try:
        return Path(huggingface_hub.hf_hub_download(repo_id, filename))
    except Exception as exc:  # network, auth and missing-file errors all come as different types
        raise LoracamError(
            f"could not download {filename} from {repo_id}: {type(exc).__name__}: {exc}; check the id and the "
            "network, or download the repository elsewhere and pass its folder"
        ) from None


def _is_hub_id(model: str | Path) -> bool:
    return isinstance(model, str) and not Path(model).exists() and bool(_HUB_ID.match(model))


def _on_white(image: Image.Image) -> Image.Image:
    """An RGB copy of ``image``; transparent parts become white, as the taggers were trained to see them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# WD14 (SmilingWolf's wd-v1-4-* and wd-*-tagger-v3 ONNX models)

WD14_MODEL_FILE = "model.onnx"
WD14_TAGS_FILE = "selected_tags.csv"
WD14_DEFAULT_SIZE = 448  # every released v1.4 / v3 model; used only when the graph leaves the size open
CATEGORY_GENERAL, CATEGORY_CHARACTER, CATEGORY_RATING = 0, 4, 9

# Emoticon tags whose underscore is part of the face: "^_^" must not become "^ ^".
EMOTICON_TAGS = frozenset({
    "^_^", ">_<", "o_o", "0_0", "x_x", "=_=", "+_+", "+_-", "@_@", "._.", "u_u", "3_3", "6_9",
    ">_o", "|_|", "||_||", "(o)_(o)", "<o>_<o>", "<|>_<|>",
})


@dataclass(frozen=True)
class WD14Tag:
    """One row of selected_tags.csv: the booru name, the caption text, and its category."""

    name: str
    category: int

    @property
    def caption(self) -> str:
        return self.name if self.name in EMOTICON_TAGS else self.name.replace("_", " ")


def read_selected_tags(path: Path) -> list[WD14Tag]:
    """The rows of a WD14 selected_tags.csv (columns tag_id,name,category,count), in output order."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LoracamError(f"cannot read the tag list {path}: {exc}") from None
    if not {"name", "category"} <= columns:
        raise LoracamError(f"{path} is not a WD14 selected_tags.csv (it needs rows with name and category columns); "
                           "use the selected_tags.csv from the model's own repository")
    try:
        return [WD14Tag(row["name"], int(row["category"])) for row in rows]
    except (TypeError, ValueError):
        raise LoracamError(f"{path} has a row whose category is not a number; re-download it") from None


def wd14_input(image: Image.Image, size: int) -> np.ndarray:
    """An image as WD14 takes it: padded square with white, resized to ``size``, BGR float32 0-255, [size, size, 3]."""
    rgb = _on_white(image)
    side = max(rgb.size)
    # Padding (not stretching or cropping) keeps proportions and the whole subject, as in training.
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])  # RGB -> BGR


def _onnx_providers(ort: Any, asked: Sequence[str] | None) -> list[str]:
    available = ort.get_available_providers()
    if asked is None:
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    missing = [p for p in asked if p not in available]
    if missing:
        raise LoracamError(f"onnxruntime here has no {', '.join(missing)}; available: {', '.join(available)}")
    return list(asked)


class WD14Tagger:
    """A WD14-style ONNX booru tagger (SmilingWolf's wd-v1-4-* / wd-*-tagger-v3 family) run with onnxruntime."""

    name = "wd14"

    def __init__(self, model: str | Path, tags_csv: str | Path | None = None, general_threshold: float = 0.35,
                 character_threshold: float = 0.85, providers: Sequence[str] | None = None,
                 allow_download: bool = False):
        for label, value in (("general", general_threshold), ("character", character_threshold)):
            if not 0.0 <= value <= 1.0:
                raise LoracamError(f"the {label} tag threshold must be between 0 and 1 (got {value})")
        self.source = str(model)
        model_path, csv_path = self._files(model, tags_csv, allow_download)
        self.tags = read_selected_tags(csv_path)
        self.session = self._session(model_path, providers)
        self.size, self.batch, self._fixed_batch = self._input_spec(model_path)
        self._check_outputs(model_path, csv_path)
        categories = np.array([t.category for t in self.tags])
        # One threshold per output; rating tags can never pass (they are not caption material).
        char, general = float(character_threshold), float(general_threshold)  # float: the array must hold inf
        self.thresholds = np.where(categories == CATEGORY_CHARACTER, char, general)
        self.thresholds[categories == CATEGORY_RATING] = np.inf

    @staticmethod
    def _files(model: str | Path, tags_csv: str | Path | None, allow_download: bool) -> tuple[Path, Path]:
        path = Path(model)
        if _is_hub_id(model):
            onnx_path = _hub_file(str(model), WD14_MODEL_FILE, allow_download)
            csv_path = Path(tags_csv) if tags_csv else _hub_file(str(model), WD14_TAGS_FILE, allow_download)
        elif path.is_dir():
            onnx_path, csv_path = path / WD14_MODEL_FILE, Path(tags_csv or path / WD14_TAGS_FILE)
        elif path.is_file():
            onnx_path, csv_path = path, Path(tags_csv or path.with_name(WD14_TAGS_FILE))
        else:
            raise LoracamError(f"no WD14 tagger at {model}: pass a .onnx file, a folder holding {WD14_MODEL_FILE} "
                               f"and {WD14_TAGS_FILE}, or a hub id such as SmilingWolf/wd-vit-tagger-v3")
        if not onnx_path.is_file():
            raise LoracamError(f"{onnx_path} not found: a WD14 tagger folder holds {WD14_MODEL_FILE} "
                               f"and {WD14_TAGS_FILE}; pass the .onnx file itself if it has another name")
        if not csv_path.is_file():
            raise LoracamError(f"{csv_path} not found: a WD14 model needs its tag list; put the repository's "
                               f"{WD14_TAGS_FILE} next to {onnx_path.name} or pass tags_csv")
        return onnx_path, csv_path

    @staticmethod
    def _session(path: Path, providers: Sequence[str] | None) -> Any:
        try:
            import onnxruntime as ort
        except ImportError:
            raise LoracamError("the WD14 tagger needs onnxruntime: pip install onnxruntime "
                               "(or onnxruntime-gpu on a CUDA machine)") from None
        chosen = _onnx_providers(ort, providers)
        try:
            return ort.InferenceSession(str(path), providers=chosen)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LoracamError(f"{path} is not a usable ONNX model ({reason}); re-download it, "
                               "or pass the model.onnx of a WD14 tagger") from None

    def _input_spec(self, path: Path) -> tuple[int, int, bool]:
        """(square size, images per run, whether the batch size is fixed) from the model's input."""
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3 or inp.type != "tensor(float)":
            raise LoracamError(f"{path.name} takes {inp.type} {shape}, not float [batch, size, size, 3] (NHWC): "
                               "it is not a WD14-style tagger")
        h, w = shape[1], shape[2]
        if isinstance(h, int) and isinstance(w, int) and h != w:
            raise LoracamError(f"{path.name} takes {h}x{w} images; WD14 taggers take square ones")
        size = h if isinstance(h, int) else w if isinstance(w, int) else WD14_DEFAULT_SIZE
        fixed = isinstance(shape[0], int) and shape[0] > 0
        return size, (shape[0] if fixed else 8), fixed  # 8 at a time bounds memory on big datasets

    def _check_outputs(self, model_path: Path, csv_path: Path) -> None:
        n = self.session.get_outputs()[0].shape[-1]
        if isinstance(n, int) and n != len(self.tags):
            self._mismatch(n, model_path, csv_path)

    def _mismatch(self, n: int, model_path: Path | str, csv_path: Path | str) -> None:
        raise LoracamError(f"{csv_path} lists {len(self.tags)} tags but {model_path} gives {n} scores: they come from "
                           f"different models; use the {WD14_TAGS_FILE} from the model's own repository")

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Every tag's score for every image: [images, tags] in selected_tags.csv order."""
        if not images:
            return np.zeros((0, len(self.tags)), np.float32)
        inp = self.session.get_inputs()[0].name
        chunks = []
        for start in range(0, len(images), self.batch):
            batch = np.stack([wd14_input(im, self.size) for im in images[start:start + self.batch]])
            n = len(batch)
            if self._fixed_batch and n < self.batch:  # a fixed-batch graph: fill up, then drop the fillers
                batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch - n, axis=0)])
            out = self.session.run(None, {inp: batch})[0]
            chunks.append(np.asarray(out, dtype=np.float32).reshape(len(batch), -1)[:n])
        scores = np.concatenate(chunks)
        if scores.shape[1] != len(self.tags):
            self._mismatch(scores.shape[1], self.source, WD14_TAGS_FILE)
        return scores

    def tag(self, images: Sequence[Image.Image]) -> list[list[tuple[str, float]]]:
        """Per image, (tag, score) above the general / character threshold, most confident first; no ratings."""
        return [self._pick(row) for row in self.scores(images)]

    def _pick(self, row: np.ndarray) -> list[tuple[str, float]]:
        hits = np.nonzero(row > self.thresholds)[0]
        hits = hits[np.argsort(-row[hits], kind="stable")]  # ties keep the CSV's order
        picked: dict[str, float] = {}
        for i in hits:
            picked.setdefault(self.tags[i].caption, float(row[i]))  # two rows may read alike once "_" is " "
        return list(picked.items())


# ---------------------------------------------------------------------------------------------
# BLIP captions (Salesforce/blip-image-captioning-* and models saved the same way)


class BlipCaptioner:
    """BLIP-style captioning via transformers (BlipForConditionalGeneration + BlipProcessor), from a local folder
    or the local hub cache (download only with allow_download=True)."""

    name = "blip"

    def __init__(self, model: str | Path, max_new_tokens: int = 30, allow_download: bool = False,
                 device: str = "cpu"):
        if max_new_tokens < 1:
            raise LoracamError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
        self.source, self.max_new_tokens = str(model), max_new_tokens
        from loracam.models import pick_device  # torch only when a captioner is built

        self.device = pick_device(device)
        local = Path(model)
        if not _is_hub_id(model) and not local.is_dir():
            raise LoracamError(f"no BLIP model folder at {model}: pass a folder saved with save_pretrained "
                               "(config.json, weights, processor and tokenizer files) or a hub id such as "
                               "Salesforce/blip-image-captioning-base")
        self.processor, self.model = self._load(str(model), local_only=local.is_dir() or not allow_download)

    def _load(self, src: str, local_only: bool) -> tuple[Any, Any]:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            processor = BlipProcessor.from_pretrained(src, local_files_only=local_only)
            model = BlipForConditionalGeneration.from_pretrained(src, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            hint = ("; it is not in the local Hugging Face cache: allow the download (allow_download=True, "
                    "--allow-download) or pass a local folder") if local_only and _is_hub_id(src) else ""
            raise LoracamError(f"could not load a BLIP captioner from {src}: {exc}{hint}") from None
        return processor, model.to(self.device).eval()

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, by greedy decoding so the same image always gets the same words."""
        import torch

        captions: list[str] = []
        for start in range(0, len(images), 8):  # 8 at a time bounds memory on big datasets
            batch = [_on_white(im) for im in images[start:start + 8]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens,
                                          do_sample=False, num_beams=1)
            captions += [" ".join(text.split()) for text in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return captions

    def tag(self, images: Sequence[Image.Image]) -> list[list[tuple[str, float]]]:
        """The captions split at commas into phrases, each with confidence 1.0 (BLIP gives no scores)."""
        return [[(p, 1.0) for p in dict.fromkeys(split_tags(c))] for c in self.caption(images)]


# ---------------------------------------------------------------------------------------------

TAGGERS: dict[str, Callable[..., Tagger]] = {"wd14": WD14Tagger, "blip": BlipCaptioner}


def make_tagger(kind: str, model: str, **kw: Any) -> Tagger:
    """The tagger ``kind`` (a key of TAGGERS) loaded from ``model``, with that tagger's options."""
    builder = TAGGERS.get(kind)
    if builder is None:
        raise LoracamError(f"unknown tagger {kind!r}; use one of {', '.join(TAGGERS)}")
    try:
        inspect.signature(builder).bind(model, **kw)
    except TypeError as exc:
        raise LoracamError(f"the {kind} tagger does not take those options ({exc})") from None
    return builder(model, **kw)
