"""Does the toy base follow partial and shuffled prompts? (results: benchmarks/results/toy_prompts.json)

Three prompt kinds on the same 144 random dolls (``judge.prompt_dolls(144, seed=7)``, image seeds 0-143, the
judge's render settings: DPM++ 2M, 20 steps, CFG 5):
- full: the doll's whole tag list in ``world.tags`` order (toy_quality's base_prompt_following);
- partial: ``1girl``, the framing and each other tag with probability 1/2, in that order;
- shuffled: the same partial prompts with their tags in a random order.
Each attribute is scored only on the images whose prompt names it (``judge.following_named``), with the
sample size beside it. Then the issue's three example prompts on seeds 100-107: what the probe reads.

The shipped base is measured; ``BEFORE`` holds the numbers of the text encoder the base shipped with before
``loracam/toy/prompts.py`` fine-tuned it, and ``TRAINING`` that run's settings, as measured. Usage:
python benchmarks/toy_prompts.py [--n 144] [--text-encoder FILE] [--json PATH]
(``--text-encoder``: measure the base with these text-encoder weights instead, e.g. a candidate before it is
installed; ``--json``: write there instead of results/toy_prompts.json.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

import torch  # noqa: E402

from loracam.models import ModelCache  # noqa: E402
from loracam.toy import judge  # noqa: E402
from loracam.toy.probe import Probe  # noqa: E402

# The issue's prompts: the first two gave a wrong background (and a dark dress) on all 8 seeds.
ISSUE_PROMPTS = (
    "1girl, full body, green dress, yellow background",
    "1girl, full body, purple dress, white shoes, yellow background",
    "1girl, full body, green dress, striped dress, white shoes, black hair, long hair, yellow background",
)
ISSUE_SEEDS = tuple(range(100, 108))

# Measured on the text encoder the toy base shipped with before (commit 438fa75's), 2026-12-02, one thread.
BEFORE: dict = {
 "full": {
  "following": {
   "framing": 1.0,
   "dress": 0.93,
   "pattern": 0.98,
   "shoes": 0.9298,
   "hair": 0.9861,
   "background": 1.0,
   "hair_style": 0.9792
  },
  "scored": {
   "framing": 144,
   "dress": 100,
   "pattern": 100,
   "shoes": 57,
   "hair": 144,
   "background": 144,
   "hair_style": 144
  }
 },
 "partial": {
  "following": {
   "framing": 0.9722,
   "dress": 0.9623,
   "pattern": 0.6579,
   "shoes": 0.6571,
   "hair": 0.8649,
   "background": 0.92,
   "hair_style": 0.973
  },
  "scored": {
   "framing": 144,
   "dress": 53,
   "pattern": 38,
   "shoes": 35,
   "hair": 74,
   "background": 75,
   "hair_style": 74
  }
 },
 "shuffled": {
  "following": {
   "framing": 0.8403,
   "dress": 0.4528,
   "pattern": 0.5789,
   "shoes": 0.3143,
   "hair": 0.6486,
   "background": 0.7067,
   "hair_style": 0.8919
  },
  "scored": {
   "framing": 144,
   "dress": 53,
   "pattern": 38,
   "shoes": 35,
   "hair": 74,
   "background": 75,
   "hair_style": 74
  }
 },
 "issue_examples": {
  "1girl, full body, green dress, yellow background": {
   "dress": {
    "reads": [
     "green",
     "green",
     "green",
     "green",
     "green",
     "green",
     "green",
     "green"
    ],
    "share": 1.0
   },
   "shoes": {
    "reads": [
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow"
    ]
   },
   "background": {
    "reads": [
     "green",
     "green",
     "green",
     "green",
     "green",
     "green",
     "green",
     "green"
    ],
    "share": 0.0
   }
  },
  "1girl, full body, purple dress, white shoes, yellow background": {
   "dress": {
    "reads": [
     "purple",
     "purple",
     "purple",
     "purple",
     "purple",
     "purple",
     "purple",
     "purple"
    ],
    "share": 1.0
   },
   "shoes": {
    "reads": [
     "white",
     "white",
     "white",
     "white",
     "white",
     "white",
     "white",
     "white"
    ],
    "share": 1.0
   },
   "background": {
    "reads": [
     "white",
     "white",
     "white",
     "white",
     "white",
     "white",
     "white",
     "white"
    ],
    "share": 0.0
   }
  },
  "1girl, full body, green dress, striped dress, white shoes, black hair, long hair, yellow background": {
   "dress": {
    "reads": [
     "green",
     "green",
     "green",
     "green",
     "green",
     "green",
     "green",
     "green"
    ],
    "share": 1.0
   },
   "shoes": {
    "reads": [
     "white",
     "white",
     "white",
     "white",
     "white",
     "white",
     "white",
     "white"
    ],
    "share": 1.0
   },
   "background": {
    "reads": [
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow",
     "yellow"
    ],
    "share": 1.0
   }
  }
 }
}

# The runs of loracam/toy/prompts.py that wrote the shipped text encoder (`make toy-prompts`).
TRAINING: dict = {
 "stage1": {
  "recipe": {
   "steps": 1500,
   "batch": 64,
   "lr": 0.001,
   "warmup": 50,
   "embed_steps": 1000,
   "embed_batch": 32,
   "embed": 1.0,
   "pool": 4000,
   "full": 0.2,
   "empty": 0.05,
   "max_dropout": 0.8,
   "shuffle": 0.5,
   "shoes": 25.0,
   "free": 0.1,
   "loss": "attention",
   "seed": 0
  },
  "threads": 1,
  "train_seconds": 1762,
  "encode_seconds": 30
 },
 "stage2 (--init stage1)": {
  "recipe": {
   "steps": 600,
   "batch": 64,
   "lr": 0.0003,
   "warmup": 50,
   "embed_steps": 0,
   "embed_batch": 32,
   "embed": 1.0,
   "pool": 4000,
   "full": 0.2,
   "empty": 0.05,
   "max_dropout": 0.8,
   "shuffle": 0.5,
   "shoes": 40.0,
   "free": 0.1,
   "loss": "attention",
   "seed": 0
  },
  "threads": 1,
  "train_seconds": 527,
  "encode_seconds": 39
 },
 "note": "each on one thread of the 2-core machine with the other core busy (two runs side by side)"
}


def issue_reads(model, probe: Probe) -> dict[str, dict]:
    """Per example prompt, over ISSUE_SEEDS: what the probe reads of dress, shoes and background, and for each
    of them that the prompt names, the share of images that show what it says."""
    out = {}
    for prompt in ISSUE_PROMPTS:
        reads = probe.read(judge.render_prompts(model, [prompt] * len(ISSUE_SEEDS), ISSUE_SEEDS))
        said = {judge.tag_attribute(t): t.rsplit(" ", 1)[0] for t in judge.tag_list(prompt)}
        out[prompt] = {a: {"reads": [r[a] for r in reads]} | ({"share": sum(r[a] == said[a] for r in reads) / len(reads)}
                                                            if a in said else {})
                       for a in ("dress", "shoes", "background")}
    return out


def load_text_encoder(model, path: Path) -> None:
    """Swap the model's text-encoder weights for ``path``'s (cast to the model's dtype)."""
    from safetensors.torch import load_file

    te = model.text_encoder
    te.load_state_dict({k: v.to(te.dtype) for k, v in load_file(str(path)).items()})


def measure(model, probe: Probe, n: int, kinds=judge.PROMPT_KINDS) -> dict:
    res = judge.prompt_following(model, probe, n=n, kinds=kinds)
    out = {kind: {"following": {a: round(v, 4) for a, v in r["following"].items()}, "scored": r["scored"]}
           for kind, r in res.items()}
    out["issue_examples"] = issue_reads(model, probe)
    return out


def table(before: dict, after: dict) -> str:
    """Markdown: attribute rows, before -> after columns per prompt kind."""
    kinds = [k for k in judge.PROMPT_KINDS if k in after]
    lines = ["| attribute | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for a in judge.PROMPT_ATTRS:
        cells = []
        for k in kinds:
            b = before.get(k, {}).get("following", {}).get(a)
            v = after[k]["following"][a]
            cells.append(f"{100 * b:.1f} -> {100 * v:.1f}" if b is not None else f"{100 * v:.1f}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=144, help="prompts per kind (default 144)")
    ap.add_argument("--text-encoder", type=Path, help="measure with these text-encoder weights (safetensors)")
    ap.add_argument("--kinds", default=",".join(judge.PROMPT_KINDS), help="which prompt kinds (default all)")
    ap.add_argument("--json", type=Path, help="write the result here instead of results/toy_prompts.json")
    args = ap.parse_args()
    t0 = time.time()
    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    if args.text_encoder:
        load_text_encoder(model, args.text_encoder)
    probe = Probe.load()
    res = {"prompts_per_kind": args.n, "text_encoder": str(args.text_encoder or "shipped"),
           "shipped": measure(model, probe, args.n, args.kinds.split(",")), "before": BEFORE, "training": TRAINING}
    res["seconds"] = round(time.time() - t0)
    print(table(BEFORE, res["shipped"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["shipped"]["issue_examples"], indent=1))
    else:
        write_result("toy_prompts", res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
