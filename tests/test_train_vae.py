"""The VAE trainer (videodit/train/vae.py, `videodit train-vae`): the CLI, exact resume, fine-tuning
from --init (--finetune, per-channel latent statistics, --anchor-weight, --latent-noise, widening),
the edge-weighted loss and the crops."""

import dataclasses

import pytest
import torch

from conftest import random_vae, random_video
from videodit.errors import VideoditError
from videodit.train.checkpoint import read_checkpoint
from videodit.train.vae import VAETrainConfig, train_vae
from videodit.vae import PRESETS, VideoVAE

TINY = PRESETS["tiny"]


# -- the CLI ------------------------------------------------------------------------------------


def test_trainer_lists_every_preset():
    from videodit.train.vae import PRESET_NAMES

    assert set(PRESET_NAMES) == set(PRESETS)


def test_train_vae_cli_writes_bundle_log_and_checkpoint(tmp_path, capsys):
    from videodit.cli import main

    out = tmp_path / "run"
    rc = main(["train-vae", "--preset", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "1",
               "--width", "32", "--height", "32", "--frames", "5", "--stats-batches", "1", "--device", "cpu",
               "--threads", "1"])
    assert rc == 0 and "saved VAE bundle" in capsys.readouterr().out
    assert (out / "checkpoint.pt").is_file() and len((out / "log.csv").read_text().splitlines()) == 2
    assert VideoVAE.from_pretrained(out / "bundle").cfg.latent_channels == TINY.latent_channels


def test_train_vae_cli_rejects_bad_frames(capsys):
    from videodit.cli import main

    assert main(["train-vae", "--frames", "16", "--out", "unused"]) == 2
    assert "--frames 16: must be 4k+1" in capsys.readouterr().err


# -- exact resume -------------------------------------------------------------------------------


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


def test_resume_with_other_preset_is_refused(tmp_path):
    train_vae(_train_cfg(tmp_path, 1), progress=False)
    cfg = VAETrainConfig(**{**_train_cfg(tmp_path, 2).__dict__, "preset": "s4c8"})
    with pytest.raises(VideoditError, match="model config differs"):
        train_vae(cfg, progress=False)


# -- fine-tuning from --init --------------------------------------------------------------------


def test_finetune_decoder_keeps_encoder_and_latent_stats(tmp_path, capsys):
    """--finetune decoder: the encoder's weights and the latent shift/scale are --init's exactly, so a
    DiT trained on those latents stays valid; the decoder does learn."""
    from safetensors.torch import load_file

    from videodit.cli import main

    common = ["--preset", "tiny", "--batch-size", "1", "--width", "32", "--height", "32", "--frames", "5",
              "--stats-batches", "1", "--device", "cpu", "--threads", "1", "--lr", "1e-3"]
    assert main(["train-vae", "--out", str(tmp_path / "a"), "--steps", "2", *common]) == 0
    init = tmp_path / "a" / "bundle"
    assert main(["train-vae", "--out", str(tmp_path / "b"), "--steps", "3", "--init", str(init),
                 "--finetune", "decoder", *common]) == 0
    before, after = load_file(init / "model.safetensors"), load_file(tmp_path / "b" / "bundle" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    a, b = VideoVAE.from_pretrained(init).cfg, VideoVAE.from_pretrained(tmp_path / "b" / "bundle").cfg
    assert (a.latent_shift, a.latent_scale) == (b.latent_shift, b.latent_scale)
    capsys.readouterr()
    assert main(["train-vae", "--out", str(tmp_path / "c"), "--finetune", "decoder", *common]) == 2
    assert "--finetune decoder needs --init" in capsys.readouterr().err


def test_finetune_encoder_keeps_decoder_and_latent_stats(tmp_path, capsys):
    """--finetune encoder: the decoder's weights and the latent statistics are --init's exactly (so a DiT's
    samples decode as before); the encoder learns, widened too with --encoder-channels; clashing
    flags are refused by name."""
    from safetensors.torch import load_file

    from videodit.cli import main

    common = ["--preset", "tiny", "--batch-size", "1", "--width", "32", "--height", "32", "--frames", "5",
              "--stats-batches", "1", "--device", "cpu", "--threads", "1", "--lr", "1e-3"]
    assert main(["train-vae", "--out", str(tmp_path / "a"), "--steps", "2", *common]) == 0
    init = tmp_path / "a" / "bundle"
    for name, extra in (("b", []), ("w", ["--encoder-channels", "16"]), ("s", ["--encoder-shortcut"])):
        assert main(["train-vae", "--out", str(tmp_path / name), "--steps", "3", "--init", str(init),
                     "--finetune", "encoder", *extra, *common]) == 0
        before = load_file(init / "model.safetensors")
        after = load_file(tmp_path / name / "bundle" / "model.safetensors")
        assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
        assert any(before[k].shape != after[k].shape or not torch.equal(before[k], after[k])
                   for k in before if k.startswith("encoder."))
        a, b = VideoVAE.from_pretrained(init).cfg, VideoVAE.from_pretrained(tmp_path / name / "bundle").cfg
        assert (a.latent_shift, a.latent_scale) == (b.latent_shift, b.latent_scale)
    assert VideoVAE.from_pretrained(tmp_path / "w" / "bundle").cfg.base_channels == 16
    shortcut = VideoVAE.from_pretrained(tmp_path / "s" / "bundle")
    assert shortcut.cfg.encoder_shortcut and shortcut.encoder.shortcut.proj.weight.abs().max() > 0
    # a bundle that has a shortcut keeps it (and its weights) as --init, without the flag
    assert main(["train-vae", "--out", str(tmp_path / "s2"), "--steps", "1", "--init", str(tmp_path / "s" / "bundle"),
                 "--finetune", "encoder", *common]) == 0
    assert VideoVAE.from_pretrained(tmp_path / "s2" / "bundle").cfg.encoder_shortcut
    capsys.readouterr()
    assert main(["train-vae", "--out", str(tmp_path / "c"), "--finetune", "encoder", *common]) == 2
    assert "--finetune encoder needs --init" in capsys.readouterr().err
    for flag in (["--decoder-channels", "16"], ["--per-channel-latents"],
                 ["--adv-weight", "0.1"]):
        assert main(["train-vae", "--out", str(tmp_path / "d"), "--init", str(init), "--finetune", "encoder",
                     *flag, *common]) == 2
        assert f"{flag[0]} does not go with it" in capsys.readouterr().err


def test_per_channel_latent_stats_measured_with_steps_0_and_used_by_normalize(tmp_path, capsys):
    """--init B --steps 0 --per-channel-latents: same weights, one shift/scale per latent channel, so
    every channel of normalize(z) has mean ~0 and std ~1 on the measured clips; denormalize inverts it;
    old bundles without the fields still load (global statistics)."""
    from safetensors.torch import load_file

    from videodit.cli import main
    from videodit.data.synthworld import SynthWorldConfig, SynthWorldDataset

    common = ["--preset", "tiny", "--batch-size", "2", "--width", "32", "--height", "32", "--frames", "5",
              "--stats-batches", "2", "--device", "cpu", "--threads", "1"]
    assert main(["train-vae", "--out", str(tmp_path / "a"), "--steps", "2", *common]) == 0
    init = tmp_path / "a" / "bundle"
    assert main(["train-vae", "--out", str(tmp_path / "b"), "--steps", "0", "--init", str(init),
                 "--per-channel-latents", *common]) == 0
    out = tmp_path / "b" / "bundle"
    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    glob, chan = VideoVAE.from_pretrained(init), VideoVAE.from_pretrained(out)
    assert not glob.cfg.latent_channel_scale and len(chan.cfg.latent_channel_scale) == chan.cfg.latent_channels
    clips = SynthWorldDataset(SynthWorldConfig(sizes=("32x32",), frames=(5,)), 4)
    x = torch.stack([clips[i]["video"] for i in range(4)])
    with torch.no_grad():
        z = chan.encode(x)
    n = chan.normalize(z)
    assert n.mean((0, 2, 3, 4)).abs().max() < 0.5 and ((n.std((0, 2, 3, 4)) - 1).abs() < 0.5).all()
    assert torch.allclose(chan.denormalize(n), z, atol=1e-5)
    capsys.readouterr()
    assert main(["train-vae", "--out", str(tmp_path / "c"), "--steps", "0", *common]) == 2
    assert "--steps 0 only measures the latent statistics of --init" in capsys.readouterr().err
    assert main(["train-vae", "--out", str(tmp_path / "d"), "--init", str(init), "--finetune", "decoder",
                 "--per-channel-latents", *common]) == 2
    assert "--per-channel-latents does not go with it" in capsys.readouterr().err
    # --finetune decoder from a per-channel bundle keeps its per-channel statistics
    assert main(["train-vae", "--out", str(tmp_path / "e"), "--steps", "1", "--init", str(out), "--finetune", "decoder",
                 *common]) == 0
    kept = VideoVAE.from_pretrained(tmp_path / "e" / "bundle").cfg
    assert (kept.latent_channel_shift, kept.latent_channel_scale) == (chan.cfg.latent_channel_shift,
                                                                        chan.cfg.latent_channel_scale)
    # a whole-VAE fine-tune from a per-channel bundle measures its statistics per channel again
    assert main(["train-vae", "--out", str(tmp_path / "f"), "--steps", "1", "--init", str(out), *common]) == 0
    again = VideoVAE.from_pretrained(tmp_path / "f" / "bundle").cfg
    assert len(again.latent_channel_scale) == again.latent_channels
    assert again.latent_channel_scale != chan.cfg.latent_channel_scale
    with pytest.raises(VideoditError, match="need 4 values"):
        dataclasses.replace(glob.cfg, latent_channel_shift=(0.0,), latent_channel_scale=(1.0,))


def test_anchor_weight_trains_both_halves_and_keeps_init_latent_stats(tmp_path, capsys):
    """--anchor-weight: encoder and decoder both learn from --init, the drift penalty is what holds
    the latents, and the bundle keeps --init's statistics; without --init it is refused."""
    from safetensors.torch import load_file

    from videodit.cli import main

    common = ["--preset", "tiny", "--batch-size", "1", "--width", "32", "--height", "32", "--frames", "5",
              "--stats-batches", "1", "--device", "cpu", "--threads", "1", "--lr", "1e-3"]
    assert main(["train-vae", "--out", str(tmp_path / "a"), "--steps", "2", *common]) == 0
    init = tmp_path / "a" / "bundle"
    runs = {}
    for name, weight in (("free", "0"), ("held", "1000")):
        assert main(["train-vae", "--out", str(tmp_path / name), "--steps", "4", "--init", str(init),
                     "--anchor-weight", weight, "--edge-weight", "4", *common, "--lr", "3e-3"]) == 0
        runs[name] = load_file(tmp_path / name / "bundle" / "model.safetensors")
    before = load_file(init / "model.safetensors")
    held, start = VideoVAE.from_pretrained(tmp_path / "held" / "bundle").cfg, VideoVAE.from_pretrained(init).cfg
    assert (held.latent_shift, held.latent_scale) == (start.latent_shift, start.latent_scale)
    assert any(not torch.equal(before[k], runs["held"][k]) for k in before if k.startswith("encoder."))
    x = random_video(5, 32, seed=3)
    with torch.no_grad():
        ref = VideoVAE.from_pretrained(init).encode(x)
        drift = {n: (VideoVAE.from_pretrained(tmp_path / n / "bundle").encode_moments(x)[0] - ref).abs().mean()
                 for n in runs}
    assert drift["held"] < drift["free"]
    capsys.readouterr()
    assert main(["train-vae", "--out", str(tmp_path / "c"), "--anchor-weight", "1", *common]) == 2
    assert "--anchor-weight" in capsys.readouterr().err


def test_latent_noise_is_in_normalised_units_and_needs_finetune_decoder(tmp_path, capsys):
    from videodit.cli import main

    vae = dataclasses.replace(TINY, latent_scale=4.0)
    model = random_vae(vae)
    x = random_video(5, 32)
    with torch.no_grad():
        plain = model(x, torch.Generator().manual_seed(0))[0]
        zero = model(x, torch.Generator().manual_seed(0), torch.zeros(1))[0]
        noisy = model(x, torch.Generator().manual_seed(0), torch.full((1,), 0.5))[0]
        # the noise reaches the latent divided by the scale: the same noise at scale 1 is 4x larger
        louder = random_vae(TINY)(x, torch.Generator().manual_seed(0), torch.full((1,), 0.5))[0]
    assert torch.equal(plain, zero)
    assert 0 < (noisy - plain).abs().mean() < (louder - plain).abs().mean()

    common = ["--preset", "tiny", "--batch-size", "2", "--width", "32", "--height", "32", "--frames", "5",
              "--stats-batches", "1", "--device", "cpu", "--threads", "1"]
    assert main(["train-vae", "--out", str(tmp_path / "a"), "--steps", "1", *common]) == 0
    assert main(["train-vae", "--out", str(tmp_path / "b"), "--steps", "2", "--init", str(tmp_path / "a" / "bundle"),
                 "--finetune", "decoder", "--latent-noise", "0.3", *common]) == 0
    capsys.readouterr()
    assert main(["train-vae", "--out", str(tmp_path / "c"), "--steps", "2", "--init", str(tmp_path / "a" / "bundle"),
                 "--latent-noise", "0.3", *common]) == 2
    assert "--latent-noise goes with --finetune decoder" in capsys.readouterr().err


def test_train_vae_decoder_channels_widens_the_init_decoder(tmp_path, capsys):
    """--init B --finetune decoder --decoder-channels W: the bundle's decoder is W wide, its encoder and
    latent statistics are B's, and it loads and decodes; narrowing is refused with a clear error."""
    from safetensors.torch import load_file

    from videodit.cli import main

    common = ["--preset", "tiny", "--batch-size", "1", "--width", "32", "--height", "32", "--frames", "5",
              "--stats-batches", "1", "--device", "cpu", "--threads", "1"]
    assert main(["train-vae", "--out", str(tmp_path / "a"), "--steps", "2", *common]) == 0
    init = tmp_path / "a" / "bundle"
    assert main(["train-vae", "--out", str(tmp_path / "b"), "--steps", "2", "--init", str(init), "--finetune", "decoder",
                 "--decoder-channels", "16", *common]) == 0
    out = tmp_path / "b" / "bundle"
    assert "decoder widened 8 -> 16 channels" in capsys.readouterr().out
    wide, narrow = VideoVAE.from_pretrained(out), VideoVAE.from_pretrained(init)
    assert wide.cfg.decoder_channels == 16 and wide.cfg.base_channels == narrow.cfg.base_channels == 8
    assert (wide.cfg.latent_shift, wide.cfg.latent_scale) == (narrow.cfg.latent_shift, narrow.cfg.latent_scale)
    before, after = load_file(init / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    with torch.no_grad():
        assert wide.decode(torch.zeros(1, wide.cfg.latent_channels, 2, 8, 8)).shape == (1, 3, 5, 32, 32)
    assert main(["train-vae", "--out", str(tmp_path / "c"), "--steps", "1", "--init", str(out), "--finetune", "decoder",
                 "--decoder-channels", "8", *common]) == 2
    assert "can be widened, not narrowed" in capsys.readouterr().err
    assert main(["train-vae", "--out", str(tmp_path / "d"), "--steps", "1", "--init", str(out), "--finetune", "decoder",
                 "--encoder-channels", "16", *common]) == 2
    assert "--finetune decoder freezes" in capsys.readouterr().err
    # the whole VAE, its encoder widened too: the decoder keeps its 16 channels, the statistics are measured again
    assert main(["train-vae", "--out", str(tmp_path / "e"), "--steps", "1", "--init", str(out),
                 "--encoder-channels", "16", *common]) == 0
    assert "encoder widened 8 -> 16 channels" in capsys.readouterr().out
    both = VideoVAE.from_pretrained(tmp_path / "e" / "bundle").cfg
    assert (both.base_channels, both.decoder_channels) == (16, 16)


# -- the loss and the crops ---------------------------------------------------------------------


def test_edge_mask_marks_outlines_and_motion_only():
    from videodit.train.vae import edge_mask

    x = -torch.ones(1, 3, 3, 32, 32)
    x[:, :, :, 10:20, 10:20] = 1.0            # a still 10x10 square ...
    x[:, :, 2, 2:4, 28:30] = 1.0              # ... and a speck that appears in frame 2
    m = edge_mask(x)[0, 0]
    assert m.shape == (3, 32, 32)
    assert m[:, 10, 15].eq(1).all() and m[:, 9, 15].eq(1).all() and m[:, 8, 15].eq(1).all()  # outline, dilated
    assert m[:, 15, 15].eq(0).all() and m[:, 0, 0].eq(0).all() and m[:, 6, 15].eq(0).all()  # inside, far
    assert m[2, 2, 28] == 1 and m[1, 2, 28] == 1 and m[0, 2, 28] == 0  # the change marks both frames


def test_edge_weight_makes_outline_errors_cost_more():
    from videodit.train.vae import vae_loss

    x = -torch.ones(1, 3, 1, 32, 32)
    x[:, :, :, 10:20, 10:20] = 1.0
    mean, logvar = torch.zeros(1, 4, 1, 8, 8), torch.zeros(1, 4, 1, 8, 8)
    on_edge, flat = x.clone(), x.clone()
    on_edge[:, :, :, 10, 12] -= 0.5
    flat[:, :, :, 28, 28] += 0.5
    plain = [vae_loss(x, r, mean, logvar, 0.0, 1.0)[0].item() for r in (on_edge, flat)]
    weighted = [vae_loss(x, r, mean, logvar, 0.0, 1.0, edge_weight=8.0)[0].item() for r in (on_edge, flat)]
    assert plain[0] == pytest.approx(plain[1])
    assert weighted[0] > 3 * weighted[1]
    assert vae_loss(x, x, mean, logvar, 0.0, 1.0, edge_weight=8.0)[0].item() == 0.0


def test_focus_windows_land_on_the_object_on_the_stride_grid():
    """--crop-focus: per clip, windows are drawn where the outlines and motion are; a clip with no
    edges at all still gets windows (uniformly), and every corner sits on the stride grid."""
    from videodit.train.vae import focus_windows

    x = -torch.ones(2, 3, 5, 64, 64)
    for t in range(5):  # clip 0: a small square moving right in the bottom-right corner
        x[0, :, t, 48:54, 44 + 2 * t:50 + 2 * t] = 1.0
    gen = torch.Generator().manual_seed(0)
    hits, corners_1 = 0, set()
    for _ in range(50):
        (y0, x0), (y1, x1) = focus_windows(x, 16, 4, gen)
        assert y0 % 4 == x0 % 4 == y1 % 4 == x1 % 4 == 0 and max(y0, x0, y1, x1) <= 48
        hits += y0 < 54 and y0 + 16 > 48 and x0 < 58 and x0 + 16 > 44  # on the object's path
        corners_1.add((y1, x1))
    assert hits >= 45  # 20 of the 169 grid windows touch the path: uniform draws would hit ~6 of 50
    assert len(corners_1) > 20  # clip 1 (plain background): spread over the frame


def test_crop_focus_trains_per_clip_crops_and_needs_crop_size(tmp_path, capsys):
    from videodit.train.vae import VAETrainConfig, _crop

    cfg = VAETrainConfig(crop_size=16, crop_focus=True)
    x = -torch.ones(3, 3, 5, 32, 32)
    x[0, :, :, 2:6, 2:6] = 1.0
    x[1, :, :, 24:30, 24:30] = 1.0
    out = _crop(x, cfg, torch.Generator().manual_seed(1), 4)
    assert out.shape == (3, 3, 5, 16, 16)
    assert out[0].max() == 1.0 and out[1].max() == 1.0  # each clip's own object is in its crop
    with pytest.raises(VideoditError, match="--crop-size"):
        VAETrainConfig(crop_focus=True).check()
