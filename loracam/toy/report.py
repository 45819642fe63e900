"""``loracam toy judge``: what the probe reads in a folder of generated PNGs, grouped by LoRA weight.

Each PNG's A1111 infotext says its prompt and so its ``<lora:NAME:W>`` weight; the fidelity of a concept
at a weight is the share of those images in which the probe reads the concept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loracam.errors import LoracamError
from loracam.toy.judge import CONCEPTS, placed, share, shows
from loracam.toy.probe import CLASSES, Probe
from loracam.toy.world import TESTDRESS


@dataclass(frozen=True)
class Judged:
    concept: str
    lora: str | None
    by_weight: dict[float, tuple[int, int]]  # weight -> (images with the concept, images)
    placement: dict[float, float]  # weight -> share read as a testdress worn on a full-body doll
    probability: dict[float, float]  # weight -> the probe's mean probability of the concept (moves first)

    def curve(self) -> list[tuple[float, float]]:
        return [(w, hit / n) for w, (hit, n) in sorted(self.by_weight.items())]

    def to_dict(self) -> dict:
        return {"concept": self.concept, "lora": self.lora,
                "fidelity": [[w, round(f, 4)] for w, f in self.curve()],
                "images": {str(w): n for w, (_, n) in sorted(self.by_weight.items())},
                "placement": [[w, round(p, 4)] for w, p in sorted(self.placement.items())],
                "probability": [[w, round(p, 4)] for w, p in sorted(self.probability.items())]}


def judge_folder(folder: Path, concept: str, lora: str | None = None, probe: Probe | None = None) -> Judged:
    """Fidelity per LoRA weight of the PNGs in ``folder`` (grid images, which hold many cells, are skipped)."""
    from loracam.generate.infotext import read_png_infotext
    from loracam.prompts import extract_networks

    if concept not in CONCEPTS:
        raise LoracamError(f"unknown concept {concept!r}; use one of {', '.join(CONCEPTS)}")
    attr, value = CONCEPTS[concept]
    probe = probe or Probe.load()
    groups: dict[float, list[np.ndarray]] = defaultdict(list)
    for path in sorted(Path(folder).glob("*.png")):
        with Image.open(path) as im:
            if im.size != (64, 96):
                continue  # a grid image or something else: only single toy-sized cells are judged
            image = np.asarray(im.convert("RGB"))
        try:
            prompt = read_png_infotext(path).prompt
        except Exception:  # not a loracam/A1111 PNG: judged as "no LoRA"
            prompt = ""
        refs = extract_networks(prompt)[1]
        weight = next((r.unet for r in refs if lora is None or r.name == lora), 0.0)
        groups[round(float(weight), 4)].append(image)
    if not groups:
        raise LoracamError(f"no 64x96 PNGs in {folder}; point at a folder of toy-model images")
    by_weight, placement, probability = {}, {}, {}
    for w, images in groups.items():
        reads = probe.read(np.stack(images))
        probs = probe.logits(np.stack(images))[attr].softmax(dim=1)
        probability[w] = probs[:, CLASSES[attr].index(value)].mean().item()
        by_weight[w] = (sum(shows(r, concept) for r in reads), len(reads))
        placement[w] = share(reads, placed) if concept == TESTDRESS else 0.0  # a garment measure
    return Judged(concept, lora, by_weight, placement, probability)


def markdown(j: Judged) -> str:
    rows = "\n".join(f"| {w:g} | {hit}/{n} | {hit / n:.0%} | {j.placement[w]:.0%} | {j.probability[w]:.2f} |"
                     for w, (hit, n) in sorted(j.by_weight.items()))
    return (f"| LoRA weight | images with {j.concept} | fidelity | worn on a full-body doll | probe's p |\n"
            f"|---|---|---|---|---|\n{rows}\n")
