"""Size buckets: training on native sizes and durations (Sora's "any size", docs/SIZES.md).

A bucket is one (width, height, frames) clip shape; every batch holds clips of one bucket. With a
token budget each bucket gets the batch size that holds about that many DiT tokens, so images and
small clips batch more clips than large ones; with sequence packing a step runs several bucket
batches as one token sequence (``DiT.forward_packed``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from videodit.errors import VideoditError
from videodit.vae import TEMPORAL_STRIDE
from videodit.world.scene import parse_size


@dataclass
class Bucket:
    tokens: int   # DiT tokens per clip
    batch: int    # clips per batch
    odds: float   # share of the batches


def plan_buckets(sizes: tuple[str, ...], frames: tuple[int, ...], *, batch_size: int, tokens_per_batch: int,
                 batches_per_step: int, square: bool, vae_stride: int,
                 patch: tuple[int, int, int]) -> dict[tuple[int, int, int], Bucket]:
    """(width, height, frames) -> Bucket for every pair of ``sizes`` x ``frames``; a value listed
    twice is drawn twice as often. With a token budget and ``batches_per_step`` packed batches,
    each batch holds 1/batches_per_step of the budget. ``square``: the VAE sees the centre square."""
    pt, ph, pw = patch
    plan: dict[tuple[int, int, int], Bucket] = {}
    for size in sizes:
        native = parse_size(size, name="sizes")
        w, h = (min(native),) * 2 if square else native  # what the VAE encodes
        for f in frames:
            T = (f - 1) // TEMPORAL_STRIDE + 1
            if w % (vae_stride * pw) or h % (vae_stride * ph) or T % pt:
                raise VideoditError(f"bucket {w}x{h}x{f}: sizes must be multiples of {vae_stride * pw} "
                                    f"(VAE stride x patch) and latent frames of {pt}")
            tokens = (T // pt) * (h // vae_stride // ph) * (w // vae_stride // pw)
            batch = max(1, tokens_per_batch // (tokens * batches_per_step)) if tokens_per_batch else batch_size
            entry = plan.setdefault(native + (f,), Bucket(tokens, batch, 0.0))
            entry.odds += 1.0 / (len(sizes) * len(frames))
    return plan


def describe_plan(plan: dict[tuple[int, int, int], Bucket], budget: int) -> str:
    lines = ["size buckets (width x height x frames: tokens per clip, clips per batch, share of batches):"]
    for (w, h, f), e in sorted(plan.items()):
        over = f"  (one clip exceeds --tokens-per-batch {budget})" if budget and e.tokens > budget else ""
        lines.append(f"  {w}x{h}x{f}: {e.tokens} tokens, batch {e.batch}, {e.odds:.0%}{over}")
    return "\n".join(lines)


def centre_square(video: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., S, S), the centred square of side S = min(H, W)."""
    H, W = video.shape[-2:]
    S = min(H, W)
    y0, x0 = (H - S) // 2, (W - S) // 2
    return video[..., y0:y0 + S, x0:x0 + S]
