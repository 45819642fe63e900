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
