"""Style presets: every shipped file loads and is consistent; bad files fail early with messages that name
the file and the key; user folders add to and override the shipped presets."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from loracam.errors import LoracamError
from loracam.studio import styles as st
from loracam.studio.styles import STYLE_VERSION, StylePreset, find_styles, list_styles, load_style

SHIPPED = sorted(st.SHIPPED_DIR.glob("*.toml"))
GOOD = """\
version = 1
description = "a test style"
subjects = ["face", "pet"]
prompt = "photo of {trigger} {class}, grey backdrop"
negative = "lowres"
sampler = "DPM++ 2M Karras"
steps = 30
cfg = 7
size = "512x768"
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, name: str = "bad.toml") -> str:
    path = write(tmp_path, name, text)
    with pytest.raises(LoracamError) as info:
        load_style(path)
    return str(info.value)


@pytest.fixture(scope="module")
def shipped() -> dict[str, StylePreset]:
    return find_styles()


# ---------------------------------------------------------------------------------------------
# the shipped presets


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_file_loads(path):
    preset = load_style(path)
    assert preset.name == path.stem
    assert preset.version == STYLE_VERSION
    assert preset.description.strip() and "\n" not in preset.description
    for subject in preset.subjects:
        prompt = preset.prompt_for(subject, "sks", "woman")
        assert "sks" in prompt and "{" not in prompt


def test_enough_presets_of_each_kind(shipped):
    sd15 = [p for p in shipped.values() if p.base == "sd15"]
    toy = [p for p in shipped.values() if p.base == "toy"]
    assert len(sd15) >= 8 and len(toy) >= 6
    assert {"toy-studio", "toy-garden", "toy-sunset", "toy-pastel", "toy-ocean", "toy-lemon"} <= set(shipped)
    assert {"studio", "business", "wedding", "street", "film", "garden"} <= set(shipped)
    for subject in ("face", "person", "pet", "garment", "shoes"):
        assert any(p.suits(subject) for p in sd15), f"no SD1.5 style for {subject}"


def test_sd15_presets_use_portrait_settings(shipped):
    """FaceChain-like: Karras DPM++ samplers, 25-40 steps, CFG 6-7.5, 512-wide, 2x upscale, faces detailed."""
    for p in (p for p in shipped.values() if p.base == "sd15"):
        assert (p.sampler, p.schedule) in {("DPM++ 2M", "Karras"), ("DPM++ SDE", "Karras")}, p.name
        assert 25 <= p.steps <= 40 and 6 <= p.cfg <= 7.5, p.name
        assert p.size in {(512, 768), (512, 512)}, p.name
        assert p.negative.strip() and p.upscale is not None and p.upscale.scale == 2, p.name
        if p.suits("face"):
            assert p.detail is not None and "face" in p.detail.passes, p.name
            assert p.expect is None


def test_toy_presets_settings(shipped):
    for p in (p for p in shipped.values() if p.base == "toy"):
        assert p.size == (64, 96) and p.sampler == "DPM++ 2M" and p.steps == 20 and p.cfg == 5, p.name
        assert p.upscale is not None and (p.upscale.model, p.upscale.scale) == ("toy-4x", 4), p.name
        assert p.detail is None or p.detail.passes == (), p.name
        assert p.suits("face") and p.suits("garment"), p.name


def test_expect_tables_are_the_probes_classes():
    """[expect] keys and values are what the probe reads: drift between the two tables is a failure here."""
    from loracam.toy.probe import CLASSES

    tables = st.expect_tags()
    assert set(st.EXPECT_KEYS) == set(tables)
    for key in st.EXPECT_KEYS:
        assert key in CLASSES
        assert set(tables[key]) == set(CLASSES[key]), key


def test_toy_prompts_name_exactly_what_they_expect(shipped):
    from loracam.toy import world
    from loracam.toy.probe import CLASSES

    vocabulary = set(st.expect_tags()["framing"].values())
    vocabulary |= {t for table in st.expect_tags().values() for t in table.values() if t}
    vocabulary |= {"1girl", "sks", "testdress", "myshoes"}
    backgrounds = {f"{b} background" for b in world.BACKGROUNDS}
    framings = set(world.FRAMINGS)
    wanted_framing = {"face": "close-up", "garment": "upper body", "shoes": "full body"}
    for p in (p for p in shipped.values() if p.base == "toy"):
        for subject in p.subjects:
            expect = p.expect_for(subject)
            assert set(expect) <= set(CLASSES), (p.name, expect)
            assert {"framing", "background"} <= set(expect), (p.name, subject)
            assert expect["framing"] == wanted_framing[subject], (p.name, subject)
            tags = [t.strip() for t in p.prompt_for(subject, {"face": "sks", "garment": "testdress",
                                                             "shoes": "myshoes"}[subject], "1girl").split(",")]
            assert set(tags) <= vocabulary, (p.name, subject, set(tags) - vocabulary)  # only booru tags
            assert [t for t in tags if t in backgrounds] == [f"{expect['background']} background"], p.name
            assert [t for t in tags if t in framings] == [expect["framing"]], p.name
            for key in ("hair", "hair_style"):  # hair expected exactly where the prompt names it
                named = [v for v, tag in st.expect_tags()[key].items() if tag in tags]
                assert named == ([expect[key]] if key in expect else []), (p.name, key)
    assert {p.expect_for("face")["background"] for p in shipped.values() if p.base == "toy"} == \
        {"white", "green", "orange", "pink", "blue", "yellow"}


def test_shipped_poses_and_passes_are_usable(shipped):
    for p in shipped.values():
        if p.control is not None:
            unit = p.control.unit()
            assert unit.kind == "openpose" and 0 <= unit.weight <= 2
        if p.detail is not None:
            assert len(p.detail.to_passes()) == len(p.detail.passes)


def test_readme_example_loads(tmp_path):
    text = (st.SHIPPED_DIR / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    preset = load_style(write(tmp_path, "example.toml", example))
    assert preset.name == "studio" and preset.lora.tag() == "<lora:film_grain:0.5>"
    assert preset.prompt_for("person", "sks", "man").startswith("studio portrait of sks man, half body")


# ---------------------------------------------------------------------------------------------
# reading a file


def test_defaults_and_normalised_values(tmp_path):
    preset = load_style(write(tmp_path, "mine.toml", GOOD))
    assert preset.name == "mine" and preset.source == tmp_path / "mine.toml"
    assert (preset.sampler, preset.schedule) == ("DPM++ 2M", "Karras")  # the legacy name, split
    assert preset.size == (512, 768) and preset.candidates == 8 and preset.clip_skip == 1
    assert preset.base == "sd15" and preset.lora is None and preset.expect_for("face") == {}
    listed = load_style(write(tmp_path, "list.toml", GOOD.replace('"512x768"', "[512, 512]")))
    assert listed.size == (512, 512)


def test_typo_key_names_the_key_the_file_and_the_fix(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("prompt =", "promt ="), "typo.toml")
    assert "typo.toml" in msg and "'promt'" in msg and "did you mean prompt" in msg
    assert "valid keys" in msg and "negative" in msg and "sampler" in msg
    nested = error_of(tmp_path, GOOD + '[detail]\npases = ["face"]\n', "nested.toml")
    assert "nested.toml" in nested and "'pases'" in nested and "did you mean passes" in nested
    assert "[detail]" in nested
    deep = error_of(tmp_path, GOOD + '[expect.subject.face]\nframeing = "close-up"\n')
    assert "did you mean framing" in deep and "[expect.subject.face]" in deep


def test_missing_and_newer_versions_are_refused(tmp_path):
    missing = error_of(tmp_path, GOOD.replace("version = 1\n", ""), "old.toml")
    assert "old.toml" in missing and "version" in missing
    newer = error_of(tmp_path, GOOD.replace("version = 1", "version = 2") + "a_new_key = 3\n", "new.toml")
    assert "new.toml" in newer and "upgrade loracam" in newer and "unknown key" not in newer
    assert "version" in error_of(tmp_path, GOOD.replace("version = 1", 'version = "1"'))


@pytest.mark.parametrize("change, words", [
    (('"512x768"', '"512x770"'), ["size", "512x770", "multiples of 8"]),
    (('"512x768"', '"big"'), ["size", "WIDTHxHEIGHT"]),
    (('"512x768"', "[512, 768, 3]"), ["size", "WIDTHxHEIGHT"]),
    (('"DPM++ 2M Karras"', '"DPM++ 9M"'), ["unknown sampler", "DPM++ 9M", "Euler a"]),
    (('["face", "pet"]', '["face", "cat"]'), ["unknown subject", "'cat'", "garment"]),
    (('["face", "pet"]', '["fase"]'), ["did you mean face"]),
    (("steps = 30", "steps = 0"), ["steps", "between 1 and 150"]),
    (("steps = 30", 'steps = "30"'), ["steps", "expected int"]),
    (("cfg = 7", "cfg = 7\ncandidates = 65"), ["candidates", "between 1 and 64"]),
    (('negative = "lowres"', 'negative = "lowres"\nbase = "sd3"'), ["base", "'sd15'"]),
], ids=["size8", "size-text", "size-list", "sampler", "subject", "subject-typo", "steps", "steps-type",
        "candidates", "base"])
def test_bad_values_name_the_key(tmp_path, change, words):
    msg = error_of(tmp_path, GOOD.replace(*change), "bad.toml")
    assert "bad.toml" in msg
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("table, words", [
    ('[lora]\nname = "grain"\nweight = 2.5\n', ["[lora] weight", "between 0 and 2", "2.5"]),
    ('[lora]\nweight = 0.5\n', ["[lora] needs a name"]),
    ('[control]\npose = "close_up"\nweight = 3\n', ["[control] weight", "between 0 and 2"]),
    ('[control]\npose = "handstand"\n', ["handstand", "half_body", "close_up"]),
    ('[control]\npose = "close_up"\nstart = 0.8\nend = 0.2\n', ["[control]", "start < end"]),
    ('[control]\nspec = "openpose:standing:0.8"\nweight = 1\n', ["own weight"]),
    ('[control]\nweight = 1\n', ["pose", "spec"]),
    ('[control]\npose = "poses/missing.json"\n', ["[control] pose", "missing.json", "relative to the file"]),
    ('[detail]\npasses = ["elbow"]\n', ["[detail]", "unknown detector", "'elbow'"]),
    ('[detail]\npasses = ["face"]\ndenoising = 1.5\n', ["[detail]", "between 0 and 1"]),
    ('[upscale]\nmodel = "toy-4x"\nscale = 0\n', ["[upscale] scale", "between 1 and 8"]),
    ('[prompts]\ngarment = "{trigger} {class}, catalog"\n', ["[prompts]", "garment", "subjects"]),
    ('[prompts]\nface = "{trigger}, {mood} light"\n', ["unknown placeholder {mood}", "{trigger}", "{class}"]),
    ('[prompts]\npet = "{class} on a sofa"\n', ["[prompts] pet", "no {trigger}"]),
    ('[expect]\nbackground = "white"\n', ["[expect]", "toy"]),
], ids=["lora-weight", "lora-name", "control-weight", "pose-template", "window", "spec-and-weight", "no-pose",
        "pose-file", "detector", "detail-denoising", "upscale-scale", "prompt-subject", "placeholder",
        "no-trigger", "expect-sd15"])
def test_bad_tables_are_clear(tmp_path, table, words):
    msg = error_of(tmp_path, GOOD + table, "bad.toml")
    assert "bad.toml" in msg
    for w in words:
        assert w in msg, (w, msg)


TOY = """\
version = 1
base = "toy"
subjects = ["face", "garment"]
prompt = "{trigger}, 1girl, close-up, white background"
sampler = "DPM++ 2M"
size = "64x96"

[prompts]
garment = "1girl, upper body, {trigger}, white background"

[expect]
background = "white"

[expect.subject.face]
framing = "close-up"

[expect.subject.garment]
framing = "upper body"
"""


def test_expect_per_subject_and_checked_against_the_prompt(tmp_path):
    preset = load_style(write(tmp_path, "toy.toml", TOY))
    assert preset.expect_for("face") == {"background": "white", "framing": "close-up"}
    assert preset.expect_for("garment") == {"background": "white", "framing": "upper body"}
    wrong_bg = error_of(tmp_path, TOY.replace('background = "white"', 'background = "blue"'))
    assert "background" in wrong_bg and "'blue background'" in wrong_bg
    two = error_of(tmp_path, TOY.replace("close-up, white", "close-up, full body, white"))
    assert "framing" in two and "full body" in two
    value = error_of(tmp_path, TOY.replace('background = "white"', 'background = "beige"'))
    assert "beige" in value and "toy-world value" in value and "orange" in value


def test_pose_and_lora_paths_are_relative_to_the_file(tmp_path):
    from loracam.control.templates import POSES_DIR

    folder = tmp_path / "mine"
    (folder / "poses").mkdir(parents=True)
    (folder / "poses" / "me.json").write_bytes((POSES_DIR / "sitting.json").read_bytes())
    (folder / "grain.safetensors").write_bytes(b"")
    preset = load_style(write(folder, "posed.toml", GOOD + '[control]\npose = "poses/me.json"\nweight = 0.5\n'
                              '[lora]\nname = "grain.safetensors"\n'))
    assert preset.control.pose == str(folder.resolve() / "poses" / "me.json")
    assert preset.control.unit().source == preset.control.pose
    assert preset.lora.name == str(folder.resolve() / "grain.safetensors") and preset.lora.tag() == "<lora:grain:0.8>"
    spec = load_style(write(folder, "spec.toml", GOOD + '[control]\nspec = "openpose:poses/me.json:0.7:0:0.8"\n'))
    assert spec.control.unit().source == str(folder.resolve() / "poses" / "me.json")
    assert spec.control.unit().weight == 0.7


# ---------------------------------------------------------------------------------------------
# prompts


def test_prompt_for_fills_placeholders_and_prefers_the_subject_prompt(tmp_path):
    text = GOOD + '[prompts]\npet = "{trigger} {class}, sitting on a sofa"\n'
    preset = load_style(write(tmp_path, "p.toml", text))
    assert preset.prompt_for("face", "sks", "woman") == "photo of sks woman, grey backdrop"
    assert preset.prompt_for("pet", "rex", "dog") == "rex dog, sitting on a sofa"
    assert preset.suits("pet") and not preset.suits("garment")
    with pytest.raises(LoracamError, match="is for face, pet, not garment"):
        preset.prompt_for("garment", "testdress", "dress")
    with pytest.raises(LoracamError, match="needs the class word"):
        preset.prompt_for("face", "sks", "")
    with pytest.raises(LoracamError, match="unknown subject 'fase'.*did you mean face"):
        preset.prompt_for("fase", "sks", "woman")


def test_unknown_placeholder_in_code_built_preset():
    with pytest.raises(LoracamError, match=r"unknown placeholder \{who\}"):
        StylePreset(version=1, name="x", prompt="{trigger} {who}")
    preset = StylePreset(version=1, name="x", prompt="{trigger} {class}, {red|blue} dress")  # dynamic prompts
    assert preset.prompt_for("face", "sks", "woman") == "sks woman, {red|blue} dress"
    with pytest.raises(LoracamError, match="upgrade loracam"):
        StylePreset(version=STYLE_VERSION + 1, name="x", prompt="{trigger}")


# ---------------------------------------------------------------------------------------------
# folders and the listing


def test_user_folder_adds_and_overrides(tmp_path, shipped):
    user = tmp_path / "styles"
    write(user, "studio.toml", GOOD.replace("a test style", "my own studio"))
    write(user, "mine.toml", GOOD)
    found = find_styles(dirs=[user])
    assert set(found) == set(shipped) | {"mine"}
    assert found["studio"].description == "my own studio"
    assert found["studio"].overrides == shipped["studio"].source
    assert found["mine"].overrides is None and found["business"] == shipped["business"]
    text = list_styles(found)
    assert "overrides the shipped one" in text and str(user / "studio.toml") in text
    # a later folder overrides an earlier one, and says which file it replaced
    later = tmp_path / "later"
    write(later, "mine.toml", GOOD.replace("a test style", "later"))
    again = find_styles(dirs=[user, later])
    assert again["mine"].description == "later" and again["mine"].overrides == user / "mine.toml"
    assert f"(overrides {user / 'mine.toml'})" in list_styles(again)


def test_user_folder_errors(tmp_path):
    with pytest.raises(LoracamError, match="style folder not found"):
        find_styles(dirs=[tmp_path / "nope"])
    user = tmp_path / "twice"
    write(user, "a.toml", GOOD.replace("version = 1", 'version = 1\nname = "same"'))
    write(user, "b.toml", GOOD.replace("version = 1", 'version = 1\nname = "same"'))
    with pytest.raises(LoracamError, match="both define the style 'same'"):
        find_styles(dirs=[user])
    broken = tmp_path / "broken"
    write(broken, "oops.toml", GOOD.replace("steps =", "stpes ="))
    with pytest.raises(LoracamError, match=r"oops\.toml.*did you mean steps"):
        find_styles(dirs=[broken])


def test_list_styles_mentions_every_style_and_filters_by_base(shipped):
    text = list_styles(shipped)
    for name, p in shipped.items():
        assert re.search(rf"^{re.escape(name)}  \[{p.base}: ", text, re.M), name
        assert p.description in text
    assert "512x768, DPM++ 2M Karras, 30 steps, CFG 7, 8 candidates" in text
    assert "from shipped" in text
    toy = list_styles(shipped, base_kind="toy")
    assert "toy-ocean" in toy and not re.search(r"^studio ", toy, re.M)
    assert list_styles({}, base_kind="toy") == "no styles for toy bases"
    xl = list_styles(shipped, base_kind="sdxl")
    assert "studio-xl  [sdxl: " in xl and "832x1216" in xl and not re.search(r"^studio ", xl, re.M)
    with pytest.raises(LoracamError, match="unknown base kind"):
        list_styles(shipped, base_kind="sd3")


def test_an_sdxl_base_gets_the_sdxl_styles_at_sdxl_sizes():
    from loracam.studio.job import StudioConfig, _pick_styles, style_base

    assert style_base("random:tiny-sdxl") == "sdxl" and style_base("random:tiny") == "sd15"
    assert style_base("toy") == "toy"
    picked = _pick_styles(StudioConfig("j", kind="portrait", subject="face", base="random:tiny-sdxl"))
    assert {p.name for p in picked} == {"studio-xl", "business-xl"}
    assert all(p.size == (832, 1216) for p in picked)
    with pytest.raises(LoracamError, match="'studio' is written for a sd15 base.*pick styles marked sdxl"):
        _pick_styles(StudioConfig("j", kind="portrait", subject="face", base="random:tiny-sdxl", styles=("studio",)))


def test_get_style_suggests_the_likely_name(shipped):
    assert st.get_style(shipped, "film") is shipped["film"]
    with pytest.raises(LoracamError, match="did you mean studio"):
        st.get_style(shipped, "studoi")


def test_a_preset_survives_the_job_stores_round_trip(shipped, tmp_path):
    """The studio saves the chosen presets' content with the job (to_dict -> JSON -> from_dict)."""
    import json

    from loracam.config import from_dict, to_dict

    user = write(tmp_path, "posed.toml", GOOD + '[control]\npose = "close_up"\nweight = 0.5\n[lora]\nname = "grain"\n')
    for p in [*shipped.values(), load_style(user)]:
        again = from_dict(StylePreset, json.loads(json.dumps(to_dict(p))), where="job")
        assert again == p and again.source == p.source, p.name
        assert again.expect_for(p.subjects[0]) == p.expect_for(p.subjects[0])
