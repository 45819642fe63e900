"""The toy base's build steps that do not go through ``loracam train`` (the VAE's own training)."""

import numpy as np
import torch

from loracam.toy.build import finetune_decoder, toy_configs
from loracam.toy.world import render, sample_doll


def _recon_error(vae, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean().item()


def test_decoder_finetune_sharpens_the_decoder_and_keeps_the_latent_space():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(toy_configs()["vae"])
    rng = np.random.default_rng(0)
    images = np.stack([render(sample_doll(rng)) for _ in range(8)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    encoder = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    decoder = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    before = _recon_error(vae, x)

    finetune_decoder(vae, images, steps=30, batch=4, lr=2e-3, echo=lambda s: None)

    state = vae.state_dict()
    # the encoder (and so every latent the U-Net was trained on) is untouched ...
    assert all(torch.equal(state[k], v) for k, v in encoder.items())
    # ... while the decoder learned to reconstruct better
    assert any(not torch.equal(state[k], v) for k, v in decoder.items())
    assert _recon_error(vae, x) < 0.95 * before
    assert not any(p.requires_grad for p in vae.parameters())  # handed back frozen, as the loader keeps models


def _far_from(colours: np.ndarray, images: np.ndarray, dist: float = 60.0) -> float:
    """Share of pixels farther than ``dist`` (RGB) from every colour in ``colours``."""
    px = images.reshape(-1, 3).astype(np.float32)[::7]
    d = np.linalg.norm(px[:, None, :] - colours[None].astype(np.float32), axis=2).min(axis=1)
    return float((d > dist).mean())


def test_open_world_pictures_reach_colours_the_base_world_never_names():
    from loracam.toy import world
    from loracam.toy.shapes import open_world

    a, b = open_world(40, seed=1), open_world(40, seed=1)
    assert a.shape == (40, world.H, world.W, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, open_world(40, seed=2))
    named = np.array([world.RGB[c] for c in world.RGB if c not in ("teal", "magenta")] + list(world.SKINS))
    rng = np.random.default_rng(0)
    dolls = np.stack([render(sample_doll(rng)) for _ in range(40)])
    assert _far_from(named, dolls) < 0.05  # the base world: its named colours (edges blend a little)
    assert _far_from(named, a) > 0.3  # the open world: anywhere in the cube


def test_every_primitive_draws():
    from PIL import Image, ImageDraw

    from loracam.toy.shapes import PRIMITIVES

    rng = np.random.default_rng(0)
    for name, draw in PRIMITIVES.items():
        img = Image.new("RGB", (64, 64), (0, 0, 0))
        for _ in range(3):  # colours are random: three tries so that one black shape cannot hide it
            draw(ImageDraw.Draw(img), rng, 32.0, 32.0, 20.0)
        assert np.asarray(img).any(), name


def test_vae_images_add_the_open_world_only_when_asked(tmp_path):
    from loracam.toy.build import render_dataset, vae_images
    from loracam.toy.shapes import open_world

    data = render_dataset(tmp_path / "data", 5, seed=0)
    base = vae_images(data, 0, seed=0)
    assert base.shape == (5, 96, 64, 3)  # the shipped model's recipe: base-world renders only
    mixed = vae_images(data, 6, seed=0)
    assert np.array_equal(mixed[:5], base) and np.array_equal(mixed[5:], open_world(6, seed=1))
