"""The DiT trainer (videodit/train/dit.py): conditioning masks, exact resume, bundle output, config
errors, overfitting one pair, torchrun, size buckets, sequence packing, --init, per-channel VAEs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import dit_train_cfg
from videodit.errors import VideoditError
from videodit import flow
from videodit.train.dit import (COND_MODES, DiTTrainConfig, conditioning_masks, min_snr_scaled, packed_flow_loss,
                                route_plan, train_dit)
from videodit.vae import PRESETS, VideoVAE


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
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, latent_cache=cache))
    # Stop after 2 steps, then resume to 4 (with a cache: 2 cached batches, so epoch 2 is replayed).
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=2, latent_cache=cache))
    if cache:
        cache_file = tmp_path / "b" / "run" / "latents-rank0.pt"
        built = cache_file.stat().st_mtime_ns
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=4, latent_cache=cache))
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
        train_dit(dit_train_cfg(tmp_path, tiny_vae, cond_mix=(1.0, 0.0)))
    with pytest.raises(VideoditError, match="latent-cache"):
        train_dit(dit_train_cfg(tmp_path, tiny_vae, latent_cache=1))
    with pytest.raises(VideoditError, match="preset"):
        train_dit(dit_train_cfg(tmp_path, tiny_vae, preset="huge"))
    with pytest.raises(VideoditError, match="guidance interval"):
        train_dit(dit_train_cfg(tmp_path, tiny_vae, sample_guidance_interval=(0.9, 0.1)))
    with pytest.raises(VideoditError, match="--vae: no such folder"):
        train_dit(dit_train_cfg(tmp_path, tmp_path / "missing"))


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


def test_bucketed_training_resumes_exactly(tmp_path, tiny_vae):
    kw = dict(sizes=("32x32", "64x32"), frames=(5, 1), tokens_per_batch=64)
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, **kw))
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=2, **kw))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **kw))
    from safetensors.torch import load_file

    a, b = load_file(straight / "dit" / "model.safetensors"), load_file(resumed / "dit" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "a" / "run" / "log.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[5] for r in rows}) >= 2, "every batch came from one bucket"


def test_packed_training_runs_and_resumes_exactly(tmp_path, monkeypatch):
    import functools

    from safetensors.torch import load_file

    from videodit import text
    from videodit.train.dit import DiTTrainConfig, bucket_plan, train_dit
    from videodit.vae import PRESETS, VideoVAE

    monkeypatch.setattr(text, "_load", functools.cache(text._load))  # one text-encoder load for 3 runs

    torch.manual_seed(0)
    vae = tmp_path / "vae"
    VideoVAE(PRESETS["tiny"]).save_pretrained(vae)
    base = DiTTrainConfig(preset="tiny", vae=str(vae), steps=2, sizes=("32x32", "48x32"), frames=(5, 1),
                          tokens_per_batch=48, pack=2, sample_every=0, save_every=100, warmup_steps=1,
                          log_every=1, threads=1, latent_cache=6)
    plan = bucket_plan(base, PRESETS["tiny"].spatial_stride, (1, 2, 2))
    assert all(e.batch == max(1, 48 // (e.tokens * 2)) for e in plan.values())  # half the budget each
    straight = train_dit(dataclasses.replace(base, out=str(tmp_path / "a")))
    log = (tmp_path / "a" / "log.csv").read_text().splitlines()
    assert len(log) == 3 and all("+" in row for row in log[1:]), log  # every step packs two buckets
    train_dit(dataclasses.replace(base, out=str(tmp_path / "b"), steps=1))
    resumed = train_dit(dataclasses.replace(base, out=str(tmp_path / "b")))
    a, b = load_file(straight / "dit" / "model.safetensors"), load_file(resumed / "dit" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(VideoditError, match="--pack 1"):
        train_dit(dataclasses.replace(base, pack=1))


def test_init_starts_from_a_bundles_weights_and_rejects_another_architecture(tmp_path, tiny_vae):
    first = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, steps=2))
    from safetensors.torch import load_file

    # steps=0 is refused, so train 1 step at lr 0: the weights must be exactly the init's.
    cont = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=1, lr=0.0, warmup_steps=1, init=str(first)))
    a = load_file(first / "dit" / "model.safetensors")
    b = load_file(cont / "dit" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(VideoditError, match="no dit/ folder"):
        train_dit(dit_train_cfg(tmp_path / "c", tiny_vae, init=str(tmp_path)))
    with pytest.raises(VideoditError, match="differs.*dim"):
        train_dit(dit_train_cfg(tmp_path / "d", tiny_vae, preset="cpu-small", init=str(first)))


def test_pooled_text_trains_generates_and_joins_a_bundle_without_it(tmp_path, tiny_vae):
    """--pooled-text from scratch trains the pooled layer and the bundle generates with it (guidance
    interval: the conditional rows alone at some steps); on --init of a bundle without it, the bundle's
    weights load unchanged and the new layer starts at zero; --lora refuses it."""
    from safetensors.torch import load_file
    from videodit.dit import DiT, DiTConfig
    from videodit.pipeline import Pipeline

    pooled = train_dit(dit_train_cfg(tmp_path / "p", tiny_vae, steps=2, pooled_text=True, lr=1e-2))
    assert DiT(DiTConfig.preset("tiny")).config.pooled_text is False
    weights = load_file(pooled / "dit" / "model.safetensors")
    assert weights["text_pool.1.weight"].abs().sum() > 0
    pipe = Pipeline.load(pooled)
    assert pipe.dit.config.pooled_text
    assert pipe("a red circle", frames=5, size=(32, 32), steps=3, guidance_interval=(0.3, 0.8)).shape == (5, 32, 32, 3)

    plain = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, steps=2))
    cont = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=1, lr=0.0, warmup_steps=1, init=str(plain),
                                   pooled_text=True))
    a, b = load_file(plain / "dit" / "model.safetensors"), load_file(cont / "dit" / "model.safetensors")
    assert set(b) - set(a) == {"text_pool.1.weight", "text_pool.1.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert b["text_pool.1.weight"].abs().sum() == 0
    with pytest.raises(VideoditError, match="--pooled-text adds a layer"):
        DiTTrainConfig(init="bundled", lora=4, pooled_text=True).check()


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
    bundle = train_dit(dit_train_cfg(tmp_path, folder, steps=2, latent_cache=4, sample_guidance_interval=(0.2, 0.85)))
    assert VideoVAE.from_pretrained(bundle / "vae").cfg.latent_channel_scale == vae.cfg.latent_channel_scale
    pipe = Pipeline.load(bundle)
    assert pipe.config.sampler.guidance_interval == (0.2, 0.85)  # written to config.json, read back as the default
    video = pipe("a red circle", frames=5, size=(32, 32), steps=2)
    assert video.shape == (5, 32, 32, 3)


def test_lora_trains_only_adapters_resumes_exactly_and_generates(tmp_path, tiny_vae):
    """--lora R on --init's DiT: the base weights stay bit for bit, the adapters learn, a resumed
    run equals a straight one, and Pipeline.load(..., lora=OUT/lora) generates with them."""
    from safetensors.torch import load_file

    from videodit.lora import adapters, base_state_dict
    from videodit.pipeline import Pipeline

    base = train_dit(dit_train_cfg(tmp_path / "base", tiny_vae, steps=2))
    lora = dict(init=str(base), lora=2, lr=1e-2)
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, **lora))
    assert straight.name == "lora" and (straight / "SHA256SUMS").is_file()
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **lora, steps=2))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **lora))
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(k.endswith(("lora_a", "lora_b")) for k in a)

    pipe = Pipeline.load(base, lora=straight)
    assert any(float(m.lora_b.detach().abs().max()) > 0 for m in adapters(pipe.dit).values())  # the adapters learnt
    before = load_file(base / "dit" / "model.safetensors")
    assert all(torch.equal(before[k], v) for k, v in base_state_dict(pipe.dit).items())  # the base did not move
    plain = Pipeline.load(base)(["a red ball"], frames=5, size=(32, 32), steps=2, seed=0)
    adapted = pipe(["a red ball"], frames=5, size=(32, 32), steps=2, seed=0)
    off = Pipeline.load(base, lora=straight, lora_scale=0.0)(["a red ball"], frames=5, size=(32, 32), steps=2, seed=0)
    assert adapted.shape == plain.shape == (1, 5, 32, 32, 3) and (adapted != plain).any()
    assert (off == plain).all()
    with pytest.raises(VideoditError, match="--lora adapts an existing DiT"):
        train_dit(dit_train_cfg(tmp_path / "c", tiny_vae, lora=2))


def test_data_trains_on_a_prepared_cache_and_refuses_another_vae(tmp_path, tiny_vae, capsys):
    """`videodit world render` -> `videodit prepare` -> `videodit train --data`: the cache's bucket
    replaces --sizes / --frames, a resumed run is exact, and a cache of another VAE is refused."""
    from safetensors.torch import load_file

    from videodit.cli import main

    clips, cache = tmp_path / "clips", tmp_path / "cache"
    assert main(["world", "render", "--n", "6", "--size", "32x32", "--frames", "5", "--out", str(clips)]) == 0
    assert main(["prepare", str(clips), "-o", str(cache), "--vae", str(tiny_vae), "--sizes", "32x32",
                 "--frames", "5", "--workers", "1"]) == 0
    with pytest.raises(VideoditError, match="--data .*--sizes does not go with it"):
        train_dit(dit_train_cfg(tmp_path / "x", tiny_vae, data=str(cache)))  # dit_train_cfg sets --sizes 32x32
    base = dict(data=str(cache), sizes=("64x64",), frames=(17,), batch_size=4)  # (the defaults: unset)
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, **base))
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **base, steps=2))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **base))
    a, b = load_file(straight / "dit" / "model.safetensors"), load_file(resumed / "dit" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "32x32x5: 32 tokens, batch 4" in capsys.readouterr().out
    other_vae = tmp_path / "other_vae"
    torch.manual_seed(1)
    VideoVAE(PRESETS["tiny"]).save_pretrained(other_vae)
    with pytest.raises(VideoditError, match="prepared with another VAE"):
        train_dit(dit_train_cfg(tmp_path / "c", other_vae, **base))


def test_token_routing_trains_resumes_exactly_and_is_checked(tmp_path, tiny_vae):
    """--route with TREAD's settings: each step's route is drawn from the step's generator, so a resumed run gives the
    uninterrupted run's weights; training with it moves the weights elsewhere than without."""
    from safetensors.torch import load_file

    tread = dict(route=0.5, route_blocks=(1, 2), route_loss="all", route_until=1.0)
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, **tread))
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **tread, steps=2))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **tread))
    plain = train_dit(dit_train_cfg(tmp_path / "c", tiny_vae))
    a, b, c = (load_file(p / "dit" / "model.safetensors") for p in (straight, resumed, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # --route-until 0: no step routes, so no route is drawn: exactly the plain run.
    never = load_file(train_dit(dit_train_cfg(tmp_path / "e", tiny_vae, **{**tread, "route_until": 0.0})) / "dit" /
                      "model.safetensors")
    assert all(torch.equal(never[k], c[k]) for k in c)
    for bad, match in (({"route_blocks": (1,)}, "START END"), ({"route_blocks": (1, 3)}, "0 <= START < END <= 2"),
                       ({"pack": 2}, "--pack")):
        with pytest.raises(VideoditError, match=match):
            train_dit(dit_train_cfg(tmp_path / "d", tiny_vae, **{**tread, **bad}))


def test_token_masked_training_counts_only_kept_tokens_and_resumes_exactly(tmp_path, tiny_vae, capsys):
    """--route-loss kept --route-blocks 0 DEPTH: masked training; a resumed run is the uninterrupted
    one, and its loss differs from TREAD's (all tokens counted) on the same draws."""
    masked = dict(route=0.5, route_blocks=(0, 2), route_loss="kept", route_until=0.5)
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, **masked))
    assert "0.5 of each frame's tokens skip blocks 0 .. 1 and the loss in the first 50% of the steps" in \
        capsys.readouterr().out
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=3, **masked))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **masked))
    from safetensors.torch import load_file
    a, b = (load_file(p / "dit" / "model.safetensors") for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_dit(dit_train_cfg(tmp_path / "c", tiny_vae, **{**masked, "route_loss": "all"}))
    first_loss = [(tmp_path / r / "run" / "log.csv").read_text().splitlines()[1].split(",")[1] for r in ("a", "c")]
    assert first_loss[0] != first_loss[1]


def test_min_snr_scaling_makes_every_flow_loss_the_weighted_mean():
    """Prediction and target scaled by sqrt(w(t)) per frame: the masked loss, and the packed loss over
    two batches, become the min-SNR-weighted mean of the squared error over the counted elements."""
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 4, 5, 6), (1, 3, 2, 4, 4)]
    v, target = ([torch.randn(s, generator=g) for s in shapes] for _ in range(2))
    t = [torch.rand(s[0], s[2], generator=g) for s in shapes]
    masks = [torch.rand(s[0], s[2], generator=g) < 0.7 for s in shapes]
    masks[0][0, 0] = True
    errs, counts = [], []
    for vi, ti, mi, ti_ in zip(v, target, masks, t):
        w = flow.min_snr_weight(ti_, 3.0)[:, None, :, None, None]
        sel = mi[:, None, :, None, None].expand_as(vi)
        errs.append(((vi - ti).square() * w)[sel].sum())
        counts.append(sel.sum())
    scaled_v, scaled_target = min_snr_scaled(v, t, 3.0), min_snr_scaled(target, t, 3.0)
    torch.testing.assert_close(flow.flow_loss(scaled_v[0], scaled_target[0], masks[0]), errs[0] / counts[0])
    torch.testing.assert_close(packed_flow_loss(scaled_v, scaled_target, masks), sum(errs) / sum(counts))


def test_min_snr_loss_weight_trains_resumes_exactly_and_changes_the_loss(tmp_path, tiny_vae):
    """--loss-weight min-snr: a resumed run is the uninterrupted one; on the same draws its first
    logged loss differs from the unweighted run's."""
    from safetensors.torch import load_file
    weighted = dict(loss_weight="min-snr", snr_gamma=5.0)
    straight = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, **weighted))
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=2, **weighted))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, **weighted))
    a, b = (load_file(p / "dit" / "model.safetensors") for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_dit(dit_train_cfg(tmp_path / "c", tiny_vae))
    first_loss = [float((tmp_path / r / "run" / "log.csv").read_text().splitlines()[1].split(",")[1]) for r in "ac"]
    assert first_loss[0] < first_loss[1]  # every weight is below 1


def test_routing_is_on_by_default_where_it_applies():
    """--route unset: half of each frame's tokens masked from every block of a DiT of 6 or more blocks
    trained whole on one process from scratch; off for shallower DiTs, --pack, --sp, --init (so
    --lora too) and --route 0; an explicit share and span win, also with --init."""
    cfg = DiTTrainConfig()
    assert (cfg.route_loss, cfg.route_until) == ("kept", 0.9)
    assert route_plan(cfg, 8) == (0.5, (0, 8)) and route_plan(cfg, 12) == (0.5, (0, 12))
    for off in ({}, {"pack": 2}, {"sp": 2}, {"init": "bundled"}, {"lora": 4, "init": "bundled"}):
        depth = 2 if not off else 8
        assert route_plan(DiTTrainConfig(**off), depth)[0] == 0.0
    assert route_plan(DiTTrainConfig(route=0.0), 8)[0] == 0.0
    assert route_plan(DiTTrainConfig(route=0.25, route_blocks=(2, 6)), 8) == (0.25, (2, 6))
    assert route_plan(DiTTrainConfig(route=0.5, init="bundled"), 12) == (0.5, (0, 12))
    with pytest.raises(VideoditError, match="START < END <= 8"):
        route_plan(DiTTrainConfig(route=0.5, route_blocks=(4, 9)), 8)


def test_mup_learning_rates_scale_the_width_reading_weights_and_resume_exactly(tmp_path, tiny_vae):
    """--mup-base-dim B: AdamW trains the input layers, biases, gains and modulation tables at the
    schedule's lr and every other Linear weight (attention, MLP, conditioning, head) at lr x B / dim;
    a resumed run is the uninterrupted one; with --lora it is a clear error."""
    from safetensors.torch import load_file
    from videodit.train import loop
    from videodit.train.dit import INPUT_LINEARS, DiTTask

    cfg = dit_train_cfg(tmp_path / "a", tiny_vae, mup_base_dim=16)  # the tiny preset's width is 64
    task = DiTTask(cfg, loop.DistInfo(0, 1, 0, torch.device("cpu")))
    names = {id(p): n for n, p in task.model.named_parameters()}
    groups = task.lr_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
    inputs, hidden = ({names[id(p)] for p in g["params"]} for g in groups)
    assert inputs | hidden == set(names.values()) and not inputs & hidden
    modules = dict(task.model.named_modules())
    assert all(isinstance(modules[m], torch.nn.Linear) for m in INPUT_LINEARS if m in modules)
    assert {"patch_embed.weight", "text_embed.0.weight", "time_embed.0.weight", "head.bias"} <= inputs
    assert {"head.weight", "text_embed.2.weight", "blocks.0.self_attn.qkv.weight", "blocks.0.mlp.2.weight"} <= hidden
    assert not any(n.endswith(("bias", "gain", "modulation")) for n in hidden)

    straight = train_dit(cfg)
    saved = torch.load(tmp_path / "a" / "run" / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert saved[1]["lr"] == pytest.approx(saved[0]["lr"] * 0.25) and saved[0]["lr"] > 0
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, mup_base_dim=16, steps=2))
    resumed = train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, mup_base_dim=16))
    a, b = (load_file(p / "dit" / "model.safetensors") for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(VideoditError, match="does not fit"):  # the same run resumed with one learning rate
        train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=6))
    with pytest.raises(VideoditError, match="--mup-base-dim .* --lora"):
        DiTTrainConfig(mup_base_dim=64, lora=4, init="bundled").check()


def test_text_lr_scale_multiplies_the_text_embeddings_learning_rate_alone(tmp_path, tiny_vae):
    """--text-lr-scale S: the text embedding's weights and biases train at S x their group's lr (x B / dim
    for its second layer under --mup-base-dim B), every other parameter as without it; a run resumes
    only with the setting it started with."""
    from videodit.train import loop
    from videodit.train.dit import DiTTask

    def scales(**changes):
        task = DiTTask(dit_train_cfg(tmp_path / "a", tiny_vae, **changes), loop.DistInfo(0, 1, 0, torch.device("cpu")))
        names = {id(p): n for n, p in task.model.named_parameters()}
        return {names[id(p)]: g["lr_scale"] for g in task.lr_groups() for p in g["params"]}

    plain, text, both, mup = scales(), scales(text_lr_scale=0.5), scales(text_lr_scale=0.5, mup_base_dim=16), \
        scales(mup_base_dim=16)
    assert set(plain.values()) == {1.0} and set(text) == set(plain)
    for name in plain:
        assert text[name] == (0.5 if name.startswith("text_embed.") else 1.0), name
        assert both[name] == mup[name] * (0.5 if name.startswith("text_embed.") else 1.0), name
    assert both["text_embed.2.weight"] == 0.125 and both["text_embed.0.weight"] == 0.5
    train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, text_lr_scale=0.5, steps=2))
    with pytest.raises(VideoditError, match="does not fit"):
        train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, steps=4))


def test_dim_trains_the_preset_at_another_width_with_its_depth_and_head_width(tmp_path, tiny_vae):
    """--dim W: the preset's DiT at width W (heads = W / the preset's head width, the same depth), saved
    so that the bundle loads at that width; a width that splits no whole head, or --dim on --init's
    architecture, is a clear error."""
    import json

    from videodit.dit import PRESETS as DIT_PRESETS
    from videodit.pipeline import Pipeline

    bundle = train_dit(dit_train_cfg(tmp_path / "a", tiny_vae, steps=1, dim=32))  # tiny: width 64, 2 heads of 32
    saved = json.loads((bundle / "dit" / "config.json").read_text())
    assert (saved["dim"], saved["heads"], saved["depth"]) == (32, 1, DIT_PRESETS["tiny"].depth)
    assert Pipeline.load(bundle, device="cpu").dit.config.dim == 32
    with pytest.raises(VideoditError, match="--dim 48: must be a multiple of the preset's head width 32"):
        train_dit(dit_train_cfg(tmp_path / "b", tiny_vae, dim=48))
    with pytest.raises(VideoditError, match="--dim 32 changes the architecture --init"):
        DiTTrainConfig(dim=32, init="bundled").check()
