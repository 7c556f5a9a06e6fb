"""evaluate_reconstruction (videodit/eval/reconstruction.py): a VAE scored on held-out SynthWorld clips."""

import dataclasses

from conftest import random_vae
from videodit.vae import PRESETS

TINY = PRESETS["tiny"]


def test_evaluate_reconstruction_with_latent_noise_scores_lower():
    from videodit.eval.reconstruction import evaluate_reconstruction

    vae = random_vae(dataclasses.replace(TINY, latent_scale=0.5))
    clean = evaluate_reconstruction(vae, n=2, width=32, height=32, frames=5, batch_size=2)
    noisy = evaluate_reconstruction(vae, n=2, width=32, height=32, frames=5, batch_size=2, latent_noise=1.0)
    again = evaluate_reconstruction(vae, n=2, width=32, height=32, frames=5, batch_size=2, latent_noise=1.0)
    assert noisy["psnr"] < clean["psnr"] and noisy["psnr"] == again["psnr"]
