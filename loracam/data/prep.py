"""``loracam prep``: a folder of photos in, a kohya-ready dataset out, with a reason for every decision.

Steps: intake (read, normalise, reject) -> duplicates and blur -> find the subject (faces, body pose or
the whole photo) -> crops at the dataset's aspect ratio -> identity check -> captions -> write.
Everything is written into a temporary folder next to the destination and renamed at the end, so a
failure never leaves half a dataset behind; the photo folder is only ever read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from loracam.data.buckets import Bucketing
from loracam.data.config import PrepConfig
from loracam.data.geometry import Box, aspect_crop, downscale_to
from loracam.data.intake import Photo, Rejection, blurry, list_photos, near_duplicates, read_photo
from loracam.data.kohya import CAPTION_EXT, bucket_size, dataset_toml, subset_dir_name
from loracam.data.steps import Item, plan_steps
from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes, new_mode

MANIFEST = "manifest.json"
Echo = Callable[[str], None]


@dataclass
class Crop:
    kind: str  # closeup, head_shoulders, garment, shoes, full_body, upper_body, whole
    is_reg: bool
    box: list[float]
    image: Image.Image | None = field(default=None, repr=False)
    file: str = ""
    size: tuple[int, int] = (0, 0)
    bucket: tuple[int, int] = (0, 0)
    caption: str = ""


@dataclass
class Record:
    """Everything the manifest says about one source photo."""

    name: str
    status: str = "kept"  # kept | dropped
    reason: str | None = None
    size: tuple[int, int] | None = None
    source_mode: str | None = None
    rotated_by_exif: bool = False
    sharpness: float | None = None
    phash: str | None = None
    face: dict | None = None
    embedding: list[float] | None = None
    identity_distance: float | None = None
    parts: dict = field(default_factory=dict)
    missing_parts: dict = field(default_factory=dict)
    crops: list[Crop] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str) -> None:
        self.status, self.reason = "dropped", reason


def _dlib_faces(cfg: PrepConfig):
    from loracam.data.faces import FaceAnalyzer

    return FaceAnalyzer(min_face_px=cfg.min_face_px)


def _toy_faces(cfg: PrepConfig):
    from loracam.toy.faces import ToyFaceAnalyzer

    return ToyFaceAnalyzer()


# Face finders by name: dlib for photos of people; the toy world's locator and probe for its dolls.
FACE_MODELS = {"dlib": _dlib_faces, "toy": _toy_faces}


class Analyzers:
    """The models prep uses, each loaded on first use and then kept (one per prep run, or shared)."""

    def __init__(self, cfg: PrepConfig):
        self.cfg = cfg
        self._face = self._pose = self._tagger = None

    @property
    def face(self):
        if self._face is None:
            if self.cfg.face_model not in FACE_MODELS:
                raise LoracamError(f"unknown face model {self.cfg.face_model!r}; use one of {', '.join(FACE_MODELS)}")
            self._face = FACE_MODELS[self.cfg.face_model](self.cfg)
        return self._face

    @property
    def pose(self):
        if self._pose is None:
            from loracam.data.pose import PoseAnalyzer

            self._pose = PoseAnalyzer()
        return self._pose

    @property
    def tagger(self):
        if self._tagger is None and self.cfg.tagger:
            from loracam.data.tagging import make_tagger

            kw = {"general_threshold": self.cfg.tagger_threshold} if self.cfg.tagger == "wd14" else {}
            self._tagger = make_tagger(self.cfg.tagger, self.cfg.tagger_model, **kw)
        return self._tagger


@dataclass
class PrepResult:
    out_dir: Path
    records: list[Record]
    summary: list[str]


# ---------------------------------------------------------------------------------------------
# the job


def prepare(photos_dir: Path, out_dir: Path, cfg: PrepConfig, analyzers: Analyzers | None = None,
            echo: Echo = lambda s: None) -> PrepResult:
    """Prepare a dataset; raises LoracamError (writing nothing) when no photo is usable."""
    photos_dir, out_dir = Path(photos_dir).resolve(), Path(out_dir).resolve()
    _check_folders(photos_dir, out_dir, cfg.force)
    analyzers = analyzers or Analyzers(cfg)
    user_boxes = _user_boxes(cfg)
    paths, skipped = list_photos(photos_dir)
    records = {r.name: Record(r.name, "dropped", r.reason) for r in skipped}
    photos = _intake(paths, cfg, records)
    _drop_duplicates_and_blur(photos, cfg, records)
    for photo in (p for p in photos if records[p.name].status == "kept"):
        echo(f"  {photo.name}")
        _analyse(photo, cfg, analyzers, user_boxes.get(photo.name, {}), records[photo.name])
    _identity_check(cfg, records)
    ordered = [records[n] for n in sorted(records)]
    kept = [r for r in ordered if r.status == "kept"]
    if not kept:
        lines = "\n".join(f"  {r.name}: {r.reason}" for r in ordered) or "  (the folder has no photos)"
        raise LoracamError(f"no usable photo in {photos_dir}; nothing was written. Per photo:\n{lines}")
    _caption(kept, cfg, analyzers)
    summary = _write(out_dir, cfg, photos_dir, ordered, {p.name: p for p in photos})
    return PrepResult(out_dir, ordered, summary)


def _check_folders(photos_dir: Path, out_dir: Path, force: bool) -> None:
    if not photos_dir.is_dir():
        raise LoracamError(f"photo folder not found: {photos_dir}")
    if out_dir == photos_dir or photos_dir in out_dir.parents:
        raise LoracamError("the dataset folder must not be inside the photo folder (prep never writes there)")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        what = "a loracam dataset" if (out_dir / MANIFEST).exists() else "other files"
        raise LoracamError(f"{out_dir} already holds {what}; choose another -o, or pass --force to replace it "
                           "(the old folder is kept beside it, renamed)")


def _user_boxes(cfg: PrepConfig) -> dict:
    if cfg.boxes is None:
        return {}
    from loracam.data.pose import boxes_from_json

    return boxes_from_json(cfg.boxes)


def _intake(paths: list[Path], cfg: PrepConfig, records: dict[str, Record]) -> list[Photo]:
    photos = []
    for path in paths:
        got = read_photo(path, cfg.min_photo_size)
        rec = records.setdefault(path.name, Record(path.name))
        if isinstance(got, Rejection):
            rec.drop(got.reason)
            continue
        rec.size, rec.source_mode, rec.rotated_by_exif = got.image.size, got.source_mode, got.rotated_by_exif
        rec.sharpness, rec.phash = round(got.sharpness, 1), f"{got.phash:016x}"
        photos.append(got)
    return photos


def _drop_duplicates_and_blur(photos: list[Photo], cfg: PrepConfig, records: dict[str, Record]) -> None:
    for name, kept in near_duplicates(photos).items():
        records[name].drop(f"near-duplicate of {kept} (the sharper/larger copy is kept)")
    for name, reason in blurry([p for p in photos if records[p.name].status == "kept"]).items():
        if name in cfg.keep:
            records[name].notes.append(reason + "; kept because you asked (--keep)")
        else:
            records[name].drop(reason + "; keep it anyway with --keep " + name)


# ---------------------------------------------------------------------------------------------
# finding the subject and cropping


def _analyse(photo: Photo, cfg: PrepConfig, an: Analyzers, boxes: dict[str, Box], rec: Record) -> None:
    finder = cfg.spec.finder
    if finder == "face":
        _face_crops(photo.image, cfg, an, rec, parts=cfg.spec.parts)
    elif finder == "pose":
        _pose_crops(photo.image, cfg, an, boxes, rec)
        if cfg.subject == "person" and rec.status == "kept":
            _face_crops(photo.image, cfg, an, rec, parts=("closeup",), required=False)
    else:
        rec.crops.append(_crop(photo.image, Box(0, 0, *photo.image.size), "whole", cfg, fit_inside=True))
    if rec.status == "kept" and cfg.reg and not any(c.is_reg for c in rec.crops):
        rec.crops.append(_reg_crop(photo.image, cfg, an, boxes, rec))
    if rec.status == "kept" and not any(not c.is_reg for c in rec.crops):
        rec.drop("no training crop could be made")


def _crop(image: Image.Image, region: Box, kind: str, cfg: PrepConfig, is_reg: bool = False,
          fit_inside: bool = False) -> Crop:
    if fit_inside:  # the largest box of the dataset's aspect inside the photo, centred
        region = _inside(region, cfg.aspect)
    img, box = aspect_crop(image, region, cfg.aspect)
    return Crop(kind, is_reg, box.as_list(), img)


def _inside(box: Box, aspect: float) -> Box:
    w, h = box.width, box.height
    if w / h > aspect:
        w = h * aspect
    else:
        h = w / aspect
    cx, cy = box.center
    return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _face_crops(image, cfg, an: Analyzers, rec: Record, parts, required: bool = True) -> None:
    found = an.face.find(image)
    if found.face is None:
        if required:
            rec.drop(found.reason or "no face found")
        else:
            rec.notes.append(f"no face close-up: {found.reason}")
        return
    face = found.face
    rec.face = {"box": face.box.as_list(), "score": round(face.score, 3), "roll": round(face.roll_degrees(), 1),
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks]}
    image, face = _working_scale(image, face, cfg, an.face.closeup_fraction)
    rec.embedding = [round(float(v), 5) for v in an.face.embedding(image, face)]
    from loracam.data.faces import crop_window

    # Turning only the window the crops need keeps 12 MP phone photos fast.
    aligned, aface = an.face.align(image, face, window=crop_window(cfg.aspect))
    for kind, (img, box) in an.face.crops(aligned, aface, cfg.aspect).items():
        if kind in parts:
            rec.crops.append(Crop(kind, False, box.as_list(), img))


def _working_scale(image: Image.Image, face, cfg: PrepConfig, closeup_fraction: float):
    """The photo shrunk (antialiased) so the face is no bigger than the crops can use: a close-up frames
    the face at ``closeup_fraction`` (dlib's 0.35) of the training height, so a face of 1.25 x that loses
    nothing. Every pixel beyond would be thrown away by the final downscale, after costing time to rotate."""
    need = closeup_fraction * 1.25 * cfg.resolution[1]
    if face.box.height <= 1.5 * need:
        return image, face
    factor = need / face.box.height
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.LANCZOS, reducing_gap=3.0), face.scaled(factor)


def _pose_crops(image, cfg, an: Analyzers, boxes: dict[str, Box], rec: Record) -> None:
    wanted = [p for p in cfg.spec.parts if p != "closeup"]
    found_boxes: dict[str, Box] = {}
    if not all(p in boxes for p in wanted + (["full_body"] if cfg.reg else [])):
        pose = an.pose.detect(image)
        if pose is not None:
            finding = an.pose.regions(pose, image.size, long_garment=cfg.long_garment)
            found_boxes, rec.missing_parts = dict(finding.boxes), dict(finding.missing)
        else:
            rec.missing_parts = {p: "no body pose found" for p in wanted}
    found_boxes.update(boxes)  # the user's --boxes win
    rec.parts = {k: v.as_list() for k, v in found_boxes.items()}
    missing = [p for p in wanted if p not in found_boxes]
    if missing and (cfg.spec.all_parts or len(missing) == len(wanted)):
        part = missing[0]
        rec.drop(f"{part} not found ({rec.missing_parts.get(part, 'not found')}); give its box with --boxes")
        return
    for part in wanted:
        if part in found_boxes:
            rec.crops.append(_crop(image, found_boxes[part], part, cfg))
    if cfg.reg and "full_body" in found_boxes:
        rec.crops.append(_crop(image, found_boxes["full_body"], "full_body", cfg, is_reg=True))


def _reg_crop(image, cfg, an: Analyzers, boxes: dict[str, Box], rec: Record) -> Crop:
    """The regularization crop: the full body where known, else the whole photo at the aspect."""
    if "full_body" in rec.parts:
        return _crop(image, Box(*rec.parts["full_body"]), "full_body", cfg, is_reg=True)
    return _crop(image, Box(0, 0, *image.size), "whole", cfg, is_reg=True, fit_inside=True)


def _identity_check(cfg: PrepConfig, records: dict[str, Record]) -> None:
    from loracam.data.faces import identity_outliers

    import numpy as np

    embs = {n: np.array(r.embedding) for n, r in records.items() if r.status == "kept" and r.embedding}
    if cfg.spec.finder != "face" and cfg.subject != "person":
        return
    for name, dist in identity_outliers(embs).items():
        records[name].identity_distance = round(dist, 3)
        if name in cfg.keep:
            records[name].notes.append(f"may be someone else (distance {dist:.2f}); kept because you asked")
        else:
            records[name].drop(f"may be someone else (face distance {dist:.2f} from the others' median > 0.6); "
                               f"keep it anyway with --keep {name}")


# ---------------------------------------------------------------------------------------------
# captions


def _caption(kept: list[Record], cfg: PrepConfig, an: Analyzers) -> None:
    from loracam.data.tags import caption_for, reg_caption

    train = [c for r in kept for c in r.crops if not c.is_reg]
    tags = [[] for _ in train]
    if an.tagger is not None and cfg.subject != "face":  # face captions ignore tags (see tags.py)
        tags = [[t for t, _ in found] for found in an.tagger.tag([c.image for c in train])]
    for crop, t in zip(train, tags):
        crop.caption = caption_for(cfg.subject, cfg.trigger, cfg.phrase, t)
    for r in kept:
        for c in r.crops:
            if c.is_reg:
                c.caption = reg_caption(cfg.class_word)


# ---------------------------------------------------------------------------------------------
# writing


def _write(out_dir: Path, cfg: PrepConfig, photos_dir: Path, records: list[Record], photos: dict) -> list[str]:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        os.chmod(tmp, new_mode(folder=True))  # mkdtemp's folder is private (0700); the dataset is not
        train_rel = Path("img") / subset_dir_name(cfg.train_repeats, f"{cfg.trigger} {cfg.class_word}")
        reg_rel = Path("reg") / subset_dir_name(cfg.reg_repeats, cfg.class_word)
        items = _write_crops(tmp, train_rel, reg_rel, cfg, records)
        subsets = [(str(train_rel), cfg.train_repeats, f"{cfg.trigger} {cfg.class_word}", False)]
        if any(i.is_reg for i in items):
            subsets.append((str(reg_rel), cfg.reg_repeats, cfg.class_word, True))
        plan = plan_steps(items, cfg.batch_size, cfg.epochs)
        n_train = sum(1 for i in items if not i.is_reg)
        summary = _summary(records, plan, n_train, cfg)
        atomic_write_bytes(tmp / "dataset.toml", dataset_toml(out_dir, subsets, cfg.resolution, cfg.batch_size).encode())
        manifest = _manifest(cfg, photos_dir, records, plan, summary)
        atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
        from loracam.data.contact import contact_sheet

        sheet = contact_sheet(records, photos)
        sheet.save(tmp / "contact_sheet.png")
        (tmp / "report.md").write_text(_report_md(records, summary), encoding="utf-8")
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write_crops(root: Path, train_rel: Path, reg_rel: Path, cfg: PrepConfig, records: list[Record]) -> list[Item]:
    items = []
    for rec in (r for r in records if r.status == "kept"):
        stem = Path(rec.name).stem
        for crop in rec.crops:
            folder = root / (reg_rel if crop.is_reg else train_rel)
            folder.mkdir(parents=True, exist_ok=True)
            img = downscale_to(crop.image, bucket_size(crop.image.size, cfg.resolution))
            crop.file = str((reg_rel if crop.is_reg else train_rel) / f"{stem}_{crop.kind}.png")
            img.save(root / crop.file)
            (root / crop.file).with_suffix(CAPTION_EXT).write_text(crop.caption + "\n", encoding="utf-8")
            crop.size = img.size
            crop.bucket = Bucketing(cfg.resolution, no_upscale=True).select(*img.size)[0]
            items.append(Item(crop.file, crop.bucket, cfg.reg_repeats if crop.is_reg else cfg.train_repeats, crop.is_reg))
    return items


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished dataset into place; a replaced one (--force) is kept beside it."""
    if out_dir.exists():
        if any(out_dir.iterdir()):
            aside = out_dir.with_name(f"{out_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            out_dir.rename(aside)
        else:
            out_dir.rmdir()
    tmp.rename(out_dir)


def _summary(records: list[Record], plan, n_train: int, cfg: PrepConfig) -> list[str]:
    kept = sum(r.status == "kept" for r in records)
    lines = [f"{kept} of {len(records)} photos kept; {n_train} training crops"
             + (f", {sum(len([c for c in r.crops if c.is_reg]) for r in records)} reg crops" if cfg.reg else "")]
    lines.append("steps: " + plan.summary(n_train, str(cfg.train_repeats), cfg.batch_size))
    lines.append("buckets: " + ", ".join(f"{w}x{h} ({n} samples)" for (w, h), n in plan.bucket_counts.items()))
    for r in records:
        if r.status == "dropped":
            lines.append(f"dropped {r.name}: {r.reason}")
    return lines


def _manifest(cfg: PrepConfig, photos_dir: Path, records: list[Record], plan, summary: list[str]) -> dict:
    from loracam.config import to_dict

    def rec_dict(r: Record) -> dict:
        d = asdict(r)
        d["crops"] = [{k: v for k, v in asdict(c).items() if k != "image"} for c in r.crops]
        return d

    return {
        "loracam_manifest": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "photos_dir": str(photos_dir),
        "config": to_dict(cfg),
        "caption_extension": CAPTION_EXT,
        "steps": {"train_samples": plan.train_samples, "reg_samples": plan.reg_samples,
                  "batches_per_epoch": plan.batches_per_epoch, "epochs": plan.epochs, "total_steps": plan.total_steps,
                  "buckets": [[w, h, n] for (w, h), n in plan.bucket_counts.items()]},
        "summary": summary,
        "photos": [rec_dict(r) for r in records],
    }


def _report_md(records: list[Record], summary: list[str]) -> str:
    lines = ["# loracam prep report", "", *[f"- {s}" for s in summary], "", "| photo | status | reason / crops |",
             "|---|---|---|"]
    for r in records:
        what = r.reason if r.status == "dropped" else ", ".join(c.file for c in r.crops)
        lines.append(f"| {r.name} | {r.status} | {what} |")
    lines += ["", "![contact sheet](contact_sheet.png)", ""]
    return "\n".join(lines)
