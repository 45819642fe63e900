"""The reference a judge compares with: a prep dataset folder, a folder of photos, or one photo.

A dataset (a folder with prep's manifest.json) gives its trigger word and subject, and its kept photos: the
dlib embedder takes the descriptors prep already computed (the same model, on the aligned photo); the others
read the dataset's training crops, which live in the folder (the original photos may have moved). A folder of
photos is read and embedded here. Either way each photo that gives no embedding is named with its reason,
and a reference left with none is an error that says what to pass instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loracam.errors import LoracamError
from loracam.judge.embed import baseline

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Reference:
    """The reference photos' embeddings and what the dataset says about them."""

    source: Path
    embeddings: np.ndarray  # [N, D]
    names: tuple[str, ...]  # the photos that gave them
    baseline: float | None  # leave-one-out similarity of the photos to each other; None with one photo
    skipped: tuple[tuple[str, str], ...] = ()  # (photo, why it gave no embedding)
    trigger: str | None = None  # from a dataset's manifest
    subject: str | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.embeddings.mean(axis=0)

    def describe(self) -> str:
        """One line: how many photos, and their own baseline."""
        base = (f"their own photo-to-photo similarity (leave-one-out) is {self.baseline:.3f}"
                if self.baseline is not None else "one photo only, so there is no photo-to-photo baseline")
        skipped = f"; {len(self.skipped)} skipped" if self.skipped else ""
        return f"reference {self.source}: {len(self.names)} photos{skipped}; {base}"


def read_manifest(folder: Path) -> dict | None:
    """A prep dataset's manifest, None when ``folder`` is not a dataset; a broken one is an error."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoracamError(f"{path} could not be read as a prep manifest ({exc}); run `loracam prep` again") from None


def load_reference(path: Path, embedder, models) -> Reference:
    """Embed the reference photos (or take prep's embeddings) and compute their leave-one-out baseline."""
    path = Path(path)
    if not path.exists():
        raise LoracamError(f"reference {path} not found; pass a dataset folder made by `loracam prep` or a folder "
                           "of the subject's photos")
    manifest = read_manifest(path) if path.is_dir() else None
    trigger = subject = None
    if manifest is not None:
        config = manifest.get("config") or {}
        trigger, subject = config.get("trigger"), config.get("subject")
        if embedder.name == "dlib":
            kept = [p for p in manifest.get("photos", []) if p.get("status") == "kept"]
            names = [p["name"] for p in kept if p.get("embedding")]
            skipped = [(p["name"], "no face embedding in the manifest") for p in kept if not p.get("embedding")]
            return _reference(path, embedder, [np.asarray(p["embedding"], np.float64) for p in kept
                                               if p.get("embedding")], names, skipped, trigger, subject)
        files = [(c["file"], path / c["file"]) for p in manifest.get("photos", []) if p.get("status") == "kept"
                 for c in p.get("crops", []) if not c.get("is_reg") and c.get("file")]
    elif path.is_dir():
        from loracam.data.intake import list_photos

        photos, _ = list_photos(path)
        files = [(p.name, p) for p in photos]
    else:
        files = [(path.name, path)]
    images, names, skipped = [], [], []
    for name, file in files:
        try:
            images.append(_open(file))
            names.append(name)
        except LoracamError as exc:
            skipped.append((name, str(exc)))
    embs, kept_names, faces = [], [], _faces(images, embedder, models)
    for name, image, found, emb in zip(names, images, faces, embedder.embed(images, faces)):
        if emb is None:
            skipped.append((name, _why_no_face(found)))
        else:
            embs.append(emb)
            kept_names.append(name)
    return _reference(path, embedder, embs, kept_names, skipped, trigger, subject)


def _faces(images, embedder, models):
    if not embedder.needs_face or not images:
        return [None] * len(images)
    return models.detector(embedder.detector).detect(images)


def _why_no_face(found) -> str:
    if found is None or found.count == 0:
        return "no face found"
    return f"{found.count} faces, none clearly the subject's" if found.count > 1 else "no usable face"


def _reference(path: Path, embedder, embs: list, names: list[str], skipped: list[tuple[str, str]],
               trigger: str | None, subject: str | None) -> Reference:
    if not embs:
        more = f"; {len(skipped) - 8} more" if len(skipped) > 8 else ""
        why = "; ".join(f"{n}: {r}" for n, r in skipped[:8]) + more
        raise LoracamError(f"the reference {path} gave no usable photo for the {embedder.name} identity"
                           + (f" ({why})" if why else " (it holds no images)")
                           + "; pass a folder of clear photos of the subject, or a dataset made by `loracam prep`")
    ref = np.stack(embs)
    return Reference(path, ref, tuple(names), baseline(embedder, ref), tuple(skipped), trigger, subject)


def _open(path: Path) -> Image.Image:
    from loracam.generate.images import load_image

    return load_image(path, "reference photo")
