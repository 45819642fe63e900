"""sd-scripts' buckets and step arithmetic, table-driven (interop.md §2-4)."""

from __future__ import annotations

import sys

import pytest

from loracam.data.buckets import Bucketing, bucket_resolutions
from loracam.data.kohya import bucket_size, dataset_toml, parse_subset_dir
from loracam.data.steps import Item, balance_reg, plan_steps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_bucket_counts_match_sd_scripts():
    r512 = bucket_resolutions((512, 512))
    r768 = bucket_resolutions((512, 768))
    assert len(r512) == 17 and (512, 512) in r512 and (256, 1024) in r512 and (1024, 256) in r512
    assert len(r768) == 19 and (512, 768) in r768 and (576, 576) in r768 and (768, 512) in r768
    assert r768 == sorted(r768)


@pytest.mark.parametrize("size,bucket,resized", [
    ((512, 768), (512, 768), (512, 768)),        # exact size match
    ((1000, 1500), (512, 768), (512, 768)),      # same aspect, scaled down
    ((800, 600), (704, 512), (704, 528)),        # landscape: covers the bucket, then centre-cropped
    ((300, 2000), (256, 1024), (256, 1707)),     # very tall: the narrowest bucket, height cropped
])
def test_bucket_selection(size, bucket, resized):
    assert Bucketing((512, 768)).select(*size) == (bucket, resized)


@pytest.mark.parametrize("size,bucket,resized", [
    ((256, 384), (256, 384), (256, 384)),        # the NGA guide's shoe crops stay 256x384
    ((300, 450), (256, 448), (300, 450)),        # small: own size cut to multiples of 64
    ((1000, 1500), (512, 768), (512, 768)),      # over the area: shrunk onto it
    ((1024, 1024), (576, 576), (576, 576)),      # over the area, square: sqrt(512*768)=627 -> 576
])
def test_bucket_no_upscale(size, bucket, resized):
    assert Bucketing((512, 768), no_upscale=True).select(*size) == (bucket, resized)


@pytest.mark.parametrize("crop,expected", [
    ((300, 450), (256, 384)), ((1000, 1500), (512, 768)), ((400, 600), (384, 576)), ((100, 150), (64, 128)),
])
def test_crop_sizes_keep_the_aspect_in_64_steps(crop, expected):
    assert bucket_size(crop, (512, 768)) == expected


def items(n, repeats, bucket=(512, 512), reg=False, prefix="i"):
    return [Item(f"{prefix}{k:03d}", bucket, repeats, reg) for k in range(n)]


@pytest.mark.parametrize("name,dataset,kw,steps,reg_samples", [
    ("interop 20x10 batch 2", items(20, 10), dict(batch_size=2, epochs=10), 1000, 0),
    ("+50 reg 1_woman", items(20, 10) + items(50, 1, reg=True, prefix="r"), dict(batch_size=2, epochs=10), 2000, 200),
    ("NGA 20x20x10", items(20, 20), dict(batch_size=1, epochs=10), 4000, 0),
    ("NGA + 20 reg", items(20, 20) + items(20, 1, reg=True, prefix="r"), dict(batch_size=1, epochs=10), 8000, 400),
    ("reg undersupply", items(10, 10) + items(3, 1, reg=True, prefix="r"), dict(batch_size=1, epochs=1), 200, 100),
    ("reg oversupply", items(5, 2) + items(30, 1, reg=True, prefix="r"), dict(batch_size=1, epochs=1), 20, 10),
    ("reg repeats overshoot", items(10, 1) + items(8, 3, reg=True, prefix="r"), dict(batch_size=1, epochs=1), 22, 12),
    ("two buckets, batch 4",
     items(3, 5, (512, 768)) + items(2, 5, (768, 512), prefix="j"), dict(batch_size=4, epochs=1), 7, 0),
    ("grad accum 3", items(3, 5, (512, 768)) + items(2, 5, (768, 512), prefix="j"),
     dict(batch_size=4, epochs=2, grad_accum=3), 6, 0),
    ("max steps only", items(20, 10), dict(batch_size=2), 1600, 0),
])
def test_step_counts(name, dataset, kw, steps, reg_samples):
    plan = plan_steps(dataset, **kw)
    assert plan.total_steps == steps, name
    assert plan.reg_samples == reg_samples, name


def test_reg_balancing_details():
    train = items(10, 10)
    assert balance_reg(train, items(3, 1, reg=True, prefix="r")) == {"r000": 34, "r001": 33, "r002": 33}
    used = balance_reg(items(5, 2), items(30, 1, reg=True, prefix="r"))
    assert list(used) == [f"r{k:03d}" for k in range(10)]  # sorted order; images past the target unused
    plan = plan_steps(items(5, 2) + items(30, 1, reg=True, prefix="r"), epochs=1)
    assert plan.unused_reg == 20
    assert plan_steps(items(20, 10), epochs=1).summary(20, "10", 1) == "20 images x 10 repeats, batch 1, 1 epochs = 200 steps"
    assert "+ 20 reg (balanced to 200)" in plan_steps(items(20, 10) + items(20, 1, reg=True, prefix="r"), epochs=10).summary(20, "10", 1)


@pytest.mark.parametrize("name,parsed", [
    ("10_sks woman", (10, "sks woman")), ("5_testdress", (5, "testdress")), ("1_a_b c", (1, "a_b c")),
    ("0_zero", None), ("abc_def", None), ("10", (10, "")),
])
def test_subset_folder_names(name, parsed):
    assert parse_subset_dir(name) == parsed


def test_dataset_toml_is_valid_kohya_config(tmp_path):
    text = dataset_toml(tmp_path / "ds", [("img/10_sks woman", 10, "sks woman", False), ("reg/1_woman", 1, "woman", True)],
                        (512, 768), 2)
    cfg = tomllib.loads(text)
    assert cfg["general"]["caption_extension"] == ".txt" and cfg["general"]["bucket_no_upscale"] is True
    ds = cfg["datasets"][0]
    assert ds["resolution"] == [512, 768] and ds["batch_size"] == 2
    assert ds["subsets"][0] == {"image_dir": str(tmp_path / "ds" / "img/10_sks woman"), "num_repeats": 10,
                                "class_tokens": "sks woman"}
    assert ds["subsets"][1]["is_reg"] is True


def test_no_upscale_never_makes_an_empty_bucket():
    # at 64x64, a 1:2 image rounds to a 0-wide bucket in sd-scripts (which then crashes); one step is the
    # smallest side, which keeps the aspect exactly
    assert Bucketing((64, 64), no_upscale=True).select(64, 128) == ((64, 128), (64, 128))
