"""SynthWorld as a torch data set: an endless, sharded, resumable stream that stores nothing.

Each global index i is one sample, a pure function of (config, i):
- the clip shape (size, frames) is drawn per block of ``block`` consecutive indices, so a batch
  made of one block has one shape and collates with the default collate function;
- the family is drawn per index (all families: exactly ``videodit.world.make_sample(family=None)``;
  a subset: uniformly among those of the subset that fit the clip shape);
- the caption is the canonical one, a paraphrase or a short prompt with the ``caption_mix`` odds.

Sharding: blocks are dealt round-robin to (rank, DataLoader worker) pairs, rank from
torch.distributed when it is initialised. With ``batch_size`` a multiple of ``block`` every batch
has one shape. Trainers instead give a ``part`` (rank, ranks): every global batch is the same
samples whatever the number of ranks, and a rank reads only its slice of each
(videodit.train.distributed.batch_slice); global batches are dealt round-robin to DataLoader
workers.

Resuming: a trainer passes ``start`` = the number of samples consumed so far across all ranks
(steps x global batch size). Every sample is then produced as if the stream had never stopped
when each rank has consumed a multiple of ``num_workers`` batches (always with 0 or 1 workers);
otherwise a few samples repeat or are skipped, which does not matter for an endless synthetic
stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videodit.errors import VideoditError
from videodit.video import frames_to_tensor
from videodit.world.captions import canonical_caption, scene_captions
from videodit.world.render import render
from videodit.world.scene import (FAMILIES, SPLITS, RandomDraw, check_canvas, family_possible, parse_size,
                                  sample_scene, seed_entropy)

# Purposes of the stream's own random draws (the scene and its captions use 0 and 1).
_SHAPE_DRAW, _INDEX_DRAW = 2, 3


@dataclass(frozen=True)
class SynthWorldConfig:
    split: str = field(default="train", metadata={"help": "train or eval (eval shows held-out colour/shape pairs)"})
    seed: int = field(default=0, metadata={"help": "world seed; the same seed gives the same stream"})
    sizes: tuple[str, ...] = field(default=("64x64",), metadata={
        "help": "clip sizes WxH (multiples of 16, 32..512), one drawn per block"})
    frames: tuple[int, ...] = field(default=(17,), metadata={"help": "frame counts 4k+1, one drawn per block"})
    families: tuple[str, ...] = field(default=FAMILIES, metadata={"help": f"scene families from {', '.join(FAMILIES)}"})
    caption_mix: tuple[float, ...] = field(default=(0.5, 0.35, 0.15), metadata={
        "help": "odds of the canonical caption, a paraphrase and a short prompt"})
    start: int = field(default=0, metadata={"help": "first global sample index (samples already consumed, to resume)"})
    block: int = field(default=1, metadata={"help": "consecutive samples sharing one clip shape and one shard"})

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise VideoditError(f"split {self.split!r}: choose one of {', '.join(SPLITS)}")
        if not self.sizes or not self.frames or not self.families:
            raise VideoditError("sizes, frames and families each need at least one value")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise VideoditError(f"families {unknown}: unknown; choose from {', '.join(FAMILIES)}")
        for w, h in self.shapes:
            for f in self.frames:
                check_canvas(w, h, f)
                if not any(family_possible(fam, w, h, f) for fam in self.families):
                    raise VideoditError(f"no family of {list(self.families)} fits a {w}x{h} clip of {f} frames")
        if len(self.caption_mix) != 3 or min(self.caption_mix) < 0 or sum(self.caption_mix) <= 0:
            raise VideoditError(f"caption_mix {self.caption_mix}: need 3 non-negative odds "
                                f"(canonical, paraphrase, short), not all zero")
        for name, value, low in (("seed", self.seed, 0), ("start", self.start, 0), ("block", self.block, 1)):
            if value < low:
                raise VideoditError(f"{name} {value}: must be >= {low}")

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [parse_size(s, name="sizes") for s in self.sizes]


def synthworld_item(config: SynthWorldConfig, index: int) -> dict:
    """Sample ``index`` of the stream: {"video": (3, F, H, W) float in [-1, 1], "caption", "index"}."""
    block = RandomDraw(seed_entropy(config.split, index // config.block, config.seed, None, _SHAPE_DRAW))
    width, height = block.pick(config.shapes)
    frames = block.pick(config.frames)
    draw = RandomDraw(seed_entropy(config.split, index, config.seed, None, _INDEX_DRAW))
    family = None
    if tuple(config.families) != FAMILIES:
        family = draw.pick([f for f in config.families if family_possible(f, width, height, frames)])
    scene = sample_scene(config.split, index, config.seed, width=width, height=height, frames=frames, family=family)
    canonical, paraphrase, _ = config.caption_mix
    u = draw.uniform(0.0, sum(config.caption_mix))
    if u < canonical:
        caption = canonical_caption(scene)
    else:
        _, paraphrases, shorts = scene_captions(scene)
        caption = draw.pick(paraphrases if u < canonical + paraphrase else shorts)
    return {"video": frames_to_tensor(render(scene)), "caption": caption, "index": index}


def _shard() -> tuple[int, int]:
    """(this reader's shard, number of shards) over torch.distributed ranks x DataLoader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def _workers() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class SynthWorldStream(torch.utils.data.IterableDataset):
    """Endless SynthWorld samples from ``config.start`` on, this reader's shard only; or with
    ``part`` = (rank, ranks, batch) this rank's slice of every global batch of ``batch``
    consecutive samples (``config.start`` a multiple of ``batch``): read it in batches of the
    slice's size."""

    def __init__(self, config: SynthWorldConfig = SynthWorldConfig(), part: tuple[int, int, int] | None = None):
        super().__init__()
        self.config, self.part = config, part

    def __iter__(self):
        if self.part is not None:
            yield from self._slices()
            return
        shard, shards = _shard()
        block, start = self.config.block, self.config.start
        first = start // block
        b = first + (shard - first) % shards          # this shard's first block at or after `start`
        while True:
            for index in range(max(b * block, start), (b + 1) * block):
                yield synthworld_item(self.config, index)
            b += shards

    def _slices(self):
        from videodit.train.distributed import batch_slice

        rank, ranks, batch = self.part
        lo, hi = batch_slice(batch, rank, ranks)
        worker, workers = _workers()
        g = self.config.start // batch + worker
        while True:
            for index in range(g * batch + lo, g * batch + hi):
                yield synthworld_item(self.config, index)
            g += workers


class SynthWorldBatches(torch.utils.data.IterableDataset):
    """Endless whole batches for size buckets (use with ``DataLoader(batch_size=None)``).

    Batch b takes the clip shape drawn for block b (``config.block`` is the index stride, at least
    the largest batch) and holds ``batch_sizes[(width, height, frames)]`` clips: samples
    b * block, b * block + 1, ... So every (size, frames) bucket has its own batch size, and a
    trainer resumes by passing ``start_batch`` = batches consumed across all ranks. Batches are
    dealt round-robin to (rank, worker) shards; or with ``part`` = (rank, ranks), every batch is
    global, read by all ranks, each taking its slice of its clips (batches dealt to workers only).
    Yields {"video": (B, 3, F, H, W), "caption": list of B str, "bucket": "WxHxF", "clips": the
    global batch's clip count}.
    """

    def __init__(self, config: SynthWorldConfig, batch_sizes: dict[tuple[int, int, int], int], start_batch: int = 0,
                 part: tuple[int, int] | None = None):
        super().__init__()
        buckets = {(w, h, f) for (w, h) in config.shapes for f in config.frames}
        missing = sorted(buckets - {k for k, n in batch_sizes.items() if n >= 1})
        if missing:
            raise VideoditError("no batch size (>= 1) for the size bucket(s) "
                                + ", ".join("{}x{}x{}".format(*m) for m in missing))
        if max(batch_sizes[k] for k in buckets) > config.block:
            raise VideoditError(f"block {config.block}: must be at least the largest batch size "
                                f"{max(batch_sizes[k] for k in buckets)}")
        self.config, self.batch_sizes, self.start_batch, self.part = config, dict(batch_sizes), start_batch, part

    def __iter__(self):
        from videodit.train.distributed import batch_slice

        shard, shards = _shard() if self.part is None else _workers()
        b = self.start_batch + shard
        while True:
            draw = RandomDraw(seed_entropy(self.config.split, b, self.config.seed, None, _SHAPE_DRAW))
            width, height = draw.pick(self.config.shapes)  # the draw synthworld_item makes for block b
            shape = (width, height, draw.pick(self.config.frames))
            n = self.batch_sizes[shape]
            lo, hi = (0, n) if self.part is None else batch_slice(n, *self.part)
            items = [synthworld_item(self.config, b * self.config.block + i) for i in range(lo, hi)]
            yield {"video": torch.stack([it["video"] for it in items]),  # (B, 3, F, H, W)
                   "caption": [it["caption"] for it in items], "bucket": "{}x{}x{}".format(*shape), "clips": n}
            b += shards


class SynthWorldDataset(torch.utils.data.Dataset):
    """Map-style view of the same samples: item i is stream index ``config.start + i`` (fixed
    evaluation sets, random access)."""

    def __init__(self, config: SynthWorldConfig, length: int):
        if length < 1:
            raise VideoditError(f"length {length}: need at least 1 sample")
        self.config, self.length = config, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(f"SynthWorldDataset index {i} out of range 0..{self.length - 1}")
        return synthworld_item(self.config, self.config.start + i)
