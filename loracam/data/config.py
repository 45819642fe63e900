"""What ``loracam prep`` takes, and what each kind of subject means for crops, captions and repeats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loracam.errors import LoracamError

Subject = Literal["face", "person", "garment", "shoes", "pet", "object"]


@dataclass(frozen=True)
class SubjectSpec:
    """How a subject is found and cropped, and its defaults."""

    finder: str  # "face" | "pose" | "whole": which analyser locates the subject
    parts: tuple[str, ...]  # the training crops made per photo
    repeats: int
    class_phrase: str  # default caption phrase; {cls} is the --class word
    all_parts: bool = True  # every part is needed (garment, shoes); else any found part is enough (person)


# Defaults, and why (caption templates per subject live in loracam.data.tags):
# - face: FaceChain's recipe (short caption "<trigger>, <class phrase>"; close-up and head-and-shoulders
#   crops; ~10 repeats so 15-20 photos give a few hundred samples an epoch).
# - garment/shoes: the NGA guide (part-only crops, trigger + tags; full-body crops as reg with --reg).
# - person: full and upper body from pose plus a face close-up when a face is found.
SUBJECTS: dict[str, SubjectSpec] = {
    "face": SubjectSpec("face", ("closeup", "head_shoulders"), 10, "a photo of a {cls}"),
    "person": SubjectSpec("pose", ("full_body", "upper_body", "closeup"), 10, "a photo of a {cls}", all_parts=False),
    "garment": SubjectSpec("pose", ("garment",), 10, "{cls}"),
    "shoes": SubjectSpec("pose", ("shoes",), 10, "{cls}"),
    "pet": SubjectSpec("whole", ("whole",), 10, "a photo of a {cls}"),
    "object": SubjectSpec("whole", ("whole",), 10, "a photo of a {cls}"),
}


@dataclass(frozen=True)
class PrepConfig:
    """Every option of ``loracam prep`` (also the keys of a ``--config`` TOML file)."""

    subject: Subject = "face"
    trigger: str = "sks"
    class_word: str = "person"
    class_phrase: str | None = None  # caption phrase; default from the subject ("a photo of a woman")
    reg: bool = False
    repeats: int | None = None  # default from the subject
    reg_repeats: int = 1
    resolution: tuple[int, int] = (512, 768)  # width, height
    boxes: Path | None = None
    long_garment: bool = False
    tagger: str | None = None  # "wd14" or "blip"
    tagger_model: str | None = None
    tagger_threshold: float = 0.35
    keep: tuple[str, ...] = ()  # photos to keep even if flagged (blurry, may be someone else)
    min_face_px: int = 64
    face_model: str = "dlib"  # who finds and fingerprints faces: a FACE_MODELS name of loracam.data.prep
    batch_size: int = 1  # for the step summary
    epochs: int = 10  # for the step summary
    force: bool = False

    def __post_init__(self):
        if self.subject not in SUBJECTS:
            raise LoracamError(f"unknown subject {self.subject!r}; use one of {', '.join(SUBJECTS)}")
        if not self.trigger.strip() or any(c in self.trigger for c in ",\n"):
            raise LoracamError(f"--trigger must be one word or phrase without commas (got {self.trigger!r})")
        if not self.class_word.strip():
            raise LoracamError("--class must not be empty")
        w, h = self.resolution
        if w < 64 or h < 64 or w % 32 or h % 32:
            # 64 is SD's step; 32 lets small models train at their own size (the toy base: 64x96)
            raise LoracamError(f"--resolution {w}x{h}: both sides must be multiples of 64 (e.g. 512x768), "
                               "or of 32 for small models (64x96)")
        if (self.repeats is not None and self.repeats < 1) or self.reg_repeats < 1:
            raise LoracamError("--repeats and --reg-repeats must be at least 1")
        if (self.tagger is None) != (self.tagger_model is None):
            raise LoracamError("--tagger and --tagger-model go together (e.g. --tagger wd14 --tagger-model PATH)")

    @property
    def spec(self) -> SubjectSpec:
        return SUBJECTS[self.subject]

    @property
    def train_repeats(self) -> int:
        return self.repeats if self.repeats is not None else self.spec.repeats

    @property
    def aspect(self) -> float:
        return self.resolution[0] / self.resolution[1]

    @property
    def phrase(self) -> str:
        return self.class_phrase or self.spec.class_phrase.format(cls=self.class_word)

    @property
    def min_photo_size(self) -> tuple[int, int]:
        """Photos smaller than this are rejected: a quarter of the training area (half each side)."""
        return self.resolution[0] // 2, self.resolution[1] // 2
