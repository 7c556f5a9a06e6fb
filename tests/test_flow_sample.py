import math

import pytest
import torch

from conftest import random_dit
from videodit import flow
from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError
from videodit.sample import FrameCondition, SamplerConfig, generate, guided_velocity, in_interval, solve

TINY = DiTConfig.preset("tiny")


def random_model(seed=0):
    return random_dit(TINY, seed)


# ----------------------------------------------------------------------------- flow


def test_path_endpoints_and_velocity():
    x0, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    xt, v = flow.interpolate(x0, noise, torch.tensor([0.0, 1.0]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], noise[1]) and torch.equal(v, noise - x0)
    t = torch.tensor([[0.0, 0.25, 0.5, 1.0], [1.0, 1.0, 0.0, 0.0]])
    xt, _ = flow.interpolate(x0, noise, t)
    assert torch.allclose(xt[0, :, 1], 0.75 * x0[0, :, 1] + 0.25 * noise[0, :, 1])
    assert torch.equal(xt[1, :, 2], x0[1, :, 2])
    # Moving along the path with the target velocity from x_t reaches the noise at t = 1.
    assert torch.allclose(xt[0, :, 1] + 0.75 * v[0, :, 1], noise[0, :, 1], atol=1e-6)
    with pytest.raises(VideoditError, match="timesteps"):
        flow.interpolate(x0, noise, torch.rand(2, 3))


def test_flow_loss_frame_mask():
    pred, target = torch.zeros(1, 1, 2, 1, 1), torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1)
    assert flow.flow_loss(pred, target).item() == 5.0
    assert flow.flow_loss(pred, target, torch.tensor([[False, True]])).item() == 9.0


def test_shift_and_schedule():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(flow.shift_time(t, 1.0), t)
    s = flow.shift_time(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and (s[1:-1] > t[1:-1]).all() and (s.diff() > 0).all()
    assert flow.shift_time(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert flow.resolution_shift(256) == 1.0 and flow.resolution_shift(1024, 256, 1.5) == pytest.approx(3.0)
    ts = flow.sampling_timesteps(8, shift=2.0)
    assert ts.shape == (9,) and ts[0] == 1 and ts[-1] == 0 and (ts.diff() < 0).all()
    with pytest.raises(VideoditError):
        flow.sampling_timesteps(0)


def test_logit_normal():
    g = torch.Generator().manual_seed(0)
    t = flow.logit_normal((20000,), generator=g)
    assert 0 < t.min() and t.max() < 1 and abs(t.median().item() - 0.5) < 0.02
    t = flow.logit_normal((20000,), mean=1.0, generator=g)
    assert t.median().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.02)


def test_min_snr_weight():
    """min(SNR, gamma) / (SNR + 1) with SNR = ((1 - t) / t)^2: 1/2 at t = 1/2 (SNR 1), gamma / (SNR + 1)
    at low noise, 0 at pure noise and at clean frames; gamma must be positive."""
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    snr = ((1 - t[1:4]) / t[1:4]).square()
    expected = torch.cat([torch.zeros(1), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1), torch.zeros(1)])
    torch.testing.assert_close(flow.min_snr_weight(t, 5.0), expected)
    assert flow.min_snr_weight(torch.tensor([0.1]), 5.0).item() == pytest.approx(5 / 82)
    with pytest.raises(VideoditError, match="gamma"):
        flow.min_snr_weight(t, 0.0)


# ----------------------------------------------------------------------------- solvers


def test_euler_exact_for_constant_field():
    x1, c = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    ts = flow.sampling_timesteps(7, shift=3.0)
    out = solve(lambda x, t: c, x1, ts, "euler")
    assert torch.allclose(out, x1 - c, atol=1e-6)


def test_heun_exact_for_linear_in_t_field():
    x1, a, b = torch.randn(3, 2, 2, 2, 2), torch.randn(3, 2, 2, 2, 2), torch.randn(3, 2, 2, 2, 2)
    field = lambda x, t: a + b * t[:, None, :, None, None]  # noqa: E731
    end = x1 - a - b / 2  # x(0) = x(1) - integral_0^1 (a + b t) dt
    ts = flow.sampling_timesteps(5, shift=2.0)
    assert torch.allclose(solve(field, x1, ts, "heun"), end, atol=1e-5)
    assert not torch.allclose(solve(field, x1, ts, "euler"), end, atol=1e-2)


def test_euler_exact_with_the_oracle_velocity_of_one_data_point():
    # For data concentrated at x0 the true velocity is (x_t - x0) / t; Euler follows the straight
    # path exactly, so any step count lands on x0.
    x0, x1 = torch.randn(1, 2, 3, 2, 2), torch.randn(1, 2, 3, 2, 2)
    oracle = lambda x, t: (x - x0) / t[:, None, :, None, None]  # noqa: E731
    for solver in ("euler", "dpm++2m"):
        assert torch.allclose(solve(oracle, x1, flow.sampling_timesteps(3), solver), x0, atol=1e-5)


def test_dpm_2m_is_second_order_on_gaussian_data():
    # Data x0 ~ N(mu, s^2) per element: E[x0 | x_t] is linear in x_t, so the exact velocity is
    # known and the ODE carries noise eps to mu + s eps. Euler's error halves with twice the steps;
    # DPM-Solver++(2M)'s falls faster (its first two steps and its last are first order, so the
    # asymptotic quartering shows from ~20 steps), and is far smaller at the same cost.
    mu, s = 0.7, 0.3
    eps = torch.randn(2, 1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def exact(x, t):
        t = t[:, None, :, None, None].double()
        x0_hat = mu + (1 - t) * s**2 / ((1 - t) ** 2 * s**2 + t**2) * (x - (1 - t) * mu)
        return (x - x0_hat) / t

    def error(solver, steps):
        return (solve(exact, eps, flow.sampling_timesteps(steps, shift=2.0), solver) - (mu + s * eps)).abs().max().item()

    e20, e40 = error("dpm++2m", 20), error("dpm++2m", 40)
    assert e40 < e20 / 3.5 and e20 < error("euler", 20) / 2.5
    assert 1.7 < error("euler", 20) / error("euler", 40) < 2.3


def test_dpm_2m_does_not_extrapolate_across_a_guidance_switch():
    # A field constant on each side of a guidance interval's end: the clean estimate x - t v is
    # constant on each side, so DPM-Solver++(2M) equals Euler exactly when it restarts at the
    # switch, and not when it extrapolates across it.
    interval = (0.0, 0.5)
    c1, c2, x1 = torch.randn(3, 1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    field = lambda x, t: c2 if in_interval(t.amax().item(), interval) else c1  # noqa: E731
    ts = flow.sampling_timesteps(9)
    euler = solve(field, x1, ts, "euler")
    assert torch.allclose(solve(field, x1, ts, "dpm++2m", guided=interval), euler, atol=1e-5)
    assert not torch.allclose(solve(field, x1, ts, "dpm++2m"), euler, atol=1e-3)


def test_conditioning_frames_are_held_and_seen_at_t0():
    seen = []
    field = lambda x, t: seen.append(t.clone()) or torch.ones_like(x)  # noqa: E731
    clean = torch.randn(2, 3, 4, 2, 2)
    cond = FrameCondition(clean, torch.tensor([True, False, False, True]))
    for solver in ("euler", "heun", "dpm++2m"):
        seen.clear()
        out = solve(field, torch.randn(2, 3, 4, 2, 2), flow.sampling_timesteps(4), solver, cond)
        assert torch.equal(out[:, :, [0, 3]], clean[:, :, [0, 3]])
        assert all((t[:, [0, 3]] == 0).all() and (t[:, 1] > 0).any() for t in seen[:-1])
    with pytest.raises(VideoditError, match="mask"):
        solve(field, clean, flow.sampling_timesteps(2), cond=FrameCondition(clean, torch.ones(3, dtype=torch.bool)))


def test_guidance_in_one_batch():
    calls = []

    class Fake:
        config = DiTConfig()  # a plain DiT's: no guidance input, so two passes per guided step

        def __call__(self, x, t, *, text_kv):
            calls.append(x.shape[0])
            return torch.cat([torch.full_like(x[:2], 3.0), torch.full_like(x[2:], 1.0)])

    v = guided_velocity(Fake(), text_kv=None, guidance=4.0)(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2, 1))
    assert calls == [4] and torch.equal(v, torch.full_like(v, 1.0 + 4.0 * (3.0 - 1.0)))


def test_guidance_interval_runs_the_conditional_pass_alone_outside_it():
    from videodit.dit import TextKV

    calls = []

    class Fake:
        config = DiTConfig()  # a plain DiT's: no guidance input, so two passes per guided step

        def __call__(self, x, t, *, text_kv):
            calls.append((round(t.amax().item(), 3), x.shape[0], text_kv.mask.shape[0]))
            return torch.cat([torch.full_like(x[:2], 3.0), torch.full_like(x[2:], 1.0)])

    kv = TextKV([(torch.zeros(4, 1, 3, 2), torch.zeros(4, 1, 3, 2))], torch.ones(4, 1, 1, 3, dtype=torch.bool))
    velocity = guided_velocity(Fake(), kv, guidance=4.0, interval=(0.2, 0.85))
    x = torch.zeros(2, 1, 2, 1, 1)
    held = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # a conditioning frame sits at t = 0
    out = {t: velocity(x, t * held) for t in (1.0, 0.85, 0.5, 0.2, 0.1)}
    # Inside [0.2, 0.85] one batch of 2B rows and the guided mix; outside, B rows and v_cond itself.
    assert [c[1:] for c in calls] == [(2, 2), (4, 4), (4, 4), (4, 4), (2, 2)]
    assert torch.equal(out[1.0], torch.full_like(x, 3.0)) and torch.equal(out[0.1], torch.full_like(x, 3.0))
    assert torch.equal(out[0.5], torch.full_like(x, 1.0 + 4.0 * (3.0 - 1.0)))


def test_guidance_interval_checked():
    assert SamplerConfig().guidance_interval == (0.0, 1.0)  # plain guidance unless asked
    assert SamplerConfig(guidance_interval=[0.2, 1]).guidance_interval == (0.2, 1.0)  # a list is stored as a tuple
    for bad in ((0.9, 0.1), (-0.1, 0.5), (0.2, 1.5), (0.5,)):
        with pytest.raises(VideoditError, match="guidance interval"):
            SamplerConfig(guidance_interval=bad)


def test_full_guidance_interval_is_plain_guidance():
    model = random_model()
    text, mask = embeddings()
    shape = (2, TINY.in_channels, 2, 4, 4)
    plain = generate(model, text, mask, shape, SamplerConfig(steps=3, guidance=3.0, seed=5, solver="heun"))
    narrow = generate(model, text, mask, shape,
                      SamplerConfig(steps=3, guidance=3.0, seed=5, solver="heun", guidance_interval=(0.3, 0.9)))
    assert torch.equal(plain, generate(model, text, mask, shape, SamplerConfig(
        steps=3, guidance=3.0, seed=5, solver="heun", guidance_interval=(0.0, 1.0))))
    assert not torch.allclose(plain, narrow)


# ----------------------------------------------------------------------------- generate with a DiT


def embeddings(B=2, L=4, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, TINY.text_dim, generator=g), torch.ones(B, L, dtype=torch.bool)


def test_generate_seeded_and_guided():
    model = random_model()
    text, mask = embeddings()
    shape = (2, TINY.in_channels, 2, 4, 4)
    cfg = SamplerConfig(steps=3, guidance=3.0, seed=5)
    a = generate(model, text, mask, shape, cfg)
    assert a.shape == shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, generate(model, text, mask, shape, cfg))
    assert not torch.allclose(a, generate(model, text, mask, shape, SamplerConfig(steps=3, guidance=3.0, seed=6)))
    # The explicit empty prompt as a negative is exactly the default unconditional branch.
    empty = (torch.zeros(1, 2, TINY.text_dim), torch.zeros(1, 2, dtype=torch.bool))
    assert torch.allclose(a, generate(model, text, mask, shape, cfg, negative=empty), atol=1e-5)
    other = embeddings(B=1, L=3, seed=9)
    assert not torch.allclose(a, generate(model, text, mask, shape, cfg, negative=other), atol=1e-3)
    with pytest.raises(VideoditError, match="negative prompts"):
        generate(model, text, mask, shape, cfg, negative=embeddings(B=3))
    with pytest.raises(VideoditError, match="prompts for a batch"):
        generate(model, text[:1], mask[:1], shape, cfg)


def test_generate_holds_conditioning_frames():
    model = random_model()
    text, mask = embeddings()
    shape = (2, TINY.in_channels, 3, 4, 4)
    clean = torch.randn(shape)
    cond = FrameCondition(clean, torch.tensor([True, False, False]))
    for solver in ("euler", "heun", "dpm++2m"):
        out = generate(model, text, mask, shape, SamplerConfig(steps=2, solver=solver, guidance=2.0), cond=cond)
        assert torch.equal(out[:, :, 0], clean[:, :, 0])
        assert not torch.allclose(out[:, :, 1:], clean[:, :, 1:])


def test_overfit_one_text_clip_pair(one_thread):
    """The core of flow matching: a tiny DiT trained with the flow loss on one (text, clip) pair
    reproduces the clip from fresh noise with an Euler sample (~0.3% relative MSE; 2 at init)."""
    torch.manual_seed(0)
    model = DiT(TINY)
    text, mask = embeddings(B=1)
    clip = torch.randn(1, TINY.in_channels, 2, 4, 4, generator=torch.Generator().manual_seed(1)).clamp(-2, 2)
    steps, batch = 400, 16
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        t = flow.logit_normal((batch, 2), generator=g)
        noise = torch.randn(batch, *clip.shape[1:], generator=g)
        xt, target = flow.interpolate(clip.expand(batch, -1, -1, -1, -1), noise, t)
        loss = flow.flow_loss(model(xt, t, text.expand(batch, -1, -1), mask.expand(batch, -1)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    out = generate(model, text, mask, clip.shape, SamplerConfig(steps=10, guidance=1.0, shift=1.0, bf16=False))
    relative_mse = ((out - clip).square().mean() / clip.square().mean()).item()
    assert relative_mse < 0.01, relative_mse


def test_flow_loss_takes_a_mask_of_latent_positions():
    g = torch.Generator().manual_seed(0)
    v, target = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randn(2, 3, 4, 5, 6, generator=g)
    positions = torch.rand(2, 1, 4, 5, 6, generator=g) < 0.4
    err = (v - target).square()
    expected = err[positions.expand_as(err)].mean()
    torch.testing.assert_close(flow.flow_loss(v, target, positions), expected)
    frames = torch.tensor([[True, False, True, True], [False, True, True, False]])
    torch.testing.assert_close(flow.flow_loss(v, target, frames),
                               flow.flow_loss(v, target, frames[:, None, :, None, None].expand(2, 1, 4, 5, 6)))
