"""Applying LoRAs: the same images as diffusers' own loader, exact restoration, per-row multipliers."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from loracam.lora import LoraStack, random_lora, read_lora, write_kohya
from loracam.models import LoadOptions, load_base
from rounding import assert_same_up_to_rounding, rounding

CPU32 = LoadOptions(torch.device("cpu"), torch.float32)
# (te, unet) multipliers of the two LoRAs: different per component and per LoRA, so a swap shows
MULTS = [(0.7, 0.9), (1.2, 0.5)]
RENDER = dict(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=3, height=64, width=64,
              guidance_scale=5.0, output_type="np")


@pytest.fixture(scope="module")
def base():
    return load_base("random:tiny", CPU32)


@pytest.fixture(scope="module")
def base64():
    """The same random:tiny weights in float64: the reference that measures float32 rounding (tests/rounding.py)."""
    return load_base("random:tiny", LoadOptions(torch.device("cpu"), torch.float64))


@pytest.fixture(scope="module")
def loras(base, tmp_path_factory):
    """Two kohya files with alpha != dim: a plain LoRA (dim 4, alpha 2) and a LoCon (dim 8, alpha 3)."""
    d = tmp_path_factory.mktemp("loras")
    a = random_lora(base.unet, base.text_encoder, dim=4, alpha=2, seed=1, std=0.3)
    b = random_lora(base.unet, base.text_encoder, dim=8, alpha=3, seed=2, conv=True, std=0.3)
    pa = write_kohya(d / "lora_a.safetensors", a, {"ss_network_dim": 4, "ss_network_alpha": 2})
    pb = write_kohya(d / "locon_b.safetensors", b, {"ss_network_dim": 8, "ss_network_alpha": 3})
    return read_lora(pa), read_lora(pb)


def _pipe(base):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**base.components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe) -> np.ndarray:
    return pipe(generator=torch.Generator().manual_seed(0), **RENDER).images


@contextmanager
def _quiet_transformers():
    """Loading a second adapter makes transformers print the first adapter's keys as "missing"."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("transformers", "diffusers", "peft")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft: "Already found a peft_config attribute" (intended here)
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _snapshot(base) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor]]:
    params = {}
    for prefix, model in (("unet", base.unet), ("te", base.text_encoder)):
        for name, p in model.named_parameters():
            params[f"{prefix}.{name}"] = (p, p.detach().clone())
    return params


def _assert_restored(base, snap) -> None:
    now = dict((f"unet.{n}", p) for n, p in base.unet.named_parameters())
    now.update((f"te.{n}", p) for n, p in base.text_encoder.named_parameters())
    assert now.keys() == snap.keys()
    for name, (param, value) in snap.items():
        assert now[name] is param, f"{name} is not the original Parameter object"
        assert torch.equal(param.detach(), value), f"{name} changed"
    for model in (base.unet, base.text_encoder):
        assert all(not m._forward_hooks for m in model.modules()), "a forward hook was left behind"


# ---------------------------------------------------------------------------------------------
# 1. same images as diffusers' load_lora_weights + set_adapters


def test_fused_and_per_sample_match_diffusers_loader(base, loras):
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    # 192 attention layers + LoCon (every layer of the ResNet blocks and samplers: 50 3x3 convs, 22
    # time_emb_proj, the 1x1 shortcuts) in the U-Net, 24 in the TE
    shortcuts = sum(1 for m in base.unet.modules() if type(m).__name__ == "ResnetBlock2D" and m.conv_shortcut is not None)
    assert stack.patched_layers == 192 + 50 + 22 + shortcuts + 24
    pipe = _pipe(base)
    plain = _render(pipe)
    with stack.fused(te=[m[0] for m in MULTS], unet=[m[1] for m in MULTS]):
        fused = _render(pipe)
    with stack.per_sample() as ctl:
        ctl.set_rows("te", torch.tensor([[m[0] for m in MULTS]]))  # prompt and negative are encoded one by one
        ctl.set_rows("unet", torch.tensor([[m[1] for m in MULTS]] * 2))  # CFG: uncond and cond rows
        per_sample = _render(pipe)

    fresh = load_base("random:tiny", CPU32)  # same seed, same weights; diffusers' loader modifies it
    ref_pipe = _pipe(fresh)
    with _quiet_transformers():
        for name, lora in zip(("a", "b"), loras):
            ref_pipe.load_lora_weights(str(lora.path), adapter_name=name)
        ref_pipe.set_adapters(["a", "b"], adapter_weights=[{"unet": u, "text_encoder": t} for t, u in MULTS])
    reference = _render(ref_pipe)

    effect = float(np.abs(reference - plain).max())
    d_fused = float(np.abs(fused - reference).max())
    d_rows = float(np.abs(per_sample - reference).max())
    print(f"LoRA effect {effect:.3g}; max |fused - diffusers| {d_fused:.3g}; "
          f"max |per_sample - diffusers| {d_rows:.3g}")
    assert effect > 0.05, "the LoRAs must visibly change the image, or this comparison proves nothing"
    # Merged weights (W + dW) x and unmerged Wx + B(Ax) differ in summation order only (~1e-6 per U-Net
    # forward, for every layer group); this deliberately strong LoCon LoRA (its 1x1 shortcuts alone move a
    # forward by ~1) amplifies that over 4 sampling steps to ~2e-3: still the same 8-bit image.
    assert d_fused < 1 / 255 and float(np.abs(fused - reference).mean()) < 1e-3
    assert d_rows < 1 / 255 and float(np.abs(per_sample - reference).mean()) < 1e-3


def test_te_and_unet_multipliers_are_not_swapped(base, loras):
    """Swapping the te/unet multipliers must change the image (so the comparison above can fail)."""
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    pipe = _pipe(base)
    with stack.fused(te=[0.0, 0.0], unet=[1.0, 1.0]):
        unet_only = _render(pipe)
    with stack.fused(te=[1.0, 1.0], unet=[0.0, 0.0]):
        te_only = _render(pipe)
    assert np.abs(unet_only - te_only).max() > 0.05


# ---------------------------------------------------------------------------------------------
# 2. the base is exactly restored


def test_fused_restores_the_very_same_parameters(base, loras):
    snap = _snapshot(base)
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    q = base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    q_param, q_value = snap["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    with stack.fused(te=[1.0, 0.5], unet=[1.0, 0.5]):
        assert q.weight is not q_param
        assert not torch.equal(q.weight, q_value)
    _assert_restored(base, snap)
    with pytest.raises(KeyError, match="boom"):
        with stack.fused(te=[1.0, 1.0], unet=[-2.0, 3.0]):
            raise KeyError("boom")
    _assert_restored(base, snap)


def test_per_sample_restores_and_removes_hooks(base, loras):
    snap = _snapshot(base)
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    sample, t, ctx = _unet_inputs(base, 1, seed=3)
    before = base.unet(sample, t, ctx).sample
    with stack.per_sample() as ctl:
        ctl.set_rows("unet", torch.tensor([[1.0, 1.0]]))
        assert not torch.equal(base.unet(sample, t, ctx).sample, before)
    _assert_restored(base, snap)
    assert torch.equal(base.unet(sample, t, ctx).sample, before)
    with pytest.raises(ValueError, match="boom"):
        with stack.per_sample() as ctl:
            ctl.set_rows("unet", torch.tensor([[1.0, 1.0]]))
            base.unet(sample, t, ctx)
            raise ValueError("boom")
    _assert_restored(base, snap)
    assert torch.equal(base.unet(sample, t, ctx).sample, before)


def test_a_stack_cannot_be_applied_twice_at_once(base, loras):
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    snap = _snapshot(base)
    with stack.fused(te=[1.0, 1.0], unet=[1.0, 1.0]):
        with pytest.raises(RuntimeError, match="already applied"):
            with stack.per_sample():
                pass
    _assert_restored(base, snap)


# ---------------------------------------------------------------------------------------------
# 3. per-sample multipliers


def _unet_inputs(base, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(n, 4, 8, 8, generator=g)
    ctx = torch.randn(n, 77, base.text_encoder.config.hidden_size, generator=g)
    return sample, torch.tensor(10), ctx


def _unet_rows(stack, base, sample, ctx, rows: list[list[float]]) -> torch.Tensor:
    with torch.no_grad(), stack.per_sample() as ctl:
        ctl.set_rows("unet", torch.tensor(rows))
        return base.unet(sample, torch.tensor(10), ctx).sample


ROWS = [[0.2, 0.5], [0.6, -0.4]]  # LoRA a at 0.2 / 0.6, the LoCon at 0.5 / -0.4


def test_per_sample_rows_equal_separate_runs_unet(base, base64, loras):
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    sample, _, ctx = _unet_inputs(base, 2, seed=5)
    batch = _unet_rows(stack, base, sample, ctx, ROWS)
    stack64 = LoraStack(base64.unet, base64.text_encoder, list(loras))
    exact = _unet_rows(stack64, base64, sample.double(), ctx.double(), ROWS)
    singles = [_unet_rows(stack, base, sample[i:i + 1], ctx[i:i + 1], [ROWS[i]]) for i in range(2)]
    for i in range(2):
        noise = rounding(singles[i][0], exact[i])
        # a batch of 2 and a lone row are the same sums, blocked differently by the GEMMs (tests/rounding.py)
        assert_same_up_to_rounding(batch[i], singles[i][0], noise, f"row {i}: batched vs alone")
        with torch.no_grad(), stack.fused(te=[0, 0], unet=ROWS[i]):  # an independent path to the same result
            fused = base.unet(sample[i:i + 1], torch.tensor(10), ctx[i:i + 1]).sample
        # hooks vs merged weights: W x + B (A x) against (W + B A) x, again the same sums in another order
        assert_same_up_to_rounding(batch[i], fused[0], noise, f"row {i}: hooks vs merged weights")
    assert (singles[0] - _unet_rows(stack, base, sample[:1], ctx[:1], [ROWS[1]])).abs().max() > 1e-3


def test_per_sample_rows_under_cfg_duplication(base, base64, loras):
    """R=4: uncond/cond rows for each of two samples, as a batched CFG step lays them out."""
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    sample, _, cond = _unet_inputs(base, 2, seed=6)
    _, _, uncond = _unet_inputs(base, 2, seed=7)
    x = torch.cat([sample, sample])
    ctx = torch.cat([uncond, cond])
    rows = ROWS + ROWS
    batch = _unet_rows(stack, base, x, ctx, rows)
    stack64 = LoraStack(base64.unet, base64.text_encoder, list(loras))
    exact = _unet_rows(stack64, base64, x.double(), ctx.double(), rows)
    for r in range(4):
        single = _unet_rows(stack, base, x[r:r + 1], ctx[r:r + 1], [rows[r]])
        assert_same_up_to_rounding(batch[r], single[0], rounding(single[0], exact[r]), f"row {r}")


def test_per_sample_rows_equal_separate_runs_text_encoder(base, base64, loras):
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    ids = base.tokenizer(["a photo of a cat", "a red dress"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids

    def encode(input_ids, rows):
        with torch.no_grad(), stack.per_sample() as ctl:
            ctl.set_rows("te", torch.tensor(rows))
            return base.text_encoder(input_ids).last_hidden_state

    batch = encode(ids, ROWS)
    with torch.no_grad(), LoraStack(base64.unet, base64.text_encoder, list(loras)).per_sample() as ctl:
        ctl.set_rows("te", torch.tensor(ROWS))
        exact = base64.text_encoder(ids).last_hidden_state
    for i in range(2):
        single = encode(ids[i:i + 1], [ROWS[i]])[0]
        assert_same_up_to_rounding(batch[i], single, rounding(single, exact[i]), f"row {i}")
    assert (encode(ids[:1], [ROWS[0]]) - encode(ids[:1], [ROWS[1]])).abs().max() > 1e-3


def test_per_sample_rejects_a_wrong_number_of_rows(base, loras):
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    sample, t, ctx = _unet_inputs(base, 2, seed=8)
    with stack.per_sample() as ctl:
        ctl.set_rows("unet", torch.tensor([[1.0, 1.0]] * 3))
        with pytest.raises(ValueError, match="batch of 2 rows.*set_rows gave 3"):
            base.unet(sample, t, ctx)
        with pytest.raises(RuntimeError, match="set_rows\\('te'"):
            base.text_encoder(torch.zeros(1, 77, dtype=torch.long))
        with pytest.raises(ValueError, match="shape"):
            ctl.set_rows("unet", torch.tensor([[1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="multipliers"):
        with stack.fused(te=[1.0], unet=[1.0, 1.0]):
            pass


def test_fused_in_bf16_merges_in_fp32_and_casts_back(loras):
    """Half-precision bases: the merge is computed in fp32 and stored in the weight's own dtype."""
    half = load_base("random:tiny", LoadOptions(torch.device("cpu"), torch.bfloat16))
    stack = LoraStack(half.unet, half.text_encoder, list(loras))
    q = half.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    original = q.weight
    m = loras[0].modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    expected = (original.float() + 0.8 * m.delta()).to(torch.bfloat16)
    with stack.fused(te=[1.0, 0.0], unet=[0.8, 0.0]):
        assert q.weight.dtype == torch.bfloat16
        assert torch.equal(q.weight, expected)
    assert q.weight is original


def test_caches_made_in_inference_mode_serve_autograd_later(base, loras):
    """The engine renders under inference_mode; a later grad-tracked forward (training preview) must still work."""
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    sample, t, ctx = _unet_inputs(base, 1, seed=9)
    with torch.inference_mode(), stack.per_sample() as ctl:
        ctl.set_rows("unet", torch.tensor([[1.0, 1.0]]))
        base.unet(sample, t, ctx)
    x = sample.clone().requires_grad_(True)
    with stack.per_sample() as ctl:
        ctl.set_rows("unet", torch.tensor([[1.0, 1.0]]))
        base.unet(x, t, ctx).sample.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_zero_multipliers_leave_layers_untouched(base, loras):
    stack = LoraStack(base.unet, base.text_encoder, list(loras))
    q = base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    original = q.weight
    with stack.fused(te=[1.0, 1.0], unet=[0.0, 0.0]):
        assert q.weight is original
