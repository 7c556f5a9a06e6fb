"""The DiT trainer: conditioning masks, exact resume, bundle output, CLI errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from videodit.errors import VideoditError
from videodit.train.dit import COND_MODES, DiTTrainConfig, conditioning_masks, train_dit
from videodit.vae import PRESETS, VideoVAE


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    VideoVAE(PRESETS["tiny"]).save_pretrained(path)
    return path


def _cfg(tmp_path, vae, **changes) -> DiTTrainConfig:
    base = DiTTrainConfig(preset="tiny", out=str(tmp_path / "run"), vae=str(vae), steps=4, batch_size=2,
                          sizes=("32x32",), frames=(5,), sample_every=0, save_every=2, warmup_steps=2,
                          log_every=1, threads=1)
    return dataclasses.replace(base, **changes)


def test_conditioning_masks_cover_every_mode():
    gen = torch.Generator().manual_seed(0)
    T = 5
    modes = torch.arange(len(COND_MODES))
    masks = conditioning_masks(modes, T, gen)
    by_mode = dict(zip(COND_MODES, masks.tolist()))
    assert by_mode["none"] == [False] * T
    assert by_mode["first"] == [True, False, False, False, False]
    assert by_mode["last"] == [False, False, False, False, True]
    assert by_mode["ends"] == [True, False, False, False, True]
    lead, trail = by_mode["lead"], by_mode["trail"]
    k = sum(lead)
    assert 1 <= k <= T - 1 and lead == [True] * k + [False] * (T - k)
    k = sum(trail)
    assert 1 <= k <= T - 1 and trail == [False] * (T - k) + [True] * k


def test_conditioning_never_covers_every_frame():
    gen = torch.Generator().manual_seed(1)
    for T in (1, 2, 3):
        modes = torch.arange(len(COND_MODES)).repeat(20)
        masks = conditioning_masks(modes, T, gen)
        assert not masks.all(dim=1).any(), f"T={T}: a clip with nothing left to generate"


@pytest.mark.parametrize("cache", [0, 4])
def test_resume_is_exact_and_writes_a_bundle(tmp_path, tiny_vae, cache):
    straight = train_dit(_cfg(tmp_path / "a", tiny_vae, latent_cache=cache))
    # Stop after 2 steps, then resume to 4 (with a cache: 2 cached batches, so epoch 2 is replayed).
    train_dit(_cfg(tmp_path / "b", tiny_vae, steps=2, latent_cache=cache))
    if cache:
        cache_file = tmp_path / "b" / "run" / "latents-rank0.pt"
        built = cache_file.stat().st_mtime_ns
    resumed = train_dit(_cfg(tmp_path / "b", tiny_vae, steps=4, latent_cache=cache))
    if cache:
        assert cache_file.stat().st_mtime_ns == built, "the cache was rebuilt instead of reused"
    from safetensors.torch import load_file

    a = load_file(straight / "dit" / "model.safetensors")
    b = load_file(resumed / "dit" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (straight / "config.json").is_file() and (straight / "vae" / "model.safetensors").is_file()
    log = (tmp_path / "a" / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,loss") and len(log) == 5


def test_bad_config_is_a_clear_error(tmp_path, tiny_vae):
    with pytest.raises(VideoditError, match="cond-mix"):
        train_dit(_cfg(tmp_path, tiny_vae, cond_mix=(1.0, 0.0)))
    with pytest.raises(VideoditError, match="latent-cache"):
        train_dit(_cfg(tmp_path, tiny_vae, latent_cache=1))
    with pytest.raises(VideoditError, match="preset"):
        train_dit(_cfg(tmp_path, tiny_vae, preset="huge"))
    with pytest.raises(VideoditError, match="guidance interval"):
        train_dit(_cfg(tmp_path, tiny_vae, sample_guidance_interval=(0.9, 0.1)))
    with pytest.raises(VideoditError, match="--vae: no such folder"):
        train_dit(_cfg(tmp_path, tmp_path / "missing"))


def test_tiny_model_overfits_one_caption_clip_pair_in_pixels(tiny_vae, one_thread):
    """A tiny DiT trained on one caption -> clip pair samples that clip back. Measured in
    pixels after decoding, against the VAE's own reconstruction of the clip (the best any DiT can
    reach through this VAE; the tiny VAE here is untrained)."""
    from videodit import flow
    from videodit.dit import DiT, DiTConfig
    from videodit.sample import SamplerConfig, generate
    from videodit.text import TextEncoder
    from videodit.video import frames_to_tensor, psnr, tensor_to_frames
    from videodit.world import make_sample

    torch.manual_seed(0)
    vae = VideoVAE.from_pretrained(tiny_vae)
    sample = make_sample("train", 3, width=32, height=32, frames=5)
    with torch.no_grad():
        z = vae.encode(frames_to_tensor(sample.frames)[None])  # (1, c, 2, 8, 8)
        target = tensor_to_frames(vae.decode(z).clamp(-1, 1))[0]
    scale = float(z.std())
    z = z / scale
    text, mask = TextEncoder().encode([sample.caption])
    model = DiT(DiTConfig.preset("tiny", in_channels=z.shape[1], text_dim=text.shape[-1]))
    steps, batch = 300, 16
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        t = flow.logit_normal((batch, 1), generator=g).expand(batch, z.shape[2])
        x_t, v = flow.interpolate(z.expand(batch, -1, -1, -1, -1), torch.randn(batch, *z.shape[1:], generator=g), t)
        loss = flow.flow_loss(model(x_t, t, text.expand(batch, -1, -1), mask.expand(batch, -1)), v)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    out = generate(model, text, mask, tuple(z.shape), SamplerConfig(steps=20, guidance=1.0, bf16=False))
    with torch.no_grad():
        frames = tensor_to_frames(vae.decode(out * scale).clamp(-1, 1))[0]
    assert psnr(frames, target) > 25


def test_torchrun_two_cpu_processes_train_data_parallel(tmp_path, tiny_vae):
    """The same program under torchrun (gloo): both ranks step together and rank 0 writes."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "videodit.cli", "train", "--device", "cpu", "--preset", "tiny", "--vae", str(tiny_vae),
           "--out", str(out), "--steps", "3", "--batch-size", "2", "--sizes", "32x32", "--frames", "5",
           "--sample-every", "0", "--log-every", "1", "--warmup-steps", "1"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "bundle" / "dit" / "model.safetensors").is_file()
    assert len((out / "log.csv").read_text().splitlines()) == 4  # header + 3 steps, rank 0 only


def test_bucket_plan_balances_tokens_and_reports_empty_buckets(tmp_path, tiny_vae, capsys):
    from videodit.train.dit import bucket_plan

    cfg = _cfg(tmp_path, tiny_vae, sizes=("32x32", "64x32"), frames=(5, 1), tokens_per_batch=64)
    plan = bucket_plan(cfg, vae_stride=4, patch=(1, 2, 2))
    # tiny VAE stride 4, patch 2x2: 32x32x5 -> 2 x 4 x 4 = 32 tokens; 64x32x1 -> 1 x 4 x 8 = 32; 32x32x1 -> 16
    assert {k: (e.tokens, e.batch) for k, e in plan.items()} == {
        (32, 32, 5): (32, 2), (32, 32, 1): (16, 4), (64, 32, 5): (64, 1), (64, 32, 1): (32, 2)}
    assert sum(e.odds for e in plan.values()) == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="got no training clip"):
        train_dit(dataclasses.replace(cfg, steps=1))
    out = capsys.readouterr().out
    assert "32x32x1: 16 tokens, batch 4" in out and "clips per size bucket in this run" in out


def test_square_crop_trains_on_centre_squares_with_square_token_budgets(tmp_path, tiny_vae, capsys):
    from videodit.data.buckets import centre_square
    from videodit.train.dit import bucket_plan

    x = torch.arange(2 * 3 * 8).reshape(2, 3, 1, 8, 1).expand(2, 3, 1, 8, 24)  # (B, C, F, 8, 24)
    crop = centre_square(x)
    assert crop.shape[-2:] == (8, 8) and torch.equal(crop, x[..., 8:16])
    assert centre_square(x.transpose(-1, -2)).shape[-2:] == (8, 8)

    cfg = _cfg(tmp_path, tiny_vae, sizes=("64x32", "32x64"), frames=(5,), tokens_per_batch=64,
               square_crop=True, latent_cache=8, steps=2)
    plan = bucket_plan(cfg, vae_stride=4, patch=(1, 2, 2))
    # both become 32x32 crops: 2 x 4 x 4 = 32 tokens, so batch 2 (64 each at native size: batch 1)
    assert {k: (e.tokens, e.batch) for k, e in plan.items()} == {(64, 32, 5): (32, 2), (32, 64, 5): (32, 2)}
    train_dit(cfg)
    assert "centre square" in capsys.readouterr().out
    cache = torch.load(tmp_path / "run" / "latents-rank0.pt", weights_only=True)
    assert {tuple(z.shape[-2:]) for z in cache["latents"]} == {(8, 8)}  # 32x32 pixels / VAE stride 4
    assert set(cache["buckets"]) <= {"64x32x5", "32x64x5"}


def test_bucketed_training_resumes_exactly(tmp_path, tiny_vae):
    kw = dict(sizes=("32x32", "64x32"), frames=(5, 1), tokens_per_batch=64)
    straight = train_dit(_cfg(tmp_path / "a", tiny_vae, **kw))
    train_dit(_cfg(tmp_path / "b", tiny_vae, steps=2, **kw))
    resumed = train_dit(_cfg(tmp_path / "b", tiny_vae, **kw))
    from safetensors.torch import load_file

    a, b = load_file(straight / "dit" / "model.safetensors"), load_file(resumed / "dit" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "a" / "run" / "log.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[5] for r in rows}) >= 2, "every batch came from one bucket"


def test_init_starts_from_a_bundles_weights_and_rejects_another_architecture(tmp_path, tiny_vae):
    first = train_dit(_cfg(tmp_path / "a", tiny_vae, steps=2))
    from safetensors.torch import load_file

    # steps=0 is refused, so train 1 step at lr 0: the weights must be exactly the init's.
    cont = train_dit(_cfg(tmp_path / "b", tiny_vae, steps=1, lr=0.0, warmup_steps=1, init=str(first)))
    a = load_file(first / "dit" / "model.safetensors")
    b = load_file(cont / "dit" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(VideoditError, match="no dit/ folder"):
        train_dit(_cfg(tmp_path / "c", tiny_vae, init=str(tmp_path)))
    with pytest.raises(VideoditError, match="differs.*dim"):
        train_dit(_cfg(tmp_path / "d", tiny_vae, preset="cpu-small", init=str(first)))


def test_cached_text_with_dropout_matches_encoding_the_dropped_captions():
    """The latent cache keeps caption embeddings; dropout then masks a row out instead of encoding
    "" -- the DiT's output must be the same either way (padding of several batches included)."""
    from conftest import random_dit

    from videodit.dit import DiTConfig
    from videodit.text import TextEncoder
    from videodit.data.latent_cache import cached_text

    text = TextEncoder()
    first, second = ["A red ball falls.", "Two blue squares move up on a white background."], ["A cyan disc."]
    embedded = [text.encode(first), text.encode(second)]
    dropped = ["", first[1], ""]  # captions after dropout
    tokens, mask = cached_text(embedded, dropped)
    ref_tokens, ref_mask = text.encode(dropped)
    cfg = DiTConfig.preset("tiny", text_dim=text.dim)
    dit = random_dit(cfg, 0)
    x = torch.randn(3, cfg.in_channels, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((3, 2), 0.5)
    with torch.no_grad():
        assert torch.allclose(dit(x, t, tokens, mask), dit(x, t, ref_tokens, ref_mask), atol=1e-5)
    assert mask[0].sum() == 0 and mask[2].sum() == 0 and mask[1].sum() == ref_mask[1].sum()


def test_dit_trains_and_generates_on_a_per_channel_normalised_vae(tmp_path, tiny_vae):
    """A VAE bundle with per-channel latent statistics (train-vae --per-channel-latents) works through
    DiT training (latent cache included) and generation; its normalize is not the global one."""
    from videodit.pipeline import Pipeline
    from videodit.vae import with_latent_stats

    base = VideoVAE.from_pretrained(tiny_vae)
    channels = base.cfg.latent_channels
    vae = VideoVAE(with_latent_stats(base.cfg, [0.1 * c for c in range(channels)], [1.0 + c for c in range(channels)]))
    vae.load_state_dict(base.state_dict())
    folder = vae.save_pretrained(tmp_path / "vae_pc")
    z = torch.ones(1, channels, 2, 2, 2)
    assert not torch.allclose(vae.normalize(z), base.normalize(z))
    bundle = train_dit(_cfg(tmp_path, folder, steps=2, latent_cache=4, sample_guidance_interval=(0.2, 0.85)))
    assert VideoVAE.from_pretrained(bundle / "vae").cfg.latent_channel_scale == vae.cfg.latent_channel_scale
    pipe = Pipeline.load(bundle)
    assert pipe.config.sampler.guidance_interval == (0.2, 0.85)  # written to config.json, read back as the default
    video = pipe("a red circle", frames=5, size=(32, 32), steps=2)
    assert video.shape == (5, 32, 32, 3)
