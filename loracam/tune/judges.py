"""Who says a LoRA's concept shows, and how much of the rest of the prompt survives: tables by name.

``JUDGES`` (concept judges; name -> builder(lora, context)), each giving a fidelity in [0, 1] per image and a
threshold at which the concept counts as present:

- ``probe``: the toy world's probe, P(concept) on the attribute the concept lives in (the dress pattern for
  testdress, the shoes for myshoes, the face for sks); present at 0.5 (then it is also the probe's reading).
- ``identity``: face LoRAs. loracam.judge's identity embedder (dlib's descriptor, or ``onnx:PATH`` through
  ``--identity``) against the LoRA's training photos, as a share of those photos' own photo-to-photo
  similarity (1 = as alike as the photos are to each other); a render without a face scores 0. Present at 0.75.
- ``clip``: garments, shoes, styles. CLIP image similarity between the render's region (the finish stage's
  garment or shoes detector; the whole picture for anything else) and the LoRA's training crops, as a share of
  the crops' own leave-one-out similarity. Present at 0.9 (a real CLIP puts unrelated clothes near 0.7 of it).

``PRIORS`` (the interference measure: how well the prompt outside the LoRAs is followed), one per run:
- ``probe``: the toy probe grades the prompt's own tags (loracam.judge.adherence), triggers left out;
- ``clip-text``: CLIPScore of the render against the prompt without LoRA tags and triggers;
- ``none``: no prior; the lightest working weights win.

A LoRA made by ``loracam train`` knows its dataset (its loracam_config metadata); for any other the user gives
reference images (``--reference NAME=DIR``). Thresholds can be set per LoRA (``--threshold NAME=V``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from loracam.errors import LoracamError


@dataclass(frozen=True)
class LoraInfo:
    name: str  # as the prompt names it
    path: Path
    trigger: str  # "" when the file does not say
    subject: str  # face, person, garment, shoes, pet, object, style, or ""
    dataset: Path | None  # the training dataset (loracam train's metadata), if it still exists
    reference: Path | None  # what the user passed with --reference NAME=DIR


def lora_info(name: str, path: Path, reference: Path | None = None) -> LoraInfo:
    from loracam.lora.formats import read_lora

    meta = read_lora(path).metadata
    try:
        where = json.loads(meta.get("loracam_config") or "{}").get("dataset") or ""
    except ValueError:
        where = ""
    dataset = Path(where) if where and Path(where).is_dir() else None
    return LoraInfo(name, Path(path), meta.get("loracam_trigger") or "", meta.get("loracam_subject") or "", dataset,
                    reference)


class ConceptJudge(Protocol):
    name: str
    threshold: float

    def fidelity(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@dataclass
class Context:
    """What judges share: loaded models (a loracam.judge.rank.Models), the user's CLIP and identity choices."""

    models: Any
    base: str  # "toy" or a real base
    clip: str | None = None  # --clip: a folder or a hub id in the local cache
    identity: str = "dlib"  # --identity for face LoRAs

    def clip_model(self):
        if not self.clip:
            raise LoracamError("the clip judge needs a CLIP model: pass --clip FOLDER (a CLIPModel saved with "
                               "save_pretrained) or --clip openai/clip-vit-large-patch14 if it is in your hub cache")
        from loracam.judge.clip import ClipModel

        return self.models.get(("clip", self.clip), lambda: ClipModel(self.clip))


def _reference(lora: LoraInfo, what: str) -> Path:
    ref = lora.reference or lora.dataset
    if ref is None:
        raise LoracamError(f"LoRA {lora.name}: the {what} judge compares with its training images, and the file does "
                           f"not say where they are: pass --reference {lora.name}=FOLDER (its photos or dataset)")
    return ref


class ProbeJudge:
    name = "probe"
    threshold = 0.5

    def __init__(self, lora: LoraInfo, ctx: Context) -> None:
        from loracam.toy.judge import CONCEPTS

        concept = lora.trigger if lora.trigger in CONCEPTS else (lora.name if lora.name in CONCEPTS else None)
        if concept is None:
            raise LoracamError(f"LoRA {lora.name}: the probe judges the toy world's held-out concepts "
                               f"({', '.join(CONCEPTS)}), and this LoRA's trigger {lora.trigger or '(none)'!r} is not "
                               "one; choose another judge with --judge NAME=identity|clip")
        from loracam.judge.embed import ToyEmbedder

        self.embedder = ToyEmbedder(concept, ctx.models.probe())

    def fidelity(self, images):
        if not images:
            return np.zeros(0)
        return np.stack(self.embedder.embed(images, [None] * len(images)))[:, self.embedder.index]


class IdentityJudge:
    name = "identity"
    threshold = 0.75

    def __init__(self, lora: LoraInfo, ctx: Context) -> None:
        from loracam.judge.embed import EMBEDDERS, parse_identity
        from loracam.judge.reference import load_reference

        kind, arg = parse_identity(ctx.identity)
        if EMBEDDERS.get(kind) is None or kind == "toy":
            raise LoracamError(f"--identity {ctx.identity} cannot judge a face LoRA; use dlib or onnx:PATH (the toy "
                               "world's faces: --judge NAME=probe)")
        self.embedder = EMBEDDERS[kind](arg, None, ctx.models)
        self.models = ctx.models
        self.ref = load_reference(_reference(lora, "identity"), self.embedder, ctx.models)

    def fidelity(self, images):
        from loracam.judge.rank import relative_identity

        faces = self.models.detector(self.embedder.detector).detect(list(images))
        out = np.zeros(len(images))
        for i, emb in enumerate(self.embedder.embed(list(images), faces)):
            if emb is not None:
                out[i] = relative_identity(float(self.embedder.similarity(emb, self.ref.mean)), self.ref.baseline)
        return out


# which of the finish stage's detectors finds a subject's region in a render (others: the whole picture)
REGIONS = {"garment": "garment", "shoes": "shoes", "face": "face", "person": "person"}


class ClipJudge:
    name = "clip"
    threshold = 0.9

    def __init__(self, lora: LoraInfo, ctx: Context) -> None:
        where = _reference(lora, "clip" if ctx.clip else "clip (it also needs --clip MODEL)")
        self.clip = ctx.clip_model()
        self.region = REGIONS.get(lora.subject)
        crops = _reference_images(where)
        ref = self.clip.images(crops)
        self.mean = ref.mean(axis=0)
        n = len(ref)
        others = (ref.sum(axis=0) - ref) / max(1, n - 1)
        self.baseline = float(np.mean([_cos(r, o) for r, o in zip(ref, others)])) if n > 1 else None
        self.detectors = None

    def crop(self, image: Image.Image) -> Image.Image:
        if self.region is None:
            return image
        if self.detectors is None:
            from loracam.finish.detect import Detectors

            self.detectors = Detectors()
        found = self.detectors.detect(self.region, image, 0.3)
        if not found:
            return image
        x0, y0, x1, y1 = max(found, key=lambda d: d.score).box
        return image.crop((int(x0), int(y0), max(int(x1), int(x0) + 1), max(int(y1), int(y0) + 1)))

    def fidelity(self, images):
        if not images:
            return np.zeros(0)
        embs = self.clip.images([self.crop(im) for im in images])
        sims = np.array([_cos(e, self.mean) for e in embs])
        rel = sims / self.baseline if self.baseline and self.baseline > 0 else sims
        return np.clip(rel, 0.0, 1.0)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _reference_images(folder: Path) -> list[Image.Image]:
    """A prep dataset's training crops (regularisation images left out), else the folder's photos."""
    from loracam.generate.images import load_image
    from loracam.judge.reference import read_manifest

    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is not None:
        files = [folder / c["file"] for p in manifest.get("photos", []) if p.get("status") == "kept"
                 for c in p.get("crops", []) if not c.get("is_reg") and c.get("file")]
    elif folder.is_dir():
        from loracam.data.intake import list_photos

        files = list_photos(folder)[0]
    else:
        files = [folder]
    images = [load_image(f, "reference image") for f in files if Path(f).is_file()]
    if not images:
        raise LoracamError(f"the reference {folder} holds no images; pass the LoRA's training photos or dataset")
    return images


JUDGES: dict[str, Callable[[LoraInfo, Context], ConceptJudge]] = {
    "probe": ProbeJudge,
    "identity": IdentityJudge,
    "clip": ClipJudge,
}


def default_judge(lora: LoraInfo, ctx: Context) -> str:
    """The judge a LoRA gets unless --judge says otherwise: the probe for the toy world's concepts, identity for
    faces, CLIP for the rest."""
    from loracam.toy.judge import CONCEPTS

    if ctx.base == "toy" and (lora.trigger in CONCEPTS or lora.name in CONCEPTS):
        return "probe"
    if lora.subject in ("face", "person"):
        return "identity"
    return "clip"


# ---------------------------------------------------------------------------------------------------------------
# priors


class ProbePrior:
    name = "probe"

    def __init__(self, ctx: Context, prompt: str) -> None:
        from loracam.judge.adherence import ToyAdherence

        self.adherence, self.prompt = ToyAdherence(ctx.models.probe()), prompt

    def prior(self, images) -> list[float | None]:
        return [a.score if a is not None else None for a in self.adherence.judge(list(images), [self.prompt] * len(images))]


class ClipTextPrior:
    name = "clip-text"

    def __init__(self, ctx: Context, prompt: str) -> None:
        self.clip, self.prompt = ctx.clip_model(), prompt

    def prior(self, images) -> list[float | None]:
        return [float(v) for v in self.clip.clipscore(list(images), self.prompt)] if images else []


PRIORS: dict[str, Callable[[Context, str], Any] | None] = {
    "probe": ProbePrior,
    "clip-text": ClipTextPrior,
    "none": None,
}


def default_prior(ctx: Context) -> str:
    return "probe" if ctx.base == "toy" else ("clip-text" if ctx.clip else "none")


def prior_prompt(prompt: str, loras: Sequence[LoraInfo]) -> str:
    """The prompt the prior is judged against: LoRA tags and the LoRAs' trigger words removed (those are the
    concept judges' business)."""
    from loracam.judge.adherence import prompt_tags

    drop = {lo.trigger.lower() for lo in loras if lo.trigger} | {lo.name.lower() for lo in loras}
    return ", ".join(t for t in prompt_tags(prompt) if t not in drop)
