"""The adversarial part of ``videodit train-vae --adv-weight``: a small 3D patch discriminator
and the hinge losses.

Why it exists: an L1 / MSE-trained decoder that is unsure where a moving object's edge lies in
the frames inside a 4-frame latent step draws the average of its guesses, a rounded, blurred
shape with a faint trail, and the evaluator's shape check reads a rounded square as a circle. A
discriminator that sees real clips beside reconstructions makes those blurred edges costly; the
reconstruction loss keeps the decoder where the pixels are. This is the patch-GAN recipe of
image and video autoencoders (Isola et al. 2017; Esser et al. 2021, "Taming Transformers", which
also gives the adaptive weight used here).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator3D(nn.Module):
    """(B, 3, F, H, W) clips in [-1, 1] -> (B, 1, F, H / 4, W / 4) real/fake logits, one per
    spacetime patch (receptive field 9 frames x 26 x 26 pixels). Spectral norm keeps it
    from overpowering a decoder that starts out good."""

    def __init__(self, channels: int = 32):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        c = channels
        self.net = nn.Sequential(
            sn(nn.Conv3d(3, c, (3, 4, 4), stride=(1, 2, 2), padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv3d(c, 2 * c, (3, 4, 4), stride=(1, 2, 2), padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv3d(2 * c, 4 * c, 3, padding=1)), nn.LeakyReLU(0.2),
            nn.Conv3d(4 * c, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bf16 convolutions like the VAE's (4-7x faster on CPUs with AMX / AVX-512 bf16); fp32 logits
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.net(x).float()


def d_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_weight: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """The scale that makes the adversarial gradient at the decoder's last layer as large as the
    reconstruction gradient there (Esser et al. 2021), detached: ``--adv-weight`` then reads as
    the ratio of the two, whatever the loss magnitudes."""
    g_rec = torch.autograd.grad(rec_loss, last_weight, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_weight, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()
