"""Quality numbers in the toy world: the probe reads generated images back and counts.

- prompt following: render prompts written from random dolls' tags and check each named attribute; the
  prompts are full tag lists, or partial ones (some tags left out) in order or shuffled;
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
# what prompt_following reports: hair style too (partial prompts name it on its own)
PROMPT_ATTRS = FOLLOWED + ("hair_style",)
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


# ---------------------------------------------------------------------------------------------
# partial and shuffled prompts
#
# Users' prompts and style presets name a few of a doll's tags, in any order. A partial prompt keeps
# ``1girl`` and the framing and each other tag with probability ``keep``: the studio's prompts always carry
# both ("sks, 1girl, close-up, white background"), and the framing decides what an image shows (shoes only in
# full body, no dress in a close-up), so with the framing left free a named dress or pair of shoes could be
# absent from the picture and the probe's read of it would mean nothing.

PROMPT_KINDS = ("full", "partial", "shuffled")


def tag_list(prompt: str) -> list[str]:
    """A prompt's tags, as written (comma separated, spaces trimmed, empty pieces dropped)."""
    return [t.strip() for t in prompt.split(",") if t.strip()]


def tag_attribute(tag: str) -> str | None:
    """The probe attribute a world tag names (``1girl`` and unknown tags: None)."""
    head, _, last = tag.rpartition(" ")
    if tag in world.FRAMINGS:
        return "framing"
    if tag == TESTDRESS or tag in world.PATTERNS.values():
        return "pattern"
    if tag == MYSHOES or (last == "shoes" and head in world.SHOE_COLOURS):
        return "shoes"
    if tag == SKS:
        return "face"
    if last == "dress" and head in world.DRESS_COLOURS:
        return "dress"
    if last == "hair":
        return "hair" if head in world.HAIR_COLOURS else "hair_style" if head in world.HAIR_STYLES else None
    if last == "background" and head in world.BACKGROUNDS:
        return "background"
    return None


def partial_prompt(doll: Doll, rng: np.random.Generator, keep: float = 0.5) -> str:
    """Some of the doll's tags in ``tags``' order: ``1girl`` and the framing always, each other tag with
    probability ``keep``, and at least one of them (a prompt naming nothing tests nothing)."""
    tags = tag_list(world.tags(doll))
    core = [t for t in tags if t == "1girl" or tag_attribute(t) == "framing"]
    rest = [t for t in tags if t not in core]
    chosen = rng.random(len(rest)) < keep
    if rest and not chosen.any():
        chosen[int(rng.integers(len(rest)))] = True
    kept = set(core) | {t for t, c in zip(rest, chosen) if c}
    return ", ".join(t for t in tags if t in kept)


def shuffled_prompt(prompt: str, rng: np.random.Generator) -> str:
    """The prompt's tags in a random order (all of them move, ``1girl`` and the framing too)."""
    tags = tag_list(prompt)
    return ", ".join(tags[i] for i in rng.permutation(len(tags)))


def kind_prompts(kind: str, dolls: Sequence[Doll], seed: int = 0, keep: float = 0.5) -> list[str]:
    """One prompt per doll: ``full`` (``tags`` as written), ``partial`` or ``shuffled`` (the partial prompt
    of the same doll, reordered: the two kinds differ only in the order)."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt kind is one of {PROMPT_KINDS} (got {kind!r})")
    out = []
    for i, d in enumerate(dolls):
        if kind == "full":
            out.append(world.tags(d))
            continue
        rng = np.random.default_rng([seed, i])  # per doll: a prompt does not depend on how many there are
        p = partial_prompt(d, rng, keep)
        out.append(shuffled_prompt(p, rng) if kind == "shuffled" else p)
    return out


def named(prompt: str, doll: Doll) -> set[str]:
    """The attributes ``prompt`` names for ``doll`` (tags of other dolls count for nothing).

    A plain dress has no tag: its pattern counts as named only when the prompt holds every tag of the doll,
    as a full list says "no pattern" by leaving one out, while a partial one leaves it open."""
    own = tag_list(world.tags(doll))
    given = set(tag_list(prompt))
    out = {tag_attribute(t) for t in own if t in given} - {None}
    if doll.shows_dress and given >= set(own):
        out.add("pattern")
    return out


def following_named(probe: Probe, images: np.ndarray, dolls: Sequence[Doll], prompts: Sequence[str],
                    attrs: Sequence[str] = FOLLOWED) -> dict[str, float]:
    """``following`` counting only what each prompt names: an attribute it leaves out is the model's choice.

    Per attribute, the share of images that show it and whose prompt names it in which the probe reads the
    named value (NaN where no prompt named it). On full tag lists this is ``following``."""
    truths = []
    for d, p in zip(dolls, prompts):
        n = named(p, d)
        truths.append({a: (v if a in n else None) for a, v in labels(d).items()})
    acc = accuracy(probe.read(images), truths)
    return {a: acc[a] for a in attrs}


def named_counts(dolls: Sequence[Doll], prompts: Sequence[str], attrs: Sequence[str] = FOLLOWED) -> dict[str, int]:
    """How many images each attribute of ``following_named`` is scored on (the size of its sample)."""
    truths = [labels(d) for d in dolls]
    return {a: sum(a in named(p, d) and t[a] is not None for d, p, t in zip(dolls, prompts, truths)) for a in attrs}


def prompt_following(model, probe: Probe, n: int = 144, seed: int = 7, kinds: Sequence[str] = PROMPT_KINDS,
                     attrs: Sequence[str] = PROMPT_ATTRS, settings: RenderSettings = RenderSettings()) -> dict[str, dict]:
    """``following_named`` per prompt kind on the same ``n`` dolls (``prompt_dolls(n, seed)``, image seeds
    0..n-1, the full kind as toy_quality's base_prompt_following), with each attribute's sample size."""
    dolls = prompt_dolls(n, seed)
    out = {}
    for kind in kinds:
        prompts = kind_prompts(kind, dolls, seed)
        images = render_prompts(model, prompts, range(n), settings=settings)
        out[kind] = {"following": following_named(probe, images, dolls, prompts, attrs),
                     "scored": named_counts(dolls, prompts, attrs)}
    return out


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
