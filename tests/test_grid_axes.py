"""X/Y/Z axes: A1111 value syntax, every axis type applied to a cell, and every bad input's message."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from loracam.errors import LoracamError
from loracam.generate.request import GenRequest
from loracam.grid.axes import AXIS_TYPES, MAX_ORDER_PHRASES, Cell, parse_axis, seed_row
from loracam.grid.values import parse_values
from loracam.prompts import LoraRef

BASE = Cell(
    prompt="1girl, red dress, white shoes <lora:testdress:0.4> <lora:myshoes:0.8:0.5>",
    negative="lowres, red dress <lora:badhands:1>",
    seed=1234, cfg=7.0, steps=20, sampler="DPM++ 2M", schedule="Karras", width=512, height=768,
)


# --- value syntax --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,kind,expected", [
    # interop.md §9, verbatim
    ("1-5", "int", [1, 2, 3, 4, 5]),
    ("1-5 (+2)", "int", [1, 3, 5]),
    ("10-1 (-3)", "int", [10, 7, 4, 1]),
    ("1-10 [5]", "int", [1, 3, 5, 7, 10]),
    ("0.2-0.6 (+0.1)", "float", [0.2, 0.3, 0.4, 0.5, 0.6]),
    ("0.2-0.6 [5]", "float", [0.2, 0.3, 0.4, 0.5, 0.6]),
    # plain values, negatives, mixtures, spacing
    ("-1", "int", [-1]),
    ("-1, 5, 7", "int", [-1, 5, 7]),
    ("1, 3-5, 9", "int", [1, 3, 4, 5, 9]),
    ("-5--1", "int", [-5, -4, -3, -2, -1]),
    (" 1 - 5 ( +2 ) ", "int", [1, 3, 5]),
    ("1-5 (2)", "int", [1, 3, 5]),
    ("1,,2, ,3", "int", [1, 2, 3]),
    ("1, 2\n3", "int", [1, 2, 3]),
    ("7", "float", [7.0]),
    ("-0.5, 1e-3", "float", [-0.5, 0.001]),
    # ranges: A1111's rules and loracam's documented departures
    ("1-6 (+2)", "int", [1, 3, 5]),            # never past the end (A1111 gives 1,3,5,7)
    ("5-1", "int", [5, 4, 3, 2, 1]),           # counts down without a step (A1111 gives nothing)
    ("1-3 [5]", "int", [1, 1, 2, 2, 3]),       # duplicates kept, as in A1111
    ("-10--1 [5]", "int", [-10, -7, -5, -3, -1]),  # int() truncates toward zero
    ("3-3", "int", [3]),
    ("1-10 [1]", "int", [1]),
    ("5-9", "float", [5.0, 6.0, 7.0, 8.0, 9.0]),  # float ranges step by 1 by default, as A1111
    ("0.1-0.3 (+0.1)", "float", [0.1, 0.2, 0.3]),
    ("0.6-0.2 (-0.1)", "float", [0.6, 0.5, 0.4, 0.3, 0.2]),
    ("-1-1 (+0.5)", "float", [-1.0, -0.5, 0.0, 0.5, 1.0]),
    ("0-1 (+0.25)", "float", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0-1 [4]", "float", [0.0, 0.333333, 0.666667, 1.0]),
    (".5-1.5", "float", [0.5, 1.5]),
    # strings: CSV with quotes
    ('Euler a, "a, b" ,DPM++ 2M', "str", ["Euler a", "a, b", "DPM++ 2M"]),
    ("1-5", "str", ["1-5"]),
    ("0.4>, 0.5>", "str", ["0.4>", "0.5>"]),
])
def test_values(text, kind, expected):
    assert parse_values(text, kind) == expected


def test_float_steps_do_not_accumulate():
    values = parse_values("0-3 (+0.1)", "float")
    assert len(values) == 31 and values[-1] == 3.0
    assert values == [round(i / 10, 1) for i in range(31)]


@pytest.mark.parametrize("start,end,n", [(1, 10, 5), (0, 6, 10), (-10, -1, 5), (3, 17, 6), (0, 100, 7)])
def test_counted_int_ranges_truncate_numpy_linspace_like_a1111(start, end, n):
    assert parse_values(f"{start}-{end} [{n}]", "int") == [int(x) for x in np.linspace(start, end, n).tolist()]


def test_counted_int_range_is_truncation_not_rounding():
    linspace = np.linspace(1, 10, 5).tolist()
    assert linspace == [1.0, 3.25, 5.5, 7.75, 10.0]
    assert [round(x) for x in linspace] == [1, 3, 6, 8, 10]  # what rounding would give instead
    assert parse_values("1-10 [5]", "int") == [1, 3, 5, 7, 10]


@pytest.mark.parametrize("text,kind,message", [
    ("1-", "int", "'1-' is not a whole number or a range"),
    ("a-b", "int", "'a-b' is not a whole number or a range"),
    ("1-5 (+0)", "int", "'1-5 (+0)' has a step of 0"),
    ("1-5 [0]", "int", "'1-5 [0]' asks for 0 values; ask for at least [1]"),
    ("1-5 [-2]", "int", "asks for -2 values"),
    ("1-5 (-1)", "int", "'1-5 (-1)' steps by -1, away from its end 5"),
    ("1.5", "int", "'1.5' is not a whole number or a range"),
    ("1-5 (+0.5)", "int", "'1-5 (+0.5)' is not a whole number or a range"),
    ("3, x", "int", "'x' is not a whole number"),
    ("abc", "float", "'abc' is not a number or a range"),
    ("nan", "float", "'nan' is not a number"),
    ("0.2-0.6 (+0)", "float", "has a step of 0"),
    ("0.2-0.6 (-0.1)", "float", "away from its end 0.6"),
    ("0.2-", "float", "'0.2-' is not a number or a range"),
])
def test_value_errors_quote_the_item_and_show_the_forms(text, kind, message):
    with pytest.raises(LoracamError) as e:
        parse_values(text, kind)
    assert message in str(e.value)
    assert f"Valid forms: values like {'1, 3, 5' if kind == 'int' else '0.5, 0.7'}" in str(e.value)


@pytest.mark.parametrize("text,kind", [("", "int"), ("  ", "float"), (" , ,", "str")])
def test_empty_value_list_is_an_error(text, kind):
    with pytest.raises(LoracamError, match="no values given"):
        parse_values(text, kind)


def test_unknown_value_kind_is_a_programming_error():
    with pytest.raises(ValueError, match="value kind"):
        parse_values("1", "bool")


# --- axis types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,values,pick,changes,legend", [
    ("Seed", "-1, 42", 0, {"seed": -1}, "Seed: -1"),
    ("seed", "1-3", 2, {"seed": 3}, "Seed: 3"),
    ("Steps", "10-30 (+10)", 1, {"steps": 20}, "Steps: 20"),
    ("CFG Scale", "5-9", 2, {"cfg": 7.0}, "CFG Scale: 7"),
    ("cfg", "4.5, 6", 0, {"cfg": 4.5}, "CFG Scale: 4.5"),
    ("Sampler", "Euler a", 0, {"sampler": "Euler a", "schedule": "Karras"}, "Euler a"),  # keeps the schedule
    ("sampler", "dpm++ 2m sde exponential", 0, {"sampler": "DPM++ 2M SDE", "schedule": "Exponential"},
     "DPM++ 2M SDE Exponential"),
    ("Sampler", "k_euler", 0, {"sampler": "Euler", "schedule": "Karras"}, "Euler"),
    ("Schedule type", "karras, SGM uniform", 1, {"schedule": "SGM Uniform"}, "Schedule type: SGM Uniform"),
    ("Clip skip", "1-2", 1, {"clip_skip": 2}, "Clip skip: 2"),
    ("Size", "512x512, 768 X 512", 1, {"width": 768, "height": 512}, "Size: 768x512"),
    ("Denoising", "0.2-0.6 [5]", 1, {"denoising": 0.3}, "Denoising: 0.3"),
    ("Checkpoint name", "models/chilloutmix_ni.safetensors, toy", 0,
     {"base": "models/chilloutmix_ni.safetensors"}, "chilloutmix_ni"),
    ("checkpoint", "toy", 0, {"base": "toy"}, "toy"),
])
def test_field_axes(kind, values, pick, changes, legend):
    axis = parse_axis(kind, values, BASE)
    value = axis.values[pick]
    cell = axis.apply(BASE, value)
    assert {k: getattr(cell, k) for k in changes} == changes
    untouched = {k: v for k, v in vars(BASE).items() if k not in changes}
    assert {k: getattr(cell, k) for k in untouched} == untouched
    assert axis.format(value) == legend


@pytest.mark.parametrize("written,values,canonical", [
    ("CFG Scale", "7", "CFG Scale"), ("cfg", "7", "CFG Scale"), ("CFG_SCALE", "7", "CFG Scale"),
    ("seed", "1", "Seed"), ("STEPS", "20", "Steps"), ("sampler", "Euler", "Sampler"),
    ("scheduler", "Karras", "Schedule type"), ("clip_skip", "2", "Clip skip"),
    ("Denoising strength", "0.5", "Denoising"), ("ckpt", "toy", "Checkpoint name"), ("s/r", "red", "Prompt S/R"),
    ("prompt  order", "red dress, 1girl", "Prompt order"), ("resolution", "512x512", "Size"),
    ("lora:testdress", "0.5", "lora:testdress"), ("LoRA:testdress.TE", "0.5", "lora:testdress.te"),
    ("lora:myshoes.unet", "0.5", "lora:myshoes.unet"), ("addnet weight 1", "0.5", "AddNet Weight 1"),
    ("AddNet UNet Weight 2", "0.5", "AddNet UNet Weight 2"), ("addnet tenc weight 2", "0.5", "AddNet TEnc Weight 2"),
])
def test_axis_names_are_case_insensitive_with_aliases(written, values, canonical):
    assert parse_axis(written, values, BASE).kind == canonical


@pytest.mark.parametrize("kind,value,prompt,negative,loras,legend", [
    ("lora:testdress", 0.6,
     "1girl, red dress, white shoes <lora:testdress:0.6> <lora:myshoes:0.8:0.5>", BASE.negative,
     [("testdress", 0.6, 0.6), ("myshoes", 0.8, 0.5), ("badhands", 1, 1)], "testdress weight: 0.6"),
    ("lora:TestDress.te", 0.9,
     "1girl, red dress, white shoes <lora:testdress:0.9:0.4> <lora:myshoes:0.8:0.5>", BASE.negative,
     [("testdress", 0.9, 0.4), ("myshoes", 0.8, 0.5), ("badhands", 1, 1)], "testdress TEnc weight: 0.9"),
    ("lora:myshoes.unet", 0.2,
     "1girl, red dress, white shoes <lora:testdress:0.4> <lora:myshoes:0.8:0.2>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 0.8, 0.2), ("badhands", 1, 1)], "myshoes UNet weight: 0.2"),
    ("lora:myshoes", 1.0,  # equal parts collapse to one weight, as A1111 writes it
     "1girl, red dress, white shoes <lora:testdress:0.4> <lora:myshoes:1>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 1, 1), ("badhands", 1, 1)], "myshoes weight: 1"),
    ("lora:badhands", 0.5,  # a LoRA of the negative prompt is changed where it is
     BASE.prompt, "lowres, red dress <lora:badhands:0.5>",
     [("testdress", 0.4, 0.4), ("myshoes", 0.8, 0.5), ("badhands", 0.5, 0.5)], "badhands weight: 0.5"),
    # missing LoRAs are added at the end of the prompt
    ("lora:sks", 0.7, BASE.prompt + " <lora:sks:0.7>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 0.8, 0.5), ("sks", 0.7, 0.7), ("badhands", 1, 1)], "sks weight: 0.7"),
    ("lora:sks.te", 0.7, BASE.prompt + " <lora:sks:0.7:0>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 0.8, 0.5), ("sks", 0.7, 0), ("badhands", 1, 1)], "sks TEnc weight: 0.7"),
    ("lora:sks.unet", 0.7, BASE.prompt + " <lora:sks:0:0.7>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 0.8, 0.5), ("sks", 0, 0.7), ("badhands", 1, 1)], "sks UNet weight: 0.7"),
    # AddNet axes address the Nth tag of the prompt
    ("AddNet Weight 1", 0.3,
     "1girl, red dress, white shoes <lora:testdress:0.3> <lora:myshoes:0.8:0.5>", BASE.negative,
     [("testdress", 0.3, 0.3), ("myshoes", 0.8, 0.5), ("badhands", 1, 1)], "testdress weight: 0.3"),
    ("AddNet UNet Weight 2", 0.3,
     "1girl, red dress, white shoes <lora:testdress:0.4> <lora:myshoes:0.8:0.3>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 0.8, 0.3), ("badhands", 1, 1)], "myshoes UNet weight: 0.3"),
    ("AddNet TEnc Weight 2", 0.3,
     "1girl, red dress, white shoes <lora:testdress:0.4> <lora:myshoes:0.3:0.5>", BASE.negative,
     [("testdress", 0.4, 0.4), ("myshoes", 0.3, 0.5), ("badhands", 1, 1)], "myshoes TEnc weight: 0.3"),
])
def test_lora_axes_rewrite_the_tag_and_the_ref(kind, value, prompt, negative, loras, legend):
    axis = parse_axis(kind, str(value), BASE)
    cell = axis.apply(BASE, axis.values[0])
    assert cell.prompt == prompt and cell.negative == negative
    assert cell.loras == tuple(LoraRef(n, te, unet) for n, te, unet in loras)
    assert axis.format(axis.values[0]) == legend
    assert Cell(cell.prompt, cell.negative, 1, 7, 20, "Euler", "Automatic", 512, 512).loras == cell.loras


def test_lora_axis_sweep_over_a_range():
    axis = parse_axis("lora:testdress", "0.2-0.6 (+0.2)", BASE)
    cells = [axis.apply(BASE, v) for v in axis.values]
    assert [c.loras[0].te for c in cells] == [0.2, 0.4, 0.6]
    assert "<lora:testdress:0.2>" in cells[0].prompt and "<lora:testdress:0.6>" in cells[2].prompt


def test_lora_axis_keeps_the_tag_kind_and_other_options():
    cell = Cell("a <lyco:foo:0.5:dyn=8> b <lora:bar:te=0.2:unet=0.9>", "", 1, 7, 20, "Euler", "Automatic", 512, 512)
    cell = parse_axis("lora:foo", "0.7", cell).apply(cell, 0.7)
    cell = parse_axis("lora:bar.te", "0.3", cell).apply(cell, 0.3)
    assert cell.prompt == "a <lyco:foo:0.7:dyn=8> b <lora:bar:0.3:0.9>"
    assert cell.loras == (LoraRef("foo", 0.7, 0.7), LoraRef("bar", 0.3, 0.9))


def test_lora_axis_rewrites_every_tag_of_that_lora():
    cell = Cell("<lora:x:1> a AND b <lora:x:1>", "", 1, 7, 20, "Euler", "Automatic", 512, 512)
    out = parse_axis("lora:x", "0.5", cell).apply(cell, 0.5)
    assert out.prompt == "<lora:x:0.5> a AND b <lora:x:0.5>"


def test_added_lora_in_an_empty_prompt():
    cell = Cell("", "", 1, 7, 20, "Euler", "Automatic", 512, 512)
    assert parse_axis("lora:sks", "1", cell).apply(cell, 1.0).prompt == "<lora:sks:1>"


def test_prompt_search_replace_in_prompt_and_negative():
    axis = parse_axis("Prompt S/R", "red dress, blue dress, green dress", BASE)
    assert axis.values == ("red dress", "blue dress", "green dress")
    cell = axis.apply(BASE, "blue dress")
    assert cell.prompt == BASE.prompt.replace("red dress", "blue dress")
    assert cell.negative == "lowres, blue dress <lora:badhands:1>"
    assert axis.apply(BASE, "red dress") == BASE
    assert axis.format("blue dress") == "blue dress"  # A1111 shows S/R values bare


def test_prompt_search_replace_found_in_negative_only():
    cell = parse_axis("Prompt S/R", "lowres, blurry", BASE).apply(BASE, "blurry")
    assert cell.negative.startswith("blurry, red dress") and cell.prompt == BASE.prompt


def test_prompt_search_replace_sweeps_a_lora_weight():  # interop.md §9, the usual way in A1111
    axis = parse_axis("Prompt S/R", "0.4>,0.5>,0.6>", BASE)
    cells = [axis.apply(BASE, v) for v in axis.values]
    assert [c.loras[0] for c in cells] == [LoraRef("testdress", w, w) for w in (0.4, 0.5, 0.6)]
    assert "<lora:testdress:0.6>" in cells[2].prompt


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_prompt_order_makes_every_permutation(n):
    phrases = ["1girl", "red dress", "white shoes", "lowres"][:n]
    cell = Cell(", ".join(phrases) + " <lora:x:1>", "", 1, 7, 20, "Euler", "Automatic", 512, 512)
    axis = parse_axis("Prompt order", ", ".join(phrases), cell)
    assert len(axis.values) == math.factorial(n) == len(set(axis.values))
    prompts = {axis.apply(cell, order).prompt for order in axis.values}
    assert prompts == {", ".join(order) + " <lora:x:1>" for order in axis.values}


def test_prompt_order_fills_the_phrase_slots_in_the_given_order():
    axis = parse_axis("Prompt order", "white shoes, 1girl", BASE)
    assert axis.values == (("white shoes", "1girl"), ("1girl", "white shoes"))
    cell = axis.apply(BASE, ("white shoes", "1girl"))
    assert cell.prompt.startswith("white shoes, red dress, 1girl <lora:testdress:0.4>")
    assert axis.format(("white shoes", "1girl")) == "white shoes, 1girl"


def test_axes_compose_on_one_cell():
    sr = parse_axis("Prompt S/R", "red, blue", BASE)
    lora = parse_axis("lora:testdress", "0.8", BASE)
    steps = parse_axis("steps", "30", BASE)
    cell = steps.apply(lora.apply(sr.apply(BASE, "blue"), 0.8), 30)
    assert cell.prompt == "1girl, blue dress, white shoes <lora:testdress:0.8> <lora:myshoes:0.8:0.5>"
    assert cell.loras[0] == LoraRef("testdress", 0.8, 0.8) and cell.steps == 30


def test_seed_row_draws_distinct_seeds_reproducibly():
    axis = seed_row(5, random.Random(7))
    assert axis.kind == "Seed" and len(set(axis.values)) == 5
    assert all(0 <= s < 2**32 - 1 for s in axis.values)
    assert axis == seed_row(5, random.Random(7))
    assert axis.apply(BASE, axis.values[3]).seed == axis.values[3]
    assert axis.format(axis.values[0]) == f"Seed: {axis.values[0]}"


def test_cell_from_request_reads_the_tags():
    req = GenRequest(prompt="a <lora:x:0.5>", negative="b", sampler="DPM++ 2M Karras", width=512, height=768, seed=3)
    cell = Cell.from_request(req)
    assert (cell.sampler, cell.schedule, cell.width, cell.height, cell.seed) == ("DPM++ 2M", "Karras", 512, 768, 3)
    assert cell.loras == (LoraRef("x", 0.5, 0.5),) and cell.denoising is None


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,values,message", [
    ("Seed", "-2", "Seed axis: seed -2 is out of range; use -1 (random)"),
    ("Seed", "4294967296", "seed 4294967296 is out of range"),
    ("Steps", "0-2", "Steps axis: steps counts from 1 (got 0)"),
    ("Clip skip", "0", "Clip skip axis: clip skip counts from 1"),
    ("CFG Scale", "high", "CFG Scale axis: 'high' is not a number or a range"),
    ("cfg", "", "CFG Scale axis: no values given"),
    ("Sampler", "Euler b", "Sampler axis: unknown sampler 'Euler b'; valid samplers: DPM++ 2M"),
    ("Schedule type", "linear", "Schedule type axis: unknown schedule type 'linear'; valid types: Automatic"),
    ("Size", "512", "Size axis: size '512' is not WIDTHxHEIGHT; write e.g. 512x768"),
    ("Size", "500x768", "width 500 in size '500x768' is not a positive multiple of 8; try 496"),
    ("Denoising", "0.5, 1.5", "Denoising axis: denoising strength must be between 0 and 1 (got 1.5)"),
    ("Prompt S/R", "blue, green", "Prompt S/R axis: the first value 'blue' is the text to replace"),
    ("Prompt S/R", "0.4>, zz>", "bad weight 'zz' in <lora:testdress:zz>"),
    ("Prompt order", "1girl, cat", "Prompt order axis: 'cat' is not in the prompt"),
    ("Prompt order", "red dress, dress", "the phrases 'red dress' and 'dress' overlap"),
    ("Prompt order", "1girl, 1girl", "'1girl' listed twice"),
    ("Prompt order", ", ".join("abcdefgh"), f"8 phrases make 40,320 orders; list at most {MAX_ORDER_PHRASES}"),
    ("lora:testdress", "strong", "lora:testdress axis: 'strong' is not a number"),
    ("lora: ", "1", "lora: axis: a LoRA axis names no LoRA; write lora:NAME"),
    ("AddNet Weight 3", "0.5", "AddNet Weight 3 axis: AddNet axes address the Nth <lora:...> tag of the prompt, "
                               "and the prompt has 2, not 3"),
    ("AddNet TEnc Weight 0", "0.5", "count LoRA tags from 1"),
])
def test_axis_errors(kind, values, message):
    with pytest.raises(LoracamError) as e:
        parse_axis(kind, values, BASE)
    assert message in str(e.value)


def test_unknown_axis_type_lists_every_type():
    with pytest.raises(LoracamError) as e:
        parse_axis("Refiner checkpoint", "1", BASE)  # an A1111 axis loracam does not have
    text = str(e.value)
    assert text.startswith("unknown axis type 'Refiner checkpoint'; valid types")
    assert all(name in text for name in AXIS_TYPES)
    assert "cfg" in text  # and the short names


def test_addnet_axis_fails_on_a_cell_that_lost_its_tag():
    axis = parse_axis("AddNet Weight 2", "0.5", BASE)
    bare = Cell("1girl <lora:testdress:1>", "", 1, 7, 20, "Euler", "Automatic", 512, 512)
    with pytest.raises(LoracamError, match="the prompt has 1, not 2"):
        axis.apply(bare, 0.5)
