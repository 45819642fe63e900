"""``loracam prep --import KOHYA_DIR``: describe an existing kohya dataset in a loracam manifest.

The images and captions are only read. The manifest lists every subset, image, caption (or the folder
class text it falls back to), image size and sd-scripts bucket, and the step arithmetic.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from loracam.data.buckets import Bucketing
from loracam.data.kohya import read_kohya
from loracam.data.steps import Item, plan_steps
from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes


def import_kohya(root: Path, resolution: tuple[int, int] = (512, 512), batch_size: int = 1, epochs: int = 10,
                 no_upscale: bool = True) -> dict:
    """The manifest of a kohya dataset folder (nothing is written here)."""
    ds = read_kohya(root)
    bucketing = Bucketing(resolution, no_upscale=no_upscale)
    items, subsets, problems = [], [], []
    for s in ds.subsets:
        entries = []
        for im in s.images:
            try:
                with Image.open(im.path) as f:
                    size = f.size
            except (UnidentifiedImageError, OSError) as exc:
                problems.append(f"{im.path}: unreadable ({exc})")
                continue
            bucket = bucketing.select(*size)[0]
            items.append(Item(str(im.path), bucket, s.repeats, s.is_reg))
            entries.append({"file": str(im.path.relative_to(ds.root)), "size": list(size), "bucket": list(bucket),
                            "caption": s.caption_of(im), "caption_file": im.caption is not None})
        missing = sum(1 for e in entries if not e["caption_file"])
        subsets.append({"dir": str(s.dir.relative_to(ds.root)), "repeats": s.repeats, "class_text": s.class_text,
                        "is_reg": s.is_reg, "images": entries, "without_caption": missing})
    plan = plan_steps(items, batch_size, epochs)
    n_train = sum(1 for i in items if not i.is_reg)
    return {
        "loracam_manifest": 1,
        "imported_from": str(ds.root),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "subsets": subsets,
        "skipped": ds.skipped + problems,
        "steps": {"train_samples": plan.train_samples, "reg_samples": plan.reg_samples,
                  "batches_per_epoch": plan.batches_per_epoch, "epochs": plan.epochs,
                  "total_steps": plan.total_steps,
                  "buckets": [[w, h, n] for (w, h), n in plan.bucket_counts.items()],
                  "summary": plan.summary(n_train, "/".join(sorted({str(s.repeats) for s in ds.train})), batch_size)},
    }


def write_import(root: Path, out: Path | None, force: bool = False, **kw) -> tuple[Path, dict]:
    """Import and save the manifest to ``out`` (a folder or a .json path; default ROOT/manifest.json)."""
    manifest = import_kohya(root, **kw)
    target = Path(root) / "manifest.json" if out is None else (Path(out) / "manifest.json" if Path(out).suffix != ".json" else Path(out))
    if target.exists() and not force:
        raise LoracamError(f"{target} already exists; pass --force to replace it or -o to write elsewhere")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, json.dumps(manifest, indent=1, ensure_ascii=False).encode(), overwrite=force)
    return target, manifest
