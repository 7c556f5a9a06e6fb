import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import random_dit
from videodit.dit import DiT, DiTConfig, PRESETS, apply_rope, attention, rope_axis_dims, rope_tables
from videodit.errors import VideoditError

TINY = DiTConfig.preset("tiny")


def random_model(cfg=TINY, seed=0):
    return random_dit(cfg, seed)


def inputs(B=2, T=3, H=4, W=6, L=5, cfg=TINY, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, T, H, W, generator=g)
    t = torch.rand(B, T, generator=g)
    text = torch.randn(B, L, cfg.text_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, text, mask


def test_zero_init_outputs_zeros():
    model = DiT(TINY)
    v = model(*inputs())
    assert torch.equal(v, torch.zeros_like(v))


@pytest.mark.parametrize("T,H,W", [(1, 2, 2), (2, 4, 4), (5, 4, 6), (3, 6, 2)])
def test_shapes_at_several_sizes(T, H, W):
    model = random_model()
    x, t, text, mask = inputs(T=T, H=H, W=W)
    v = model(x, t, text, mask)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()


def test_temporal_patch_and_shared_timestep():
    cfg = DiTConfig.preset("tiny", patch=(2, 1, 1))
    model = random_model(cfg)
    x, _, text, mask = inputs(T=4, H=3, W=5, cfg=cfg)
    t = torch.tensor([0.3, 0.7])
    v = model(x, t, text, mask)
    assert v.shape == x.shape
    assert torch.allclose(v, model(x, t[:, None].expand(2, 4), text, mask))


def test_without_qk_norm():
    cfg = DiTConfig.preset("tiny", qk_norm=False)
    model = random_model(cfg)
    x, t, text, mask = inputs(cfg=cfg)
    v = model(x, t, text, mask)
    assert v.shape == x.shape and torch.isfinite(v).all()
    with torch.no_grad():  # the fused attention path agrees with the explicit (training) one
        assert torch.allclose(model(x, t, text, mask), v, atol=1e-4)


def test_timesteps_are_per_frame():
    model = random_model()
    x, t, text, mask = inputs(T=3)
    t2 = t.clone()
    t2[:, 2] = 0.0
    v, v2 = model(x, t, text, mask), model(x, t2, text, mask)
    # Frame 2's timestep changes frame 2's modulation (and, through attention, the others).
    assert not torch.allclose(v[:, :, 2], v2[:, :, 2])


def test_text_padding_does_not_change_output():
    model = random_model()
    x, t, text, mask = inputs(L=5)
    v = model(x, t, text, mask)
    padded = torch.cat([text, torch.randn(2, 7, TINY.text_dim)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.bool)], dim=1)
    assert torch.allclose(v, model(x, t, padded, padded_mask), atol=1e-5)
    # ...while the masked tokens inside the original length are ignored too.
    text2 = text.clone()
    text2[0, 3:] = 100.0
    assert torch.allclose(v, model(x, t, text2, mask), atol=1e-5)
    # Sanity: the text does matter.
    assert not torch.allclose(v, model(x, t, text.flip(0), mask.flip(0)), atol=1e-3)


def test_unconditional_all_false_mask_is_finite():
    model = random_model()
    x, t, text, _ = inputs()
    v = model(x, t, text * 0, torch.zeros(2, 5, dtype=torch.bool))
    assert torch.isfinite(v).all()


def test_precomputed_text_kv_matches():
    model = random_model()
    x, t, text, mask = inputs()
    kv = model.text_kv(text, mask)
    assert torch.equal(model(x, t, text, mask), model(x, t, text_kv=kv))


def test_training_after_inference_mode():
    # Cached tables made while sampling (inference mode) must not poison a later training step.
    model = random_model()
    x, t, text, mask = inputs()
    with torch.inference_mode():
        model(x, t, text, mask)
    model(x, t, text, mask).square().mean().backward()
    assert model.head.weight.grad is not None


def test_bf16_autocast_close_to_fp32():
    model = random_model()
    x, t, text, mask = inputs()
    v = model(x, t, text, mask)
    with torch.autocast("cpu", torch.bfloat16):
        vb = model(x, t, text, mask)
    assert vb.dtype == torch.float32
    assert (vb - v).norm() / v.norm() < 0.05


def rope_reference(x, pos, head_dim, theta):
    """Independent RoPE: rotate pairs (i, i + hd/2) as complex numbers by pos_axis * freq."""
    dims = rope_axis_dims(head_dim)
    freqs = torch.cat([pos[:, a:a + 1].double() * theta ** (-torch.arange(0, d, 2).double() / d)
                       for a, d in enumerate(dims)], dim=1)  # (N, hd/2)
    half = head_dim // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones_like(freqs), freqs)[:, None, :]
    return torch.cat([z.real, z.imag], dim=-1).float()


def grid_positions(T, H, W):
    grid = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    return torch.stack(grid, -1).reshape(-1, 3)  # (T*H*W, 3) in token order


def test_rope_matches_reference_and_is_relative():
    T, H, W, hd = 3, 4, 5, 12
    cos, sin = rope_tables((T, H, W), hd, 10000.0, "cpu", torch.float32)
    pos = grid_positions(T, H, W)
    x = torch.randn(1, T * H * W, 2, hd)
    assert torch.allclose(apply_rope(x, cos, sin), rope_reference(x[0], pos, hd, 10000.0)[None], atol=1e-5)

    # Scores depend only on position differences: the same q, k at shifted positions score equally.
    q, k = torch.randn(hd), torch.randn(hd)
    index = {tuple(p.tolist()): i for i, p in enumerate(pos)}
    qr = apply_rope(q.expand(1, T * H * W, 1, hd), cos, sin)[0, :, 0]
    kr = apply_rope(k.expand(1, T * H * W, 1, hd), cos, sin)[0, :, 0]
    score = lambda a, b: (qr[index[a]] * kr[index[b]]).sum()  # noqa: E731
    assert torch.allclose(score((0, 1, 1), (1, 3, 0)), score((1, 1, 4), (2, 3, 3)), atol=1e-4)
    assert torch.allclose(score((2, 0, 4), (0, 0, 0)), score((2, 3, 4), (0, 3, 0)), atol=1e-4)
    assert not torch.allclose(score((0, 0, 0), (0, 0, 1)), score((0, 0, 0), (0, 1, 0)), atol=1e-4)


def naive_attention(q, k, v, keep=None):
    """softmax(q k^T / sqrt(d)) v with keep (B, 1, 1, L) bool; q (B, heads, N, d)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("masked", [False, True])
def test_both_attention_paths_agree(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 1, 7, generator=g) > 0.4 if masked else None
    if masked:
        mask[..., -1] = True  # the null token is always there
    with torch.no_grad():
        fused = attention(q, k, v, mask)  # scaled_dot_product_attention
    explicit = attention(q, k, v, mask)  # CPU training path
    assert torch.allclose(fused, explicit, atol=1e-5)
    unscaled = attention(q * 0.5, k, v, mask, scale=1.0)
    assert torch.allclose(unscaled, naive_attention(q * 0.5 * 8**0.5, k, v, mask), atol=1e-5)
    assert torch.allclose(explicit, naive_attention(q, k, v, mask), atol=1e-5)
    explicit.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask).square().sum().backward()
    assert all(torch.allclose(a, t.grad, atol=1e-4) for a, t in zip(grads, (q, k, v)))


def test_self_attention_equals_naive_reference():
    model = random_model()
    attn = model.blocks[0].self_attn
    B, T, H, W, D, heads = 2, 2, 3, 4, TINY.dim, TINY.heads
    hd = D // heads
    x = torch.randn(B, T * H * W, D)
    rope = model.rope((T, H, W), "cpu", torch.float32)
    q, k, v = (x @ attn.qkv.weight.T).view(B, -1, 3, heads, hd).unbind(2)
    rms = lambda a, w: a / a.pow(2).mean(-1, keepdim=True).add(TINY.norm_eps).sqrt() * w  # noqa: E731
    pos = grid_positions(T, H, W)
    q = rope_reference(rms(q, attn.q_gain), pos, hd, TINY.rope_theta)
    k = rope_reference(rms(k, attn.k_gain), pos, hd, TINY.rope_theta)
    o = naive_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    expected = o.transpose(1, 2).reshape(B, -1, D) @ attn.out.weight.T
    assert torch.allclose(attn(x, rope), expected, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(attn(x, rope), expected, atol=1e-4)


def test_cross_attention_equals_naive_reference():
    model = random_model()
    _, _, text, mask = inputs(L=6)
    kv = model.text_kv(text, mask)
    attn = model.blocks[1].cross_attn
    B, N, D, heads = 2, 10, TINY.dim, TINY.heads
    hd = D // heads
    x = torch.randn(B, N, D)
    context = torch.cat([model.text_embed(text), model.null_text.expand(B, 1, D)], dim=1)
    keep = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool)], dim=1)[:, None, None, :]
    rms = lambda a, w: a / a.pow(2).mean(-1, keepdim=True).add(TINY.norm_eps).sqrt() * w  # noqa: E731
    q = rms((x @ attn.q.weight.T).view(B, N, heads, hd), attn.q_gain).transpose(1, 2)
    k, v = (context @ attn.kv.weight.T).view(B, -1, 2, heads, hd).unbind(2)
    k = rms(k, attn.k_gain).transpose(1, 2)
    o = naive_attention(q, k, v.transpose(1, 2), keep)
    expected = o.transpose(1, 2).reshape(B, N, D) @ attn.out.weight.T
    assert torch.allclose(attn(x, kv.kv[1], kv.mask), expected, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(attn(x, kv.kv[1], kv.mask), expected, atol=1e-4)


def test_presets_and_param_counts():
    counts = {}
    for name in ("tiny", "cpu-small", "s"):
        counts[name] = sum(p.numel() for p in DiT(DiTConfig.preset(name)).parameters())
    assert counts["tiny"] < 1e6
    assert 3e6 < counts["cpu-small"] < counts["s"] <= 32e6
    with torch.device("meta"):
        xl = sum(p.numel() for p in DiT(PRESETS["xl"]).parameters())
    assert 0.8e9 < xl < 1.3e9
    with pytest.raises(VideoditError, match="expected one of"):
        DiTConfig.preset("huge")


def test_bad_inputs_are_named():
    model = DiT(TINY)
    x, t, text, mask = inputs(T=3, H=4, W=6)
    with pytest.raises(VideoditError, match="divisible"):
        model(x[..., :5], t, text, mask)
    with pytest.raises(VideoditError, match=r"expected \(B, 4, T, h, w\)"):
        model(x[:, :3], t, text, mask)
    with pytest.raises(VideoditError, match="timesteps"):
        model(x, t[:, :2], text, mask)
    with pytest.raises(VideoditError, match="text"):
        model(x, t, text[..., :10], mask)
    with pytest.raises(VideoditError, match="head dim"):
        DiTConfig(dim=8, heads=2)


def test_gradients_reach_every_parameter_from_zero_init():
    model = random_model()
    model.init_weights()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, text, mask = inputs()
    # adaLN-zero opens up in three steps: the head first, then the gates and the cross-attention
    # output, then everything behind them.
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x, t, text, mask), torch.randn_like(x)).backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


# -- sequence packing (DiT.forward_packed): a packed forward equals separate forwards, clips stay
# apart, bf16 and gradients, bad inputs named. Packed training is in test_train_dit.py.



def batches(shapes, L=5, cfg=TINY, seed=1):
    """shapes: (B, T, h, w) per batch -> xs, ts (per-frame, distinct per clip), text, mask."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, cfg.in_channels, T, h, w, generator=g) for B, T, h, w in shapes]
    ts = [torch.rand(B, T, generator=g) for B, T, h, w in shapes]
    clips = sum(s[0] for s in shapes)
    text = torch.randn(clips, L, cfg.text_dim, generator=g)
    mask = torch.rand(clips, L, generator=g) < 0.7
    mask[:, 0] = True
    mask[-1] = False  # one unconditional clip
    return xs, ts, text, mask


SHAPES = [(2, 3, 4, 4), (1, 1, 2, 6), (3, 2, 6, 2), (1, 5, 4, 6)]  # square, image, tall, wide video


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY, qk_norm=False, patch=(1, 2, 2)),
                                 dataclasses.replace(TINY, pooled_text=True)])
def test_packed_equals_separate_forwards(cfg):
    model = random_dit(cfg, 0)
    xs, ts, text, mask = batches(SHAPES, cfg=cfg)
    packed = model.forward_packed(xs, ts, text, mask)
    start = 0
    for x, t, v in zip(xs, ts, packed):
        B = x.shape[0]
        alone = model(x, t, text[start:start + B], mask[start:start + B])
        start += B
        assert v.shape == x.shape
        torch.testing.assert_close(v, alone, rtol=1e-4, atol=1e-5)


def test_packed_takes_one_guidance_scale_per_clip():
    """A guidance-distilled DiT with pooled text, packed: each clip's own scale and prompt, as alone."""
    cfg = dataclasses.replace(TINY, guidance_embed=True, pooled_text=True)
    model = random_dit(cfg, 0)
    xs, ts, text, mask = batches(SHAPES, cfg=cfg)
    scales = torch.linspace(1.0, 6.0, text.shape[0])
    packed = model.forward_packed(xs, ts, text, mask, guidance=scales)
    start = 0
    for x, t, v in zip(xs, ts, packed):
        B = x.shape[0]
        rows = slice(start, start + B)
        torch.testing.assert_close(v, model(x, t, text[rows], mask[rows], guidance=scales[rows]), rtol=1e-4, atol=1e-5)
        start += B


def test_packed_clips_do_not_see_each_other():
    model = random_dit(TINY, 0)
    xs, ts, text, mask = batches(SHAPES[:2])
    before = model.forward_packed(xs, ts, text, mask)[0]
    xs[1] = xs[1] + 5.0  # a different second batch, prompt and timesteps
    ts[1] = ts[1].flip(0)
    text[2:] = -text[2:]
    after = model.forward_packed(xs, ts, text, mask)[0]
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-6)


def test_packed_bf16_and_gradients():
    model = random_dit(TINY, 0)
    xs, ts, text, mask = batches(SHAPES)
    with torch.autocast("cpu", torch.bfloat16):
        packed = model.forward_packed(xs, ts, text, mask)
        alone = model(xs[0], ts[0], text[:2], mask[:2])
    assert all(v.dtype == torch.float32 for v in packed)
    assert (packed[0] - alone).abs().max() < 0.05 * alone.abs().max()
    sum(v.square().mean() for v in packed).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_packed_bad_inputs_are_named():
    model = random_dit(TINY, 0)
    xs, ts, text, mask = batches(SHAPES[:2])
    with pytest.raises(VideoditError, match="3 clips but 2 prompts"):
        model.forward_packed(xs, ts, text[:2], mask[:2])
    with pytest.raises(VideoditError, match="one timestep tensor per batch"):
        model.forward_packed(xs, ts[:1], text, mask)


# -- token routing (TREAD): a route that keeps every token changes nothing, the kept tokens attend
# only among themselves at their own positions, the skipped ones pass the routed blocks unchanged.


def test_route_keeping_every_token_changes_nothing():
    from videodit.dit import Route
    model = random_model()
    x, t, text, mask = inputs()
    B, _, T, H, W = x.shape
    S = (H // TINY.patch[1]) * (W // TINY.patch[2])
    keep = torch.arange(S).expand(B, T // TINY.patch[0], S)
    routed = model(x, t, text, mask, route=Route(0, TINY.depth, keep))
    torch.testing.assert_close(routed, model(x, t, text, mask), rtol=0, atol=1e-6)


def test_routed_tokens_see_only_each_other_and_skipped_ones_pass_through():
    from videodit.dit import Route
    model = random_model()
    x, t, text, mask = inputs(H=4, W=6)
    pt, ph, pw = TINY.patch
    B, Tp, Wp = x.shape[0], x.shape[2] // pt, x.shape[4] // pw
    top_row = torch.arange(Wp).expand(B, Tp, Wp)  # the first row of token positions in every frame
    routed = model(x, t, text, mask, route=Route(0, TINY.depth, top_row))
    # Kept tokens: exactly the model on the top row of patches alone (same RoPE positions).
    alone = model(x[..., :ph, :].contiguous(), t, text, mask)
    torch.testing.assert_close(routed[..., :ph, :], alone, rtol=1e-5, atol=1e-5)
    # Skipped tokens: nothing else in the clip reaches them.
    x2 = x.clone()
    x2[..., :ph, :] += 1.0
    x2[..., 2 * ph:, :] -= 1.0
    again = model(x2, t, text, mask, route=Route(0, TINY.depth, top_row))
    torch.testing.assert_close(again[..., ph:2 * ph, :], routed[..., ph:2 * ph, :], rtol=0, atol=1e-6)


def test_random_route_draws_a_fraction_per_frame_and_saves_compute():
    from torch.utils.flop_counter import FlopCounterMode

    from videodit.dit import random_route
    cfg = dataclasses.replace(TINY, depth=4)
    model = random_model(cfg)
    x, t, text, mask = inputs(H=8, W=8, cfg=cfg)
    grid = (x.shape[2], 4, 4)
    route = random_route(2, grid, 0.5, (1, 3), torch.Generator().manual_seed(0))
    assert route.keep.shape == (2, x.shape[2], 8) and (route.keep.diff(dim=-1) > 0).all()
    assert not torch.equal(route.keep[0, 0], route.keep[0, 1]) or not torch.equal(route.keep[0], route.keep[1])

    def flops(**kw):
        with FlopCounterMode(display=False) as counter:
            model(x, t, text, mask, **kw).square().mean().backward()
        return counter.get_total_flops()

    assert flops(route=route) < 0.85 * flops()
    with pytest.raises(VideoditError, match="route"):
        model(x, t, text, mask, route=route._replace(end=cfg.depth + 1))


def test_kept_positions_follow_the_token_layout():
    from videodit.dit import Route, kept_positions
    B, T, h, w, patch = 2, 4, 4, 6, (2, 2, 2)
    top_row = torch.arange(3).expand(B, T // 2, 3)  # tokens 0..2: the first row of each token frame
    kept = kept_positions(Route(0, 1, top_row), (B, 8, T, h, w), patch)
    assert kept.shape == (B, 1, T, h, w)
    assert kept[..., :2, :].all() and not kept[..., 2:, :].any()


# -- pooled text (DiTConfig.pooled_text): the mean attended text token joins the time embedding.


def test_pooled_text_starts_silent_so_a_model_without_it_continues_unchanged():
    """At its zero init the pooled path adds nothing: the same weights give the same velocity with and
    without it; trained (random weights) it changes the output."""
    pooled = random_dit(dataclasses.replace(TINY, pooled_text=True), 0)
    with torch.no_grad():
        pooled.text_pool[1].weight.zero_()
        pooled.text_pool[1].bias.zero_()
    plain = DiT(TINY)
    plain.load_state_dict({k: v for k, v in pooled.state_dict().items() if not k.startswith("text_pool.")})
    x, t, text, mask = inputs()
    assert torch.equal(pooled(x, t, text, mask), plain(x, t, text, mask))
    assert DiT(dataclasses.replace(TINY, pooled_text=True)).text_pool[1].weight.abs().sum() == 0
    with torch.no_grad():
        pooled.text_pool[1].weight.normal_(0, 0.3)
    assert (pooled(x, t, text, mask) - plain(x, t, text, mask)).abs().max() > 1e-2


def test_pooled_text_is_the_mean_of_the_attended_tokens_and_the_null_token():
    model = random_dit(dataclasses.replace(TINY, pooled_text=True), 0)
    x, t, text, mask = inputs(L=6)
    kv = model.text_kv(text, mask)
    context = torch.cat([model.text_embed(text), model.null_text.expand(2, 1, TINY.dim)], dim=1)
    for i in range(2):
        keep = torch.cat([mask[i], torch.ones(1, dtype=torch.bool)])
        assert torch.allclose(kv.pooled[i], context[i, keep].mean(0), atol=1e-5)
    empty = model.text_kv(text, torch.zeros_like(mask))  # an empty prompt: the null token alone
    assert torch.allclose(empty.pooled, model.null_text.expand(2, -1), atol=1e-6)
    hidden = text.clone()
    hidden[0, 4:] += 10.0  # tokens the mask leaves out change nothing
    assert torch.equal(model(x, t, hidden, mask), model(x, t, text, mask))


def test_pooled_text_rides_in_text_kv_and_its_rows():
    model = random_dit(dataclasses.replace(TINY, pooled_text=True), 0)
    x, t, text, mask = inputs()
    full = model(x, t, text, mask)
    kv = model.text_kv(text, mask)
    assert torch.equal(model(x, t, text_kv=kv), full)
    assert torch.allclose(model(x[:1], t[:1], text_kv=kv.rows(1)), full[:1], atol=1e-5)
    with pytest.raises(VideoditError, match="pooled text"):
        model(x, t, text_kv=kv._replace(pooled=None))
