"""LoRA files: every layout reads to the same kohya modules, clear errors for the rest, kohya writing."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loracam.errors import LoracamError
from loracam.lora import LoraLibrary, LoraModule, LoraStack, kohya_name, random_lora, read_lora, write_kohya
from loracam.models import HashCache, LoadOptions, build_random, load_base, tiny_configs
from rounding import delta_bound

CPU32 = LoadOptions(torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def base():
    return load_base("random:tiny", CPU32)


@pytest.fixture(scope="module")
def peft_lora(tmp_path_factory):
    """A LoRA made with peft on fresh tiny models and saved by diffusers, with peft's own deltas per layer."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    unet, _, te, _ = build_random(tiny_configs())
    # alpha != r everywhere, a per-layer alpha_pattern, 1x1 convs (proj_in) and 3x3 convs (conv1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in",
                                                                    "conv1"],
                                alpha_pattern={"attn2.to_k": 2}, init_lora_weights=False))
    te.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                              init_lora_weights=False))
    folder = tmp_path_factory.mktemp("peft")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(te),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te.peft_config["default"].to_dict(),
    )
    deltas = {}
    for component, root in (("unet", unet), ("te", te)):
        for path, module in root.named_modules():
            if isinstance(module, LoraLayer):
                deltas[kohya_name(component, path)] = (path, module.get_delta_weight("default").detach())
    return folder / "pytorch_lora_weights.safetensors", deltas


def _assert_same_deltas(lora, deltas: dict) -> None:
    assert set(lora.modules) == set(deltas)
    for name, (_, expected) in deltas.items():
        module = lora.modules[name]
        assert ((module.delta() - expected).abs() <= delta_bound(module)).all(), name


# ---------------------------------------------------------------------------------------------
# 4. reading every layout


def test_peft_file_reads_to_kohya_names_with_peft_deltas(peft_lora):
    path, deltas = peft_lora
    lora = read_lora(path)
    assert lora.layout == "peft" and lora.family == "sd1"
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in lora.modules  # text_model_ added back
    assert "lora_unet_down_blocks_0_resnets_0_conv1" in lora.modules
    assert lora.modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"].scale == 0.5
    assert lora.modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"].scale == 2.0
    _assert_same_deltas(lora, deltas)


def test_kohya_and_legacy_layouts_read_to_the_same_modules(peft_lora, tmp_path):
    path, deltas = peft_lora
    peft = read_lora(path)
    kohya = read_lora(write_kohya(tmp_path / "k.safetensors", peft.modules, {}))
    assert kohya.layout == "kohya"
    _assert_same_deltas(kohya, deltas)

    legacy_path = tmp_path / "legacy.safetensors"
    save_file(_legacy_tensors(peft.modules, deltas), str(legacy_path))
    legacy = read_lora(legacy_path)
    assert legacy.layout == "diffusers-legacy"
    _assert_same_deltas(legacy, deltas)


def _legacy_tensors(modules: dict[str, LoraModule], deltas: dict) -> dict[str, torch.Tensor]:
    """The old diffusers attention-processor layout, written out by hand from kohya modules."""
    procs = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
    te_procs = {"q_proj": "to_q_lora", "k_proj": "to_k_lora", "v_proj": "to_v_lora", "out_proj": "to_out_lora"}
    out = {}
    for i, (name, m) in enumerate(sorted(modules.items())):
        path = deltas[name][0]  # the dotted module path
        if m.component == "unet":
            leaf = next((p for p in procs if path.endswith("." + p)), None)
            stem = f"unet.{path[: -len(leaf) - 1]}.processor.{procs[leaf]}" if leaf else f"unet.{path}.lora"
        else:  # both spellings of the old text-encoder layout
            parent, leaf = path.rsplit(".", 1)
            stem = (f"text_encoder.{parent}.{te_procs[leaf]}" if i % 2
                    else f"text_encoder.text_model.{path}.lora_linear_layer")
        out[f"{stem}.down.weight"] = m.down
        out[f"{stem}.up.weight"] = m.up
        out[f"{stem}.alpha"] = torch.tensor(m.alpha)
    return out


def test_diffusers_kohya_converter_te_names_are_normalized(peft_lora, tmp_path):
    """diffusers' convert_state_dict_to_kohya writes lora_te1_encoder_layers_* for an SD1 text encoder."""
    from diffusers.utils import convert_state_dict_to_kohya

    path, deltas = peft_lora
    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
    kohya_sd = convert_state_dict_to_kohya(sd)
    assert any(k.startswith("lora_te1_encoder_layers_0_") for k in kohya_sd)  # the pitfall, as documented
    converted = tmp_path / "converted.safetensors"
    save_file(kohya_sd, str(converted))
    lora = read_lora(converted)
    assert lora.family == "sd1"
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in lora.modules
    # the converter writes alpha = rank, so only the names (not the scales) match peft's deltas
    assert set(lora.modules) == set(deltas)


def test_alias_from_ss_output_name(base, tmp_path):
    mods = random_lora(base.unet, base.text_encoder, seed=3)
    path = write_kohya(tmp_path / "sks_face_v3-000010.safetensors", mods, {"ss_output_name": "sks_face"})
    lora = read_lora(path)
    assert (lora.name, lora.stem) == ("sks_face", "sks_face_v3-000010")
    plain = read_lora(write_kohya(tmp_path / "testdress.safetensors", mods, {}))
    assert plain.name == "testdress"


@pytest.mark.parametrize("key, variant", [
    ("lora_unet_down_blocks_0_resnets_0_conv1.hada_t1", "Tucker"),
    ("lora_unet_down_blocks_0_resnets_0_conv1.lokr_t2", "LoKr with Tucker"),
    ("lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight", "lora_mid"),
    ("lora_unet_down_blocks_0_attentions_0_proj_in.oft_blocks", "OFT"),
])
def test_lycoris_variants_are_named(tmp_path, key, variant):
    path = tmp_path / "lyco.safetensors"
    stem = key.split(".")[0]
    save_file({key: torch.ones(2, 2), f"{stem}.alpha": torch.tensor(1.0)}, str(path))
    with pytest.raises(LoracamError, match=f"lyco.safetensors is a .*{variant}.*LoRA, LoCon, LoHa and LoKr"):
        read_lora(path)


def _kohya_module(name: str, din: int, dout: int, dim: int = 2) -> dict[str, torch.Tensor]:
    return {f"{name}.lora_down.weight": torch.randn(dim, din), f"{name}.lora_up.weight": torch.randn(dout, dim),
            f"{name}.alpha": torch.tensor(1.0)}


def test_sdxl_lora_on_sd1_base_names_the_family(base, tmp_path):
    path = tmp_path / "testdress_xl.safetensors"
    tensors = {
        **_kohya_module("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048, 640),
        **_kohya_module("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
        **_kohya_module("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280, 1280),
    }
    save_file(tensors, str(path))
    lora = read_lora(path)
    assert lora.family == "sdxl"
    with pytest.raises(LoracamError, match="testdress_xl.safetensors is an SDXL LoRA; the base model is SD1.x"):
        LoraStack(base.unet, base.text_encoder, [lora])


def test_sd2_lora_is_told_from_its_text_encoder_width(base, tmp_path):
    path = tmp_path / "sd2.safetensors"
    save_file(_kohya_module("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 1024, 1024), str(path))
    lora = read_lora(path)
    assert lora.family == "sd2"
    with pytest.raises(LoracamError, match="is an SD2.x LoRA"):
        LoraStack(base.unet, base.text_encoder, [lora])


def test_unmatched_keys_are_listed(base, tmp_path):
    mods = random_lora(base.unet, base.text_encoder, seed=4, te=False)
    path = tmp_path / "odd.safetensors"
    tensors = {k: v for n, m in mods.items() for k, v in (
        (f"{n}.lora_down.weight", m.down), (f"{n}.lora_up.weight", m.up))}
    tensors.update(_kohya_module("lora_unet_down_blocks_9_attentions_0_proj_in", 32, 32))
    tensors.update(_kohya_module("lora_te_text_model_encoder_layers_40_mlp_fc1", 32, 64))
    save_file(tensors, str(path))
    with pytest.raises(LoracamError, match=r"odd.safetensors: 2 of its 194 modules match no layer") as err:
        LoraStack(base.unet, base.text_encoder, [read_lora(path)])
    assert "lora_unet_down_blocks_9_attentions_0_proj_in" in str(err.value)
    assert "lora_te_text_model_encoder_layers_40_mlp_fc1" in str(err.value)


def test_shape_mismatch_is_a_clear_error(base, tmp_path):
    """An SD1.5-size LoRA on the tiny base: same names, other widths."""
    path = tmp_path / "big.safetensors"
    save_file(_kohya_module("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
              str(path))
    with pytest.raises(LoracamError, match=r"big.safetensors does not fit.*attn1_to_q \(LoRA 320->320, layer 32->32"):
        LoraStack(base.unet, base.text_encoder, [read_lora(path)])


def test_damaged_missing_and_foreign_files(base, tmp_path):
    good = write_kohya(tmp_path / "good.safetensors", random_lora(base.unet, base.text_encoder), {})
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoracamError, match="cut.safetensors could not be read.*damaged.*again"):
        read_lora(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(LoracamError, match="junk.safetensors could not be read"):
        read_lora(tmp_path / "junk.safetensors")
    with pytest.raises(LoracamError, match="LoRA file not found.*nope.safetensors"):
        read_lora(tmp_path / "nope.safetensors")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, str(tmp_path / "ckpt.safetensors"))
    with pytest.raises(LoracamError, match="ckpt.safetensors is a base model checkpoint, not a LoRA"):
        read_lora(tmp_path / "ckpt.safetensors")
    (tmp_path / "old.pt").write_bytes(b"\x80\x02")
    with pytest.raises(LoracamError, match="old.pt is a pickle file"):
        read_lora(tmp_path / "old.pt")
    half = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 32, 1, 1)}
    save_file(half, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoracamError, match="half.safetensors is incomplete.*no up weight"):
        read_lora(tmp_path / "half.safetensors")


# ---------------------------------------------------------------------------------------------
# 5. writing kohya files


def test_write_kohya_round_trip_and_hash(base, tmp_path):
    mods = random_lora(base.unet, base.text_encoder, dim=4, alpha=1, seed=5, conv=True)
    meta = {"ss_output_name": "testdress", "ss_network_dim": 4, "ss_tag_frequency": {"img": {"dress": 3}},
            "ss_v2": False, "sshs_model_hash": "stale"}
    path = write_kohya(tmp_path / "testdress.safetensors", mods, meta)
    with safe_open(str(path), "pt") as f:
        stored = f.metadata()
        assert f.get_tensor("lora_unet_down_blocks_0_resnets_0_conv1.alpha").ndim == 0
        assert len(list(f.keys())) == 3 * len(mods)
    assert stored["ss_network_dim"] == "4" and stored["ss_v2"] == "False"
    assert stored["ss_tag_frequency"] == '{"img": {"dress": 3}}'
    lora = read_lora(path)
    assert lora.layout == "kohya" and set(lora.modules) == set(mods)
    for name, m in mods.items():
        got = lora.modules[name]
        assert torch.equal(got.down, m.down) and torch.equal(got.up, m.up) and got.alpha == 1.0
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    body_hash = hashlib.sha256(path.read_bytes()[8 + n:]).hexdigest()
    assert stored["sshs_model_hash"] == body_hash == HashCache(None).addnet_hash(path)
    assert [p.name for p in tmp_path.iterdir()] == ["testdress.safetensors"]  # no temporary file left


def test_write_kohya_refuses_to_overwrite(base, tmp_path):
    path = tmp_path / "mine.safetensors"
    write_kohya(path, random_lora(base.unet, base.text_encoder, seed=1), {})
    before = path.read_bytes()
    with pytest.raises(LoracamError, match="mine.safetensors already exists"):
        write_kohya(path, random_lora(base.unet, base.text_encoder, seed=2), {})
    assert path.read_bytes() == before
    write_kohya(path, random_lora(base.unet, base.text_encoder, seed=2), {}, overwrite=True)
    assert path.read_bytes() != before
    assert len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------------------------------------
# library


def test_library_finds_by_stem_then_alias_and_hashes(base, tmp_path):
    mods = random_lora(base.unet, base.text_encoder, seed=6)
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "sub").mkdir(parents=True)
    p1 = write_kohya(tmp_path / "a" / "testdress_v2.safetensors", mods, {"ss_output_name": "testdress"})
    p2 = write_kohya(tmp_path / "b" / "sub" / "myshoes.safetensors", mods, {"ss_output_name": "testdress_v2"})
    lib = LoraLibrary([tmp_path / "a", tmp_path / "b"])
    assert lib.find("testdress_v2") == p1  # the stem wins over another file's alias
    assert lib.find("testdress") == p1
    assert lib.find("myshoes") == p2
    lora = lib.load("testdress")
    assert lib.load("testdress_v2") is lora  # cached per file version
    assert lib.short_hash("testdress") == lora.metadata["sshs_model_hash"][:12]
    write_kohya(p1, random_lora(base.unet, base.text_encoder, seed=7), {}, overwrite=True)
    assert lib.load("testdress_v2") is not lora
    with pytest.raises(LoracamError, match=r"'myshoe' not found.*did you mean 'myshoes'.*Available: testdress_v2"):
        lib.find("myshoe")
    with pytest.raises(LoracamError, match="no .safetensors LoRA files.*does not exist"):
        LoraLibrary([tmp_path / "missing"]).find("x")


# ---------------------------------------------------------------------------------------------
# 6. kohya's default targets on the full-size SD1.5 architecture


def test_random_lora_on_full_sd15_has_kohyas_264_modules(tmp_path):
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from loracam.models import sd15_configs

    cfg = sd15_configs()
    te_cfg = {k: v for k, v in cfg["text_encoder"].items() if k not in ("architectures", "torch_dtype")}
    with init_empty_weights():  # shapes only: no 1 GB of random weights
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    mods = random_lora(unet, te)
    assert len(mods) == 264
    assert sum(m.component == "unet" for m in mods.values()) == 192
    shapes = {
        "lora_unet_down_blocks_0_attentions_0_proj_in": ((4, 320, 1, 1), (320, 4, 1, 1)),
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": ((4, 768), (1280, 4)),
        "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj": ((4, 320), (2560, 4)),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0": ((4, 1280), (1280, 4)),
        "lora_te_text_model_encoder_layers_0_mlp_fc1": ((4, 768), (3072, 4)),
        "lora_te_text_model_encoder_layers_11_self_attn_out_proj": ((4, 768), (768, 4)),
    }
    for name, (down, up) in shapes.items():
        assert (tuple(mods[name].down.shape), tuple(mods[name].up.shape)) == (down, up), name
    path = write_kohya(tmp_path / "full.safetensors", mods, {"ss_network_dim": "4"})
    with safe_open(str(path), "pt") as f:
        assert len(list(f.keys())) == 792
    lora = read_lora(path)
    assert lora.family == "sd1"
    assert LoraStack(unet, te, [lora]).patched_layers == 264  # every name matches the real architecture

    locon = random_lora(unet, te, conv=True)
    # kohya's conv_dim adds whole ResNet/sampler blocks: 44 conv1/conv2 + 6 sampler convs (3x3),
    # 22 time_emb_proj and 14 conv_shortcut (at the network dim)
    assert len(locon) == 264 + 86
    assert tuple(locon["lora_unet_down_blocks_0_resnets_0_conv1"].down.shape) == (4, 320, 3, 3)
    assert "lora_unet_down_blocks_2_downsamplers_0_conv" in locon
    assert "lora_unet_up_blocks_2_upsamplers_0_conv" in locon


def test_a_lycoris_loha_reads_to_peft_lohas_deltas_and_applies_them(tmp_path):
    """LyCORIS LoHa (hada_w1_a/b, hada_w2_a/b, alpha under kohya names: civitai's LyCORIS files), made with peft's
    LoHa on linears, 1x1 and 3x3 convs and the text encoder: read as plain low-rank modules of rank r^2 whose
    deltas are peft's, fused and per sample."""
    from peft import LoHaConfig
    from peft.tuners.loha import LoHaLayer

    unet, _, te, _ = build_random(tiny_configs())
    unet.add_adapter(LoHaConfig(r=3, alpha=5, target_modules=["to_q", "to_k", "to_out.0", "proj_in", "conv1"],
                                init_weights=False))
    te.add_adapter(LoHaConfig(r=2, alpha=2, target_modules=["q_proj", "v_proj"], init_weights=False))
    tensors, deltas, layers = {}, {}, {}
    for component, root in (("unet", unet), ("te", te)):
        for path, module in root.named_modules():
            if isinstance(module, LoHaLayer):
                name = kohya_name(component, path)
                for part in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
                    tensors[f"{name}.{part}"] = getattr(module, part)["default"].detach().contiguous()
                tensors[f"{name}.alpha"] = torch.tensor(float(module.alpha["default"]))
                deltas[name] = module.get_delta_weight("default").detach()
                layers[name] = path
    assert any(d.ndim == 4 and d.shape[-1] == 3 for d in deltas.values())  # a 3x3 conv is among them
    save_file(tensors, str(tmp_path / "loha.safetensors"))
    lora = read_lora(tmp_path / "loha.safetensors")
    assert lora.layout == "kohya" and lora.family == "sd1" and set(lora.modules) == set(deltas)
    for name, expected in deltas.items():
        m = lora.modules[name]
        assert m.dim == (9 if m.component == "unet" else 4)  # r x r columns
        assert m.scale == pytest.approx(5 / 3 if m.component == "unet" else 1.0)  # LyCORIS' alpha / r, kept
        assert ((m.delta().reshape(expected.shape) - expected).abs() <= delta_bound(m).reshape(expected.shape)).all()

    # applied on a fresh copy of the same base (same seed: peft wrapped the first one's layers): W + peft's
    # delta fused, W x + delta x per sample, and a row whose multiplier is 0 is the base's own output
    unet2, _, te2, _ = build_random(tiny_configs())
    roots = {"unet": unet2, "te": te2}
    base_layers = {n: roots[lora.modules[n].component].get_submodule(layers[n]) for n in deltas}
    originals = {n: layer.weight.detach().clone() for n, layer in base_layers.items()}
    stack = LoraStack(unet2, te2, [lora])
    assert stack.patched_layers == len(deltas)
    conv = next(n for n, d in deltas.items() if d.ndim == 4 and d.shape[-1] == 3)
    layer = base_layers[conv]
    x = torch.randn(2, layer.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.nn.functional.conv2d(x, originals[conv] + deltas[conv], layer.bias, layer.stride, layer.padding)
        plain = layer(x)
        with stack.fused(te=[1.0], unet=[1.0]):
            for n, expected in deltas.items():
                bound = delta_bound(lora.modules[n]).reshape(expected.shape) + 2 ** -23 * (
                    originals[n].abs() + expected.abs())
                assert ((base_layers[n].weight - (originals[n] + expected)).abs() <= bound).all(), n
            fused = layer(x)
        with stack.per_sample() as ctl:
            ctl.set_rows("unet", torch.tensor([[1.0], [0.0]]))
            rows = layer(x)
    # fused and per-sample outputs differ from ``want`` in summation order only: a 3x3 conv's sums of 9 x in terms
    assert (fused - want).abs().max() < 1e-4 and (rows[0] - want[0]).abs().max() < 1e-4
    assert torch.equal(rows[1], plain[1]) and (want - plain).abs().max() > 1e-2  # and the LoHa does something


def test_a_lycoris_lokr_reads_to_the_kronecker_delta_a1111_and_comfyui_apply(tmp_path):
    """LyCORIS LoKr (lokr_w1 whole, lokr_w2 as a rank-r product; convs flattened), made with peft's LoKr: read as a
    plain low-rank module whose delta is peft's kron(W1, W2) x alpha / r. Where neither factor is decomposed,
    A1111 and ComfyUI take the scale as 1 (there is no rank to divide by) and so does loracam."""
    from peft import LoKrConfig
    from peft.tuners.lokr import LoKrLayer

    unet, _, te, _ = build_random(tiny_configs())
    unet.add_adapter(LoKrConfig(r=2, alpha=3, target_modules=["to_q", "to_out.0", "proj_in", "conv1"],
                                init_weights=False))
    tensors, deltas = {}, {}
    for path, module in unet.named_modules():
        if isinstance(module, LoKrLayer):
            name = kohya_name("unet", path)
            present = {}
            for part in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"):
                if "default" in getattr(module, part):
                    present[part] = getattr(module, part)["default"].detach().contiguous()
            tensors.update({f"{name}.{k}": v for k, v in present.items()})
            tensors[f"{name}.alpha"] = torch.tensor(3.0)
            decomposed = "lokr_w2_a" in present or "lokr_w1_a" in present
            deltas[name] = module.get_delta_weight("default").detach() / (1 if decomposed else 1.5)
    assert any("_a" in k for k in tensors) and any(k.endswith("lokr_w1") for k in tensors)
    # a module with both factors whole (peft decomposes W2 at these widths; small LyCORIS factors come whole)
    whole = "lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn1_to_k"  # a 64 -> 64 linear
    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(8, 4, generator=g), torch.randn(8, 16, generator=g)
    tensors.update({f"{whole}.lokr_w1": w1, f"{whole}.lokr_w2": w2, f"{whole}.alpha": torch.tensor(3.0)})
    deltas[whole] = torch.kron(w1, w2)  # scale 1: no rank to divide alpha by
    assert any(d.ndim == 4 and d.shape[-1] == 3 for d in deltas.values())
    save_file(tensors, str(tmp_path / "lokr.safetensors"))
    lora = read_lora(tmp_path / "lokr.safetensors")
    assert set(lora.modules) == set(deltas)
    for name, expected in deltas.items():
        m = lora.modules[name]
        assert ((m.delta().reshape(expected.shape) - expected).abs() <= delta_bound(m).reshape(expected.shape)).all()
    stack = LoraStack(unet.__class__.from_config(unet.config), None, [lora])  # every module fits its layer
    assert stack.patched_layers == len(deltas)
