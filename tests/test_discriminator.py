"""train-vae --adv-weight: the patch discriminator, its losses, and exact resume with it."""

import csv

import pytest
import torch

from videodit.errors import VideoditError
from videodit.train.checkpoint import read_checkpoint
from videodit.train.discriminator import PatchDiscriminator3D, adaptive_weight, d_hinge_loss, g_loss
from videodit.train.vae import VAETrainConfig, train_vae


def test_discriminator_gives_one_logit_per_spacetime_patch():
    d = PatchDiscriminator3D(channels=8)
    assert d(torch.zeros(2, 3, 5, 32, 32)).shape == (2, 1, 5, 8, 8)


def test_hinge_losses():
    sure = torch.full((4,), 2.0)
    assert d_hinge_loss(sure, -sure).item() == 0.0            # real > 1, fake < -1: nothing to learn
    assert d_hinge_loss(-sure, sure).item() == pytest.approx(3.0)  # fooled both ways
    assert g_loss(torch.tensor([1.0, 3.0])).item() == -2.0


def test_adaptive_weight_matches_the_gradient_norms():
    w = torch.randn(3, 3, requires_grad=True)
    rec, adv = 6.0 * w.sum(), -2.0 * w.sum()
    assert adaptive_weight(rec, adv, w).item() == pytest.approx(3.0, rel=1e-3)


def _cfg(out, steps):
    return VAETrainConfig(preset="tiny", out=str(out), steps=steps, batch_size=2, width=32, height=32, frames=9,
                          crop_size=16, crop_frames=5, warmup_steps=2, save_every=1000, log_every=1,
                          stats_batches=1, threads=1, device="cpu", adv_weight=0.5, adv_start=2)


def test_adversarial_training_resumes_exactly_and_logs_its_losses(tmp_path):
    train_vae(_cfg(tmp_path / "a", 5), progress=False)
    train_vae(_cfg(tmp_path / "b", 3), progress=False)
    train_vae(_cfg(tmp_path / "b", 5), progress=False)
    a = read_checkpoint(tmp_path / "a" / "checkpoint.pt", "vae")
    b = read_checkpoint(tmp_path / "b" / "checkpoint.pt", "vae")
    for part in ("model", "ema"):
        assert all(torch.equal(v, b[part][k]) for k, v in a[part].items()), part
    disc_a, disc_b = a["extra"]["disc"], b["extra"]["disc"]
    assert disc_a.keys() == disc_b.keys() and all(torch.equal(v, disc_b[k]) for k, v in disc_a.items())
    fresh = PatchDiscriminator3D().state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in disc_a.items())  # the discriminator learnt
    with (tmp_path / "b" / "log.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["adv_scale"] == "" and rows[0]["d_loss"] != ""  # step 1: discriminator only
    assert float(rows[-1]["adv_scale"]) > 0                       # from --adv-start on, the decoder sees it


def test_bad_adversarial_flags():
    with pytest.raises(VideoditError, match="--adv-weight"):
        VAETrainConfig(adv_weight=-1).check()
