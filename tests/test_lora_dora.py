"""DoRA and LyCORIS files on SD1 and SDXL, held to the trainers that make them: LyCORIS' own modules (LoCon, LoHa,
LoKr with weight_decompose, both norm axes) and peft's DoRA (diffusers' use_dora).

Tolerance: loracam and LyCORIS/peft compute the same fp32 products and norms in another order (a LoHa as one
rank-r1 x r2 product, not a Hadamard product of two); on these unit-order weights with sums of at most a few
hundred terms each result is within a few hundred x 2^-24 relative, so 1e-4 absolute on weights and 1e-3 on
a U-Net's output (tens of layers deep) leave room for rounding and none for a wrong norm axis or scale, which
moves weights by 1e-2 or more (asserted below for each case)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from loracam.errors import LoracamError
from loracam.lora import LoraStack, kohya_targets, read_lora
from loracam.models import build_random, tiny_configs

lycoris = pytest.importorskip("lycoris", reason="lycoris-lora is a dev dependency (make setup installs it)")
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

ALGOS = {"locon": LoConModule, "loha": LohaModule, "lokr": LokrModule}


def lycoris_dora(targets, algo: str, wd_on_out: bool, seed: int = 0):
    """LyCORIS modules with weight_decompose on ``targets`` [(kohya name, layer)], trained a little (random steps on
    every parameter, the magnitude included): (tensors as LyCORIS saves them, {name: (layer, module)})."""
    torch.manual_seed(seed)
    tensors, made = {}, {}
    for name, layer in targets:
        kwargs = {"factor": 4} if algo == "lokr" else {}
        mod = ALGOS[algo](name, layer, 1.0, 2, 3.0, weight_decompose=True, wd_on_out=wd_on_out, **kwargs)
        with torch.no_grad():
            for p in mod.parameters():
                p.add_(torch.randn_like(p) * (0.2 if p.ndim > 1 else 0.05 * p.abs().mean()))
        for key, value in mod.custom_state_dict().items():
            tensors[f"{name}.{key}"] = torch.as_tensor(value).detach().float().contiguous()
        made[name] = (layer, mod)
    return tensors, made


def pick(targets, wanted):
    """One target per wanted kind: a text-encoder linear, a U-Net linear, a 1x1 conv, a 3x3 conv."""
    chosen = {}
    for name, layer in targets:
        kind = ("te" if not name.startswith("lora_unet_") else
                "conv3" if isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3) else
                "conv1" if isinstance(layer, torch.nn.Conv2d) else "linear")
        chosen.setdefault(kind, (name, layer))
    assert set(wanted) <= set(chosen), set(chosen)
    return [chosen[k] for k in wanted]


def fused_weights(stack, made, mult):
    with stack.fused(te=[mult], unet=[mult]):
        return {n: layer.weight.detach().clone() for n, (layer, _) in made.items()}


def sample_input(layer, generator):
    if isinstance(layer, torch.nn.Conv2d):
        return torch.randn(3, layer.in_channels, 6, 6, generator=generator)
    return torch.randn(3, 5, layer.in_features, generator=generator)


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
@pytest.mark.parametrize("wd_on_out", [True, False])
def test_lycoris_dora_applies_as_lycoris_runs_it(tmp_path, algo, wd_on_out):
    """At multiplier 1 each layer gives what the LyCORIS module that trained it gives (its forward: LyCORIS 4.1's
    get_merged_weight scales a LoHa's delta by alpha/r twice, its forward and A1111/ComfyUI once); at 0.5 the
    weight is halfway from the base to it (ComfyUI's and A1111's strength rule); per-sample rows give the fused
    layer's outputs, and a row at 0 the base's."""
    unet, _, te, _ = build_random(tiny_configs())
    kinds = ("te", "linear", "conv1", "conv3") if algo == "locon" else ("te", "linear", "conv1")
    targets = pick(kohya_targets(unet, te, conv=True), kinds)
    tensors, made = lycoris_dora(targets, algo, wd_on_out)
    save_file(tensors, str(tmp_path / "dora.safetensors"))
    lora = read_lora(tmp_path / "dora.safetensors")
    assert lora.family == "sd1" and lora.dora_modules == len(made)
    assert "DoRA" in lora.networks and {"locon": "LoRA", "loha": "LoHa", "lokr": "LoKr"}[algo] in lora.networks

    stack = LoraStack(unet, te, [lora])
    base = {n: layer.weight.detach().clone() for n, (layer, _) in made.items()}
    full, half = fused_weights(stack, made, 1.0), fused_weights(stack, made, 0.5)
    g = torch.Generator().manual_seed(3)
    for name, (layer, mod) in made.items():
        assert (half[name] - (base[name] + 0.5 * (full[name] - base[name]))).abs().max() < 1e-5, name
        assert torch.equal(layer.weight, base[name])  # restored
        x = sample_input(layer, g)
        with torch.no_grad():
            want = mod(x)  # LyCORIS' forward: the layer as it was trained
            plain = layer(x)
            with stack.fused(te=[1.0], unet=[1.0]):
                at_one = layer(x)
            with stack.fused(te=[0.5], unet=[0.5]):
                at_half = layer(x)
            with stack.per_sample() as ctl:
                rows = torch.tensor([[1.0], [0.5], [0.0]])
                ctl.set_rows("te", rows)
                ctl.set_rows("unet", rows)
                mixed = layer(x)
        assert (at_one - want).abs().max() < 1e-4, name
        assert (want - plain).abs().max() > 1e-2, name  # the DoRA changes the layer
        assert (mixed[0] - at_one[0]).abs().max() < 1e-4, name
        assert (mixed[1] - at_half[1]).abs().max() < 1e-4, name
        assert torch.equal(mixed[2], plain[2]), name


def test_peft_dora_unet_renders_as_peft_runs_it(tmp_path):
    """A diffusers U-Net with peft's DoRA (use_dora), saved as diffusers saves LoRAs (peft names and its
    adapter metadata with use_dora): loracam's fused U-Net gives peft's forward output."""
    import json

    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet, _, te, _ = build_random(tiny_configs())
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, use_dora=True, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_out.0", "proj_in", "ff.net.2"]))
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    state = {f"unet.{k}": v.detach().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    assert any("lora_magnitude_vector" in k for k in state)
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 4, "unet.use_dora": True})}
    save_file(state, str(tmp_path / "peft_dora.safetensors"), metadata=meta)
    lora = read_lora(tmp_path / "peft_dora.safetensors")
    assert lora.layout == "peft" and lora.dora_modules == len(lora.modules) > 0

    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 7, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        want = unet(sample, 10, ctx).sample
        unet.disable_adapters()
        plain_peft = unet(sample, 10, ctx).sample
    fresh, _, _, _ = build_random(tiny_configs())
    stack = LoraStack(fresh, None, [lora])
    with torch.no_grad():
        plain = fresh(sample, 10, ctx).sample
        with stack.fused(te=[1.0], unet=[1.0]):
            got = fresh(sample, 10, ctx).sample
        with stack.per_sample() as ctl:
            ctl.set_rows("unet", torch.tensor([[1.0]]))
            rows = fresh(sample, 10, ctx).sample
    assert torch.equal(plain, plain_peft)  # the same base
    assert (want - plain).abs().max() > 1e-2
    assert (got - want).abs().max() < 1e-3 and (rows - want).abs().max() < 1e-3


def test_lycoris_files_on_sdxl_loha_lokr_and_dora(tmp_path, tiny_sdxl):
    """LoHa, LoKr and DoRA on SDXL under sd-scripts' names (SGM U-Net, lora_te1_, lora_te2_): read as SDXL, each
    layer fused gives what the LyCORIS module gives."""
    m = tiny_sdxl
    targets = kohya_targets(m.unet, m.text_encoder, conv=True, text_encoder_2=m.text_encoder_2)
    te1 = next(t for t in targets if t[0].startswith("lora_te1_"))
    te2 = next(t for t in targets if t[0].startswith("lora_te2_"))
    unet_lin = next(t for t in targets if t[0].startswith("lora_unet_input_blocks") and "attn2_to_k" in t[0])
    unet_conv = next(t for t in targets if t[0].startswith("lora_unet_") and isinstance(t[1], torch.nn.Conv2d)
                     and t[1].kernel_size == (3, 3))
    tensors, made = {}, {}
    for algo, chosen, wd_on_out in (("loha", [te2, unet_lin], True), ("lokr", [te1], False),
                                    ("locon", [unet_conv], False)):
        t, mods = lycoris_dora(chosen, algo, wd_on_out, seed=len(made))
        tensors |= t
        made |= mods
    save_file(tensors, str(tmp_path / "xl.safetensors"))
    lora = read_lora(tmp_path / "xl.safetensors")
    assert lora.family == "sdxl" and set(lora.networks) == {"LoRA", "LoHa", "LoKr", "DoRA"}
    stack = LoraStack.for_model(m, [lora])
    assert stack.patched_layers == len(made)
    g = torch.Generator().manual_seed(4)
    for name, (layer, mod) in made.items():
        x = sample_input(layer, g)
        with torch.no_grad():
            want, plain = mod(x), layer(x)
            with stack.fused(te=[1.0], unet=[1.0]):
                got = layer(x)
        assert (got - want).abs().max() < 1e-4, name
        assert (want - plain).abs().max() > 1e-2, name


def test_a_damaged_dora_magnitude_is_named(tmp_path):
    unet, _, te, _ = build_random(tiny_configs())
    tensors, made = lycoris_dora(pick(kohya_targets(unet, te), ["linear"]), "locon", True)
    name = next(iter(made))
    tensors[f"{name}.dora_scale"] = torch.ones(3, 1)
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoracamError, match="DoRA module .* magnitude of shape \\(3, 1\\)"):
        read_lora(tmp_path / "bad.safetensors")


def test_info_names_the_network_and_averaging_refuses_dora(tmp_path):
    """`loracam info` says what the file is (LoHa+DoRA and how many DoRA modules); averaging checkpoints, which is
    exact only for low-rank sums, refuses a DoRA file by name and writes nothing."""
    import json

    from typer.testing import CliRunner

    from loracam.cli import app
    from loracam.judge.select import average_loras

    unet, _, te, _ = build_random(tiny_configs())
    tensors, made = lycoris_dora(pick(kohya_targets(unet, te), ["te", "linear"]), "loha", False)
    save_file(tensors, str(tmp_path / "doha.safetensors"))
    r = CliRunner().invoke(app, ["info", str(tmp_path / "doha.safetensors"), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["network"] == "LoHa+DoRA" and report["dora_modules"] == 2 and report["family"] == "sd1"
    with pytest.raises(LoracamError, match="doha.safetensors: it is a DoRA network"):
        average_loras([tmp_path / "doha.safetensors"] * 2, tmp_path / "mean.safetensors")
    assert not (tmp_path / "mean.safetensors").exists()
