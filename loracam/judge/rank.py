"""Judging and ranking candidate images: face filters, identity, quality, adherence, aesthetics, one score.

Each image is first filtered (FaceChain's rules, loracam.judge.detect: exactly one face, of a size between
``face_size`` of the image's shorter side; subjects without a face skip them; a render that is entirely broken,
artefacts 0, is dropped too). Every image keeps the reason it was dropped, and the numbers the filters
measured (quality, face size); the model scores (identity, adherence, aesthetic) and one combined score are
for kept images:

    identity_rel = clip(identity / baseline, 0, 1)     baseline: the reference photos' own leave-one-out
                                                       similarity (identity clipped to [0, 1] when there is
                                                       no positive baseline: one reference photo)
    quality      = (sharpness + exposure) / 2
    aesthetic_n  = clip((aesthetic - 1) / 9, 0, 1)     the LAION rating, 1-10, onto [0, 1]
    combined     = artefacts * sum(w_t * term_t) / sum(w_t)   over the terms the image has
    w: identity_rel 0.55, adherence 0.20, quality 0.15, aesthetic_n 0.10

So an image that looks as much like the subject as the subject's own photos do gets the full identity term
(looking "more alike" than real photos is a copy, not a better likeness), and an image whose prompt names
nothing the judge can read, or a run without an aesthetic model, is scored on the terms it has. Artefacts
multiply: a half-black render is worth nothing whatever else it shows.

Order: kept images by combined score (higher first); ties by identity_rel, then quality, then path; then the
dropped ones, by path, with no score and no rank.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from loracam.errors import LoracamError
from loracam.judge.adherence import ADHERENCE
from loracam.judge.detect import DETECTORS, FACECHAIN_FACE_SIZE, SUBJECT_RULES, face_rule
from loracam.judge.embed import EMBEDDER_CLASSES, EMBEDDERS, parse_identity
from loracam.judge.inputs import collect_images, image_prompts, load_images
from loracam.judge.quality import quality

WEIGHTS: dict[str, float] = {"identity_rel": 0.55, "adherence": 0.20, "quality": 0.15, "aesthetic_n": 0.10}
FORMULA = ("combined = artefacts x sum(w x term) / sum(w) over the terms an image has; identity_rel = "
           "clip(identity / baseline, 0, 1), quality = (sharpness + exposure) / 2, aesthetic_n = "
           "clip((aesthetic - 1) / 9, 0, 1); w: identity_rel 0.55, adherence 0.20, quality 0.15, aesthetic_n 0.10")
# concept -> the subject it is (the toy world's held-out concepts)
TOY_SUBJECTS = {"sks": "face", "testdress": "garment", "myshoes": "shoes"}


@dataclass(frozen=True)
class JudgeConfig:
    """How images are judged (also the keys of a [judge] TOML table)."""

    identity: str = "dlib"  # dlib | toy | onnx:PATH | none
    concept: str | None = None  # toy: sks, testdress or myshoes; default: the reference dataset's trigger
    subject: str | None = None  # face | person | garment | shoes | pet | object; default: the dataset's
    face_size: tuple[float, float] | None = None  # face box over the shorter side; default: the identity's
    top: int = 6  # FaceChain returns its best 6
    aesthetic: str | None = None  # CLIP_DIR:MLP.pth (the LAION aesthetic predictor)
    adherence: str | None = None  # toy | none; default: toy with the toy identity, else none

    def __post_init__(self) -> None:
        parse_identity(self.identity)
        if self.subject is not None and self.subject not in SUBJECT_RULES:
            raise LoracamError(f"unknown subject {self.subject!r}; use one of {', '.join(SUBJECT_RULES)}")
        if self.face_size is not None:
            lo, hi = self.face_size
            if not 0 <= lo < hi:
                raise LoracamError(f"face size range {lo}:{hi} is empty; write LO:HI with 0 <= LO < HI, as "
                                   "fractions of the image's shorter side (e.g. 0.23:0.59)")
        if self.top < 1:
            raise LoracamError(f"top must be at least 1 (got {self.top})")
        if self.adherence is not None and self.adherence not in ADHERENCE:
            raise LoracamError(f"unknown adherence judge {self.adherence!r}; use one of {', '.join(ADHERENCE)}")
        if self.aesthetic is not None:
            from loracam.judge.aesthetic import parse_spec

            parse_spec(self.aesthetic)


@dataclass(frozen=True)
class Judged:
    """One image's verdict."""

    path: Path
    kept: bool
    reason: str | None  # why it was dropped
    scores: dict[str, float]  # name -> value; only what could be measured
    combined: float | None = None
    rank: int | None = None  # 1 = best; None when dropped
    notes: tuple[str, ...] = ()  # e.g. what the prompt asked for and the image did not show

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kept": self.kept, "reason": self.reason, "rank": self.rank,
                "combined": _round(self.combined), "scores": {k: _round(v) for k, v in self.scores.items()},
                "notes": list(self.notes)}


@dataclass(frozen=True)
class Ranking:
    """Every image judged: kept ones best first, then the dropped ones."""

    entries: list[Judged]
    baseline: float | None  # the reference photos' own similarity (None: one photo, or no identity)
    config: JudgeConfig
    reference: str | None = None  # a line about the reference photos
    subject: str = "face"
    concept: str | None = None
    notes: tuple[str, ...] = field(default=())

    def top(self, n: int | None = None) -> list[Judged]:
        """The best ``n`` kept images (default: the config's top)."""
        return [e for e in self.entries if e.kept][: self.config.top if n is None else n]

    def to_dict(self) -> dict[str, Any]:
        from loracam.config import to_dict

        return {"loracam_judge": 1, "config": to_dict(self.config), "subject": self.subject, "concept": self.concept,
                "reference": self.reference, "baseline": _round(self.baseline), "formula": FORMULA,
                "weights": WEIGHTS, "notes": list(self.notes), "kept": sum(e.kept for e in self.entries),
                "top": [str(e.path) for e in self.top()], "entries": [e.to_dict() for e in self.entries]}


class Models:
    """Models loaded on first use and kept: one per judge_images call, or one the caller shares between calls."""

    def __init__(self) -> None:
        self._cache: dict[Any, Any] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def detector(self, name: str):
        return self.get(("detector", name), DETECTORS[name])

    def probe(self):
        from loracam.toy.probe import Probe

        return self.get("probe", Probe.load)


def relative_identity(identity: float, baseline: float | None) -> float:
    """Identity as a share of the reference photos' own similarity, in [0, 1]."""
    value = identity / baseline if baseline is not None and baseline > 0 else identity
    return min(1.0, max(0.0, value))


def combined_score(scores: Mapping[str, float]) -> float:
    """The module docstring's formula on one image's scores (identity_rel, quality, artefacts, ...)."""
    terms = {"quality": scores["quality"]}
    for name in ("identity_rel", "adherence"):
        if name in scores:
            terms[name] = scores[name]
    if "aesthetic" in scores:
        terms["aesthetic_n"] = min(1.0, max(0.0, (scores["aesthetic"] - 1.0) / 9.0))
    total = sum(WEIGHTS[t] * v for t, v in terms.items()) / sum(WEIGHTS[t] for t in terms)
    return scores["artefacts"] * total


def judge_images(paths: Sequence[Path], reference: Path | None = None, config: JudgeConfig = JudgeConfig(),
                 prompts: Sequence[str | None] | Mapping[str, str] | None = None,
                 models: Models | None = None) -> Ranking:
    """Filter, score and rank images (files or folders of them) against a reference dataset or photos.

    ``prompts``: per image (in the order of the expanded file list, or a mapping from path to prompt) the
    prompt to check adherence against instead of the image's infotext. ``models``: share loaded models
    between calls (the studio judges style after style)."""
    models = models or Models()
    name, arg = parse_identity(config.identity)
    files = collect_images(paths)
    images = load_images(files)
    texts = image_prompts(files, prompts)
    if name != "none" and reference is None:
        raise LoracamError(f"--identity {config.identity} compares with the subject's photos: pass --reference "
                           "DATASET_OR_PHOTOS (or --identity none)")
    from loracam.judge.reference import load_reference, read_manifest

    dataset = ((read_manifest(Path(reference)) if reference is not None and Path(reference).is_dir() else None)
               or {}).get("config") or {}
    concept = config.concept or (dataset.get("trigger") if name == "toy" else None)
    if name == "toy" and concept is None:
        raise LoracamError("--identity toy needs the concept the images should show: pass --concept sks, "
                           "testdress or myshoes (or a dataset made by `loracam prep`, whose trigger it is)")
    subject = config.subject or dataset.get("subject") or TOY_SUBJECTS.get(concept or "", "face")
    _check_subject(name, subject)  # before any model loads or photo is read
    embedder = ref = None
    if name != "none":
        embedder = EMBEDDERS[name](arg, concept, models)
        ref = load_reference(Path(reference), embedder, models)
        _check_concept(embedder, ref)
    return _rank(files, images, texts, config, models, subject, concept, embedder, ref)


def _check_subject(name: str, subject: str) -> None:
    if subject not in SUBJECT_RULES:
        raise LoracamError(f"the reference dataset's subject {subject!r} is not one the judge knows; pass --subject")
    if name != "none" and EMBEDDER_CLASSES[name].needs_face and not SUBJECT_RULES[subject][0]:
        raise LoracamError(f"--identity {name} compares faces, and a {subject} shows none: use --identity toy in the "
                           "toy world, or --identity none to rank by quality alone")


def _check_concept(embedder, ref) -> None:
    """The toy reference must show the concept: judging against photos of something else means nothing."""
    if embedder.name == "toy":
        share = float(ref.mean[embedder.index])
        if share < 0.5:
            raise LoracamError(f"the reference photos read as {embedder.concept} only {share:.0%} of the time; they "
                               f"are not photos of it: check --concept and --reference")


def _rank(files, images, texts, config: JudgeConfig, models: Models, subject: str, concept, embedder, ref) -> Ranking:
    scores, reasons, faces = _filter(images, config, models, subject, embedder)
    # The model scores (identity, adherence, aesthetics) are for kept images only: a face embedder costs
    # ~0.25 s a face on a CPU, CLIP ViT-L more; dropped images keep what the filters measured.
    kept = [i for i, r in enumerate(reasons) if r is None]
    notes: list[tuple[str, ...]] = [()] * len(images)
    if embedder is not None:
        for i, emb in zip(kept, embedder.embed([images[i] for i in kept], [faces[i] for i in kept])):
            if emb is None:
                reasons[i] = "no face to compare"
                continue
            scores[i]["identity"] = float(embedder.similarity(emb, ref.mean))
            scores[i]["identity_rel"] = relative_identity(scores[i]["identity"], ref.baseline)
    adherence = ADHERENCE[config.adherence or ("toy" if embedder is not None and embedder.name == "toy" else "none")]
    if adherence is not None:
        for i, a in zip(kept, adherence(models).judge([images[i] for i in kept], [texts[i] for i in kept])):
            if a is not None and a.score is not None:
                scores[i]["adherence"], notes[i] = a.score, a.misses
    if config.aesthetic and kept:
        for i, rating in zip(kept, _aesthetic(config.aesthetic, models).rate([images[i] for i in kept])):
            scores[i]["aesthetic"] = float(rating)
    entries = [Judged(path, reason is None, reason, s, combined_score(s) if reason is None else None, None, note)
               for path, s, reason, note in zip(files, scores, reasons, notes)]
    return Ranking(_order(entries), ref.baseline if ref else None, config, ref.describe() if ref else None, subject,
                   concept, tuple(f"reference photo {n} skipped: {r}" for n, r in (ref.skipped if ref else ())))


def _filter(images, config: JudgeConfig, models: Models, subject: str, embedder) -> tuple[list, list, list]:
    """Per image: its quality numbers, why it fails the filters (None: kept), and the faces found (None when
    the subject has no face rules)."""
    counted = SUBJECT_RULES[subject][0]
    detector = embedder.detector if embedder is not None else "dlib"
    faces = models.detector(detector).detect(images) if counted else [None] * len(images)
    face_size = config.face_size or (embedder.face_size if embedder is not None else FACECHAIN_FACE_SIZE)
    scores: list[dict[str, float]] = []
    reasons: list[str | None] = []
    for image, found in zip(images, faces):
        q = quality(image)
        s = {**q.as_dict(), "quality": (q.sharpness + q.exposure) / 2}
        if found is not None and found.box is not None:
            s["face_size"] = found.relative_size(image.size)
        broken = f"broken render: {q.flaw}" if q.artefacts <= 0 else None  # says more than "no face found"
        reasons.append(broken or face_rule(found, image.size, face_size, subject))
        scores.append(s)
    return scores, reasons, faces


def _order(entries: list[Judged]) -> list[Judged]:
    """Kept best first (ties: identity_rel, quality, path), then the dropped by path; ranks 1..n on the kept."""
    kept = sorted((e for e in entries if e.kept),
                  key=lambda e: (-e.combined, -e.scores.get("identity_rel", 0.0), -e.scores["quality"], str(e.path)))
    dropped = sorted((e for e in entries if not e.kept), key=lambda e: str(e.path))
    return [_with_rank(e, i + 1) for i, e in enumerate(kept)] + dropped


def _with_rank(e: Judged, rank: int) -> Judged:
    from dataclasses import replace

    return replace(e, rank=rank)


def _aesthetic(spec: str, models: Models):
    from loracam.judge.aesthetic import AestheticPredictor, parse_spec

    return models.get(("aesthetic", spec), lambda: AestheticPredictor(*parse_spec(spec)))


def write_ranking(ranking: Ranking, json_path: Path | None = None, sheet_path: Path | None = None) -> list[Path]:
    """Write the JSON report and/or the contact sheet, each atomically; neither is written if either exists."""
    from loracam.io import atomic_write, atomic_write_bytes

    check_outputs(json_path, sheet_path)
    written = []
    try:
        if json_path is not None:
            data = json.dumps(ranking.to_dict(), indent=1, ensure_ascii=False).encode()
            written.append(atomic_write_bytes(Path(json_path), data))
        if sheet_path is not None:
            from loracam.judge.sheet import contact_sheet

            sheet = contact_sheet(ranking)
            written.append(atomic_write(Path(sheet_path), lambda tmp: sheet.save(tmp, format="PNG")))
    except FileExistsError as exc:
        raise LoracamError(f"{exc.filename or 'an output'} appeared while writing; nothing was overwritten") from None
    return written


def check_outputs(*paths: Path | None) -> None:
    """Fail before any judging when an output exists already or its folder is missing."""
    for p in (Path(p) for p in paths if p is not None):
        if p.exists():
            raise LoracamError(f"{p} already exists; the judge never overwrites: choose another name")
        if not p.parent.is_dir():
            raise LoracamError(f"cannot write {p}: the folder {p.parent} does not exist")


def _round(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)
