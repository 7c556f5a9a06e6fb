import dataclasses
import json

import numpy as np
import pytest
import torch

from videodit.bundle import write_checksums
from videodit.errors import VideoditError
from videodit.reconstruct import fit_shape, reconstruct_frames, ssim
from videodit.vae import PRESETS, VAEConfig, VideoVAE, _tiled
from videodit.video import frames_to_tensor, psnr

TINY = PRESETS["tiny"]  # stride 4, 4 latent channels


def _random_vae(cfg: VAEConfig = TINY, seed: int = 0) -> VideoVAE:
    """A VAE whose zero-initialised residual branches are perturbed, so every layer matters."""
    torch.manual_seed(seed)
    vae = VideoVAE(cfg).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.compute_dtype = torch.float32
    return vae


def _video(frames=17, size=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


# -- shapes and input checks --------------------------------------------------------------------


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (17, 5), (33, 9)])
@pytest.mark.parametrize("preset", ["tiny", "s8c16"])
def test_shapes(frames, latent_frames, preset):
    vae = VideoVAE(PRESETS[preset]).eval()
    s, c = vae.cfg.spatial_stride, vae.cfg.latent_channels
    x = _video(frames, 32)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, c, latent_frames, 32 // s, 32 // s)
        assert vae.encode(x, sample=True).shape == z.shape
        assert vae.decode(z).shape == x.shape


def test_spatial_strides_of_presets():
    assert PRESETS["tiny"].spatial_stride == 4 and PRESETS["s4c8"].spatial_stride == 4
    assert PRESETS["s8c16"].spatial_stride == 8 and PRESETS["gpu"].spatial_stride == 8


def test_trainer_lists_every_preset():
    from videodit.train.vae import PRESET_NAMES

    assert set(PRESET_NAMES) == set(PRESETS)


@pytest.mark.parametrize("shape, needle", [
    ((1, 3, 16, 32, 32), "nearest: 13 or 17"),
    ((1, 3, 17, 30, 32), "multiples of the spatial stride 4"),
    ((1, 4, 17, 32, 32), "(B, 3, F, H, W)"),
])
def test_bad_input_shapes_raise_clear_errors(shape, needle):
    with pytest.raises(VideoditError, match=None) as e:
        VideoVAE(TINY).encode(torch.zeros(shape))
    assert needle in str(e.value)


def test_bad_config_raises():
    with pytest.raises(VideoditError, match="at least 3 levels"):
        VAEConfig(channel_mults=(1, 2))


# -- causality ------------------------------------------------------------------------------------


def test_encoder_is_causal():
    vae, x = _random_vae(), _video(17)
    changed = x.clone()
    changed[:, :, 9] = -x[:, :, 9]  # frame 9 belongs to latent frame 3 (frames 9..12)
    with torch.no_grad():
        z, z2 = vae.encode(x), vae.encode(changed)
    assert torch.equal(z[:, :, :3], z2[:, :, :3])
    assert (z[:, :, 3] - z2[:, :, 3]).abs().max() > 1e-3


def test_pixel_shortcut_starts_at_zero_then_stays_causal_chunkable_and_saved(tmp_path):
    """An encoder given a PixelShortcut computes exactly what it did; once the shortcut has
    weights, it changes the latents, stays causal (frame 9 reaches latent frame 3 only), chunked
    encoding still equals one-shot, and a bundle round trip keeps it."""
    from videodit.vae import widen

    plain, x = _random_vae(), _video(17)
    vae = VideoVAE(dataclasses.replace(TINY, encoder_shortcut=True)).eval()
    vae.compute_dtype = torch.float32
    widen(plain.encoder, vae.encoder)
    widen(plain.decoder, vae.decoder)
    with torch.no_grad():
        assert torch.equal(vae.encode(x), plain.encode(x))
        torch.nn.init.normal_(vae.encoder.shortcut.proj.weight)
        z = vae.encode(x)
        assert (z - plain.encode(x)).abs().max() > 1e-2
        for chunk in (4, 8):
            assert (vae.encode(x, chunk_frames=chunk) - z).abs().max() < CHUNK_TOL_FP32
        changed = x.clone()
        changed[:, :, 9] = -x[:, :, 9]
        z2 = vae.encode(changed)
        assert torch.equal(z[:, :, :3], z2[:, :, :3]) and (z[:, :, 3] - z2[:, :, 3]).abs().max() > 1e-3
        vae.save_pretrained(tmp_path / "vae")
        loaded = VideoVAE.from_pretrained(tmp_path / "vae").eval()
        loaded.compute_dtype = torch.float32
        assert loaded.cfg.encoder_shortcut and torch.equal(loaded.encode(x), z)
    with pytest.raises(VideoditError, match="pixel shortcut"):
        widen(vae.encoder, VideoVAE(TINY).encoder)


def test_decoder_is_causal():
    vae = _random_vae()
    z = torch.randn(1, TINY.latent_channels, 5, 8, 8)
    changed = z.clone()
    changed[:, :, 3] += 1.0  # latent frame 3 decodes to frames 9..12
    with torch.no_grad():
        y, y2 = vae.decode(z), vae.decode(changed)
    assert torch.equal(y[:, :, :9], y2[:, :, :9])
    assert (y[:, :, 9] - y2[:, :, 9]).abs().max() > 1e-3


def test_image_is_a_one_frame_video():
    # The first frame is encoded alone: its latent does not depend on how long the video is.
    vae, x = _random_vae(), _video(17)
    with torch.no_grad():
        assert torch.equal(vae.encode(x[:, :, :1])[:, :, 0], vae.encode(x)[:, :, 0])


# -- chunked and tiled == one-shot ---------------------------------------------------------------

# Stated tolerances (max abs difference, pixel / latent units of a [-1, 1] range):
CHUNK_TOL_FP32 = 1e-4   # the same arithmetic in a different order
CHUNK_TOL_BF16 = 5e-2   # bf16 convs round differently when the chunk shapes differ
RANDOM_TILE_TOL = 0.06  # mean abs, random weights, tile 64 / overlap 32 (tiles see less context)


@pytest.mark.parametrize("chunk", [4, 8, 16])
def test_chunked_equals_one_shot_fp32(chunk):
    vae, x = _random_vae(), _video(33)
    with torch.no_grad():
        z = vae.encode(x)
        assert (vae.encode(x, chunk_frames=chunk) - z).abs().max() < CHUNK_TOL_FP32
        y = vae.decode(z)
        assert (vae.decode(z, chunk_frames=chunk) - y).abs().max() < CHUNK_TOL_FP32


def test_chunked_equals_one_shot_bf16():
    vae, x = _random_vae(), _video(17)
    vae.compute_dtype = torch.bfloat16
    with torch.no_grad():
        z = vae.encode(x)
        assert (vae.encode(x, chunk_frames=4) - z).abs().max() < CHUNK_TOL_BF16
        assert (vae.decode(z, chunk_frames=4) - vae.decode(z)).abs().max() < CHUNK_TOL_BF16


def test_chunk_must_be_a_multiple_of_4():
    with pytest.raises(VideoditError, match="multiple of 4"):
        VideoVAE(TINY).encode(_video(9), chunk_frames=6)


def test_tile_blending_is_exact_for_pointwise_maps():
    # Overlapping tiles cross-fade with weights that sum to 1, so a map without spatial context
    # (scaling, strided sampling, nearest upsampling) is reproduced exactly.
    x = torch.randn(1, 3, 2, 40, 56)
    up = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    for tile, overlap in [(16, 8), (24, 8), (40, 0)]:
        assert torch.allclose(_tiled(lambda t: 2 * t, x, tile, overlap, 1, 1), 2 * x, atol=1e-6)
        assert torch.allclose(_tiled(lambda t: t[..., ::4, ::4], x, tile, overlap, 1, 4), x[..., ::4, ::4], atol=1e-6)
        assert torch.allclose(_tiled(up, x, tile, overlap, 2, 1), up(x), atol=1e-6)


def test_tiled_vae_approaches_one_shot_as_overlap_grows(moving_disc):
    # A random network is far more sensitive to distant context than a trained one (see
    # docs/VAE.md for the bundled VAE's numbers); still, the error must shrink with overlap.
    vae = _random_vae()
    x = frames_to_tensor(moving_disc(frames=5, height=96, width=96)).unsqueeze(0)
    with torch.no_grad():
        z, errors = vae.encode(x), []
        y = vae.decode(z)
        for tile, overlap in [(48, 0), (48, 16), (64, 32)]:
            zt = vae.encode(x, tile=tile, tile_overlap=overlap, chunk_frames=4)
            yt = vae.decode(z, tile=tile, tile_overlap=overlap, chunk_frames=4)
            assert zt.shape == z.shape and yt.shape == y.shape
            errors.append(((zt - z).abs().mean().item(), (yt - y).abs().mean().item()))
    assert errors[0][0] > errors[1][0] > errors[2][0] and errors[0][1] > errors[1][1] > errors[2][1]
    assert errors[2][1] < RANDOM_TILE_TOL


# -- training signal ------------------------------------------------------------------------------


def test_tiny_vae_overfits_one_clip(moving_disc):
    torch.manual_seed(0)
    clip = moving_disc(frames=5, height=32, width=32, radius=6.0)
    x = frames_to_tensor(clip).unsqueeze(0)
    vae = VideoVAE(TINY)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: more threads only contend (seen: 4 s alone, minutes on a busy box)
    try:
        _overfit(vae, opt, x)
    finally:
        torch.set_num_threads(threads)
    vae.eval()
    out, _, _ = reconstruct_frames(vae, clip, chunk_frames=None)
    assert psnr(clip, out) > 27.0  # ~30.8 dB measured; the untrained VAE gives ~10 dB


def test_refine_lowers_the_reconstruction_error_and_leaves_the_vae_alone(moving_disc):
    """VideoVAE.refine: Adam on the latent against L1 + MSE, decoder fixed. The error falls with
    steps, even called under no_grad; no weight changes or gathers a gradient; encode(refine=k) is
    refine(encode) ; 0 steps is the identity; chunked decoding refines alike; bad use is refused."""
    torch.manual_seed(0)
    vae = _random_vae()
    x = frames_to_tensor(moving_disc(frames=9, height=32, width=32, radius=6.0)).unsqueeze(0)
    before = {k: v.clone() for k, v in vae.state_dict().items()}

    def error(z):
        with torch.no_grad():
            e = vae.decode(z) - x
        return (e.abs().mean() + e.pow(2).mean()).item()

    with torch.no_grad():
        z0 = vae.encode(x)
        z3, z10 = vae.refine(x, z0, 3), vae.refine(x, z0, 10)
    assert error(z10) < error(z3) < error(z0)
    assert not z10.requires_grad and torch.equal(vae.refine(x, z0, 0), z0)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    assert all(p.grad is None for p in vae.parameters())
    with torch.no_grad():
        assert torch.allclose(vae.encode(x, refine=3), z3)
    with torch.inference_mode():  # the generation pipeline's mode: autograd must still run inside
        assert torch.allclose(vae.encode(x, refine=3), z3)
    with torch.no_grad():
        chunked = vae.refine(x, z0, 3, chunk_frames=4)
    assert torch.allclose(chunked, z3, atol=1e-3)
    with pytest.raises(VideoditError, match="must be >= 0"):
        vae.refine(x, z0, -1)
    with pytest.raises(VideoditError, match="sample=True"):
        vae.encode(x, sample=True, refine=2)


def _overfit(vae, opt, x):
    for _ in range(150):
        recon, mean, logvar = vae(x)
        loss = (recon - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


# -- bundles --------------------------------------------------------------------------------------


def test_bundle_round_trip(tmp_path):
    vae, x = _random_vae(), _video(5)
    vae.save_pretrained(tmp_path / "vae")
    loaded = VideoVAE.from_pretrained(tmp_path / "vae")
    loaded.compute_dtype = torch.float32
    assert loaded.cfg == vae.cfg
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), vae.encode(x))


def test_bundle_with_other_config_fails_naming_file_and_key(tmp_path):
    VideoVAE(TINY).save_pretrained(tmp_path / "vae")
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    cfg["latent_channels"] = 6
    (tmp_path / "vae" / "config.json").write_text(json.dumps(cfg))
    write_checksums(tmp_path / "vae")  # edited on purpose: accept it as it is now
    with pytest.raises(VideoditError) as e:
        VideoVAE.from_pretrained(tmp_path / "vae")
    assert "model.safetensors" in str(e.value) and "shape mismatch" in str(e.value)


def test_bundle_missing_or_corrupt(tmp_path):
    with pytest.raises(VideoditError, match="no config.json"):
        VideoVAE.from_pretrained(tmp_path)
    VideoVAE(TINY).save_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "model.safetensors").write_bytes(b"garbage")
    write_checksums(tmp_path / "vae")  # damaged on purpose: the checksums alone would catch it (test_bundle.py)
    with pytest.raises(VideoditError, match="not a readable safetensors"):
        VideoVAE.from_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "config.json").write_text('{"base_channels": 8, "colour": 1}')
    write_checksums(tmp_path / "vae")
    with pytest.raises(VideoditError, match="unknown VAEConfig field"):
        VideoVAE.from_pretrained(tmp_path / "vae")


def test_normalize_inverts():
    vae = VideoVAE(VAEConfig(base_channels=8, channel_mults=(1, 1, 1), latent_channels=2,
                             latent_shift=0.3, latent_scale=2.5))
    z = torch.randn(1, 2, 3, 4, 4)
    assert torch.allclose(vae.normalize(z), (z - 0.3) * 2.5)
    assert torch.allclose(vae.denormalize(vae.normalize(z)), z, atol=1e-6)


# -- reconstruct: metrics and the CLI -------------------------------------------------------------


def test_ssim_analytic_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    # Constant images: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (the structure term is 1).
    b = np.full((16, 16, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, noisy) < 0.5


def test_fit_shape():
    assert fit_shape(17, 64, 64, 4) == (17, 64, 64)
    assert fit_shape(6, 30, 33, 8) == (9, 32, 40)
    assert fit_shape(1, 8, 8, 8) == (1, 8, 8)


def test_reconstruct_cli_pads_odd_shapes_and_prints_metrics(tmp_path, moving_disc, capsys):
    from videodit.cli import main
    from videodit.video import read_video, write_video

    _random_vae().save_pretrained(tmp_path / "vae")
    clip = moving_disc(frames=6, height=30, width=34)
    write_video(tmp_path / "in", clip)  # a PNG folder: lossless
    rc = main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "vae"),
               "--chunk-frames", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "padded 6x30x34" in out and "PSNR" in out and "SSIM" in out and "refine 5" in out
    assert read_video(tmp_path / "out").frames.shape == clip.shape
    rc = main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "o0"), "--model", str(tmp_path / "vae"),
               "--refine", "0"])
    assert rc == 0 and "refine 0" in capsys.readouterr().out
    assert main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "o1"), "--model", str(tmp_path / "vae"),
                 "--refine", "-2"]) == 2
    assert "argument --refine: must be >= 0 (got -2)" in capsys.readouterr().err


def test_reconstruct_cli_missing_model_is_one_line(tmp_path, moving_disc, capsys):
    from videodit.cli import main
    from videodit.video import write_video

    write_video(tmp_path / "in", moving_disc(frames=5, height=32, width=32))
    rc = main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])
    assert rc == 2
    assert "argument --model: no such folder" in capsys.readouterr().err



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


def test_bundled_vae_reconstructs_held_out_synthworld():
    """Regression guard for the weights shipped in videodit/assets/bundle/vae (37.91 dB mean over 300
    held-out clips, 38.6 dB on these four; the VAE before its encoder was trained against the
    frozen decoder gave 38.2 dB here, the 16-channel decoder before that 35.1 dB; docs/VAE.md)."""
    from videodit.reconstruct import DEFAULT_BUNDLE
    from videodit.video import frames_to_tensor, psnr, tensor_to_frames
    from videodit.world import make_sample

    vae = VideoVAE.from_pretrained(DEFAULT_BUNDLE)
    clips = np.stack([make_sample("eval", i).frames for i in range(4)])  # (4, 17, 64, 64, 3)
    with torch.no_grad():
        recon = tensor_to_frames(vae.decode(vae.encode(frames_to_tensor(clips))).clamp(-1, 1))
    assert np.mean([psnr(a, b) for a, b in zip(clips, recon)]) > 36.5
    assert vae.cfg.encoder_shortcut and vae.encoder.shortcut.proj.weight.abs().max() > 0  # the shipped encoder has a trained pixel shortcut
    # reconstruct's encode-time refinement (5 steps): 37.14 -> 39.00 dB on clips 0-1 (+1.2 dB on 300)
    with torch.no_grad():
        refined = tensor_to_frames(vae.decode(vae.encode(frames_to_tensor(clips[:2]), refine=5)).clamp(-1, 1))
    gain = np.mean([psnr(a, b) for a, b in zip(clips[:2], refined)]) - np.mean([psnr(a, b) for a, b in zip(clips[:2], recon[:2])])
    assert gain > 1.0


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
    x = _video(5, 32, seed=3)
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
    model = _random_vae(vae)
    x = _video(5, 32)
    with torch.no_grad():
        plain = model(x, torch.Generator().manual_seed(0))[0]
        zero = model(x, torch.Generator().manual_seed(0), torch.zeros(1))[0]
        noisy = model(x, torch.Generator().manual_seed(0), torch.full((1,), 0.5))[0]
        # the noise reaches the latent divided by the scale: the same noise at scale 1 is 4x larger
        louder = _random_vae(TINY)(x, torch.Generator().manual_seed(0), torch.full((1,), 0.5))[0]
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


def test_evaluate_reconstruction_with_latent_noise_scores_lower():
    from videodit.eval.reconstruction import evaluate_reconstruction

    vae = _random_vae(dataclasses.replace(TINY, latent_scale=0.5))
    clean = evaluate_reconstruction(vae, n=2, width=32, height=32, frames=5, batch_size=2)
    noisy = evaluate_reconstruction(vae, n=2, width=32, height=32, frames=5, batch_size=2, latent_noise=1.0)
    again = evaluate_reconstruction(vae, n=2, width=32, height=32, frames=5, batch_size=2, latent_noise=1.0)
    assert noisy["psnr"] < clean["psnr"] and noisy["psnr"] == again["psnr"]


def test_widened_encoder_and_decoder_compute_what_the_narrow_ones_did_and_their_new_channels_learn():
    """widen: an encoder and a decoder with twice the channels, copied from (randomised) narrow ones,
    give the same outputs in fp32; their new, zeroed weights get gradients; narrowing is refused."""
    from videodit.vae import widen

    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    narrow = VideoVAE(cfg)
    for m in narrow.modules():
        if isinstance(m, torch.nn.Conv3d):
            torch.nn.init.normal_(m.weight, std=0.2)
            torch.nn.init.normal_(m.bias, std=0.2)
    wide = VideoVAE(dataclasses.replace(cfg, base_channels=2 * cfg.base_channels))
    widen(narrow.encoder, wide.encoder)
    widen(narrow.decoder, wide.decoder)
    narrow.compute_dtype = wide.compute_dtype = torch.float32
    x = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    za, zb = narrow.encode_moments(x)[0], wide.encode_moments(x)[0]
    assert za.abs().mean() > 0.1 and torch.allclose(za, zb, rtol=1e-5, atol=1e-5 * za.abs().max().item())
    a, b = narrow.decode(za), wide.decode(za)
    assert a.abs().mean() > 0.1 and torch.allclose(a, b, rtol=1e-5, atol=1e-5 * a.abs().max().item())
    (b.square().mean() + zb.square().mean()).backward()
    for part in ("encoder", "decoder"):  # second convs: zero outside the copied block, yet learning
        for block in (getattr(wide, part).mid, getattr(wide, part).blocks[-1] if part == "decoder" else None):
            if block is not None:  # the decoder's last block writes the stream that conv_out reads
                conv2 = block.conv2.conv
                n = getattr(narrow, part).mid.conv2.conv.weight.shape[0] * conv2.weight.shape[0] // (
                    getattr(wide, part).mid.conv2.conv.weight.shape[0])
                g = conv2.weight.grad
                assert g[:n, n:].abs().sum() > 0 and g[n:].abs().sum() > 0, part
    with pytest.raises(VideoditError, match="can only be widened"):
        widen(wide.decoder, narrow.decoder)


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
