"""Training checkpoints (videodit/train/checkpoint.py): round trip of states and RNGs, atomic
saves, and one clear line for every bad checkpoint."""

import os
import random
import warnings

import numpy as np
import pytest
import torch

from videodit.errors import VideoditError
from videodit.train.loop import ema_update
from videodit.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from videodit.vae import PRESETS, VAEConfig, VideoVAE

TINY = PRESETS["tiny"]


def _save(path, model, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(path, kind="vae", step=3, data_position=24, config={"model": {"a": 1}},
                           model=model, optimizer=opt, **kw)


# -- save / load --------------------------------------------------------------------------------


def test_round_trip_restores_states_and_rng(tmp_path):
    model, ema = VideoVAE(TINY), VideoVAE(TINY)
    ema_update(ema, model, 0.5)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    _save(tmp_path / "c.pt", model, ema=ema)
    expected = (torch.rand(3), random.random(), np.random.rand())
    other, other_ema = VideoVAE(TINY), VideoVAE(TINY)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    payload = load_checkpoint(tmp_path / "c.pt", kind="vae", model=other, ema=other_ema)
    assert payload["step"] == 3 and payload["data_position"] == 24
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert torch.equal(torch.rand(3), expected[0])
    assert (random.random(), np.random.rand()) == expected[1:]


def test_save_is_atomic(tmp_path, monkeypatch):
    model = VideoVAE(TINY)
    path = _save(tmp_path / "c.pt", model)
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _save(path, model)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.sha256"]  # no temporary file left behind


@pytest.mark.parametrize("crash_at", range(1, 5))
def test_a_save_killed_at_any_step_leaves_a_checkpoint_that_verifies(tmp_path, monkeypatch, crash_at):
    """Rotating checkpoint.pt to checkpoint.prev.pt takes several file operations; a process killed
    between any two of them must leave read_latest a checkpoint to resume from (the one before the
    save, or the new one)."""
    from videodit.train import checkpoint
    model = VideoVAE(TINY)
    path = tmp_path / "c.pt"
    for step in (1, 2):  # a newest and a previous checkpoint on disk
        save_checkpoint(path, kind="vae", step=step, data_position=0, config={}, model=model)
    calls, real_replace = [], os.replace

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise SystemExit("killed")  # before this operation happens
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_die)
    with pytest.raises(SystemExit):
        save_checkpoint(path, kind="vae", step=3, data_position=0, config={}, model=model)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        payload, used = checkpoint.read_latest(path, "vae")
    assert payload["step"] in (2, 3)


# -- bad checkpoints fail with one clear line ---------------------------------------------------


def test_missing_checkpoint(tmp_path):
    with pytest.raises(VideoditError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pt", "vae")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint(tmp_path, damage):
    path = _save(tmp_path / "c.pt", VideoVAE(TINY))
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint at all", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(VideoditError, match="c.pt: checksum mismatch"):
        read_checkpoint(path, "vae")
    # Past the checksum (verify=False), the file itself is refused in one line, without torch's
    # advice to load it with weights_only=False.
    with pytest.raises(VideoditError, match="c.pt: not a readable checkpoint") as e:
        read_checkpoint(path, "vae", verify=False)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_foreign_or_wrong_kind_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(VideoditError, match="foreign.pt: no checksum file foreign.pt.sha256"):
        read_checkpoint(tmp_path / "foreign.pt", "vae")
    with pytest.raises(VideoditError, match="not a videodit checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt", "vae", verify=False)
    _save(tmp_path / "c.pt", VideoVAE(TINY))
    with pytest.raises(VideoditError, match="a 'vae' checkpoint, expected 'dit'"):
        read_checkpoint(tmp_path / "c.pt", "dit")


def test_mismatched_model_names_keys_and_config(tmp_path):
    path = _save(tmp_path / "c.pt", VideoVAE(TINY))
    bigger = VideoVAE(VAEConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=0, latent_channels=6))
    with pytest.raises(VideoditError) as e:
        load_checkpoint(path, kind="vae", model=bigger)
    assert "c.pt [model]" in str(e.value) and "shape mismatch" in str(e.value) and "conv_out" in str(e.value)
    with pytest.raises(VideoditError, match=r"model config differs.*a: checkpoint 1 vs now 2"):
        load_checkpoint(path, kind="vae", model=VideoVAE(TINY), model_config={"a": 2})
