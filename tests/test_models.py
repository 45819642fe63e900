"""Base models: LDM single files written and read back, the real SD1.5 key layout, bad inputs, caches.

Everything runs on random-weight models built here (tiny, or full-size SD1.5 on the meta device), never
on the network. The full-size write-and-reload check takes ~50 s and runs only with LORACAM_SLOW_TESTS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from loracam.errors import LoracamError
from loracam.models import hashing
from loracam.models.base import BaseModel
from loracam.models.cache import ModelCache
from loracam.models.hashing import HashCache
from loracam.models.ldm import (
    CONFIGS_KEY,
    component_configs,
    diffusers_to_ldm,
    expected_ldm_shapes,
    save_single_file,
)
from loracam.models.loader import LoadOptions, build_random, check_layout, load_base
from loracam.models.tiny import SD15_DIR, sd15_configs, tiny_configs

CPU = torch.device("cpu")
COMPONENTS = ("unet", "vae", "text_encoder")


def opts(**kw) -> LoadOptions:
    return LoadOptions(device=CPU, dtype=torch.float32, **kw)


def assert_same_weights(a: BaseModel, b: BaseModel, cast: torch.dtype | None = None) -> None:
    """Every parameter and buffer of the three components is bit-identical (after ``cast``, if any)."""
    for c in COMPONENTS:
        sa, sb = getattr(a, c).state_dict(), getattr(b, c).state_dict()
        assert sa.keys() == sb.keys(), c
        for k in sa:
            want = sa[k].to(cast) if cast is not None and sa[k].is_floating_point() else sa[k]
            assert want.dtype == sb[k].dtype or cast is not None, (c, k)
            assert torch.equal(want.to(sb[k].dtype), sb[k]), f"{c}.{k} differs"


def model_from(configs: dict[str, dict], name: str) -> BaseModel:
    unet, vae, te, tok = build_random(configs, seed=1)
    return BaseModel(name=name, ref=name, family="sd1", unet=unet, vae=vae, text_encoder=te, tokenizer=tok,
                     scheduler_config=dict(configs["scheduler"]), device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny() -> BaseModel:
    return load_base("random:tiny", opts())


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> Path:
    return save_single_file(tiny, tmp_path_factory.mktemp("ckpt") / "tiny-model.safetensors")


@pytest.fixture(scope="module")
def sd15_meta():
    """Full-size SD1.5 components on the meta device: real names and shapes, no memory, ~0.1 s."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15_configs()
    te_cfg = {k: v for k, v in cfg["text_encoder"].items() if k not in ("architectures", "torch_dtype")}
    with torch.device("meta"):
        return SimpleNamespace(
            unet=UNet2DConditionModel.from_config(cfg["unet"]),
            vae=AutoencoderKL.from_config(cfg["vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**te_cfg)),
        )


# ---------------------------------------------------------------------------------------------
# single files: write, read back


def test_tiny_round_trip_is_bit_exact_with_name_and_hash(tiny, tiny_file, tmp_path):
    loaded = load_base(str(tiny_file), opts(hash_cache=HashCache(None)))
    assert_same_weights(tiny, loaded)
    assert loaded.unet.config.block_out_channels == tiny.unet.config.block_out_channels  # from the metadata
    assert loaded.text_encoder.config.hidden_size == tiny.text_encoder.config.hidden_size
    assert loaded.name == "tiny-model"
    assert loaded.short_hash == hashlib.sha256(tiny_file.read_bytes()).hexdigest()[:10]
    assert loaded.path == tiny_file
    # Saving what was loaded writes the same bytes: nothing (not even a temporary path) leaks in.
    again = save_single_file(loaded, tmp_path / "again.safetensors")
    assert again.read_bytes() == tiny_file.read_bytes()


def test_saved_file_holds_configs_and_ldm_names(tiny, tiny_file):
    with safe_open(str(tiny_file), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        ids = f.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids")
    assert json.loads(meta[CONFIGS_KEY]) == component_configs(tiny)
    assert list(meta) == [CONFIGS_KEY]  # one key, so the bytes do not depend on hash-map order
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert all(k.startswith(prefixes) for k in keys)
    assert ids.dtype == torch.int64 and ids.tolist() == [list(range(77))]


def test_save_never_overwrites_unless_asked(tiny, tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(LoracamError, match="exists"):
        save_single_file(tiny, target)
    assert target.read_bytes() == b"precious"
    save_single_file(tiny, target, overwrite=True)
    assert load_file(target)  # a complete file replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left behind
    with pytest.raises(LoracamError, match="safetensors"):
        save_single_file(tiny, tmp_path / "m.ckpt")


def test_save_does_not_clobber_a_file_that_appears_meanwhile(tiny, tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "race.safetensors"
    real = safetensors.torch.save_file

    def save_then_another_writer(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        target.write_bytes(b"the other writer's file")

    monkeypatch.setattr(safetensors.torch, "save_file", save_then_another_writer)
    with pytest.raises(LoracamError, match="exists"):
        save_single_file(tiny, target)
    assert target.read_bytes() == b"the other writer's file"
    assert [p.name for p in tmp_path.iterdir()] == ["race.safetensors"]


def test_save_in_fp16_casts_weights_only(tiny, tmp_path):
    path = save_single_file(tiny, tmp_path / "half.safetensors", dtype=torch.float16)
    sd = load_file(path)
    assert sd["model.diffusion_model.out.2.weight"].dtype == torch.float16
    assert sd["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert_same_weights(tiny, load_base(str(path), opts()), cast=torch.float16)


def test_pickle_checkpoint_needs_allow_pickle_then_loads_bit_exact(tiny, tmp_path):
    sd = {k: v.clone() for k, v in diffusers_to_ldm(tiny.unet, tiny.vae, tiny.text_encoder).items()}
    # A tiny model needs its configs; loracam reads them from a JSON string next to the state_dict.
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": sd, CONFIGS_KEY: json.dumps(component_configs(tiny))}, path)
    with pytest.raises(LoracamError, match="--allow-pickle"):
        load_base(str(path), opts())
    loaded = load_base(str(path), opts(allow_pickle=True, hash_cache=HashCache(None)))
    assert_same_weights(tiny, loaded)
    assert loaded.name == "tiny" and loaded.short_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:10]


def test_inpainting_tiny_round_trips(tmp_path):
    configs = tiny_configs()
    configs["unet"]["in_channels"] = 9
    model = model_from(configs, "inpaint")
    assert model.is_inpainting
    path = save_single_file(model, tmp_path / "tiny-inpainting.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert f.get_slice("model.diffusion_model.input_blocks.0.0.weight").get_shape() == [32, 9, 3, 3]
    loaded = load_base(str(path), opts())
    assert loaded.is_inpainting
    assert_same_weights(model, loaded)


# ---------------------------------------------------------------------------------------------
# the real SD1.5 layout, checked at full size on the meta device


def test_ldm_names_and_shapes_are_sd15s(sd15_meta):
    sd = diffusers_to_ldm(sd15_meta.unet, sd15_meta.vae, sd15_meta.text_encoder)
    shapes = {k: list(v.shape) for k, v in sd.items()}
    well_known = {
        "model.diffusion_model.time_embed.0.weight": [1280, 320],
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": [320, 320, 1, 1],
        "model.diffusion_model.input_blocks.3.0.op.weight": [320, 320, 3, 3],
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": [640, 320, 1, 1],
        "model.diffusion_model.input_blocks.11.0.out_layers.3.weight": [1280, 1280, 3, 3],
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": [10240, 1280],
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": [1280, 1280],
        "model.diffusion_model.output_blocks.2.1.conv.weight": [1280, 1280, 3, 3],
        "model.diffusion_model.output_blocks.5.2.conv.weight": [1280, 1280, 3, 3],
        "model.diffusion_model.output_blocks.8.2.conv.weight": [640, 640, 3, 3],
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_out.0.weight": [320, 320],
        "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": [256, 128, 1, 1],
        "first_stage_model.encoder.mid.attn_1.proj_out.weight": [512, 512, 1, 1],
        "first_stage_model.decoder.mid.attn_1.q.weight": [512, 512, 1, 1],
        "first_stage_model.decoder.up.3.upsample.conv.weight": [512, 512, 3, 3],
        "first_stage_model.decoder.up.0.block.2.conv2.weight": [128, 128, 3, 3],
        "first_stage_model.decoder.norm_out.weight": [128],
        "first_stage_model.quant_conv.weight": [8, 8, 1, 1],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": [768, 3072],
        "cond_stage_model.transformer.text_model.final_layer_norm.bias": [768],
    }
    assert {k: shapes.get(k) for k in well_known} == well_known
    # U-Net, counted from the architecture: 22 ResBlocks x 10 tensors + 14 skip convs x 2 (output
    # blocks all, input blocks 4 and 7) + 16 SpatialTransformers x 26 + 6 down/up-sampler convs x 2
    # + conv_in 2 + time_embed 4 + out 4 = 686, the count of model.diffusion_model.* in
    # v1-5-pruned-emaonly. VAE 248 and text encoder 196 + position_ids likewise; 1131 in all.
    count = lambda p: sum(k.startswith(p) for k in sd)  # noqa: E731
    assert (count("model.diffusion_model."), count("first_stage_model."), count("cond_stage_model.")) == (686, 248, 197)
    assert len(sd) == 1131


def test_diffusers_own_ldm_conversion_inverts_ours(sd15_meta):
    """diffusers' LDM -> diffusers functions (what from_single_file runs) give every tensor back its name."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    # Stand-ins that hold one distinct number per tensor (keeping ndim), so a swap of two tensors of
    # equal shape, which shape checks cannot see, is caught.
    tags, stubs, n = {}, {}, 0
    for c in COMPONENTS:
        module = getattr(sd15_meta, c)
        sd = {}
        for k, v in module.state_dict().items():
            sd[k], n = torch.full((1,) * v.ndim, float(n)), n + 1
        tags[c] = {k: v.item() for k, v in sd.items()}
        stubs[c] = SimpleNamespace(config=module.config, state_dict=lambda sd=sd: sd)
    ldm = diffusers_to_ldm(stubs["unet"], stubs["vae"], stubs["text_encoder"])
    back = {
        "unet": convert_ldm_unet_checkpoint(ldm, dict(sd15_meta.unet.config)),
        "vae": convert_ldm_vae_checkpoint(ldm, dict(sd15_meta.vae.config)),
        "text_encoder": {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()
                         if not k.endswith("position_ids")},
    }
    for c in COMPONENTS:
        assert {k: v.item() for k, v in back[c].items()} == tags[c], c
    assert n == 686 + 248 + 196


def test_layout_check_takes_sd15_and_its_inpainting_variant(tiny_file):
    cfg = sd15_configs()
    keys = expected_ldm_shapes(cfg)
    check_layout(keys, None, 4, "sd15.safetensors")  # passes
    cfg["unet"]["in_channels"] = 9
    inpaint = expected_ldm_shapes(cfg)
    assert inpaint["model.diffusion_model.input_blocks.0.0.weight"] == (320, 9, 3, 3)
    check_layout(inpaint, None, 9, "sd15-inpainting.safetensors")
    with pytest.raises(LoracamError, match="SD1.5's sizes"):
        check_layout(inpaint, None, 4, "x.safetensors")
    # A tiny file stripped of its configs is not taken for SD1.5 silently.
    with safe_open(str(tiny_file), framework="pt") as f:
        tiny_keys = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    with pytest.raises(LoracamError, match="loracam_configs"):
        check_layout(tiny_keys, None, 4, "tiny.safetensors")


@pytest.mark.skipif(not os.environ.get("LORACAM_SLOW_TESTS"), reason="~50 s and 7 GB RAM; set LORACAM_SLOW_TESTS=1")
def test_full_size_file_loads_bit_exact_in_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    model = load_base("random:sd15", opts())
    path = save_single_file(model, tmp_path / "sd15.safetensors", dtype=torch.float16)
    # diffusers' own loader with the shipped SD1.5 folder: the path every civitai file takes.
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(SD15_DIR), local_files_only=True, torch_dtype=torch.float16,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    assert_same_weights(model, SimpleNamespace(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder),
                        cast=torch.float16)


# ---------------------------------------------------------------------------------------------
# bad inputs: each a LoracamError that says what is wrong and what to do


def _truncated(tmp, tiny_file):
    data = tiny_file.read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return tmp / "cut.safetensors"


def _random_bytes(tmp, tiny_file):
    (tmp / "noise.safetensors").write_bytes(os.urandom(4096))
    return tmp / "noise.safetensors"


def _sdxl(tmp, tiny_file):
    save_file({
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 4),
        "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 16),
    }, tmp / "sdxl.safetensors")
    return tmp / "sdxl.safetensors"


def _sdxl_refiner(tmp, tiny_file):
    save_file({"conditioner.embedders.0.model.ln_final.weight": torch.zeros(4),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, tmp / "refiner.safetensors")
    return tmp / "refiner.safetensors"


def _kohya_lora(tmp, tiny_file):
    m = "lora_unet_down_blocks_0_attentions_0_proj_in"
    t = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({
        f"{m}.lora_down.weight": torch.zeros(4, 32, 1, 1), f"{m}.lora_up.weight": torch.zeros(32, 4, 1, 1),
        f"{m}.alpha": torch.tensor(2.0),
        f"{t}.lora_down.weight": torch.zeros(4, 32), f"{t}.lora_up.weight": torch.zeros(32, 4),
        f"{t}.alpha": torch.tensor(2.0),
    }, tmp / "sks_v1.safetensors", metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4"})
    return tmp / "sks_v1.safetensors"


def _folder_without_index(tmp, tiny_file):
    (tmp / "some_model" / "unet").mkdir(parents=True)
    (tmp / "some_model" / "model.safetensors").write_bytes(b"")
    return tmp / "some_model"


def _txt(tmp, tiny_file):
    (tmp / "model.txt").write_text("not a model")
    return tmp / "model.txt"


def _missing_vae(tmp, tiny_file):
    with safe_open(str(tiny_file), framework="pt") as f:
        meta = f.metadata()
    sd = {k: v for k, v in load_file(tiny_file).items() if not k.startswith("first_stage_model.")}
    save_file(sd, tmp / "novae.safetensors", metadata=meta)
    return tmp / "novae.safetensors"


def _damaged_configs(tmp, tiny_file):
    save_file(load_file(tiny_file), tmp / "badmeta.safetensors", metadata={CONFIGS_KEY: '{"unet": {'})
    return tmp / "badmeta.safetensors"


BAD_INPUTS = {
    "truncated": (_truncated, ["damaged or incomplete", "download it again"]),
    "random-bytes": (_random_bytes, ["could not be read as safetensors", "damaged"]),
    "sdxl-other-sizes": (_sdxl, ["do not match SDXL base's sizes", "not a standard-size SDXL model"]),
    "sdxl-refiner": (_sdxl_refiner, ["the SDXL refiner", "second-stage", "use an SDXL base"]),
    "kohya-lora": (_kohya_lora, ["is a LoRA", "--lora-dir", "<lora:"]),
    "folder-without-index": (_folder_without_index, ["model_index.json", "pass the file itself"]),
    "txt": (_txt, ["unsupported", ".safetensors"]),
    "missing-vae": (_missing_vae, ["lacks 244", "VAE", "full checkpoint"]),
    "damaged-configs": (_damaged_configs, ["damaged 'loracam_configs'", "save the model again"]),
    "no-such-path": (lambda tmp, f: tmp / "nowhere" / "model.safetensors", ["not found", "not a file"]),
    "random-nope": (lambda tmp, f: "random:nope", ["unknown random model", "random:tiny"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error(case, tmp_path, tiny_file):
    make, words = BAD_INPUTS[case]
    with pytest.raises(LoracamError) as err:
        load_base(str(make(tmp_path, tiny_file)), opts())
    for word in words:
        assert word in str(err.value), str(err.value)


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(LoracamError) as err:
        load_base("someone/dreamy-mix-v3", opts())
    assert time.monotonic() - start < 10
    assert "not reachable" in str(err.value) and "--base" in str(err.value)


# ---------------------------------------------------------------------------------------------
# caches


def _counting_sha(monkeypatch) -> list:
    calls = []
    real = hashing.sha256_file

    def counted(path, offset=0):
        calls.append((Path(path).name, offset))
        return real(path, offset)

    monkeypatch.setattr(hashing, "sha256_file", counted)
    return calls


def test_hash_cache_hashes_each_file_version_once(monkeypatch, tmp_path):
    calls = _counting_sha(monkeypatch)
    f = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(100.0)}, f)
    store = tmp_path / "cache" / "hashes.json"
    first = HashCache(store).sha256(f)
    assert first == hashlib.sha256(f.read_bytes()).hexdigest()
    assert HashCache(store).sha256(f) == first  # a new instance reads the JSON, no re-hash
    assert len(calls) == 1
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # touched: same bytes, new mtime
    cache = HashCache(store)
    assert cache.sha256(f) == first and len(calls) == 2
    save_file({"w": torch.arange(101.0)}, f)  # new contents, new size
    second = cache.sha256(f)
    assert second == hashlib.sha256(f.read_bytes()).hexdigest() != first and len(calls) == 3
    assert cache.sha256(f) == second and len(calls) == 3


def test_addnet_hash_is_sha256_of_the_body_and_ignores_metadata(monkeypatch, tmp_path):
    calls = _counting_sha(monkeypatch)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.arange(64.0)}, a, metadata={"ss_output_name": "a"})
    save_file({"w": torch.arange(64.0)}, b, metadata={"ss_output_name": "b", "ss_note": "longer header"})
    data = a.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    cache = HashCache(None)
    assert cache.addnet_hash(a) == hashlib.sha256(data[8 + header_len:]).hexdigest()
    assert cache.addnet_hash(b) == cache.addnet_hash(a)  # same tensors, other metadata
    assert cache.sha256(b) != cache.sha256(a)
    assert cache.addnet_hash(a) == cache.addnet_hash(a) and len(calls) == 4


def test_model_cache_reuses_and_evicts(tiny_file):
    cache = ModelCache(max_models=1)
    first = cache.get("random:tiny", CPU, torch.float32)
    assert cache.get("random:tiny", CPU, torch.float32) is first
    from_file = cache.get(str(tiny_file), CPU, torch.float32)
    assert from_file.sha256 == hashlib.sha256(tiny_file.read_bytes()).hexdigest()  # through its hash cache
    assert cache.get(str(tiny_file), CPU, torch.float32) is from_file
    assert cache.get("random:tiny", CPU, torch.float32) is not first  # evicted by the file's model
    two = ModelCache(max_models=2)
    x = two.get("random:tiny", CPU, torch.float32)
    two.get(str(tiny_file), CPU, torch.float32)
    assert two.get("random:tiny", CPU, torch.float32) is x
