"""Taggers on tiny models built here (a WD14-shaped ONNX graph, a random BLIP) and caption/tag editing."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from loracam.data.tagging import (
    TAGGERS, BlipCaptioner, WD14Tagger, _onnx_providers, make_tagger, read_selected_tags, wd14_input,
)
from loracam.data.tags import (
    caption_for, edit_dataset, edit_tags, join_tags, read_caption, reg_caption, split_tags, tag_frequency,
)
from loracam.errors import LoracamError

# ---------------------------------------------------------------------------------------------
# a WD14-shaped tagger: score = sigmoid(w . mean channel / 255 + b), channels in the B, G, R order it is fed

B, G, R = 0, 1, 2
# (name, category, {channel: weight}, bias); rows in selected_tags.csv order
TINY_TAGS = [
    ("general", 9, {}, 5.0),  # a rating: scores high on everything, never in a caption
    ("sensitive", 9, {}, -5.0),
    ("1girl", 0, {}, 0.0),  # always 0.5: sits between the thresholds the tests use
    ("red_dress", 0, {R: 8, G: -4, B: -4}, -2.0),
    ("blue_background", 0, {B: 8, R: -4, G: -4}, -2.0),
    (">_<", 0, {B: 6, R: -3, G: -3}, -2.0),  # an emoticon: its underscore stays
    ("green_hair", 0, {G: 8, R: -4, B: -4}, -2.0),
    ("hatsune_miku", 4, {G: 2, R: -1, B: -1}, -1.0),  # a character: 0.73 on green, under the default 0.85
    ("white_background", 0, {R: 4, G: 4, B: 4}, -6.0),  # 0.95 for a black strip padded with white
]


def sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def build_tagger_model(path, size=16, batch="batch", nchw=False, tags=TINY_TAGS):
    """Save a WD14-shaped ONNX graph: [batch, size, size, 3] float32 -> [batch, len(tags)] sigmoid scores."""
    n = len(tags)
    w = np.zeros((3, n), np.float32)
    for j, (_, _, weights, _) in enumerate(tags):
        for c, v in weights.items():
            w[c, j] = v / 255.0  # the input is 0-255, unnormalised
    b = np.array([t[3] for t in tags], np.float32)
    dims = [batch, 3, size, size] if nchw else [batch, size, size, 3]
    axes = [2, 3] if nchw else [1, 2]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=axes, keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits0"]),
         helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["output"])],
        "tiny_wd14",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, n])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
         helper.make_tensor("b", TensorProto.FLOAT, [n], b)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_tags_csv(path, tags=TINY_TAGS):
    lines = ["tag_id,name,category,count"] + [f"{1000 + i},{t[0]},{t[1]},{500 - i}" for i, t in enumerate(tags)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wd14_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wd14")
    build_tagger_model(folder / "model.onnx")
    write_tags_csv(folder / "selected_tags.csv")
    return folder


@pytest.fixture(scope="module")
def wd14(wd14_dir):
    return WD14Tagger(wd14_dir)


def solid(rgb, size=(32, 32)):  # square: padding would add white to the mean
    return Image.new("RGB", size, rgb)


RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_wd14_tags_sorted_by_confidence_without_ratings(wd14):
    [red, blue] = wd14.tag([solid(RED), solid(BLUE)])
    assert [t for t, _ in red] == ["red dress", "1girl"]
    assert red[0][1] == pytest.approx(sigmoid(6), abs=1e-4) and red[1][1] == pytest.approx(0.5, abs=1e-4)
    assert [t for t, _ in blue] == ["blue background", ">_<", "1girl"]
    assert all(a[1] >= b[1] for a, b in zip(blue, blue[1:]))


def test_wd14_feeds_bgr(wd14):
    # Pure red in RGB must reach the model's channel 2; an RGB feed would light up "blue background".
    scores = wd14.scores([solid(RED)])[0]
    names = [t.name for t in wd14.tags]
    assert scores[names.index("red_dress")] > 0.99
    assert scores[names.index("blue_background")] < 0.01
    arr = wd14_input(solid(RED), 16)
    assert arr.dtype == np.float32 and arr.shape == (16, 16, 3)
    assert arr[8, 8].tolist() == [0.0, 0.0, 255.0]


def test_wd14_thresholds_per_category(wd14_dir):
    green = [solid(GREEN)]
    assert [t for t, _ in WD14Tagger(wd14_dir).tag(green)[0]] == ["green hair", "1girl"]
    loose = WD14Tagger(wd14_dir, general_threshold=0.6, character_threshold=0.7).tag(green)[0]
    assert [t for t, _ in loose] == ["green hair", "hatsune miku"]  # 1girl (0.5) now under the general one
    assert loose[1][1] == pytest.approx(sigmoid(1), abs=1e-4)
    [only] = WD14Tagger(wd14_dir, general_threshold=1, character_threshold=0).tag(green)[0]  # ints are fine
    assert only == ("hatsune miku", pytest.approx(sigmoid(1), abs=1e-4))
    with pytest.raises(LoracamError, match="between 0 and 1"):
        WD14Tagger(wd14_dir, general_threshold=1.5)


def test_wd14_pads_with_white_then_resizes():
    # A 20x10 red strip: padded to 20x20 with white above and below, then resized to 16x16.
    arr = wd14_input(solid(RED, (20, 10)), 16)
    assert arr.shape == (16, 16, 3)
    assert arr[0].tolist() == [[255.0] * 3] * 16 and arr[-1].tolist() == [[255.0] * 3] * 16
    assert np.allclose(arr[7:9], [0, 0, 255], atol=2)
    # Transparency is white too, as in the tagger's training data.
    clear = wd14_input(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), 8)
    assert (clear == 255).all()


def test_wd14_padding_reaches_the_model(wd14):
    # A black 64x16 strip is 3/4 white once padded: "white background" at ~sigmoid(3), not ~0 as if stretched.
    tags = dict(wd14.tag([solid((0, 0, 0), (64, 16))])[0])
    assert tags["white background"] == pytest.approx(sigmoid(3), abs=0.02)


def test_wd14_size_and_batch_from_the_graph(tmp_path):
    build_tagger_model(tmp_path / "fixed.onnx", size=24, batch=1)
    write_tags_csv(tmp_path / "selected_tags.csv")
    fixed = WD14Tagger(tmp_path / "fixed.onnx")  # a .onnx file finds selected_tags.csv beside it
    assert (fixed.size, fixed.batch) == (24, 1)
    out = fixed.tag([solid(RED, (50, 50)), solid(BLUE, (7, 7)), solid(GREEN)])
    assert [r[0][0] for r in out] == ["red dress", "blue background", "green hair"]
    build_tagger_model(tmp_path / "open.onnx", size="side")
    assert WD14Tagger(tmp_path / "open.onnx").size == 448  # the family's size when the graph leaves it open
    assert fixed.tag([]) == []


def test_wd14_tag_names(tmp_path):
    tags = {t.name: t.caption for t in read_selected_tags(write_tags_csv(tmp_path / "selected_tags.csv"))}
    assert tags["red_dress"] == "red dress" and tags[">_<"] == ">_<" and tags["1girl"] == "1girl"


def test_wd14_errors(tmp_path, wd14_dir):
    with pytest.raises(LoracamError, match="no WD14 tagger at"):
        WD14Tagger(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoracamError, match="model.onnx not found"):
        WD14Tagger(tmp_path / "empty")
    build_tagger_model(tmp_path / "alone.onnx")
    with pytest.raises(LoracamError, match="needs its tag list"):
        WD14Tagger(tmp_path / "alone.onnx")
    write_tags_csv(tmp_path / "short.csv", TINY_TAGS[:-1])
    with pytest.raises(LoracamError, match="lists 8 tags but .* gives 9 scores"):
        WD14Tagger(tmp_path / "alone.onnx", tags_csv=tmp_path / "short.csv")
    (tmp_path / "bad.csv").write_text("id,label\n1,cat\n")
    with pytest.raises(LoracamError, match="not a WD14 selected_tags.csv"):
        WD14Tagger(tmp_path / "alone.onnx", tags_csv=tmp_path / "bad.csv")
    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(LoracamError, match="not a usable ONNX model"):
        WD14Tagger(tmp_path / "junk.onnx", tags_csv=wd14_dir / "selected_tags.csv")
    build_tagger_model(tmp_path / "nchw.onnx", nchw=True)
    with pytest.raises(LoracamError, match="not a WD14-style tagger"):
        WD14Tagger(tmp_path / "nchw.onnx", tags_csv=wd14_dir / "selected_tags.csv")
    with pytest.raises(LoracamError, match="has no NoSuchExecutionProvider"):
        WD14Tagger(wd14_dir, providers=["NoSuchExecutionProvider"])


def test_wd14_prefers_cuda(wd14):
    class CudaOrt:
        @staticmethod
        def get_available_providers():
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

    assert _onnx_providers(CudaOrt, None) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert wd14.session.get_providers() == ["CPUExecutionProvider"]  # this machine has no CUDA build


def fake_hub_cache(cache, repo_id, files):
    """Lay ``files`` out as the hub cache does: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files:
        (snap / f.name).write_bytes(f.read_bytes())


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty private hub cache, and a record of every hf_hub_download call (downloads are faked)."""
    import huggingface_hub
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    real, calls, served = huggingface_hub.hf_hub_download, [], {}

    def spy(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw.get("local_files_only", False)))
        if kw.get("local_files_only"):
            return real(repo_id, filename, **kw)
        return str(served[filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    return cache, calls, served


def test_wd14_hub_id_from_cache_only(hub, wd14_dir):
    cache, calls, served = hub
    with pytest.raises(LoracamError, match="allow_download=True"):
        WD14Tagger("someone/wd-tiny-tagger")
    assert all(local for _, _, local in calls)  # looked in the cache, never downloaded
    fake_hub_cache(cache, "someone/wd-tiny-tagger", [wd14_dir / "model.onnx", wd14_dir / "selected_tags.csv"])
    assert WD14Tagger("someone/wd-tiny-tagger").tag([solid(RED)])[0][0][0] == "red dress"
    assert all(local for _, _, local in calls)


def test_wd14_downloads_only_when_allowed(hub, wd14_dir):
    _, calls, served = hub
    served.update({"model.onnx": wd14_dir / "model.onnx", "selected_tags.csv": wd14_dir / "selected_tags.csv"})
    tagger = WD14Tagger("someone/other-tagger", allow_download=True)
    assert tagger.tag([solid(BLUE)])[0][0][0] == "blue background"
    assert ("someone/other-tagger", "model.onnx", False) in calls


# ---------------------------------------------------------------------------------------------
# BLIP: a random tiny model and an offline processor (BertTokenizer from a vocab dict)

BLIP_WORDS = ["a", "woman", "in", "red", "dress", "photo", "of", "blue", "shoes", "standing", ",", "the"]


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers import BlipImageProcessorPil  # the torchvision-free image processor

    folder = tmp_path_factory.mktemp("blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BLIP_WORDS, "[DEC]"]
    # transformers 5 builds BertTokenizer from a vocab dict; BLIP decodes from "[DEC]" as its bos token.
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]", model_max_length=64)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.sep_token_id, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_blip_captions_deterministically(blip_dir):
    blip = BlipCaptioner(blip_dir, max_new_tokens=6)
    images = [solid(RED), Image.new("RGBA", (20, 50), (0, 0, 255, 128))]
    first = blip.caption(images)
    assert len(first) == 2 and all(isinstance(c, str) for c in first)
    assert first == blip.caption(images)
    words = " ".join(first).replace(",", " ").split()
    assert set(words) <= set(BLIP_WORDS)  # decoded through our vocabulary, special tokens skipped
    assert blip.tag(images) == [[(p, 1.0) for p in dict.fromkeys(split_tags(c))] for c in first]
    assert blip.caption([]) == []


def test_blip_hub_id_from_cache_only(blip_dir, hub):
    cache, _, _ = hub
    with pytest.raises(LoracamError, match="allow_download=True"):
        BlipCaptioner("someone/tiny-blip")
    fake_hub_cache(cache, "someone/tiny-blip", sorted(blip_dir.iterdir()))
    assert BlipCaptioner("someone/tiny-blip", max_new_tokens=4).caption([solid(RED)]) == \
        BlipCaptioner(blip_dir, max_new_tokens=4).caption([solid(RED)])


def test_blip_tag_splits_phrases(blip_dir, monkeypatch):
    blip = make_tagger("blip", str(blip_dir), max_new_tokens=4)
    assert isinstance(blip, BlipCaptioner) and blip.name == "blip"
    monkeypatch.setattr(blip, "caption", lambda images: ["a woman in a red dress, standing,  a woman in a red dress"])
    assert blip.tag([solid(RED)]) == [[("a woman in a red dress", 1.0), ("standing", 1.0)]]


def test_blip_errors(tmp_path, blip_dir):
    with pytest.raises(LoracamError, match="no BLIP model folder"):
        BlipCaptioner(tmp_path / "missing")
    with pytest.raises(LoracamError, match="not in the local Hugging Face cache"):
        BlipCaptioner("loracam-tests/no-such-blip")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_bytes((blip_dir / "config.json").read_bytes())
    with pytest.raises(LoracamError, match="could not load a BLIP captioner"):
        BlipCaptioner(tmp_path / "half")
    with pytest.raises(LoracamError, match="max_new_tokens"):
        BlipCaptioner(blip_dir, max_new_tokens=0)
    with pytest.raises(LoracamError, match="unknown device"):
        BlipCaptioner(blip_dir, device="gpu0")


def test_make_tagger(wd14_dir):
    assert set(TAGGERS) == {"wd14", "blip"}
    tagger = make_tagger("wd14", str(wd14_dir), general_threshold=0.6)
    assert [t for t, _ in tagger.tag([solid(RED)])[0]] == ["red dress"]
    with pytest.raises(LoracamError, match="unknown tagger 'clip'; use one of wd14, blip"):
        make_tagger("clip", str(wd14_dir))
    with pytest.raises(LoracamError, match="does not take those options"):
        make_tagger("wd14", str(wd14_dir), max_new_tokens=3)


# ---------------------------------------------------------------------------------------------
# captions and tag lists


def test_split_and_join_tags():
    assert split_tags(" sks, red  dress ,, 1girl,\t,red dress ") == ["sks", "red dress", "1girl", "red dress"]
    assert split_tags("") == [] and join_tags(["a", "b c"]) == "a, b c"


def test_caption_templates():
    tags = ["red dress", "sks", "1girl", "red dress"]
    assert caption_for("face", "sks", "a photo of a woman", tags) == "sks, a photo of a woman"
    assert caption_for("garment", "testdress", "dress", tags) == "testdress, red dress, sks, 1girl"
    assert caption_for("shoes", "myshoes", "shoes", ["myshoes", "white shoes"]) == "myshoes, white shoes"
    # without tags the class phrase stands in, so the class word is not lost to the caption file
    assert caption_for("pet", "skspet", "a photo of a dog") == "skspet, a photo of a dog"
    assert reg_caption(" woman ") == "woman"
    with pytest.raises(LoracamError, match="unknown subject 'car'"):
        caption_for("car", "sks", "car")
    with pytest.raises(LoracamError, match="without commas"):
        caption_for("face", "sks, woman", "woman")
    with pytest.raises(LoracamError, match="must not be empty"):
        reg_caption(" , ")


def test_edit_tags_replace_keeps_position():
    tags = ["sks", "red dress", "white shoes"]
    assert edit_tags(tags, replace={"red dress": "blue dress"}) == ["sks", "blue dress", "white shoes"]
    assert edit_tags(tags, replace={"red dress": "blue dress, belt"}) == ["sks", "blue dress", "belt", "white shoes"]


def test_edit_tags_remove_is_exact():
    tags = ["dress", "red dress", "dresser"]
    assert edit_tags(tags, remove=["dress"]) == ["red dress", "dresser"]
    assert edit_tags(tags, remove="red dress, dresser") == ["dress"]
    with pytest.raises(LoracamError, match="both added and removed"):
        edit_tags(tags, add=["hat"], remove=["hat"])


def test_edit_tags_add_and_dedupe_keep_first():
    tags = ["a", "b", "a", "c", "b"]
    assert edit_tags(tags) == ["a", "b", "c"]
    assert edit_tags(tags, dedupe=False) == tags
    assert edit_tags(["a", "b"], add=["b", "d"]) == ["a", "b", "d"]  # already there: not added twice


def test_edit_tags_trigger_first():
    assert edit_tags(["red dress", "sks", "1girl"], trigger_first="sks") == ["sks", "red dress", "1girl"]
    assert edit_tags(["red dress"], trigger_first="sks") == ["sks", "red dress"]
    assert edit_tags(["sks", "x", "sks"], dedupe=False, trigger_first="sks") == ["sks", "x"]


# ---------------------------------------------------------------------------------------------
# dataset folders


def png_bytes(rgb) -> bytes:
    import io

    buf = io.BytesIO()
    solid(rgb, (8, 8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def dataset(tmp_path):
    """img/10_sks woman (two captioned images, one without), reg/1_woman, and .txt files with no image."""
    sub = tmp_path / "img" / "10_sks woman"
    reg = tmp_path / "reg" / "1_woman"
    sub.mkdir(parents=True)
    reg.mkdir(parents=True)
    files = {
        sub / "a.png": png_bytes(RED), sub / "a.txt": b"red dress, sks, 1girl\n",
        sub / "b.JPG": png_bytes(BLUE), sub / "b.txt": b"\xef\xbb\xbfsks, Red Dress, red dress\r\nnotes kept\r\n",
        sub / "c.webp": png_bytes(GREEN),
        sub / "notes.txt": b"red dress, todo\n", tmp_path / "README.txt": b"red dress\n",
        reg / "r1.png": png_bytes((0, 0, 0)), reg / "r1.txt": b"woman",
    }
    for path, data in files.items():
        path.write_bytes(data)
    os.chmod(sub / "a.txt", 0o644)
    return tmp_path, files


def test_edit_dataset_rewrites_captions_only(dataset):
    root, files = dataset
    sub = root / "img" / "10_sks woman"
    report = edit_dataset(root, replace={"red dress": "blue dress"}, add=["photo"], trigger_first="sks")
    assert read_caption(sub / "a.txt") == "sks, blue dress, 1girl, photo"
    # BOM dropped; second line and CRLF kept; "Red Dress" is not "red dress" (exact match)
    assert (sub / "b.txt").read_bytes() == b"sks, Red Dress, blue dress, photo\r\nnotes kept\r\n"
    assert read_caption(root / "reg" / "1_woman" / "r1.txt") == "sks, woman, photo"
    for path, data in files.items():
        if path.suffix != ".txt" or path.name in ("notes.txt", "README.txt"):
            assert path.read_bytes() == data, path  # images and orphan .txt files untouched
    assert stat.S_IMODE((sub / "a.txt").stat().st_mode) == 0o644
    assert (report.files, report.files_changed) == (3, 3)
    assert (report.added, report.replaced, report.removed) == (4, 2, 0)  # photo x3, sks into r1; 2 replaced
    assert {p.name for p in report.orphans} == {"notes.txt", "README.txt"}
    assert "changed 3 of 3 captions" in report.summary() == str(report)
    assert not [p for p in root.rglob(".*")]  # no temporary files left behind


def test_edit_dataset_dry_run_and_unchanged_files(dataset):
    root, files = dataset
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    report = edit_dataset(root, remove=["red dress"], dry_run=True)
    assert report.files_changed == 2 and report.removed == 2 and "would change" in report.summary()
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    r1 = root / "reg" / "1_woman" / "r1.txt"
    inode = r1.stat().st_ino
    edit_dataset(root, remove=["red dress"])
    assert r1.stat().st_ino == inode  # nothing to change: not rewritten


def test_edit_dataset_bad_file_changes_nothing(dataset):
    root, _ = dataset
    (root / "img" / "10_sks woman" / "c.txt").write_bytes(b"caf\xe9, red dress\n")  # Latin-1, not UTF-8
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(LoracamError, match="c.txt is not UTF-8 text"):
        edit_dataset(root, remove=["red dress"])
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    with pytest.raises(LoracamError, match="is not a folder"):
        edit_dataset(root / "README.txt")
    with pytest.raises(LoracamError, match="without commas"):
        edit_dataset(root / "nowhere", trigger_first="sks, woman")  # options checked before the files


def test_tag_frequency_per_subset(dataset):
    root, _ = dataset
    assert tag_frequency(root) == {
        # b.txt repeats "red dress" in two cases: kohya lower-cases and counts each; c.webp has no
        # caption, so kohya trains it on the folder's class text "sks woman"
        "10_sks woman": {"red dress": 3, "sks": 2, "1girl": 1, "sks woman": 1},
        "1_woman": {"woman": 1},
    }
    # a folder named like another one elsewhere shares its entry, as in kohya's metadata
    other = root / "more" / "1_woman"
    other.mkdir(parents=True)
    (other / "x.png").write_bytes(png_bytes(RED))
    (other / "x.txt").write_text("woman, hat")
    assert tag_frequency(root)["1_woman"] == {"woman": 2, "hat": 1}


def test_image_bytes_identical_after_tagging_and_editing(wd14, dataset):
    root, files = dataset
    sub = root / "img" / "10_sks woman"
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sub.iterdir() if p.suffix != ".txt"}
    found = wd14.tag([Image.open(p) for p in sorted(digest)])
    edit_dataset(root, add=[found[0][0][0]])
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digest} == digest
