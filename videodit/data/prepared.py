"""Reading a cache written by ``videodit prepare`` (its format: videodit/prepare.py).

``PreparedData(cache)`` checks the index and every shard it names up front (one-line errors
naming the file), then serves training batches exactly as the DiT trainer consumes them from its
latent cache (videodit/data/latent_cache.py):
    (latents fp32 (B, c, T, h, w) on device, captions [str] * B, bucket "WxHxF",
     (tokens fp32 (B, L, D), mask bool (B, L)))  -- L = the longest caption of the batch.

Batches: ``batch_size`` is the global batch. Epoch e shuffles each bucket's samples with a
generator seeded by (seed, e), cuts them into batches of ``batch_size`` (a bucket's last batch may
be smaller: a bucket with fewer samples than a batch still trains) and shuffles the batches of all
buckets together; rank r of ``world`` reads its slice of every batch
(videodit.train.distributed.batch_slice), so each sample is read once per epoch by one rank and
the global batch of a step does not depend on the number of processes. Under ``world`` > 1 a
bucket's last batch with fewer than ``world`` samples joins the batch before it (each rank needs
one), and a bucket with fewer samples than ``world`` is left out with a warning: the only
differences from one process. Every epoch has the same number of
batches, so the batch of step s is a pure function of (cache, batch_size, seed, rank, world, s),
wherever a run resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from videodit.errors import VideoditError

INDEX = "index.json"  # written last by videodit/prepare.py


class PreparedData:
    def __init__(self, cache_dir: str | Path):
        from safetensors import safe_open

        self.dir = Path(cache_dir)
        path = self.dir / INDEX
        if not self.dir.is_dir():
            raise VideoditError(f"{self.dir}: no such folder (prepare one with `videodit prepare SRC -o {self.dir}`)")
        if not path.is_file():
            raise VideoditError(f"{path}: missing; not a finished `videodit prepare` cache (rerun it to finish)")
        try:
            index = json.loads(path.read_text())
            self.vae_config: dict = index["vae"]["config"]
            self.vae_hash: str = index["vae"]["sha256"]
            self.text_encoder: dict = index["text_encoder"]  # {"name", "max_length", "dim"}
            self.fps: float = index["fps"]
            self.frames: int = index["frames"]
            self.samples: list[dict] = index["samples"]
            shards = {s["file"]: s["bytes"] for s in index["shards"]}
            for s in self.samples:
                missing = {"shard", "key", "caption", "bucket"} - s.keys()
                if missing:
                    raise KeyError(f"a sample without {', '.join(sorted(missing))}")
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise VideoditError(f"{path}: corrupt index ({type(e).__name__}: {e})") from None
        if not self.samples:
            raise VideoditError(f"{path}: the cache holds no samples (every source was skipped; see report.json)")
        self._files = {}
        for name, size in shards.items():
            shard = self.dir / name
            if not shard.is_file():
                raise VideoditError(f"{shard}: missing shard (rerun `videodit prepare` into {self.dir})")
            if shard.stat().st_size != size:
                raise VideoditError(f"{shard}: corrupt shard ({shard.stat().st_size} bytes, the index says {size})")
            try:
                handle = safe_open(str(shard), "pt")
                keys = set(handle.keys())
            except Exception as e:  # safetensors raises its own error types for damaged headers
                raise VideoditError(f"{shard}: corrupt shard ({' '.join(str(e).split())})") from None
            self._files[name] = (handle, keys)
        for s in self.samples:
            handle, keys = self._files.get(s["shard"], (None, set()))
            if f"latent.{s['key']}" not in keys or f"text.{s['key']}" not in keys:
                raise VideoditError(f"{self.dir / s['shard']}: corrupt shard (sample {s['key']} missing)")
        self.buckets: dict[str, int] = {}
        for s in self.samples:
            self.buckets[s["bucket"]] = self.buckets.get(s["bucket"], 0) + 1

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, j: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        """Sample j: latent bf16 (c, T, h, w), caption, tokens bf16 (L, D)."""
        s = self.samples[j]
        handle, _ = self._files[s["shard"]]
        return handle.get_tensor(f"latent.{s['key']}"), s["caption"], handle.get_tensor(f"text.{s['key']}")

    def _bucket_ids(self, world: int) -> dict[str, list[int]]:
        ids: dict[str, list[int]] = {}
        for j, sample in enumerate(self.samples):
            ids.setdefault(sample["bucket"], []).append(j)
        small = sorted(b for b, v in ids.items() if len(v) < world)
        if small:  # a batch must give every process a clip
            import warnings

            from videodit.errors import VideoditWarning
            warnings.warn(f"{self.dir}: bucket(s) {', '.join(small)} hold fewer samples than the {world} "
                          "data-parallel processes and are left out of training", VideoditWarning, stacklevel=3)
        ids = {b: v for b, v in ids.items() if len(v) >= world}
        if not ids:
            raise VideoditError(f"{self.dir}: no bucket holds a sample for each of {world} processes")
        return ids

    def describe(self, batch_size: int, world: int = 1) -> str:
        """Buckets, their sample counts and batch sizes: the lines a trainer prints."""
        lines = [f"prepared data {self.dir}: {len(self)} samples"]
        for bucket, n in sorted(self.buckets.items()):
            note = f", fewer than a batch of {batch_size}: trains in smaller batches" if n < batch_size else ""
            lines.append(f"  {bucket}: {n} samples{note}")
        return "\n".join(lines)

    def epoch(self, epoch: int, batch_size: int, seed: int, world: int = 1) -> list[list[int]]:
        """Epoch ``epoch``'s global batches, as lists of sample indices (one bucket each)."""
        if batch_size < 1:
            raise VideoditError(f"batch_size {batch_size}: must be >= 1")
        gen = torch.Generator().manual_seed((seed * 7919 + epoch) * 4096)
        batches = []
        for bucket, ids in sorted(self._bucket_ids(world).items()):
            order = [ids[int(i)] for i in torch.randperm(len(ids), generator=gen)]
            cut = [order[a:a + batch_size] for a in range(0, len(order), batch_size)]
            if len(cut) > 1 and len(cut[-1]) < world:
                cut[-2:] = [cut[-2] + cut[-1]]
            batches += cut
        return [batches[int(i)] for i in torch.randperm(len(batches), generator=gen)]

    def batches(self, step: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                device: str | torch.device = "cpu") -> Iterator[tuple]:
        """Rank ``rank``'s slice of every global batch from batch ``step`` on, forever (see the
        module docstring)."""
        from videodit.train.distributed import batch_slice

        if not 0 <= rank < world:
            raise VideoditError(f"rank {rank}: must be in [0, {world})")
        per_epoch = len(self.epoch(0, batch_size, seed, world))
        epoch, i = divmod(step, per_epoch)
        while True:
            batches = self.epoch(epoch, batch_size, seed, world)
            for ids in batches[i:]:
                lo, hi = batch_slice(len(ids), rank, world)
                yield self._collate(ids[lo:hi], device)
            epoch, i = epoch + 1, 0

    def _collate(self, ids: list[int], device) -> tuple:
        latents, captions, tokens = zip(*(self.sample(j) for j in ids))
        length = max(1, max(t.shape[0] for t in tokens))
        padded = torch.stack([F.pad(t.float(), (0, 0, 0, length - t.shape[0])) for t in tokens])  # (B, L, D)
        mask = torch.stack([torch.arange(length) < t.shape[0] for t in tokens])  # (B, L)
        bucket = self.samples[ids[0]]["bucket"]
        return (torch.stack(latents).to(device).float(), list(captions), bucket,  # (B, c, T, h, w)
                (padded.to(device), mask.to(device)))
