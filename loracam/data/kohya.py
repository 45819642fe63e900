"""kohya dataset folders: naming, reading an existing dataset, and the dataset TOML sd-scripts takes.

Layout (interop.md §1): ``img/<repeats>_<trigger> <class>/`` for training and ``reg/<repeats>_<class>/``
for regularization; each image may have a one-line caption sidecar. loracam writes ``.txt`` sidecars
(the kohya GUI's convention) and says so in the TOML, because sd-scripts' own default is ``.caption``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from loracam.errors import LoracamError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXT = ".txt"


def subset_dir_name(repeats: int, text: str) -> str:
    return f"{repeats}_{text}"


def parse_subset_dir(name: str) -> tuple[int, str] | None:
    """``"10_sks woman"`` -> (10, "sks woman"); None when the folder is not a kohya subset."""
    head, _, rest = name.partition("_")
    if not head.isdigit() or int(head) == 0:
        return None
    return int(head), rest


@dataclass
class SubsetImage:
    path: Path
    caption: str | None  # None: no sidecar, the folder's class text is used
    size: tuple[int, int] | None = None


@dataclass
class Subset:
    """One kohya subset folder."""

    dir: Path
    repeats: int
    class_text: str
    is_reg: bool
    images: list[SubsetImage] = field(default_factory=list)

    def caption_of(self, image: SubsetImage) -> str:
        return image.caption if image.caption is not None else self.class_text


@dataclass
class KohyaDataset:
    root: Path
    subsets: list[Subset]
    skipped: list[str]  # folders that are not subsets, with why

    @property
    def train(self) -> list[Subset]:
        return [s for s in self.subsets if not s.is_reg]

    @property
    def reg(self) -> list[Subset]:
        return [s for s in self.subsets if s.is_reg]


def read_caption(image: Path, extensions: tuple[str, ...]) -> str | None:
    """The first line of the image's sidecar caption (first extension that exists)."""
    for ext in extensions:
        side = image.with_suffix(ext)
        if side.is_file():
            lines = side.read_text(encoding="utf-8", errors="replace").splitlines()
            return lines[0].strip() if lines else ""
    return None


def read_subsets(parent: Path, is_reg: bool, caption_exts: tuple[str, ...]) -> tuple[list[Subset], list[str]]:
    subsets, skipped = [], []
    for d in sorted(p for p in parent.iterdir() if p.is_dir()):
        parsed = parse_subset_dir(d.name)
        if parsed is None:
            skipped.append(f"{d}: not named <repeats>_<text> (or 0 repeats); kohya skips it too")
            continue
        images = sorted({p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES})
        subset = Subset(d, parsed[0], parsed[1], is_reg,
                        [SubsetImage(p, read_caption(p, caption_exts)) for p in images])
        subsets.append(subset)
    return subsets, skipped


def read_kohya(root: Path, caption_exts: tuple[str, ...] = (CAPTION_EXT, ".caption")) -> KohyaDataset:
    """A kohya dataset: either ``root`` with ``img/`` (and ``reg/``) or ``root`` itself holding subsets."""
    root = Path(root)
    if not root.is_dir():
        raise LoracamError(f"dataset folder not found: {root}")
    train_parent = root / "img" if (root / "img").is_dir() else root
    subsets, skipped = read_subsets(train_parent, False, caption_exts)
    if (root / "reg").is_dir():
        reg, skipped_reg = read_subsets(root / "reg", True, caption_exts)
        subsets += reg
        skipped += skipped_reg
    if not any(s.images for s in subsets if not s.is_reg):
        raise LoracamError(
            f"{root} holds no kohya training images: expected sub-folders named <repeats>_<trigger> <class> "
            f"(e.g. 10_sks woman) with images, directly or under {root}/img"
        )
    return KohyaDataset(root, subsets, skipped)


def bucket_size(crop: tuple[int, int], resolution: tuple[int, int], step: int = 64) -> tuple[int, int]:
    """The largest size that keeps the dataset's exact aspect ratio in ``step`` multiples, fits inside the
    crop (never upscaling) and within the training resolution: 300x450 -> 256x384 for 512x768.

    Saving crops at such a size makes sd-scripts' bucket_no_upscale keep them whole instead of trimming
    edges to reach a multiple of 64."""
    gw, gh = resolution[0] // step, resolution[1] // step
    g = math.gcd(gw, gh)
    unit = (resolution[0] // g, resolution[1] // g)
    k = min(g, crop[0] // unit[0], crop[1] // unit[1])
    if k < 1:
        return crop[0] - crop[0] % step or crop[0], crop[1] - crop[1] % step or crop[1]
    return unit[0] * k, unit[1] * k


def dataset_toml(final_root: Path, subsets: list[tuple[str, int, str, bool]], resolution: tuple[int, int],
                 batch_size: int, keep_tokens: int = 1) -> str:
    """sd-scripts' dataset config for this dataset; ``subsets``: (folder path under root, repeats, class text, is_reg)."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "# kohya sd-scripts dataset config written by loracam prep (train_network.py --dataset_config THIS)",
        "[general]",
        "enable_bucket = true",
        "bucket_no_upscale = true",
        f"caption_extension = {q(CAPTION_EXT)}  # loracam writes .txt sidecars; sd-scripts' default is .caption",
        f"keep_tokens = {keep_tokens}",
        "",
        "[[datasets]]",
        f"resolution = [{resolution[0]}, {resolution[1]}]",
        f"batch_size = {batch_size}",
    ]
    for rel, repeats, class_text, is_reg in subsets:
        lines += ["", "  [[datasets.subsets]]", f"  image_dir = {q(str(final_root / rel))}",
                  f"  num_repeats = {repeats}", f"  class_tokens = {q(class_text)}"]
        if is_reg:
            lines.append("  is_reg = true")
    return "\n".join(lines) + "\n"
