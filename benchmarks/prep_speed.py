"""Time to prepare 20 photos (target: under 60 s on 2 cores, models loaded once).

The photos are phone-sized (3000x4000 JPEG) variants of real portraits that ship in packages
(skimage's astronaut, matplotlib's Grace Hopper): rotated, cropped, mirrored and recoloured so that
intake does not drop them as duplicates. Two runs: --subject face (dlib: detect, align, crop, embed)
and --subject person (mediapipe pose + dlib face close-ups). Model loading is timed separately.
Usage: python benchmarks/prep_speed.py
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageEnhance
from skimage import data

from _common import write_result
from loracam.data.config import PrepConfig
from loracam.data.prep import Analyzers, prepare


def make_photos(folder: Path, n: int = 20, size=(3000, 4000)) -> None:
    rng = random.Random(0)
    sources = [Image.fromarray(data.astronaut()),
               Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")]
    for i in range(n):
        im = sources[0] if i % 5 else sources[1]
        w, h = im.size
        c = rng.uniform(0.0, 0.12)
        im = im.crop((int(w * c), int(h * c * 0.5), int(w * (1 - c * 0.5)), h))
        im = im.rotate(rng.uniform(-20, 20), resample=Image.BICUBIC, expand=False, fillcolor=(40, 40, 40))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
        canvas = Image.new("RGB", size, tuple(int(v) for v in np.random.default_rng(i).integers(0, 255, 3)))
        scale = size[0] * rng.uniform(0.45, 0.95) / im.width
        im = im.resize((int(im.width * scale), int(im.height * scale)), Image.LANCZOS)
        canvas.paste(im, (rng.randint(0, size[0] - im.width), rng.randint(0, size[1] - im.height)))
        canvas.save(folder / f"IMG_{i:04d}.jpg", quality=92)


def run(subject: str, photos: Path, work: Path) -> dict:
    cfg = PrepConfig(subject=subject, trigger="sks", class_word="woman", resolution=(512, 768))
    t0 = time.perf_counter()
    an = Analyzers(cfg)
    an.face  # noqa: B018 - load the models up front so their cost is reported apart
    if subject == "person":
        an.pose  # noqa: B018
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = prepare(photos, work / f"ds-{subject}", cfg, an)
    t_prep = time.perf_counter() - t1
    kept = sum(r.status == "kept" for r in res.records)
    return {"subject": subject, "photos": len(res.records), "kept": kept,
            "crops": sum(len(r.crops) for r in res.records), "model_load_s": round(t_load, 2),
            "prepare_s": round(t_prep, 2), "total_s": round(t_load + t_prep, 2),
            "dropped": {r.name: r.reason for r in res.records if r.status == "dropped"}}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        make_photos(photos)
        runs = [run("face", photos, Path(tmp)), run("person", photos, Path(tmp))]
    worst = max(r["total_s"] for r in runs)
    write_result("prep_speed", {"seconds": worst, "target_s": 60, "passes": worst < 60,
                                "photo_size": "3000x4000 JPEG", "runs": runs})


if __name__ == "__main__":
    main()
