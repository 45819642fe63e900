"""A1111 prompt syntax: attention, scheduling, alternation, AND, lora tags, chunking, encoding."""

from __future__ import annotations

import pytest
import torch

from loracam.errors import LoracamError
from loracam.prompts import (
    Chunker, LoraRef, PromptEncoder, extract_networks, inspect_prompt, parse_attention, prompt_schedule,
    split_and, text_at_step,
)
from rounding import U, assert_same_up_to_rounding, gamma, in_float64, rounding


@pytest.mark.parametrize("text,expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.1 * 1.1 * 1.3), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),
    ("((x))", [("x", 1.1 * 1.1)]),
    ("(x:1.4)", [("x", 1.4)]),
    ("(x: 0.5 )", [("x", 0.5)]),
    ("[x]", [("x", 1 / 1.1)]),
    ("a) b]", [("a) b]", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("", [("", 1.0)]),
])
def test_attention(text, expected):
    got = parse_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@pytest.mark.parametrize("prompt,expected", [
    # A1111's own examples (10 steps)
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    # [from::when] removes after; fractions need a dot; numbers without one are steps
    ("a [b::0.5] c", [(5, "a b c"), (10, "a  c")]),
    ("[red:blue:0.25] dress", [(2, "red dress"), (10, "blue dress")]),
    ("[red:blue:7] dress", [(7, "red dress"), (10, "blue dress")]),
    ("[red:blue:25] dress", [(10, "red dress")]),
    ("[red:blue:0] dress", [(10, "blue dress")]),
    # a "|" outside brackets makes the prompt unparseable: it is used literally
    ("a | b [c:2]", [(10, "a | b [c:2]")]),
])
def test_schedule(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_schedule_switches_at_the_right_sampling_step():
    sched = prompt_schedule("[cat:dog:10]", 20)
    used = [sched[text_at_step(sched, i)][1] for i in range(20)]
    # A1111 compares the 0-based step with the end step, so "cat" covers steps 0..10
    assert used == ["cat"] * 11 + ["dog"] * 9


@pytest.mark.parametrize("prompt,expected", [
    ("a cat", [("a cat", 1.0)]),
    ("a cat AND a dog", [("a cat", 1.0), (" a dog", 1.0)]),
    ("a cat :1.5 AND a dog: 0.4", [("a cat", 1.5), (" a dog", 0.4)]),
    ("BANDANA", [("BANDANA", 1.0)]),
])
def test_and(prompt, expected):
    assert split_and(prompt) == expected


@pytest.mark.parametrize("prompt,text,loras", [
    ("a <lora:x>", "a ", [LoraRef("x", 1.0, 1.0)]),
    ("<lora:x:0.6> a", " a", [LoraRef("x", 0.6, 0.6)]),
    ("a <lora:x:0.6:0.3>", "a ", [LoraRef("x", 0.6, 0.3)]),
    ("<lora:x:te=0.5>", "", [LoraRef("x", 0.5, 0.5)]),
    ("<lora:x:unet=0.2>", "", [LoraRef("x", 1.0, 0.2)]),
    ("<lora:x:0.8:unet=0.2>", "", [LoraRef("x", 0.8, 0.2)]),
    ("<lora:x:te=0.3:unet=0.7>", "", [LoraRef("x", 0.3, 0.7)]),
    ("<lyco:y:0.5> <lora:z:1>", " ", [LoraRef("y", 0.5, 0.5), LoraRef("z", 1.0, 1.0)]),
])
def test_lora_tags(prompt, text, loras):
    got_text, got, others = extract_networks(prompt)
    assert (got_text, got, others) == (text, loras, [])


def test_other_networks_are_removed_and_reported():
    text, loras, others = extract_networks("a <hypernet:h:1> b")
    assert (text, loras, others) == ("a  b", [], ["<hypernet:h:1>"])


@pytest.mark.parametrize("tag", ["<lora:x:abc>", "<lora:x:0.5:nope>", "<lora:x:foo=1>", "<lora::1>"])
def test_bad_lora_tags_are_clear_errors(tag):
    with pytest.raises(LoracamError, match="lora"):
        extract_networks(f"a {tag}")


# --- chunking -------------------------------------------------------------------------------


def test_short_prompt_is_one_chunk_like_the_tokenizer(tokenizer):
    chunks, count = Chunker(tokenizer).chunks("a photo of a cat")
    assert count == 5 and len(chunks) == 1
    ref = tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert list(chunks[0].tokens) == ref  # BOS + tokens + EOS padding, as diffusers pads


def test_long_prompt_splits_at_75(tokenizer):
    chunks, count = Chunker(tokenizer).chunks(" ".join(["cat"] * 80))
    assert count == 80 and len(chunks) == 2
    assert all(len(c.tokens) == 77 for c in chunks)
    assert chunks[1].tokens[1:7] == (2368,) * 5 + (49407,)


def test_comma_backtrack_moves_the_last_tag(tokenizer):
    # 70 words, a comma, then 10 more: the chunk fills after 4 of them, and since the comma is within
    # 20 tokens the 4 move to the next chunk with the rest.
    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks, count = Chunker(tokenizer).chunks(text)
    dog = tokenizer("dog", add_special_tokens=False).input_ids[0]
    assert len(chunks) == 2
    assert chunks[0].tokens[71] == 267 and chunks[0].tokens[72] == tokenizer.eos_token_id
    assert chunks[1].tokens[1:11] == (dog,) * 10
    assert count == 75 + 10  # A1111 counts the closed chunk as a full 75


def test_comma_far_back_does_not_move(tokenizer):
    text = "cat, " + " ".join(["dog"] * 80)
    chunks, count = Chunker(tokenizer).chunks(text)
    assert count == 82 and chunks[0].tokens[75] != tokenizer.eos_token_id


def test_break_pads_the_chunk(tokenizer):
    chunks, count = Chunker(tokenizer).chunks("red dress BREAK white shoes")
    assert len(chunks) == 2 and count == 77
    assert chunks[0].tokens[3:] == (tokenizer.eos_token_id,) * 74


def test_empty_prompt_is_one_empty_chunk(tokenizer):
    ch = Chunker(tokenizer)
    chunks, count = ch.chunks("")
    assert count == 0 and chunks == [ch.empty_chunk()]


def test_emphasis_weights_follow_tokens(tokenizer):
    chunks, _ = Chunker(tokenizer).chunks("a (red:1.5) [dress]")
    assert chunks[0].weights[:5] == pytest.approx((1.0, 1.0, 1.5, 1 / 1.1, 1.0))


# --- the inspector behind `loracam prompt --json` --------------------------------------------


def test_inspect_prompt_report(tokenizer):
    r = inspect_prompt("1girl, (red dress:1.2) <lora:testdress:0.4> [cat:dog:0.5]", tokenizer, steps=20)
    assert r["text"] == "1girl, (red dress:1.2)  [cat:dog:0.5]"
    assert r["loras"] == [{"name": "testdress", "te": 0.4, "unet": 0.4}]
    assert r["attention"][1] == ["red dress", 1.2]
    assert r["schedule"] == [[10, "1girl, (red dress:1.2)  cat"], [20, "1girl, (red dress:1.2)  dog"]]
    n = len(tokenizer("1girl, red dress  cat", add_special_tokens=False).input_ids)
    assert r["tokens"] == n and r["chunks"] == 1


def test_inspect_counts_the_longest_and_part(tokenizer):
    r = inspect_prompt("cat AND " + " ".join(["dog"] * 80), tokenizer)
    assert r["tokens"] == 80 and r["chunks"] == 2


# --- encoding ----------------------------------------------------------------------------------


def test_plain_prompt_encodes_like_diffusers(tiny):
    enc = PromptEncoder(tiny.tokenizer, tiny.text_encoder)
    [mine] = enc.encode(["a photo of a cat"])
    ids = tiny.tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = tiny.text_encoder(ids)[0][0]
    assert torch.equal(mine, ref)


def test_emphasis_restores_the_mean(tiny):
    import copy

    te = copy.deepcopy(tiny.text_encoder)
    with torch.no_grad():  # an untrained LayerNorm has bias 0 and a zero mean; give it a real one
        te.final_layer_norm.bias.fill_(0.25)
    enc = PromptEncoder(tiny.tokenizer, te)
    with torch.no_grad():
        plain, weighted = enc.encode(["a red dress", "a (red:1.5) dress"])
    w = torch.ones(77, 1)
    w[2] = 1.5
    k = plain.mean() / (plain * w).mean()
    # The same products; only the two means (n = 77 x 32 terms each, summed in some order) may round otherwise:
    # each within gamma_n x mean|x| of its exact value (tests/rounding.py), relative to the mean itself.
    n = plain.numel()
    rel = gamma(n) * float(plain.abs().mean() / plain.mean().abs() + (plain * w).abs().mean() / (plain * w).mean().abs())
    expected = plain * w * k
    assert ((weighted - expected).abs() <= expected.abs() * (2 * rel + 4 * U)).all()
    assert weighted.mean().item() == pytest.approx(plain.mean().item(), rel=3 * rel + 4 * U)
    assert not torch.allclose(weighted, plain, atol=1e-3)


def test_emphasis_on_a_zero_mean_encoder_stays_finite(tiny):
    with torch.no_grad():
        [z] = PromptEncoder(tiny.tokenizer, tiny.text_encoder).encode(["a (red:1.5) dress"])
    assert torch.isfinite(z).all()


def test_clip_skip_uses_an_earlier_layer(tiny):
    with torch.no_grad():
        [z2] = PromptEncoder(tiny.tokenizer, tiny.text_encoder, clip_skip=2).encode(["a cat"])
        ids = tiny.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        out = tiny.text_encoder(ids, output_hidden_states=True)
        ref = tiny.text_encoder.final_layer_norm(out.hidden_states[-2])[0]
    assert torch.equal(z2, ref)


def test_long_prompt_concatenates_chunks_and_batches_equal_singles(tiny):
    enc = PromptEncoder(tiny.tokenizer, tiny.text_encoder)
    long = " ".join(["cat"] * 80)
    with torch.no_grad():
        both = enc.encode([long, "a (dog:1.3)"])
        alone = [enc.encode([long])[0], enc.encode(["a (dog:1.3)"])[0]]
        exact = [PromptEncoder(tiny.tokenizer, in_float64(tiny.text_encoder)).encode([p])[0] for p in (long, "a (dog:1.3)")]
    assert both[0].shape == (154, 32) and both[1].shape == (77, 32)
    for a, b, e in zip(both, alone, exact):
        assert e.dtype == torch.float64
        assert_same_up_to_rounding(a, b, rounding(b, e), "batched vs alone")  # another GEMM blocking
