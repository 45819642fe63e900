"""The trainable LoRA network: kohya's targets at full size, training touches only LoRA weights, exported
files load in loracam and diffusers with the live model's effect, exact resume / disable / removal, seeding."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from loracam.errors import LoracamError
from loracam.lora import LoraStack, read_lora, write_kohya
from loracam.lora.naming import kohya_targets
from loracam.models import LoadOptions, load_base, sd15_configs
from loracam.train.network import LoraNetwork, NetworkConfig, lora_metadata
from rounding import U, assert_same_up_to_rounding, in_float64, rounding, sum_bound

CPU32 = LoadOptions(torch.device("cpu"), torch.float32)
PROMPTS = ["a photo of sks woman", "a red dress"]
Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
PROJ_IN = "down_blocks.0.attentions.0.proj_in"
CONV1 = "down_blocks.0.resnets.0.conv1"
TE_Q = "encoder.layers.0.self_attn.q_proj"


def _base():
    """A private random:tiny base (the same weights every time); the network wraps its layers in place."""
    return load_base("random:tiny", CPU32)


def _inputs(base, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = base.tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt").input_ids
    # 16x16 latents: at 8x8 the mid block sees one token, and self-attention's q/k get no gradient
    sample = torch.randn(2, 4, 16, 16, generator=g)
    target = torch.randn(2, 4, 16, 16, generator=g)
    return ids, sample, torch.tensor([10, 500]), target


def _outputs(base, ids, sample, t) -> tuple[torch.Tensor, torch.Tensor]:
    """(text-encoder hidden states, U-Net output on them)."""
    with torch.no_grad():
        ctx = base.text_encoder(ids).last_hidden_state
        return ctx, base.unet(sample, t, ctx).sample


def _train(net: LoraNetwork, base, steps: int = 3, seed: int = 0) -> None:
    """A few AdamW steps on a fixed MSE objective through the text encoder and the U-Net."""
    ids, sample, t, target = _inputs(base, seed)
    opt = torch.optim.AdamW(net.param_groups(1e-2, 1e-2))
    for _ in range(steps):
        ctx = base.text_encoder(ids).last_hidden_state
        loss = F.mse_loss(base.unet(sample, t, ctx).sample, target)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _snapshot(*models) -> list[tuple[str, torch.nn.Parameter, torch.Tensor, bool]]:
    return [(f"{i}.{n}", p, p.detach().clone(), p.requires_grad)
            for i, m in enumerate(models) for n, p in m.named_parameters()]


# ---------------------------------------------------------------------------------------------
# 1. kohya's targets on the full-size SD1.5 architecture


@pytest.fixture(scope="module")
def sd15():
    """Full-size SD1.5 U-Net and text encoder with uninitialized weights: built on meta, then given
    (lazily committed) CPU storage, so the LoRA layers peft creates are real tensors that can be written."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = sd15_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(configs["unet"])
        te_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "torch_dtype")}
        te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    unet.to_empty(device="cpu")
    te.to_empty(device="cpu")
    unet.requires_grad_(False)
    te.requires_grad_(False)
    return unet, te


def test_default_network_on_sd15_is_kohyas_264_modules_792_tensors(sd15, tmp_path):
    unet, te = sd15
    expected = [name for name, _ in kohya_targets(unet, te)]
    net = LoraNetwork(unet, te, NetworkConfig(train_text_encoder=True))
    try:
        assert net.names == expected
        assert len(net.names) == 264
        assert sum(n.startswith("lora_unet_") for n in net.names) == 192
        assert sum(n.startswith("lora_te_text_model_encoder_layers_") for n in net.names) == 72
        path = write_kohya(tmp_path / "sd15.safetensors", net.modules(), lora_metadata(net.cfg))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        assert len(keys) == 792
        assert f"lora_unet_{PROJ_IN.replace('.', '_')}.lora_down.weight" in keys
        assert "lora_te_text_model_encoder_layers_11_mlp_fc2.alpha" in keys
        # kohya's shapes: 1x1 conv proj_in [4, 320, 1, 1], linears [4, in] / [out, 4]
        m = net.modules()
        assert tuple(m["lora_unet_down_blocks_0_attentions_0_proj_in"].down.shape) == (4, 320, 1, 1)
        assert tuple(m["lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k"].down.shape) == (4, 768)
        assert tuple(m["lora_te_text_model_encoder_layers_0_mlp_fc1"].up.shape) == (3072, 4)
        assert net.num_params == sum(p.numel() for p in net.parameters())
    finally:
        net.remove()


def test_attention_targets_on_sd15_are_qkv_out_only(sd15):
    """FaceChain's set. SD1.5 has 16 Transformer2DModels (6 down, 1 mid, 9 up), each with one transformer
    block of two attentions (attn1, attn2) with four projections: 16 x 2 x 4 = 128 U-Net modules."""
    unet, te = sd15
    net = LoraNetwork(unet, None, NetworkConfig(targets="attention"))
    try:
        assert len(net.names) == 128
        assert all(n.startswith("lora_unet_") for n in net.names)
        suffixes = {n.split("_transformer_blocks_0_")[1] for n in net.names}
        assert suffixes == {f"attn{i}_{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out_0")}
        assert net.parameters("te") == []
    finally:
        net.remove()
    net = LoraNetwork(unet, te, NetworkConfig(targets="attention", train_text_encoder=True))
    try:
        te_names = [n for n in net.names if n.startswith("lora_te_")]
        assert len(te_names) == 12 * 4 and not any("mlp" in n for n in te_names)
    finally:
        net.remove()


def test_conv_dim_adds_the_3x3_convs_on_sd15(sd15):
    unet, te = sd15
    default = [name for name, _ in kohya_targets(unet, None)]
    with_conv = [name for name, _ in kohya_targets(unet, None, conv=True)]
    net = LoraNetwork(unet, None, NetworkConfig(dim=8, alpha=4, conv_dim=2))
    try:
        assert net.names == with_conv
        extra = set(with_conv) - set(default)
        # kohya's conv_dim adds whole ResNet/sampler blocks: 22 x 2 convs + 3 + 3 sampler convs (3x3, at
        # conv_dim), and their 22 time_emb_proj and 14 1x1 conv_shortcut layers (at the network dim)
        assert len(extra) == 86
        is_3x3 = {n for n, m in net.modules().items() if m.down.ndim == 4 and tuple(m.down.shape[2:]) == (3, 3)}
        assert len(is_3x3) == 50 and is_3x3 <= extra
        for name, m in net.modules().items():
            rank, alpha = (2, 1.0) if name in is_3x3 else (8, 4.0)
            assert (m.dim, m.alpha) == (rank, alpha), name
            if name in is_3x3:
                assert tuple(m.up.shape[2:]) == (1, 1)
    finally:
        net.remove()


# ---------------------------------------------------------------------------------------------
# 2. training changes only the LoRA; the scale is alpha / dim


def test_training_changes_only_lora_parameters():
    base = _base()
    before = _snapshot(base.unet, base.text_encoder, base.vae)
    net = LoraNetwork(base.unet, base.text_encoder, NetworkConfig(train_text_encoder=True))
    init = net.state_dict()
    trainable = {id(p) for m in (base.unet, base.text_encoder) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in net.parameters()}
    assert all(p.dtype == torch.float32 for p in net.parameters())

    _train(net, base, steps=3)

    for name, param, value, _ in before:
        assert torch.equal(param.detach(), value), f"base parameter {name} changed"
        assert not param.requires_grad, f"base parameter {name} is trainable"
    after = net.state_dict()
    changed = [k for k in after if not torch.equal(after[k], init[k])]
    assert len(changed) == len(after), "every LoRA tensor (U-Net and text encoder) must have been updated"
    ups = [v for k, v in after.items() if k.endswith("lora_up.weight")]
    assert all(float(u.abs().max()) > 1e-3 for u in ups), "the LoRA delta (up starts at 0) must be non-zero"


def test_output_change_is_alpha_over_dim_up_down_x():
    base = _base()
    cfg = NetworkConfig(dim=4, alpha=3.0, conv_dim=2, conv_alpha=1.5, train_text_encoder=True)
    net = LoraNetwork(base.unet, base.text_encoder, cfg)
    g = torch.Generator().manual_seed(1)
    known = {k: torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}
    net.load_state_dict(known)

    def check(model, path, x, scale):
        layer = model.get_submodule(path)
        name = ("lora_unet_" if model is base.unet else "lora_te_text_model_") + path.replace(".", "_")
        down, up = known[f"{name}.lora_down.weight"], known[f"{name}.lora_up.weight"]
        with torch.no_grad():
            out = layer(x)
            change = out - layer.get_base_layer()(x)
        if down.ndim == 2:
            expected = scale * x @ down.T @ up.T  # (alpha/dim) up @ down @ x, batched
            magnitude = scale * x.abs() @ down.abs().T @ up.abs().T
        else:
            conv = layer.get_base_layer()
            h = F.conv2d(x, down, None, conv.stride, conv.padding)
            expected = scale * F.conv2d(h, up)
            magnitude = scale * F.conv2d(F.conv2d(x.abs(), down.abs(), None, conv.stride, conv.padding), up.abs())
        # the LoRA path and `expected` are the same chained products (tests/rounding.py), over x's features
        # (times the kernel's taps), the rank and the scaling; then the layer adds the base's output and the
        # test subtracts it again: one rounding each, at the size of the sum
        k = down[0].numel() + down.shape[0] + 1
        bound = sum_bound(magnitude, k) + 2 * U * (out.abs() + change.abs())
        assert ((change - expected).abs() <= bound).all(), path
        assert net.modules()[name].scale == scale
        return float(expected.abs().max())

    assert check(base.unet, Q, torch.randn(2, 16, 32, generator=g), 3.0 / 4) > 0.1
    assert check(base.unet, PROJ_IN, torch.randn(2, 32, 8, 8, generator=g), 3.0 / 4) > 0.1
    assert check(base.unet, CONV1, torch.randn(2, 32, 8, 8, generator=g), 1.5 / 2) > 0.1
    assert check(base.text_encoder, TE_Q, torch.randn(2, 7, 32, generator=g), 3.0 / 4) > 0.1


# ---------------------------------------------------------------------------------------------
# 3./4. export: the written file has the live model's effect in loracam and in diffusers


def _round_trip(cfg: NetworkConfig, tmp_path) -> dict:
    """Train, write, read back; compare the live model with LoraStack.fused and with diffusers' loader."""
    base = _base()
    ids, sample, t, _ = _inputs(base, seed=4)
    plain = _outputs(base, ids, sample, t)
    net = LoraNetwork(base.unet, base.text_encoder, cfg)
    _train(net, base, steps=3)
    live = _outputs(base, ids, sample, t)
    path = write_kohya(tmp_path / "trained.safetensors", net.modules(), lora_metadata(cfg))
    lora = read_lora(path)
    assert lora.layout == "kohya" and lora.family == "sd1" and set(lora.modules) == set(net.names)

    fresh = _base()
    with LoraStack(fresh.unet, fresh.text_encoder, [lora]).fused(te=[1.0], unet=[1.0]):
        fused = _outputs(fresh, ids, sample, t)

    from diffusers import StableDiffusionPipeline

    other = _base()
    pipe = StableDiffusionPipeline(**other.components())
    pipe.load_lora_weights(str(path))
    loaded = _outputs(other, ids, sample, t)

    # the live model in float64 measures float32 rounding; merged weights (fused, diffusers' loader) and peft's
    # separate LoRA layers are the same sums in another order (tests/rounding.py)
    ref = SimpleNamespace(text_encoder=in_float64(base.text_encoder), unet=in_float64(base.unet))
    exact = _outputs(ref, ids, sample.double(), t)
    for i, part in enumerate(("text encoder", "U-Net")):
        effect = float((live[i] - plain[i]).abs().max())
        assert effect > 1e-3, f"the trained LoRA must change the {part}, or the comparison proves nothing"
        noise = rounding(live[i], exact[i])
        assert_same_up_to_rounding(fused[i], live[i], noise, f"{part}: LoraStack.fused against live")
        assert_same_up_to_rounding(loaded[i], live[i], noise, f"{part}: diffusers' loader against live")
    return lora.modules


def test_export_round_trip_matches_the_live_model(tmp_path):
    modules = _round_trip(NetworkConfig(dim=4, alpha=2.0, train_text_encoder=True), tmp_path)
    assert len(modules) == 192 + 24  # the tiny model: SD1.5's U-Net layout, 4 text-encoder layers
    assert all(m.alpha == 2.0 and m.dim == 4 for m in modules.values())
    assert "lora_te_text_model_encoder_layers_3_self_attn_out_proj" in modules  # A1111's names, not lora_te1_


def test_locon_export_shapes_and_round_trip(tmp_path):
    modules = _round_trip(NetworkConfig(dim=4, alpha=1.0, conv_dim=2, conv_alpha=1.0, train_text_encoder=True),
                          tmp_path)
    conv = {k: m for k, m in modules.items() if m.down.ndim == 4 and tuple(m.down.shape[2:]) == (3, 3)}
    assert len(conv) == 50
    m = modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert tuple(m.down.shape) == (2, 32, 3, 3) and tuple(m.up.shape) == (32, 2, 1, 1) and m.alpha == 1.0
    m = modules["lora_unet_up_blocks_0_upsamplers_0_conv"]
    assert tuple(m.down.shape) == (2, 64, 3, 3) and tuple(m.up.shape) == (64, 2, 1, 1)
    assert all(m.dim == 4 for k, m in modules.items() if k not in conv)


def test_metadata_is_kohyas():
    meta = lora_metadata(NetworkConfig())
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "1")
    assert meta["ss_base_model_version"] == "sd_v1" and "ss_network_args" not in meta
    locon = lora_metadata(NetworkConfig(dim=16, alpha=8, conv_dim=4, conv_alpha=0.5))
    assert json.loads(locon["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "0.5"}
    assert json.loads(lora_metadata(NetworkConfig(conv_dim=4))["ss_network_args"])["conv_alpha"] == "1"
    assert all(isinstance(v, str) for v in locon.values())


# ---------------------------------------------------------------------------------------------
# 5. resume, disable, remove


def test_state_dict_round_trip_and_mismatch():
    base = _base()
    cfg = NetworkConfig(train_text_encoder=True, conv_dim=2)
    net = LoraNetwork(base.unet, base.text_encoder, cfg, seed=1)
    _train(net, base, steps=2)
    sd = net.state_dict()
    assert len(sd) == 2 * len(net.names) and all(v.dtype == torch.float32 for v in sd.values())
    assert set(sd) == {f"{n}.lora_{half}.weight" for n in net.names for half in ("down", "up")}
    ids, sample, t, _ = _inputs(base)
    trained = _outputs(base, ids, sample, t)

    other = _base()
    resumed = LoraNetwork(other.unet, other.text_encoder, cfg, seed=2)
    resumed.load_state_dict(sd)
    now = resumed.state_dict()
    assert all(torch.equal(now[k], v) for k, v in sd.items())
    assert all(torch.equal(a, b) for a, b in zip(_outputs(other, ids, sample, t), trained))
    first = next(iter(sd))
    sd[first].add_(1.0)  # state_dict gives copies: the live network is not touched
    assert not torch.equal(net.state_dict()[first], sd[first])

    for bad_cfg in (NetworkConfig(dim=8, train_text_encoder=True, conv_dim=2),  # other rank
                    NetworkConfig(conv_dim=2),  # no text encoder
                    NetworkConfig(train_text_encoder=True, conv_dim=2, targets="attention")):
        resumed.remove()
        wrong = LoraNetwork(other.unet, other.text_encoder, bad_cfg)
        before = wrong.state_dict()
        with pytest.raises(LoracamError, match="another network: rank/targets differ"):
            wrong.load_state_dict(net.state_dict())
        after = wrong.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items()), "a failed load changed weights"
        resumed = wrong
    extra = dict(net.state_dict(), **{"lora_unet_foo.lora_down.weight": torch.zeros(1)})
    with pytest.raises(LoracamError, match="1 unexpected: lora_unet_foo"):
        net.load_state_dict(extra)


def test_set_enabled_false_gives_exactly_the_base_outputs():
    base = _base()
    ids, sample, t, _ = _inputs(base)
    plain = _outputs(base, ids, sample, t)
    net = LoraNetwork(base.unet, base.text_encoder, NetworkConfig(train_text_encoder=True, conv_dim=2))
    _train(net, base, steps=2)
    with_lora = _outputs(base, ids, sample, t)
    assert float((with_lora[1] - plain[1]).abs().max()) > 1e-3
    net.set_enabled(False)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(base, ids, sample, t), plain))
    net.set_enabled(True)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(base, ids, sample, t), with_lora))
    assert all(p.requires_grad for p in net.parameters()), "re-enabled LoRA weights must be trainable again"


def test_remove_restores_the_very_same_modules():
    base = _base()
    ids, sample, t, _ = _inputs(base)
    plain = _outputs(base, ids, sample, t)
    models = (base.unet, base.text_encoder)
    modules = [[(n, m) for n, m in model.named_modules()] for model in models]
    params = _snapshot(*models)
    base.text_encoder.get_submodule(TE_Q).weight.requires_grad_(True)  # a flag the network must put back
    net = LoraNetwork(base.unet, base.text_encoder, NetworkConfig(train_text_encoder=True, conv_dim=2))
    assert base.unet.get_submodule(Q) is not dict(modules[0])[Q]  # wrapped by peft
    _train(net, base, steps=1)
    net.remove()

    for model, before in zip(models, modules):
        now = list(model.named_modules())
        assert [n for n, _ in now] == [n for n, _ in before]
        assert all(a is b for (_, a), (_, b) in zip(now, before)), "a module object was replaced"
        assert "peft_config" not in vars(model) and not getattr(model, "_hf_peft_config_loaded", False)
    now = _snapshot(*models)
    assert [n for n, *_ in now] == [n for n, *_ in params]
    for (name, p, v, grad), (_, p2, v2, grad2) in zip(params, now):
        assert p is p2 and torch.equal(v, v2), name
        assert grad2 == (grad or name == f"1.{TE_Q}.weight"), name
    assert all(torch.equal(a, b) for a, b in zip(_outputs(base, ids, sample, t), plain))
    with pytest.raises(RuntimeError, match="removed"):
        net.modules()
    net.remove()  # a second remove is harmless
    again = LoraNetwork(base.unet, base.text_encoder, NetworkConfig())  # and the model can be trained anew
    assert len(again.names) == 192


# ---------------------------------------------------------------------------------------------
# 6. seeding


def test_init_is_seeded_and_independent_of_the_global_rng():
    base = _base()
    ids, sample, t, _ = _inputs(base)
    plain = _outputs(base, ids, sample, t)
    cfg = NetworkConfig(train_text_encoder=True, conv_dim=2)

    def init(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        net = LoraNetwork(base.unet, base.text_encoder, cfg, seed=seed)
        assert torch.equal(torch.get_rng_state(), state), "building a network moved the global RNG"
        sd = net.state_dict()
        if seed == 7 and global_seed == 1:  # kohya's init: the network starts as an exact no-op
            assert all(torch.equal(a, b) for a, b in zip(_outputs(base, ids, sample, t), plain))
        net.remove()
        return sd

    a, b, c = init(7, 1), init(7, 2), init(8, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    downs = [k for k in a if k.endswith("lora_down.weight")]
    assert not any(torch.equal(a[k], c[k]) for k in downs)
    for k, v in a.items():
        if k.endswith("lora_up.weight"):
            assert not v.any(), f"{k}: up must start at zero"
        else:  # Kaiming-uniform with a=sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(v[0].numel())
            assert float(v.abs().max()) <= bound and float(v.abs().max()) > 0.5 * bound, k


# ---------------------------------------------------------------------------------------------
# configuration and misuse


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=0), "dim must be a whole number"),
    (dict(dim=2.5), "dim must be a whole number"),
    (dict(alpha=0), "alpha must be a number > 0"),
    (dict(conv_alpha=1.0), "conv_alpha is set but conv_dim is not"),
    (dict(conv_dim=0), "conv_dim must be"),
    (dict(targets="all"), "targets must be one of kohya, attention"),
])
def test_bad_configs_are_refused(kwargs, match):
    with pytest.raises(LoracamError, match=match):
        NetworkConfig(**kwargs)


def test_param_groups_and_misuse():
    base = _base()
    net = LoraNetwork(base.unet, base.text_encoder, NetworkConfig())
    groups = net.param_groups(1e-4, 5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4)]  # text encoder not trained: no group
    assert groups[0]["params"] == net.parameters("unet") == net.parameters()
    with pytest.raises(LoracamError, match="already carries peft adapters"):
        LoraNetwork(base.unet, None, NetworkConfig())
    net.remove()
    net = LoraNetwork(base.unet, base.text_encoder, NetworkConfig(train_text_encoder=True))
    groups = net.param_groups(1e-4, 5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4), ("te", 5e-5)]
    assert net.param_groups(1e-4, None)[1]["lr"] == 1e-4
    assert len(groups[1]["params"]) == 2 * 24
    with pytest.raises(LoracamError, match="no text encoder"):
        LoraNetwork(base.unet, None, NetworkConfig(train_text_encoder=True))


def test_a_failed_injection_leaves_the_model_as_it_was(monkeypatch):
    base = _base()
    modules = list(base.unet.named_modules())
    original = LoraNetwork._inject

    def inject_then_fail(self, model, targets):
        original(self, model, targets)
        if model is base.text_encoder:
            raise RuntimeError("boom")

    monkeypatch.setattr(LoraNetwork, "_inject", inject_then_fail)
    with pytest.raises(RuntimeError, match="boom"):
        LoraNetwork(base.unet, base.text_encoder, NetworkConfig(train_text_encoder=True))
    assert all(a is b for (_, a), (_, b) in zip(base.unet.named_modules(), modules))
    assert len(list(base.unet.named_modules())) == len(modules)
    assert "peft_config" not in vars(base.unet) and "peft_config" not in vars(base.text_encoder)
    monkeypatch.undo()
    assert len(LoraNetwork(base.unet, base.text_encoder, NetworkConfig(train_text_encoder=True)).names) == 216
