"""The training data of a LoRA run: sd-scripts' epochs, reg balancing, buckets, captions, flips, latents."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from loracam.data.buckets import Bucketing
from loracam.data.steps import Item, plan_steps
from loracam.errors import LoracamError
from loracam.train.data import DataConfig, TrainData
from rounding import assert_same_up_to_rounding, in_float64, rounding


def write_image(path: Path, size: tuple[int, int], seed: int = 0, caption: str | None = None,
                ext: str = ".txt") -> Path:
    """A noise image (so resamplers differ) with an optional caption sidecar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    if caption is not None:
        path.with_suffix(ext).write_text(caption + "\n", encoding="utf-8")
    return path


TRAIN_SIZES = [(256, 384), (512, 512), (300, 450), (640, 480)]


def mixed_dataset(root: Path, n_reg: int, reg_repeats: int, train_repeats: int = 3) -> Path:
    for k, size in enumerate(TRAIN_SIZES):
        write_image(root / "img" / f"{train_repeats}_sks woman" / f"t{k}.png", size, k, f"sks woman, photo {k}")
    for k in range(n_reg):
        write_image(root / "reg" / f"{reg_repeats}_woman" / f"r{k:02d}.png", TRAIN_SIZES[k % 2], 100 + k)
    return root


def key(path: Path) -> str:
    return str(path.resolve())


# ---------------------------------------------------------------------------------------------
# epochs


@pytest.mark.parametrize("n_reg,reg_repeats,expected_reg", [
    # short: 2 images x 1 repeat < 12 train samples, so repeats rise round-robin to 6 each
    (2, 1, {"r00.png": 6, "r01.png": 6}),
    # over-supplied: 10 images x 2 repeats; the first 6 (sorted) reach 12, the other 4 are never used
    (10, 2, {f"r{k:02d}.png": 2 for k in range(6)}),
])
def test_epoch_holds_each_sample_its_repeats_and_balanced_reg(tmp_path, n_reg, reg_repeats, expected_reg):
    root = mixed_dataset(tmp_path / "ds", n_reg, reg_repeats)
    data = TrainData(root, DataConfig(batch_size=2))
    reg_dir = root / "reg" / f"{reg_repeats}_woman"
    expected = {key(p): 3 for p in (root / "img" / "3_sks woman").glob("*.png")}
    expected |= {key(reg_dir / name): n for name, n in expected_reg.items()}
    assert data.reg_repeats == {key(reg_dir / name): n for name, n in expected_reg.items()}
    bucket_of = {s.key: s.bucket for s in data.samples}
    plan = data.plan(epochs=4, max_steps=1600)
    for e in range(3):
        batches = data.epoch(e)
        assert Counter(k for b in batches for k in b) == expected  # so unused reg images never appear
        assert all(len({bucket_of[k] for k in b}) == 1 for b in batches)
        assert all(1 <= len(b) <= 2 for b in batches)
        assert len(batches) == plan.batches_per_epoch
    assert len(data.samples) == 4 + n_reg


@pytest.mark.parametrize("batch,epochs,max_steps,grad_accum", [(1, 10, 1600, 1), (2, 3, 1600, 2), (3, None, 500, 1)])
def test_plan_equals_step_arithmetic_on_the_same_items(tmp_path, batch, epochs, max_steps, grad_accum):
    root = mixed_dataset(tmp_path / "ds", 10, 2)
    bucketing = Bucketing((512, 512), no_upscale=True)
    items = [Item(key(p), bucketing.select(*Image.open(p).size)[0], int(p.parent.name.split("_")[0]),
                  p.parent.parent.name == "reg") for p in sorted(root.glob("*/*/*.png"))]
    items.sort(key=lambda i: (i.is_reg, i.key))  # sd-scripts registers reg images in sorted order
    plan = TrainData(root, DataConfig(batch_size=batch)).plan(epochs, max_steps, grad_accum)
    assert plan == plan_steps(items, batch, epochs, max_steps, grad_accum)
    assert plan.unused_reg == 4 and plan.reg_samples == plan.train_samples == 12


def test_epoch_order_depends_only_on_seed_and_epoch(tmp_path):
    root = mixed_dataset(tmp_path / "ds", 2, 1)
    a, b = TrainData(root, DataConfig(batch_size=2), seed=7), TrainData(root, DataConfig(batch_size=2), seed=7)
    assert a.epoch(0) == b.epoch(0) and a.epoch(5) == b.epoch(5)
    assert a.epoch(0) != a.epoch(1)
    assert a.epoch(0) != TrainData(root, DataConfig(batch_size=2), seed=8).epoch(0)
    # samples are shuffled within a bucket (batch contents change) and batches across buckets
    contents = [sorted(tuple(sorted(b)) for b in a.epoch(e)) for e in range(2)]
    assert contents[0] != contents[1]
    bucket_of = {s.key: s.bucket for s in a.samples}
    runs = [bucket_of[b[0]] for b in a.epoch(0)]
    assert sum(x != y for x, y in zip(runs, runs[1:])) > len(set(runs)) - 1


def test_ranks_partition_the_batches_as_accelerate_shards(tmp_path):
    data = TrainData(mixed_dataset(tmp_path / "ds", 10, 2), DataConfig(batch_size=1))
    full = data.epoch(3)
    shards = [data.epoch(3, rank=r, world=5) for r in range(5)]
    # every rank runs the same number of steps (else DDP hangs): topped up with the epoch's first batches
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == -(-len(full) // 5)
    padded = full + full[: (-len(full)) % 5]
    assert all(shards[i % 5][i // 5] == padded[i] for i in range(len(padded)))
    assert len(full) % 5 != 0, "the dataset must not divide evenly, or the top-up is untested"
    with pytest.raises(ValueError):
        data.epoch(0, rank=3, world=3)


# ---------------------------------------------------------------------------------------------
# captions


def test_caption_shuffle_keeps_the_first_tags_and_permutes_the_rest(tmp_path):
    caption = "sks, woman, red dress, smile, outdoors, hat, city"
    tags = caption.split(", ")
    p = write_image(tmp_path / "ds" / "1_sks woman" / "a.png", (64, 64), caption=caption)
    cfg = DataConfig(shuffle_caption=True, keep_tokens=2, bucket_no_upscale=True)
    data = TrainData(tmp_path / "ds", cfg)
    seen = [data.load([key(p)], epoch, i).captions[0] for epoch in range(3) for i in range(4)]
    for c in seen:
        got = c.split(", ")
        assert got[:2] == tags[:2] and sorted(got[2:]) == sorted(tags[2:])
    assert len(set(seen)) > 3  # really shuffled, and differently per batch
    assert data.load([key(p)], 1, 2).captions == TrainData(tmp_path / "ds", cfg).load([key(p)], 1, 2).captions
    plain = TrainData(tmp_path / "ds", DataConfig())  # off by default
    assert {plain.load([key(p)], e, 0).captions[0] for e in range(5)} == {caption}


def test_captions_come_from_sidecars_then_the_folder_class_text(tmp_path):
    folder = tmp_path / "ds" / "2_sks woman"
    txt = write_image(folder / "a.png", (64, 64), caption="from txt\nsecond line ignored")
    both = write_image(folder / "b.png", (64, 64), caption="from caption", ext=".caption")
    both.with_suffix(".txt").write_text("txt wins", encoding="utf-8")
    cap = write_image(folder / "c.png", (64, 64), caption="only caption", ext=".caption")
    bare = write_image(folder / "d.png", (64, 64))
    captions = {s.key: s.caption for s in TrainData(tmp_path / "ds", DataConfig()).samples}
    assert captions == {key(txt): "from txt", key(both): "txt wins", key(cap): "only caption",
                        key(bare): "sks woman"}
    sd_scripts = TrainData(tmp_path / "ds", DataConfig(caption_extensions=(".caption",)))
    assert {s.key: s.caption for s in sd_scripts.samples}[key(txt)] == "sks woman"


# ---------------------------------------------------------------------------------------------
# pixels


def test_images_are_resized_with_inter_area_and_centre_cropped_to_the_bucket(tmp_path):
    src = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    src[:, 310:331] = (255, 0, 0)  # a red band around the centre column
    path = tmp_path / "ds" / "1_x" / "wide.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(src).save(path)
    data = TrainData(tmp_path / "ds", DataConfig(bucket_no_upscale=False))
    sample = data.samples[0]
    assert (sample.bucket, sample.resized) == ((576, 448), (597, 448))  # covers the bucket; 21 px to trim
    pixels = data.load([sample.key], 0, 0).pixels
    assert pixels.shape == (1, 3, 448, 576)
    area = cv2.resize(src, (597, 448), interpolation=cv2.INTER_AREA)[:, 10:586]  # trim 21: 10 left, 11 right
    as_tensor = torch.from_numpy(area).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(pixels[0], as_tensor)
    linear = cv2.resize(src, (597, 448), interpolation=cv2.INTER_LINEAR)[:, 10:586]
    assert not np.array_equal(area, linear)  # the check above tells the resamplers apart
    middle = ((pixels[0, :, :, 288] + 1) * 127.5).round()
    assert (middle[0] == 255).all() and (middle[1:] == 0).all()
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_no_upscale_keeps_small_images_and_crops_to_the_step(tmp_path):
    path = write_image(tmp_path / "ds" / "1_x" / "shoe.png", (300, 450), 3)
    data = TrainData(tmp_path / "ds", DataConfig())
    assert (data.samples[0].bucket, data.samples[0].resized) == ((256, 448), (300, 450))
    src = np.asarray(Image.open(path))
    expected = torch.from_numpy(src[1:449, 22:278].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(data.load([key(path)], 0, 0).pixels[0], expected)


def test_flip_is_per_epoch_deterministic_and_mirrors_the_pixels(tmp_path):
    path = write_image(tmp_path / "ds" / "1_x" / "a.png", (128, 64), 4)
    cfg = DataConfig(flip=True)
    data, again = TrainData(tmp_path / "ds", cfg), TrainData(tmp_path / "ds", cfg)
    flips = [data.load([key(path)], e, 0).flipped[0] for e in range(16)]
    assert set(flips) == {True, False}
    assert flips == [again.load([key(path)], e, 0).flipped[0] for e in range(16)]
    plain = TrainData(tmp_path / "ds", DataConfig()).load([key(path)], 0, 0)
    assert plain.flipped == [False]
    mirrored = data.load([key(path)], flips.index(True), 0).pixels
    assert torch.equal(mirrored, torch.flip(plain.pixels, dims=[-1]))
    assert not torch.equal(mirrored, plain.pixels)


@pytest.fixture(scope="module")
def tiny_vae():
    from loracam.models import build_random, tiny_configs

    return build_random(tiny_configs())[1].eval()


def test_cached_latents_are_sampled_and_the_flipped_copy_encodes_the_mirror(tmp_path, tiny_vae):
    folder = tmp_path / "ds" / "2_x"
    a, b = write_image(folder / "a.png", (128, 64), 5), write_image(folder / "b.png", (128, 64), 6)
    write_image(folder / "c.png", (64, 64), 7)
    data = TrainData(tmp_path / "ds", DataConfig(flip=True))
    assert not data.latents_cached
    data.cache_latents(tiny_vae, torch.device("cpu"), torch.float32, batch_size=4)
    assert data.latents_cached
    plain = TrainData(tmp_path / "ds", DataConfig()).load([key(a), key(b)], 0, 0).pixels
    sf = tiny_vae.config.scaling_factor
    vae64 = in_float64(tiny_vae)
    for i, p in enumerate((a, b)):
        for flipped in (False, True):
            image = torch.flip(plain[i:i + 1], dims=[-1]) if flipped else plain[i:i + 1]
            with torch.no_grad():
                want = tiny_vae.encode(image).latent_dist.sample(generator=data.latent_generator(key(p), flipped)) * sf
                # the same draw from the float64 VAE: the noise is the generator's float32 normal numbers
                dist64 = vae64.encode(image.double()).latent_dist
            eps = torch.randn(want.shape, generator=data.latent_generator(key(p), flipped))
            exact = (dist64.mean + dist64.std * eps.double()) * sf
            # the cache encodes 4 images at once, the test one: the same sums blocked differently (tests/rounding.py)
            assert_same_up_to_rounding(data._latents[(key(p), flipped)], want[0], rounding(want, exact))
    assert not torch.allclose(data._latents[(key(a), True)], data._latents[(key(a), False)])
    batches = [(e, data.load([key(a), key(b)], e, 0)) for e in range(8)]
    for e, batch in batches:
        assert batch.pixels is None and batch.latents.shape == (2, 4, 8, 16)
        for i, p in enumerate((a, b)):
            assert torch.equal(batch.latents[i], data._latents[(key(p), batch.flipped[i])])
    assert {f for _, batch in batches for f in batch.flipped} == {True, False}


def test_load_with_a_vae_encodes_when_nothing_is_cached(tmp_path, tiny_vae):
    p = write_image(tmp_path / "ds" / "1_x" / "a.png", (64, 64), 8)
    batch = TrainData(tmp_path / "ds", DataConfig()).load([key(p)], 0, 0, vae=tiny_vae)
    assert batch.pixels.shape == (1, 3, 64, 64) and batch.latents.shape == (1, 4, 8, 8)


# ---------------------------------------------------------------------------------------------
# weights, metadata, prep datasets


def test_reg_samples_carry_the_prior_loss_weight(tmp_path):
    t = write_image(tmp_path / "ds" / "img" / "1_sks woman" / "t.png", (64, 64), 1)
    r = write_image(tmp_path / "ds" / "reg" / "1_woman" / "r.png", (64, 64), 2)
    data = TrainData(tmp_path / "ds", DataConfig(prior_loss_weight=0.3, batch_size=2))
    assert data.epoch(0) in ([[key(t), key(r)]], [[key(r), key(t)]])
    batch = data.load([key(t), key(r)], 0, 0)
    assert torch.allclose(batch.loss_weights, torch.tensor([1.0, 0.3]))


def test_tag_frequency_counts_captions_per_subset_folder(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "img" / "10_sks woman" / "a.png", (64, 64), caption="sks woman, Red Dress, smile")
    write_image(root / "img" / "10_sks woman" / "b.png", (64, 64), caption="sks woman, red dress")
    write_image(root / "img" / "10_sks woman" / "c.png", (64, 64))
    write_image(root / "reg" / "1_woman" / "r.png", (64, 64))
    data = TrainData(root, DataConfig(shuffle_caption=True))
    assert data.tag_frequency() == {"10_sks woman": {"sks woman": 3, "red dress": 2, "smile": 1},
                                    "1_woman": {"woman": 1}}


def test_counts_report_distinct_files_and_samples(tmp_path):
    counts = TrainData(mixed_dataset(tmp_path / "ds", 10, 2), DataConfig(batch_size=2)).counts()
    assert counts["num_train_images"] == 4 and counts["num_reg_images"] == 6 and counts["num_reg_images_unused"] == 4
    assert counts["train_samples_per_epoch"] == 12 and counts["reg_samples_per_epoch"] == 12
    assert counts["kohya_num_train_images"] == 12 and counts["kohya_num_reg_images"] == 20
    assert counts["dataset_dirs"] == {"3_sks woman": {"n_repeats": 3, "img_count": 4},
                                      "2_woman": {"n_repeats": 2, "img_count": 10}}
    assert sum(counts["buckets"].values()) == 24


def test_prep_dataset_gives_the_kept_photos_face_embeddings(tmp_path):
    root = tmp_path / "prepped"
    write_image(root / "img" / "10_sks woman" / "a_closeup.png", (256, 384), 1, caption="sks woman")
    write_image(root / "reg" / "1_woman" / "a_whole.png", (256, 384), 2, caption="woman")
    rng = np.random.default_rng(0)
    embs = [rng.normal(size=128).round(5).tolist() for _ in range(3)]
    photos = [{"name": "a.jpg", "status": "kept", "embedding": embs[0]},
              {"name": "b.jpg", "status": "dropped", "reason": "blurry", "embedding": embs[1]},
              {"name": "c.jpg", "status": "kept", "embedding": embs[2]},
              {"name": "d.jpg", "status": "kept", "embedding": None}]
    (root / "manifest.json").write_text(json.dumps({"loracam_manifest": 1, "photos": photos}), encoding="utf-8")
    data = TrainData(root, DataConfig())
    got = data.reference_embeddings()
    assert got.shape == (2, 128)
    np.testing.assert_allclose(got, np.array([embs[0], embs[2]], dtype=np.float32))
    assert [s.is_reg for s in data.samples] == [False, True] and data.samples[0].bucket == (256, 384)
    (root / "manifest.json").unlink()
    assert TrainData(root, DataConfig()).reference_embeddings() is None


# ---------------------------------------------------------------------------------------------
# errors


def test_a_missing_folder_says_what_to_give(tmp_path):
    with pytest.raises(LoracamError, match="dataset folder not found.*loracam prep"):
        TrainData(tmp_path / "nope", DataConfig())


def test_a_folder_without_training_images_is_an_error(tmp_path):
    (tmp_path / "ds" / "img" / "10_sks woman").mkdir(parents=True)
    write_image(tmp_path / "ds" / "reg" / "1_woman" / "r.png", (64, 64))
    with pytest.raises(LoracamError, match="no kohya training images.*10_sks woman"):
        TrainData(tmp_path / "ds", DataConfig())


def test_bad_images_are_all_named(tmp_path):
    folder = tmp_path / "ds" / "1_x"
    write_image(folder / "good.png", (64, 64))
    (folder / "broken.png").write_bytes(b"this is not a png")
    truncated = (folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    write_image(folder / "speck.png", (5, 40))
    write_image(folder / "small.png", (40, 40))  # bucket_no_upscale would give it a 0x0 bucket
    with pytest.raises(LoracamError) as err:
        TrainData(tmp_path / "ds", DataConfig())
    msg = str(err.value)
    assert "4 image(s)" in msg and "remove or replace" in msg
    for name in ("broken.png: unreadable", "cut.png: unreadable", "speck.png: 5x40 px", "small.png: 40x40"):
        assert name in msg
    assert "good.png" not in msg
    write_image(folder / "small.png", (40, 40))
    for name in ("broken.png", "cut.png", "speck.png"):
        (folder / name).unlink()
    assert TrainData(tmp_path / "ds", DataConfig(bucket_no_upscale=False)).samples[1].bucket == (512, 512)


def test_invalid_settings_name_the_key():
    with pytest.raises(LoracamError, match="batch_size.*keep_tokens|keep_tokens"):
        DataConfig(batch_size=0, keep_tokens=-1)
    with pytest.raises(LoracamError, match="bucket_step"):
        DataConfig(bucket_step=60)
    assert DataConfig(resolution=[512, 768]).resolution == (512, 768)


def test_caption_dropout_trains_a_share_unconditionally_and_repeatably(tmp_path):
    caption = "1girl, full body, red dress"
    p = write_image(tmp_path / "ds" / "1_doll" / "a.png", (64, 96), caption=caption)
    cfg = DataConfig(caption_dropout=0.3, resolution=(64, 96), bucket_step=32, min_bucket=32)
    data = TrainData(tmp_path / "ds", cfg)
    seen = [data.load([key(p)], e, i).captions[0] for e in range(20) for i in range(10)]
    assert set(seen) == {"", caption}
    assert 0.2 < seen.count("") / len(seen) < 0.4
    again = TrainData(tmp_path / "ds", cfg)  # the same seed drops the same batches (exact resume)
    assert [again.load([key(p)], e, i).captions[0] for e in range(20) for i in range(10)] == seen
    with pytest.raises(LoracamError, match="caption_dropout"):
        DataConfig(caption_dropout=1.0)


def test_small_models_bucket_at_their_own_size_in_steps_of_32(tmp_path):
    from loracam.train.config import TrainConfig, bucket_step

    assert bucket_step(TrainConfig(), (512, 768)) == 64  # sd-scripts' default stays
    assert bucket_step(TrainConfig(), (64, 96)) == 32
    assert bucket_step(TrainConfig(bucket_step=16), (64, 96)) == 16
    p = write_image(tmp_path / "ds" / "1_doll" / "a.png", (64, 96))
    data = TrainData(tmp_path / "ds", DataConfig(resolution=(64, 96), bucket_step=32, min_bucket=32))
    assert data.samples[0].bucket == (64, 96) and key(p) == data.samples[0].key
    with pytest.raises(LoracamError, match="multiple of 8"):
        TrainConfig(bucket_step=12)
