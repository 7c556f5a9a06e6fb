"""The SynthWorld stream: sample format, agreement with make_sample, sharding over ranks and
workers, resuming from a start index, per-block clip shapes, caption mix, config validation."""

import argparse
import itertools

import numpy as np
import pytest
import torch

from videodit.config import add_dataclass_args, dataclass_from_args
from videodit.data import synthworld
from videodit.data.synthworld import SynthWorldConfig, SynthWorldDataset, SynthWorldStream, synthworld_item
from videodit.errors import VideoditError
from videodit.world import make_sample

SMALL = dict(sizes=("32x32",), frames=(5,))


def _indices(stream, n):
    return [item["index"] for item in itertools.islice(iter(stream), n)]


def test_items_are_video_tensors_with_captions_equal_to_make_sample():
    item = next(iter(SynthWorldStream(SynthWorldConfig(seed=4, caption_mix=(1, 0, 0)))))
    video = item["video"]
    assert item["index"] == 0 and video.shape == (3, 17, 64, 64) and video.dtype == torch.float32
    assert video.min() >= -1 and video.max() <= 1
    s = make_sample("train", 0, 4)
    frames = ((video.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()   # (F, H, W, 3)
    np.testing.assert_array_equal(frames, s.frames)
    assert item["caption"] == s.caption


def test_caption_mix_picks_paraphrases_and_short_prompts():
    for mix, field in (((0, 1, 0), "paraphrases"), ((0, 0, 1), "short")):
        config = SynthWorldConfig(caption_mix=mix, **SMALL)
        for index in range(5):
            sample = make_sample("train", index, width=32, height=32, frames=5)
            assert synthworld_item(config, index)["caption"] in getattr(sample, field)


@pytest.mark.parametrize("block", [1, 3])
def test_shards_partition_the_stream_and_resume_from_start(monkeypatch, block):
    n_shards, per_shard = 4, 9
    seen = []
    for shard in range(n_shards):
        monkeypatch.setattr(synthworld, "_shard", lambda s=shard: (s, n_shards))
        seen += _indices(SynthWorldStream(SynthWorldConfig(start=5, block=block, **SMALL)), per_shard)
    assert len(seen) == len(set(seen))                         # no sample twice
    assert min(seen) == 5
    covered = sorted(seen)
    prefix = covered[: n_shards * per_shard - n_shards * block]
    assert prefix == list(range(5, 5 + len(prefix)))          # together a gap-free run from start

    monkeypatch.setattr(synthworld, "_shard", lambda: (0, 1))
    full = list(itertools.islice(iter(SynthWorldStream(SynthWorldConfig(**SMALL))), 12))
    resumed = list(itertools.islice(iter(SynthWorldStream(SynthWorldConfig(start=7, **SMALL))), 5))
    for a, b in zip(full[7:], resumed):
        assert a["index"] == b["index"] and a["caption"] == b["caption"] and torch.equal(a["video"], b["video"])


def test_blocks_share_one_clip_shape_and_collate_through_a_dataloader():
    config = SynthWorldConfig(sizes=("32x32", "48x32"), frames=(1, 5), block=2)
    loader = torch.utils.data.DataLoader(SynthWorldStream(config), batch_size=2, num_workers=2)
    batches = list(itertools.islice(iter(loader), 6))
    indices = sorted(i for b in batches for i in b["index"].tolist())
    assert indices == list(range(12))
    shapes = {tuple(b["video"].shape[2:]) for b in batches}
    assert len(shapes) > 1 and all(len(b["caption"]) == 2 for b in batches)


def test_families_subset_and_map_style_dataset():
    config = SynthWorldConfig(families=("collision", "occlusion"), start=10, **{"sizes": ("64x64",), "frames": (9,)})
    data = SynthWorldDataset(config, length=6)
    assert len(data) == 6
    for i in range(6):
        item = data[i]
        assert item["index"] == 10 + i
        assert any(w in item["caption"] for w in ("wall", "each other", "collid", "hit"))
    with pytest.raises(IndexError):
        data[6]


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "test"}, "split 'test'"),
    ({"sizes": ("64x60",)}, "height 60"),
    ({"frames": (8,)}, "frames 8"),
    ({"families": ("juggling",)}, "juggling"),
    ({"families": ("collision",), "frames": (1,)}, "no family"),
    ({"caption_mix": (1, 0)}, "caption_mix"),
    ({"block": 0}, "block 0"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(VideoditError, match=message):
        SynthWorldConfig(**kwargs)


def test_config_builds_from_cli_flags():
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, SynthWorldConfig)
    args = parser.parse_args(["--sizes", "64x64", "96x64", "--frames", "9", "17", "--split", "eval", "--start", "40"])
    config = dataclass_from_args(SynthWorldConfig(), args)
    assert config.shapes == [(64, 64), (96, 64)] and config.frames == (9, 17)
    assert config.split == "eval" and config.start == 40


def test_bucket_batches_have_one_shape_and_their_own_size():
    from videodit.data.synthworld import SynthWorldBatches, SynthWorldConfig, synthworld_item

    cfg = SynthWorldConfig(sizes=("32x32", "48x32"), frames=(5, 1), block=4)
    sizes = {(32, 32, 5): 2, (32, 32, 1): 4, (48, 32, 5): 1, (48, 32, 1): 3}
    it = iter(SynthWorldBatches(cfg, sizes, start_batch=3))
    seen = set()
    for b in range(3, 15):
        batch = next(it)
        B, _, F, H, W = batch["video"].shape
        assert batch["bucket"] == f"{W}x{H}x{F}" and B == sizes[(W, H, F)] == len(batch["caption"])
        assert torch.equal(batch["video"][0], synthworld_item(cfg, b * 4)["video"])
        seen.add(batch["bucket"])
    assert len(seen) >= 3
    with pytest.raises(VideoditError, match="no batch size"):
        SynthWorldBatches(cfg, {(32, 32, 5): 2})
