import random

import numpy as np
import pytest
import torch

from videodit.errors import VideoditError
from videodit.train.loop import ema_update
from videodit.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from videodit.train.vae import VAETrainConfig, train_vae
from videodit.vae import PRESETS, VAEConfig, VideoVAE

TINY = PRESETS["tiny"]


def _save(path, model, **kw):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(path, kind="vae", step=3, data_position=24, config={"model": {"a": 1}},
                           model=model, optimizer=opt, **kw)


# -- exact resume ----------------------------------------------------------------------------------


def _train_cfg(out, steps):
    # SynthWorld at its smallest canvas; crops and posterior noise are on, so resume must restore them.
    return VAETrainConfig(preset="tiny", out=str(out), steps=steps, batch_size=2, width=32, height=32, frames=9,
                          crop_size=16, crop_frames=5, warmup_steps=2, save_every=1000, log_every=1,
                          stats_batches=1, threads=1, device="cpu")


def test_resume_gives_identical_weights(tmp_path):
    straight = train_vae(_train_cfg(tmp_path / "a", 6), progress=False)
    train_vae(_train_cfg(tmp_path / "b", 3), progress=False)  # stops after 3 steps (checkpoint at the end)
    resumed = train_vae(_train_cfg(tmp_path / "b", 6), progress=False)

    ckpt_a = read_checkpoint(tmp_path / "a" / "checkpoint.pt", "vae")
    ckpt_b = read_checkpoint(tmp_path / "b" / "checkpoint.pt", "vae")
    assert ckpt_a["step"] == ckpt_b["step"] == 6 and ckpt_a["data_position"] == ckpt_b["data_position"] == 6
    for part in ("model", "ema"):
        for k, v in ckpt_a[part].items():
            assert torch.equal(v, ckpt_b[part][k]), f"{part}.{k} differs after resume"
    for k, v in ckpt_a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], ckpt_b["optimizer"]["state"][k]["exp_avg"])
    # And training did move the weights (otherwise the equality above would be vacuous).
    fresh = VideoVAE(TINY).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in ckpt_a["model"].items())
    a, b = VideoVAE.from_pretrained(straight), VideoVAE.from_pretrained(resumed)
    assert a.cfg == b.cfg and a.cfg.latent_scale != 1.0  # latent stats were measured
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and [line.split(",")[0] for line in log[1:]] == [str(i) for i in range(1, 7)]


# -- save / load ------------------------------------------------------------------------------------


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


# -- bad checkpoints fail with one clear line ----------------------------------------------------------


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


def test_resume_with_other_preset_is_refused(tmp_path):
    train_vae(_train_cfg(tmp_path, 1), progress=False)
    cfg = VAETrainConfig(**{**_train_cfg(tmp_path, 2).__dict__, "preset": "s4c8"})
    with pytest.raises(VideoditError, match="model config differs"):
        train_vae(cfg, progress=False)
