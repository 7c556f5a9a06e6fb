"""Sequence packing in the DiT (DiT.forward_packed, videodit/dit.py): a packed forward equals
separate forwards, clips stay apart, bf16 and gradients, bad inputs named. Packed training is in
test_train_dit.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import random_dit
from videodit.dit import DiTConfig
from videodit.errors import VideoditError


TINY = DiTConfig.preset("tiny")


def batches(shapes, L=5, cfg=TINY, seed=1):
    """shapes: (B, T, h, w) per batch -> xs, ts (per-frame, distinct per clip), text, mask."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, cfg.in_channels, T, h, w, generator=g) for B, T, h, w in shapes]
    ts = [torch.rand(B, T, generator=g) for B, T, h, w in shapes]
    clips = sum(s[0] for s in shapes)
    text = torch.randn(clips, L, cfg.text_dim, generator=g)
    mask = torch.rand(clips, L, generator=g) < 0.7
    mask[:, 0] = True
    mask[-1] = False  # one unconditional clip
    return xs, ts, text, mask


SHAPES = [(2, 3, 4, 4), (1, 1, 2, 6), (3, 2, 6, 2), (1, 5, 4, 6)]  # square, image, tall, wide video


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY, qk_norm=False, patch=(1, 2, 2))])
def test_packed_equals_separate_forwards(cfg):
    model = random_dit(cfg, 0)
    xs, ts, text, mask = batches(SHAPES, cfg=cfg)
    packed = model.forward_packed(xs, ts, text, mask)
    start = 0
    for x, t, v in zip(xs, ts, packed):
        B = x.shape[0]
        alone = model(x, t, text[start:start + B], mask[start:start + B])
        start += B
        assert v.shape == x.shape
        torch.testing.assert_close(v, alone, rtol=1e-4, atol=1e-5)


def test_packed_clips_do_not_see_each_other():
    model = random_dit(TINY, 0)
    xs, ts, text, mask = batches(SHAPES[:2])
    before = model.forward_packed(xs, ts, text, mask)[0]
    xs[1] = xs[1] + 5.0  # a different second batch, prompt and timesteps
    ts[1] = ts[1].flip(0)
    text[2:] = -text[2:]
    after = model.forward_packed(xs, ts, text, mask)[0]
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)


def test_packed_bf16_and_gradients():
    model = random_dit(TINY, 0)
    xs, ts, text, mask = batches(SHAPES)
    with torch.autocast("cpu", torch.bfloat16):
        packed = model.forward_packed(xs, ts, text, mask)
        alone = model(xs[0], ts[0], text[:2], mask[:2])
    assert all(v.dtype == torch.float32 for v in packed)
    assert (packed[0] - alone).abs().max() < 0.05 * alone.abs().max()
    sum(v.square().mean() for v in packed).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_packed_bad_inputs_are_named():
    model = random_dit(TINY, 0)
    xs, ts, text, mask = batches(SHAPES[:2])
    with pytest.raises(VideoditError, match="3 clips but 2 prompts"):
        model.forward_packed(xs, ts, text[:2], mask[:2])
    with pytest.raises(VideoditError, match="one timestep tensor per batch"):
        model.forward_packed(xs, ts[:1], text, mask)
