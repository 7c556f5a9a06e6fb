"""The DiT trainer's latent cache (``videodit train --latent-cache N``): N training clips are
rendered, encoded by the frozen VAE and their captions by the frozen text encoder once, kept in
one file, and then visited in shuffled epochs. On a CPU this saves the VAE encode of every step;
on a GPU it removes the SynthWorld rendering bottleneck (a GPU run spent more time tokenising
captions than training).

The file (``torch.save``, tensors, strings and lists only, so it loads with weights_only=True):
    {"key": what it was built from, "latents": [(B, c, T, h, w) bf16 per batch],
     "captions": [[str] * B], "buckets": ["WxHxF"], "tokens": [(B, L, D) bf16], "masks": [(B, L) bool]}
It is rebuilt whenever the key (the VAE's config and weights, the data and text settings) differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm


def load_or_build(path: Path, key: dict, batches: Iterable[dict], clips: int,
                  encode_video: Callable[[torch.Tensor], torch.Tensor],
                  encode_text: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
                  progress: bool = True) -> dict:
    """The cache at ``path`` if it was built from ``key``, else a new one of about ``clips``
    clips from ``batches`` ({"video", "caption", "bucket"} dicts), written atomically. Under
    several processes each batch is a rank's slice of a global batch whose size is its "clips":
    ``clips`` counts global clips, so every rank caches the slices of the same global batches."""
    cache = torch.load(path, weights_only=True) if path.exists() else None
    if cache is not None and cache["key"] == key:
        return cache
    cache = {"key": key, "latents": [], "captions": [], "buckets": [], "tokens": [], "masks": []}
    stream = iter(batches)
    with tqdm(total=clips, desc="encoding latent cache", disable=not progress, dynamic_ncols=True) as bar:
        while bar.n < clips:
            batch = next(stream)
            cache["latents"].append(encode_video(batch["video"]).to("cpu", torch.bfloat16))
            cache["captions"].append(batch["caption"])
            cache["buckets"].append(batch["bucket"])
            tokens, mask = encode_text(batch["caption"])
            cache["tokens"].append(tokens.to("cpu", torch.bfloat16))
            cache["masks"].append(mask.cpu())
            bar.update(batch.get("clips", len(batch["caption"])))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(cache, tmp)
    os.replace(tmp, path)
    return cache


def epoch_batches(cache: dict, step: int, seed: int, rank: int, device: torch.device) -> Iterator[tuple]:
    """(latents fp32, captions, bucket, (tokens fp32, mask)) for every batch from batch ``step``
    on: epoch e visits the cached batches in a permutation seeded by (seed, e, rank), so the batch
    of a step does not depend on where a run resumed. The trainer passes rank 0 on every rank: its
    ranks cache slices of the same global batches and visit them in the same order."""
    n_batches = len(cache["latents"])
    while True:
        epoch, i = divmod(step, n_batches)
        order = torch.randperm(n_batches, generator=torch.Generator().manual_seed((seed * 7919 + epoch) * 4096 + rank))
        b = int(order[i])
        embedded = cache["tokens"][b].to(device).float(), cache["masks"][b].to(device)
        yield cache["latents"][b].to(device).float(), cache["captions"][b], cache["buckets"][b], embedded
        step += 1


def cached_text(embedded: list[tuple[torch.Tensor, torch.Tensor]], captions: list[str]):
    """Cached (tokens, mask) of one or more batches -> one (B, L, D) / (B, L) pair padded to the
    longest, with the captions that dropout emptied masked out entirely: the DiT then sees only
    its null token for them, exactly as for the empty prompt from the text encoder."""
    length = max(tok.shape[1] for tok, _ in embedded)
    tokens = torch.cat([F.pad(tok, (0, 0, 0, length - tok.shape[1])) for tok, _ in embedded])
    mask = torch.cat([F.pad(m, (0, length - m.shape[1])) for _, m in embedded])
    dropped = torch.tensor([c == "" for c in captions], device=mask.device)
    return tokens, mask & ~dropped[:, None]
