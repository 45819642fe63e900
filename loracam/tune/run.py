"""``run_tune``: a prompt with LoRA tags in, per seed the lightest weights at which every LoRA shows, out.

The renders of a round go through the generator as batches with per-image LoRA weights (one LoRA stack, the
weights a tensor per sample), each saved with its A1111 infotext as ``seed-S/W1-W2-....png``; the judges read
them; search.py decides the next round. Then, per seed: the answer's neighbourhood as an A1111-style grid (a
row per LoRA at the chosen weight -/+ ``neighbourhood``), a picture of the search, and tune.json with every
render's readings and the chosen prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from loracam.errors import LoracamError
from loracam.io import atomic_write_bytes
from loracam.tune import judges as J
from loracam.tune.search import Reading, SearchConfig, SeedResult, check_budget, search


@dataclass(frozen=True)
class TuneConfig:
    prompt: str
    negative: str = ""
    base: str | None = None  # None: the built-in toy base
    seeds: tuple[int, ...] = ()  # explicit seeds; else ``n_seeds`` random ones
    n_seeds: int = 3
    budget: int = 18  # search renders per seed
    judges: tuple[tuple[str, str], ...] = ()  # (LoRA name, judge name) overrides
    references: tuple[tuple[str, str], ...] = ()  # (LoRA name, folder)
    thresholds: tuple[tuple[str, float], ...] = ()  # (LoRA name, threshold)
    prior: str | None = None  # probe | clip-text | none; None: probe on the toy base, clip-text with --clip
    clip: str | None = None
    identity: str = "dlib"
    start: float = 1.0
    ceiling: float = 1.5
    prior_tolerance: float = 0.05
    neighbourhood: float = 0.1  # the grid's step around the answer; 0: no grid
    lora_dirs: tuple[str, ...] = ()
    sampler: str = "DPM++ 2M"
    schedule: str = "Automatic"
    steps: int | None = None  # None: 20 on the toy base, 30 on a real one
    cfg: float | None = None  # None: 5 on the toy base, 7 on a real one
    width: int | None = None
    height: int | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"

    def search_config(self) -> SearchConfig:
        return SearchConfig(start=self.start, ceiling=self.ceiling, budget=self.budget,
                            prior_tolerance=self.prior_tolerance)


@dataclass
class TuneResult:
    prompt: str  # the prompt without LoRA tags
    loras: list[J.LoraInfo]
    judges: list[str]
    thresholds: list[float]
    prior: str
    seeds: list[SeedResult]
    folder: Path
    renders: int = 0  # search renders, all seeds
    grid_renders: int = 0
    files: dict = field(default_factory=dict)

    def chosen_prompt(self, seed: SeedResult) -> str:
        return with_loras(self.prompt, lora_refs(self.loras, seed.weights))


def lora_refs(loras, weights) -> tuple:
    """The LoRAs at ``weights`` (text encoder and U-Net alike), as a prompt's tags name them."""
    from loracam.prompts import LoraRef

    return tuple(LoraRef(lo.name, w, w) for lo, w in zip(loras, weights))


def with_loras(prompt: str, refs) -> str:
    """``prompt`` with the LoRAs' tags appended, as A1111 writes them."""
    return prompt + "".join(" " + r.tag() for r in refs)


def _parse(cfg: TuneConfig, library) -> tuple[str, list[J.LoraInfo]]:
    from loracam.prompts import extract_networks

    text, refs, _ = extract_networks(cfg.prompt)
    if not refs:
        raise LoracamError("the prompt names no LoRA to tune: add tags such as <lora:face:0.7> <lora:testdress:0.4> "
                           "(their weights are where a search would start by hand; tune starts at "
                           f"{cfg.start:g} and goes down)")
    names = list(dict.fromkeys(r.name for r in refs))
    refs_of = dict(cfg.references)
    for key in [k for k, _ in (*cfg.judges, *cfg.references, *cfg.thresholds) if k not in names]:
        raise LoracamError(f"{key!r} is not a LoRA of the prompt ({', '.join(names)}); --judge, --reference and "
                           "--threshold take NAME=VALUE with a LoRA's name as the prompt writes it")
    loras = [J.lora_info(n, library.find(n), Path(refs_of[n]) if n in refs_of else None) for n in names]
    for lo in loras:
        if lo.reference is not None and not lo.reference.exists():
            raise LoracamError(f"--reference {lo.name}={lo.reference}: that folder does not exist")
    return text.strip().strip(",").strip(), loras


def _build_judges(cfg: TuneConfig, loras, ctx: J.Context) -> tuple[list, list[str], list[float]]:
    chosen = dict(cfg.judges)
    out, names, thresholds = [], [], []
    over = dict(cfg.thresholds)
    for lo in loras:
        name = chosen.get(lo.name) or J.default_judge(lo, ctx)
        if name not in J.JUDGES:
            raise LoracamError(f"--judge {lo.name}={name}: unknown judge; use one of {', '.join(J.JUDGES)}")
        judge = J.JUDGES[name](lo, ctx)
        out.append(judge)
        names.append(name)
        thresholds.append(float(over.get(lo.name, judge.threshold)))
    return out, names, thresholds


def _seeds(cfg: TuneConfig) -> list[int]:
    if cfg.seeds:
        return list(dict.fromkeys(cfg.seeds))
    if cfg.n_seeds < 1:
        raise LoracamError("--seeds must be at least 1")
    rng = random.Random()
    return [rng.randrange(2**32) for _ in range(cfg.n_seeds)]


class Renderer:
    """Renders (seed, weights) items in batches, saves each with its infotext, and reads them with the judges;
    an item rendered before in this run is not rendered again (its reading is kept)."""

    def __init__(self, cfg: TuneConfig, models, library, prompt: str, loras, judges, thresholds, prior, folder: Path):
        from loracam.generate import GenRequest
        from loracam.generate.api import load_model, native_size, shared_of

        toy = cfg.base in (None, "toy")
        self.req = GenRequest(prompt=prompt, negative=cfg.negative, base=cfg.base, sampler=cfg.sampler,
                              schedule=cfg.schedule, steps=cfg.steps or (20 if toy else 30),
                              cfg=cfg.cfg if cfg.cfg is not None else (5.0 if toy else 7.0), width=cfg.width,
                              height=cfg.height, device=cfg.device, precision=cfg.precision)
        self.model = load_model(self.req, models)
        w, h = native_size(self.model)
        self.shared = shared_of(replace(self.req, width=cfg.width or w, height=cfg.height or h))
        self.cfg, self.library, self.prompt, self.loras = cfg, library, prompt, loras
        self.judges, self.thresholds, self.prior, self.folder = judges, thresholds, prior, folder
        self.readings: dict[tuple[int, tuple], Reading] = {}
        self.rendered = 0

    def path(self, seed: int, weights: tuple[float, ...]) -> Path:
        return self.folder / f"seed-{seed}" / ("-".join(f"{w:.2f}" for w in weights) + ".png")

    def __call__(self, items) -> list[Reading]:
        from loracam.generate.api import render_samples
        from loracam.generate.images import png_bytes
        from loracam.generate.request import Sample

        todo = list(dict.fromkeys(it for it in items if it not in self.readings))
        for start in range(0, len(todo), self.cfg.batch_size):
            batch = todo[start:start + self.cfg.batch_size]
            refs = [lora_refs(self.loras, w) for _, w in batch]
            samples = [Sample(with_loras(self.prompt, r), self.req.negative, s, self.req.cfg, r)
                       for (s, _), r in zip(batch, refs)]
            rendered = render_samples(self.model, self.shared, samples, self.library)
            for (s, w), r in zip(batch, rendered):
                p = self.path(s, w)
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(p, png_bytes(r.image, r.infotext))
            self.rendered += len(batch)
            for key, reading in zip(batch, self.read([r.image for r in rendered])):
                self.readings[key] = reading
        return [self.readings[it] for it in items]

    def read(self, images) -> list[Reading]:
        fids = [j.fidelity(images) for j in self.judges]
        priors = self.prior.prior(images) if self.prior is not None else [None] * len(images)
        return [Reading(tuple(round(float(f[i]), 4) for f in fids),
                        tuple(bool(f[i] >= t) for f, t in zip(fids, self.thresholds)),
                        None if priors[i] is None else round(float(priors[i]), 4)) for i in range(len(images))]


def run_tune(cfg: TuneConfig, models, library, folder: Path, echo: Callable[[str], None] = print) -> TuneResult:
    """Search every seed; write the renders, the grids, the search pictures and tune.json into ``folder``."""
    from loracam.judge.rank import Models

    prompt, loras = _parse(cfg, library)
    check_budget(cfg.budget, len(loras))
    ctx = J.Context(Models(), "toy" if cfg.base in (None, "toy") else cfg.base, cfg.clip, cfg.identity)
    judges, names, thresholds = _build_judges(cfg, loras, ctx)
    prior_name = cfg.prior or J.default_prior(ctx)
    if prior_name not in J.PRIORS:
        raise LoracamError(f"--prior {prior_name}: unknown; use one of {', '.join(J.PRIORS)}")
    prior_builder = J.PRIORS[prior_name]
    prior = prior_builder(ctx, J.prior_prompt(prompt, loras)) if prior_builder else None
    _fresh(folder)
    seeds = _seeds(cfg)
    render = Renderer(cfg, models, library, prompt, loras, judges, thresholds, prior, folder)
    echo(f"tuning {', '.join(f'{lo.name} ({n})' for lo, n in zip(loras, names))} on seed"
         f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: at most {cfg.budget} renders a seed")
    results = search(seeds, len(loras), render, cfg.search_config(),
                     on_round=lambda r, n: echo(f"  round {r}: {n} renders"))
    out = TuneResult(prompt, loras, names, thresholds, prior_name, results, folder, renders=render.rendered)
    from loracam.tune.report import write_outputs

    write_outputs(out, render, cfg, echo)
    return out


def _fresh(folder: Path) -> None:
    """Tune writes into a new (or empty) folder: a run's files are never mixed with another's."""
    from loracam.io import check_writable_dir

    check_writable_dir(folder)
    if folder.is_dir() and any(folder.iterdir()):
        raise LoracamError(f"{folder} is not empty; tune writes a new folder each run: choose another -o")
    folder.mkdir(parents=True, exist_ok=True)


def summary(res: TuneResult) -> dict:
    """tune.json: per seed the answer, its readings and every render tried."""
    return {
        "prompt": res.prompt, "prior": res.prior, "renders": res.renders, "grid_renders": res.grid_renders,
        "loras": [{"name": lo.name, "file": str(lo.path), "trigger": lo.trigger, "subject": lo.subject, "judge": n,
                   "threshold": t} for lo, n, t in zip(res.loras, res.judges, res.thresholds)],
        "seeds": [{"seed": s.seed, "weights": dict(zip((lo.name for lo in res.loras), s.weights)),
                   "prompt": res.chosen_prompt(s), "ok": s.ok, "renders": s.renders,
                   "not_reached": [res.loras[i].name for i in s.unreached], "reading": asdict(s.reading),
                   "trials": [{"weights": list(t.weights), "round": t.round, "kind": t.kind, **asdict(t.reading)}
                              for t in s.trials]} for s in res.seeds],
        "files": {k: str(v) for k, v in res.files.items()},
    }


def write_json(path: Path, data: dict) -> Path:
    return atomic_write_bytes(path, json.dumps(data, indent=1, ensure_ascii=False).encode())
