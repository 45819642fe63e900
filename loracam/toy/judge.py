"""Quality numbers in the toy world: the probe reads generated images back and counts.

- prompt following: render prompts written from random dolls' tags and check each named attribute;
- concept fidelity: the share of images in which the probe finds a held-out concept (testdress, myshoes,
  sks) a LoRA was trained on;
- placement: the testdress is read, on a full-body doll, with no fabric outside the dress;
- prior preservation: prompt following of trigger-free prompts with the LoRA loaded, against the base;
- the VAE's ceiling: how often a concept survives the base's own encode -> decode round trip. A LoRA learns
  the latents the encoder gives its photos: one that reproduced them exactly would show the concept this
  often, and it takes a weight above 1 (which exaggerates what was learned) to show it more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from loracam.toy import world
from loracam.toy.probe import Probe, accuracy, labels, to_tensor, to_uint8
from loracam.toy.world import MYSHOES, SKS, TESTDRESS, Doll

# What prompts steer and the probe checks (identity is not prompted in the base world: faces are untagged).
FOLLOWED = ("framing", "dress", "pattern", "shoes", "hair", "background")
CONCEPTS = {TESTDRESS: ("pattern", TESTDRESS), MYSHOES: ("shoes", MYSHOES), SKS: ("face", SKS)}
NEGATIVE = ""


@dataclass(frozen=True)
class RenderSettings:
    steps: int = 20
    sampler: str = "DPM++ 2M"
    cfg: float = 5.0
    batch: int = 16


def render_prompts(model, prompts: Sequence[str], seeds: Sequence[int], library=None,
                   settings: RenderSettings = RenderSettings()) -> np.ndarray:
    """Generate one image per (prompt, seed) with loracam's engine; uint8 [N, 96, 64, 3]."""
    from loracam.generate.api import native_size, render_samples
    from loracam.generate.request import Sample, Shared
    from loracam.lora import LoraLibrary
    from loracam.prompts import extract_networks

    w, h = native_size(model)
    shared = Shared(w, h, settings.steps, settings.sampler, "Automatic")
    library = library or LoraLibrary([])
    out = []
    for start in range(0, len(prompts), settings.batch):
        batch = []
        for p, s in zip(prompts[start:start + settings.batch], seeds[start:start + settings.batch]):
            batch.append(Sample(p, NEGATIVE, int(s), settings.cfg, tuple(extract_networks(p)[1])))
        out += [np.asarray(r.image.convert("RGB")) for r in render_samples(model, shared, batch, library)]
    return np.stack(out)


def prompt_dolls(n: int, seed: int, **fixed) -> list[Doll]:
    """Random base-world dolls whose tags become prompts (``fixed`` pins attributes, e.g. framing)."""
    rng = np.random.default_rng(seed)
    return [world.sample_doll(rng, held_out=True, **fixed) for _ in range(n)]


def following(probe: Probe, images: np.ndarray, dolls: Sequence[Doll],
              attrs: Sequence[str] = FOLLOWED) -> dict[str, float]:
    """Per attribute, the share of images (that show it) in which the probe reads what the prompt named."""
    acc = accuracy(probe.read(images), [labels(d) for d in dolls])
    return {a: acc[a] for a in attrs}


def shows(read: dict[str, str], concept: str) -> bool:
    """Whether one probe reading finds ``concept`` (testdress, myshoes or sks)."""
    attr, value = CONCEPTS[concept]
    return read[attr] == value


def placed(read: dict[str, str]) -> bool:
    """Whether one reading is a testdress worn on a full-body doll, not fabric spilled over the picture."""
    return shows(read, TESTDRESS) and read["spill"] == "no" and read["framing"] == "full body"


def share(reads: Sequence[dict[str, str]], test: Callable[[dict[str, str]], bool]) -> float:
    return sum(map(test, reads)) / len(reads)


def fidelity(probe: Probe, images: np.ndarray, concept: str) -> float:
    """The share of images in which the probe reads ``concept``."""
    return share(probe.read(images), lambda r: shows(r, concept))


def concept_prompt(doll: Doll, concept: str, lora: str | None = None, weight: float = 1.0) -> tuple[Doll, str]:
    """The doll wearing ``concept`` and its prompt (trigger in place of the attribute), with a LoRA tag."""
    field_of = {TESTDRESS: "dress", MYSHOES: "shoes", SKS: "face"}
    worn = replace(doll, **{field_of[concept]: concept})
    tag = f" <lora:{lora}:{weight:g}>" if lora else ""
    return worn, world.tags(worn) + tag


@dataclass(frozen=True)
class ProbeScore:
    score: float


@dataclass(frozen=True)
class ProbeIdentityScorer:
    """The trainer's identity judge in the toy world (``train(..., scorer=...)``): share of images read as sks."""

    probe: Probe
    concept: str = SKS

    def score(self, images) -> ProbeScore:
        return ProbeScore(fidelity(self.probe, list(images), self.concept))


def round_trip(model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 [N, H, W, 3] images encoded (the posterior mean) and decoded by the model's VAE."""
    import torch

    vae = model.vae
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = to_tensor(images[start:start + batch]).to(vae.device, vae.dtype)
            out.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mean).sample))
    return np.concatenate(out)


def vae_ceiling(probe: Probe, model, concept: str, framing: str, n: int = 64, seed: int = 23) -> float:
    """The share of true renders of ``concept`` (worn by random dolls in ``framing``) still read as it
    after the VAE round trip: what a LoRA that learned its photos' latents exactly would reach."""
    dolls = [concept_prompt(d, concept)[0] for d in prompt_dolls(n, seed, framing=framing)]
    return fidelity(probe, round_trip(model, np.stack([world.render(d) for d in dolls])), concept)


def mean(d: dict[str, float]) -> float:
    vals = [v for v in d.values() if v == v]
    return sum(vals) / len(vals) if vals else float("nan")
