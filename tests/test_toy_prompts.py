"""Partial and shuffled prompts in the toy world: the judge's helpers, and the shipped base on the issue's
example (a partial prompt whose background came out in the dress's colour before loracam/toy/prompts.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from loracam.toy import judge, world
from loracam.toy.probe import labels


def _dolls(n=24, seed=3):
    return judge.prompt_dolls(n, seed)


def test_tag_attribute_names_each_world_tag():
    doll = world.Doll(dress="green", pattern="striped", shoes="white", hair="blonde", hair_style="short",
                      background="yellow", framing="full body")
    got = {t: judge.tag_attribute(t) for t in judge.tag_list(world.tags(doll))}
    assert got == {"1girl": None, "full body": "framing", "green dress": "dress", "striped dress": "pattern",
                   "white shoes": "shoes", "blonde hair": "hair", "short hair": "hair_style",
                   "yellow background": "background"}
    assert judge.tag_attribute("testdress") == "pattern" and judge.tag_attribute("myshoes") == "shoes"
    assert judge.tag_attribute("masterpiece") is None and judge.tag_attribute("long dress") is None


def test_partial_prompts_keep_the_class_and_framing_and_the_tags_order():
    for i, doll in enumerate(_dolls()):
        full = judge.tag_list(world.tags(doll))
        part = judge.tag_list(judge.partial_prompt(doll, np.random.default_rng(i)))
        assert part[:2] == ["1girl", doll.framing]
        assert 3 <= len(part) <= len(full)  # at least one tag besides the two kept ones
        assert part == [t for t in full if t in part]  # a subset, in tags()' order
    lengths = {len(judge.tag_list(judge.partial_prompt(d, np.random.default_rng(i)))) for i, d in enumerate(_dolls(48))}
    assert len(lengths) > 2  # how many tags survive varies


def test_shuffled_prompts_are_permutations_that_move_tags():
    prompt = world.tags(_dolls(1)[0])
    outs = [judge.shuffled_prompt(prompt, np.random.default_rng(s)) for s in range(8)]
    assert all(sorted(judge.tag_list(o)) == sorted(judge.tag_list(prompt)) for o in outs)
    assert len(set(outs)) > 4


def test_kind_prompts_pair_partial_and_shuffled_and_do_not_depend_on_the_count():
    dolls = _dolls()
    full, part, shuf = (judge.kind_prompts(k, dolls, seed=5) for k in judge.PROMPT_KINDS)
    assert full == [world.tags(d) for d in dolls]
    assert all(sorted(judge.tag_list(p)) == sorted(judge.tag_list(s)) for p, s in zip(part, shuf))
    assert part != shuf
    assert judge.kind_prompts("shuffled", dolls[:5], seed=5) == shuf[:5]
    with pytest.raises(ValueError):
        judge.kind_prompts("reversed", dolls)


def test_named_attributes():
    doll = world.Doll(dress="red", pattern="plain", shoes="black", framing="full body")
    assert judge.named(world.tags(doll), doll) == set(judge.PROMPT_ATTRS)  # a full list says "plain" too
    assert judge.named("1girl, full body, red dress, white background", doll) == {"framing", "dress", "background"}
    assert judge.named("white background, red dress, full body", doll) == {"framing", "dress", "background"}
    # another doll's tags name nothing of this one
    assert judge.named("1girl, upper body, blue dress, black shoes", doll) == {"shoes"}
    close = replace(doll, framing="close-up")
    assert "pattern" not in judge.named(world.tags(close), close)  # no dress in a close-up


class _Reads:
    """A probe stand-in that reads back given attribute values."""

    def __init__(self, reads):
        self.reads = reads

    def read(self, images):
        return self.reads


def test_following_named_scores_only_what_the_prompt_names():
    dolls = [world.Doll(dress="red", background="white", framing="upper body"),
             world.Doll(dress="blue", background="grey", framing="upper body")]
    prompts = ["1girl, upper body, red dress", "1girl, upper body, grey background"]
    reads = [labels(replace(dolls[0], background="pink")), labels(replace(dolls[1], dress="green"))]
    reads = [{a: (v if v is not None else "?") for a, v in r.items()} for r in reads]
    got = judge.following_named(_Reads(reads), None, dolls, prompts)
    # the wrong background of image 0 and wrong dress of image 1 were not asked for
    assert got["dress"] == 1.0 and got["background"] == 1.0 and got["framing"] == 1.0
    assert got["shoes"] != got["shoes"]  # NaN: nobody named shoes
    assert judge.named_counts(dolls, prompts)["dress"] == 1
    full = [world.tags(d) for d in dolls]
    same = judge.following_named(_Reads(reads), None, dolls, full), judge.following(_Reads(reads), None, dolls)
    assert [{a: v for a, v in s.items() if v == v} for s in same] == [{"framing": 1.0, "dress": 0.5, "pattern": 1.0,
                                                                       "hair": 1.0, "background": 0.5}] * 2


# The issue's example on the shipped base: 8 of 8 seeds (100-107) drew a green background before the text
# encoder was fine-tuned; after it, 8 of 8 are yellow with a green dress (benchmarks/results/toy_prompts.json).
# Four seeds, three of which must be right, leave room for one unlucky seed and still fail a base that
# confuses the colours, as the old one did on every seed.
ISSUE_PROMPT = "1girl, full body, green dress, yellow background"


def test_shipped_base_binds_the_colours_of_the_issues_partial_prompt(monkeypatch):
    from loracam.models import ModelCache
    from loracam.toy.probe import Probe

    model = ModelCache().get("toy", torch.device("cpu"), torch.float32)
    seeds = range(100, 104)
    reads = Probe.load().read(judge.render_prompts(model, [ISSUE_PROMPT] * len(seeds), seeds))
    assert sum(r["background"] == "yellow" for r in reads) >= 3, [r["background"] for r in reads]
    assert sum(r["dress"] == "green" for r in reads) >= 3, [r["dress"] for r in reads]
