"""The video VAE (videodit/vae.py): shapes and input checks, causality, chunked and tiled coding
against one-shot, a training signal, encode-time refinement, bundles, widening, and the shipped
weights."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import random_vae, random_video
from videodit.bundle import write_checksums
from videodit.errors import VideoditError
from videodit.reconstruct import reconstruct_frames
from videodit.vae import PRESETS, VAEConfig, VideoVAE, _tiled
from videodit.video import frames_to_tensor, psnr

TINY = PRESETS["tiny"]  # stride 4, 4 latent channels


# -- shapes and input checks --------------------------------------------------------------------


@pytest.mark.parametrize("frames, latent_frames", [(1, 1), (5, 2), (17, 5), (33, 9)])
@pytest.mark.parametrize("preset", ["tiny", "s8c16"])
def test_shapes(frames, latent_frames, preset):
    vae = VideoVAE(PRESETS[preset]).eval()
    s, c = vae.cfg.spatial_stride, vae.cfg.latent_channels
    x = random_video(frames, 32)
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (1, c, latent_frames, 32 // s, 32 // s)
        assert vae.encode(x, sample=True).shape == z.shape
        assert vae.decode(z).shape == x.shape


def test_spatial_strides_of_presets():
    assert PRESETS["tiny"].spatial_stride == 4 and PRESETS["s4c8"].spatial_stride == 4
    assert PRESETS["s8c16"].spatial_stride == 8 and PRESETS["gpu"].spatial_stride == 8


@pytest.mark.parametrize("shape, needle", [
    ((1, 3, 16, 32, 32), "nearest: 17"),
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


# -- causality ----------------------------------------------------------------------------------


def test_encoder_is_causal():
    vae, x = random_vae(), random_video(17)
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

    plain, x = random_vae(), random_video(17)
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
    vae = random_vae()
    z = torch.randn(1, TINY.latent_channels, 5, 8, 8)
    changed = z.clone()
    changed[:, :, 3] += 1.0  # latent frame 3 decodes to frames 9..12
    with torch.no_grad():
        y, y2 = vae.decode(z), vae.decode(changed)
    assert torch.equal(y[:, :, :9], y2[:, :, :9])
    assert (y[:, :, 9] - y2[:, :, 9]).abs().max() > 1e-3


def test_image_is_a_one_frame_video():
    # The first frame is encoded alone: its latent does not depend on how long the video is.
    vae, x = random_vae(), random_video(17)
    with torch.no_grad():
        assert torch.equal(vae.encode(x[:, :, :1])[:, :, 0], vae.encode(x)[:, :, 0])


# -- chunked and tiled == one-shot --------------------------------------------------------------


# Stated tolerances (max abs difference, pixel / latent units of a [-1, 1] range):
CHUNK_TOL_FP32 = 1e-4   # the same arithmetic in a different order
CHUNK_TOL_BF16 = 5e-2   # bf16 convs round differently when the chunk shapes differ
RANDOM_TILE_TOL = 0.06  # mean abs, random weights, tile 64 / overlap 32 (tiles see less context)


@pytest.mark.parametrize("chunk", [4, 8, 16])
def test_chunked_equals_one_shot_fp32(chunk):
    vae, x = random_vae(), random_video(33)
    with torch.no_grad():
        z = vae.encode(x)
        assert (vae.encode(x, chunk_frames=chunk) - z).abs().max() < CHUNK_TOL_FP32
        y = vae.decode(z)
        assert (vae.decode(z, chunk_frames=chunk) - y).abs().max() < CHUNK_TOL_FP32


def test_chunked_equals_one_shot_bf16():
    vae, x = random_vae(), random_video(17)
    vae.compute_dtype = torch.bfloat16
    with torch.no_grad():
        z = vae.encode(x)
        assert (vae.encode(x, chunk_frames=4) - z).abs().max() < CHUNK_TOL_BF16
        assert (vae.decode(z, chunk_frames=4) - vae.decode(z)).abs().max() < CHUNK_TOL_BF16


def test_chunk_must_be_a_multiple_of_4():
    with pytest.raises(VideoditError, match="multiple of 4"):
        VideoVAE(TINY).encode(random_video(9), chunk_frames=6)


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
    vae = random_vae()
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


# -- training signal ----------------------------------------------------------------------------


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
    vae = random_vae()
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


# -- bundles ------------------------------------------------------------------------------------


def test_bundle_round_trip(tmp_path):
    vae, x = random_vae(), random_video(5)
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


# -- widening -----------------------------------------------------------------------------------


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


# -- the shipped weights ------------------------------------------------------------------------


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
