"""Size buckets (videodit/data/buckets.py) as the DiT trainer plans and reports them: token
budgets, empty buckets, centre-square crops."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import dit_train_cfg
from videodit.train.dit import train_dit


def test_bucket_plan_balances_tokens_and_reports_empty_buckets(tmp_path, tiny_vae, capsys):
    from videodit.train.dit import bucket_plan

    cfg = dit_train_cfg(tmp_path, tiny_vae, sizes=("32x32", "64x32"), frames=(5, 1), tokens_per_batch=64)
    plan = bucket_plan(cfg, vae_stride=4, patch=(1, 2, 2))
    # tiny VAE stride 4, patch 2x2: 32x32x5 -> 2 x 4 x 4 = 32 tokens; 64x32x1 -> 1 x 4 x 8 = 32; 32x32x1 -> 16
    assert {k: (e.tokens, e.batch) for k, e in plan.items()} == {
        (32, 32, 5): (32, 2), (32, 32, 1): (16, 4), (64, 32, 5): (64, 1), (64, 32, 1): (32, 2)}
    assert sum(e.odds for e in plan.values()) == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="got no training clip"):
        train_dit(dataclasses.replace(cfg, steps=1))
    out = capsys.readouterr().out
    assert "32x32x1: 16 tokens, batch 4" in out and "clips per size bucket in this run" in out


def test_square_crop_trains_on_centre_squares_with_square_token_budgets(tmp_path, tiny_vae, capsys):
    from videodit.data.buckets import centre_square
    from videodit.train.dit import bucket_plan

    x = torch.arange(2 * 3 * 8).reshape(2, 3, 1, 8, 1).expand(2, 3, 1, 8, 24)  # (B, C, F, 8, 24)
    crop = centre_square(x)
    assert crop.shape[-2:] == (8, 8) and torch.equal(crop, x[..., 8:16])
    assert centre_square(x.transpose(-1, -2)).shape[-2:] == (8, 8)

    cfg = dit_train_cfg(tmp_path, tiny_vae, sizes=("64x32", "32x64"), frames=(5,), tokens_per_batch=64,
               square_crop=True, latent_cache=8, steps=2)
    plan = bucket_plan(cfg, vae_stride=4, patch=(1, 2, 2))
    # both become 32x32 crops: 2 x 4 x 4 = 32 tokens, so batch 2 (64 each at native size: batch 1)
    assert {k: (e.tokens, e.batch) for k, e in plan.items()} == {(64, 32, 5): (32, 2), (32, 64, 5): (32, 2)}
    train_dit(cfg)
    assert "centre square" in capsys.readouterr().out
    cache = torch.load(tmp_path / "run" / "latents-rank0.pt", weights_only=True)
    assert {tuple(z.shape[-2:]) for z in cache["latents"]} == {(8, 8)}  # 32x32 pixels / VAE stride 4
    assert set(cache["buckets"]) <= {"64x32x5", "32x64x5"}
