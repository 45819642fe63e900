"""Identity: how much the faces in generated images look like the person in the training photos.

Each image's face is fingerprinted with dlib's 128-d descriptor (loracam.data.faces) and compared with the
mean descriptor of the training photos. The similarity mapping is linear in the euclidean distance d:

    similarity = 1 - d / 0.6

so it is 1 at d = 0 (the reference face itself), 0 at dlib's same-person threshold 0.6, and negative for
faces farther than that (someone else). Linear keeps a difference in score a fixed difference in distance
(0.1 of score = 0.06 of distance) everywhere, so checkpoints compare fairly near the top and near the
threshold alike, and nothing saturates; it is a rescaled distance, not a probability.

Two genuine photos of one person already differ, so a score means little alone: ``baseline`` is the
reference photos' own similarity, each photo against the mean of the *others* (leave-one-out: a photo inside
the mean would look closer than any new photo could). A LoRA whose images score near the baseline looks as
much like the person as their own photos do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from loracam.errors import LoracamError

if TYPE_CHECKING:
    from loracam.data.faces import FaceAnalyzer

SAME_PERSON_DISTANCE = 0.6  # dlib's threshold for its 128-d descriptor
EMBEDDING_DIM = 128


def similarity(distance: float | np.ndarray) -> float | np.ndarray:
    """The identity similarity for a descriptor distance: 1 at 0, 0 at dlib's 0.6 threshold, < 0 beyond."""
    return 1.0 - distance / SAME_PERSON_DISTANCE


@dataclass(frozen=True)
class IdentityScore:
    """How much a set of images looks like the reference person."""

    score: float  # mean similarity over images with a usable face; nan when there is none ("no signal")
    faces_found: int
    images: int
    per_image: list[float | None]  # None where no single usable face was found
    baseline: float | None  # the reference photos' own leave-one-out similarity; None with one photo
    reasons: list[str | None] = field(default_factory=list)  # per image: why there is no score, else None

    def describe(self) -> str:
        """One line for reports: the score, the baseline and how many images counted."""
        if self.faces_found == 0:
            why = sorted({r for r in self.reasons if r})
            return (f"identity: no usable face in any of {self.images} images"
                    + (f" ({'; '.join(why)})" if why else ""))
        base = f", the person's own photos score {self.baseline:.2f}" if self.baseline is not None else ""
        return f"identity {self.score:.2f}{base} ({self.faces_found} of {self.images} images had a usable face)"


class IdentityScorer:
    """Scores images against a person's reference face descriptors (the training photos' embeddings)."""

    def __init__(self, reference: np.ndarray, analyzer: FaceAnalyzer | None = None) -> None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or ref.shape[1] != EMBEDDING_DIM:
            raise LoracamError(f"reference face embeddings must be an [N, {EMBEDDING_DIM}] array (dlib descriptors), "
                               f"got shape {tuple(ref.shape)}; take them from prep's manifest.json")
        if ref.shape[0] < 1:
            raise LoracamError("no reference face to compare with: the dataset kept no photo with a usable face; "
                               "run prep again with clear photos of the person's face")
        if not np.all(np.isfinite(ref)):
            raise LoracamError("reference face embeddings contain NaN or infinite values; run prep again")
        self.reference = ref  # [N, 128]
        self.mean = ref.mean(axis=0)  # [128]
        self.baseline = _baseline(ref)
        self._analyzer = analyzer

    @classmethod
    def from_manifest(cls, path: Path, analyzer: FaceAnalyzer | None = None) -> "IdentityScorer":
        """A scorer from a prep manifest.json (or its dataset folder): the kept photos' face embeddings."""
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LoracamError(f"{path} not found; pass a dataset folder made by `loracam prep`") from None
        except (OSError, ValueError) as exc:
            raise LoracamError(f"{path} could not be read as a prep manifest ({exc}); run prep again") from None
        embs = [p["embedding"] for p in manifest.get("photos", [])
                if p.get("status") == "kept" and p.get("embedding")]
        if not embs:
            raise LoracamError(f"{path} has no face embeddings of kept photos, so there is nothing to compare "
                               "faces with; prep a face or person subject with photos that show the face")
        return cls(np.array(embs, dtype=np.float64), analyzer)

    @property
    def analyzer(self) -> FaceAnalyzer:
        """The face analyzer, loaded on first use (dlib's models take a moment and some memory)."""
        if self._analyzer is None:
            from loracam.data.faces import FaceAnalyzer

            self._analyzer = FaceAnalyzer()
        return self._analyzer

    def score(self, images: Sequence[Image.Image]) -> IdentityScore:
        """Similarity of each image's face to the reference mean, and their mean over images with a face."""
        per_image: list[float | None] = []
        reasons: list[str | None] = []
        for image in images:
            found = self.analyzer.find(image)
            if found.face is None:
                per_image.append(None)
                reasons.append(found.reason or "no face found")
                continue
            emb = self.analyzer.embedding(image, found.face)
            per_image.append(float(similarity(float(np.linalg.norm(emb - self.mean)))))
            reasons.append(None)
        scored = [s for s in per_image if s is not None]
        mean = float(np.mean(scored)) if scored else math.nan
        return IdentityScore(mean, len(scored), len(per_image), per_image, self.baseline, reasons)


def _baseline(ref: np.ndarray) -> float | None:
    """Mean similarity of each reference photo to the mean of the others; None with fewer than two."""
    n = ref.shape[0]
    if n < 2:
        return None
    others = (ref.sum(axis=0) - ref) / (n - 1)  # [N, 128]: row i = mean of all rows but i
    return float(np.mean(similarity(np.linalg.norm(ref - others, axis=1))))
