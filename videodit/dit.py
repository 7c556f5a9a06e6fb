"""The diffusion transformer: spacetime latents + per-frame timesteps + text -> velocity.

    dit = DiT(DiTConfig.preset("s"))
    v = dit(x, t, text, text_mask)        # x (B, c, T, h, w) latents, t (B, T) or (B,) in [0, 1],
                                          # text (B, L, D_text), text_mask (B, L) bool -> v like x
    kv = dit.text_kv(text, text_mask)     # once per generation; then dit(x, t, text_kv=kv) each step
    vs = dit.forward_packed([x1, x2], [t1, t2], text, text_mask)  # batches of different sizes in ONE
                                          # sequence (sequence packing); vs[j] == dit(xs[j], ts[j], ...)

The DiT is a pure function of its inputs and knows nothing of schedules: the time convention and
the meaning of v live in ``videodit.flow``.

Architecture (PixArt-alpha's adaLN-single + cross-attention, as used by Wan 2.1):
- spacetime patchify of (pt, ph, pw) latent patches into tokens, 3D RoPE on their (t, h, w)
  positions (no learned position tables, so any size and duration is valid);
- blocks of full spacetime self-attention (fused QKV, per-head RMS QK-norm), cross-attention to
  the text tokens (respecting the text mask) and a GELU MLP;
- adaLN-zero modulation from ONE shared time MLP plus a learned offset per block, computed per
  latent frame so that clean conditioning frames (t = 0) and noisy frames share a sequence;
- a learned null text token always appended to the keys: an all-False text mask (the empty
  prompt, see ``videodit.text``) is the unconditional input, with no NaN from an empty softmax.

Precision: parameters are fp32. Run the model under ``torch.autocast(device, torch.bfloat16)``
for speed: matmuls and attention then run in bf16, while the residual stream, the norms, the
modulation and the output head stay fp32 (see ``Block.forward`` and ``DiT.forward``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from videodit.errors import VideoditError

# t in [0, 1] is scaled to [0, 1000] before the sinusoid so its frequencies (periods up to 10^4)
# resolve small timestep differences, the range DiT and Wan were designed around.
TIME_SCALE = 1000.0
SINUSOID_MAX_PERIOD = 10000.0
# A guidance scale w enters the sinusoid as w / GUIDANCE_SCALE: scales up to ~10 then span the
# range a timestep does.
GUIDANCE_SCALE = 10.0
GELUS = ("exact", "tanh")
QK_NORM_SPANS = ("head", "all")


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = field(default=16, metadata={"help": "latent channels c (the VAE's)"})
    patch: tuple[int, int, int] = field(default=(1, 2, 2), metadata={"help": "patch size (pt, ph, pw) in latents"})
    dim: int = field(default=384, metadata={"help": "transformer width"})
    depth: int = field(default=12, metadata={"help": "number of blocks"})
    heads: int = field(default=6, metadata={"help": "attention heads (dim / heads = head dim, even)"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden width / dim"})
    text_dim: int = field(default=384, metadata={"help": "text encoder width D_text"})
    qk_norm: bool = field(default=True, metadata={"help": "RMS-normalise queries and keys per head"})
    freq_dim: int = field(default=256, metadata={"help": "sinusoidal timestep embedding width"})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base period"})
    norm_eps: float = field(default=1e-6, metadata={"help": "epsilon of every norm"})
    # Four switches for checkpoints trained elsewhere (the `wan-1.3b` preset, videodit/interop/wan.py);
    # the defaults are this codebase's own architecture.
    bias: bool = field(default=False, metadata={"help": "biases on the blocks' linears (Wan 2.1 has them)"})
    gelu: str = field(default="exact", metadata={
        "help": "GELU of the MLPs and the text projection: exact (erf) or tanh (Wan 2.1)", "choices": GELUS})
    qk_norm_span: str = field(default="head", metadata={
        "help": "what the QK RMS-norm normalises: each head's channels (head) or all heads' at once with one "
                "gain per channel of every head (all: Wan 2.1)", "choices": QK_NORM_SPANS})
    null_text: bool = field(default=True, metadata={
        "help": "append a learned null token to the text keys (see videodit.text); off for Wan 2.1, whose "
                "text is always its 512 zero-padded, all-attended tokens"})
    guidance_embed: bool = field(default=False, metadata={
        "help": "take the classifier-free guidance scale as an input (a guidance-distilled student, "
                "videodit/distill.py): one pass gives the guided velocity"})
    pooled_text: bool = field(default=False, metadata={
        "help": "add the prompt's mean text embedding to the time embedding that modulates every block, next "
                "to cross-attention (SD3's pooled text vector in adaLN, Esser et al. 2024); starts at zero"})

    def __post_init__(self):
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise VideoditError(f"DiTConfig: dim {self.dim} / heads {self.heads} must be an even integer")
        if self.dim // self.heads < 6:
            raise VideoditError(f"DiTConfig: head dim {self.dim // self.heads} too small to split over t, h, w")
        if self.gelu not in GELUS or self.qk_norm_span not in QK_NORM_SPANS:
            raise VideoditError(f"DiTConfig: gelu {self.gelu!r} must be one of {GELUS}, qk_norm_span "
                                f"{self.qk_norm_span!r} one of {QK_NORM_SPANS}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise VideoditError(f"DiTConfig: patch {self.patch} must be three positive ints (pt, ph, pw)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def qk_gain_shape(self) -> tuple[int, ...]:
        return (self.head_dim,) if self.qk_norm_span == "head" else (self.heads, self.head_dim)

    def gelu_module(self) -> nn.GELU:
        return nn.GELU(approximate="none" if self.gelu == "exact" else "tanh")

    @staticmethod
    def preset(name: str, **changes) -> DiTConfig:
        if name not in PRESETS:
            raise VideoditError(f"DiT preset {name!r}: expected one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **changes)


# ----------------------------------------------------------------------------- embeddings


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t (...) in [0, 1] -> (..., dim) fp32 [cos | sin] features (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(SINUSOID_MAX_PERIOD) * torch.arange(half, device=t.device) / half)
    angles = (t.float() * TIME_SCALE)[..., None] * freqs  # (..., half)
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Head-dim channels given to the (t, h, w) axes: h and w a third each, t the rest (Wan 2.1)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float, device, dtype):
    """cos, sin tables (N, 1, head_dim) for tokens on a (T, h, w) grid, in row-major token order.

    Rotation pairs are (i, i + head_dim/2) ("rotate half" layout); ``sin`` carries the sign of the
    rotation in its first half so that ``apply_rope`` is one multiply-add (see there).
    """
    angles = []
    for axis, (n, d) in enumerate(zip(grid, rope_axis_dims(head_dim))):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)  # (d/2,)
        pos = torch.arange(n, dtype=torch.float64, device=device)
        a = pos[:, None] * freqs  # (n, d/2)
        shape = [1, 1, 1, d // 2]
        shape[axis] = n
        angles.append(a.view(shape).expand(*grid, d // 2))
    angles = torch.cat(angles, dim=-1).reshape(-1, 1, head_dim // 2)  # (N, 1, head_dim/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)  # (N, 1, head_dim)
    sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, N, heads, head_dim): pair (x1_i, x2_i) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    # roll by half swaps the halves, [x2, x1]; the sign lives in the sin table.
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def inv_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., d) -> (..., 1) in x's dtype: 1 / sqrt(mean(x^2) + eps), accumulated in fp32."""
    # vector_norm reduces a bf16 input with an fp32 accumulator in one read; F.rms_norm on CPU
    # materialises fp32 copies of the whole tensor instead (~5x slower on the benchmark shape).
    # (Its result is rounded to x's dtype, ~0.4% for bf16, before the fp32 rsqrt.)
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).float()
    return torch.rsqrt(norm.square() / x.shape[-1] + eps).to(x.dtype)


def qk_inv_rms(x: torch.Tensor, span: str, eps: float) -> torch.Tensor:
    """x (B, N, heads, head_dim) -> 1 / rms over each head's channels (B, N, heads, 1), or over all
    heads' channels at once (B, N, 1, 1); see DiTConfig.qk_norm_span."""
    return inv_rms(x, eps) if span == "head" else inv_rms(x.flatten(-2), eps)[..., None]  # (B, N, 1, 1)


def fold_gain(cos: torch.Tensor, sin: torch.Tensor, gain: torch.Tensor):
    """RoPE tables that also multiply by a per-channel gain: rope(x * gain) = x*cos' + roll(x)*sin'.
    gain (head_dim,) or per head (heads, head_dim); the tables broadcast to (N, heads, head_dim)."""
    g = gain.to(cos.dtype)
    return cos * g, sin * g.roll(g.shape[-1] // 2, dims=-1)


# ----------------------------------------------------------------------------- attention


# Largest score matrix (batch x heads x queries x keys) that CPU training attends to explicitly.
EXPLICIT_ATTENTION_MAX_SCORES = 2**25


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              scale: float | None = None) -> torch.Tensor:
    """softmax(scale q k^T) v; q (B, heads, N, d), k and v (B, heads, L, d), mask (B, 1, 1, L) bool
    (True = attend), scale 1/sqrt(d) unless given.

    Always scaled_dot_product_attention, except when training on the CPU at modest sizes: there
    the fused kernel's backward is ~2x slower than autograd through the explicit product, which
    stores the score matrix instead (bf16, benchmark shape, one thread: 46 ms vs 22 ms forward +
    backward per self-attention, 27 vs 11 per cross-attention)."""
    scores = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    if not (q.device.type == "cpu" and torch.is_grad_enabled() and scores <= EXPLICIT_ATTENTION_MAX_SCORES):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q if scale == 1.0 else q * scale) @ k.transpose(-1, -2)  # (B, heads, N, L)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    # The CPU softmax kernel accumulates bf16 input in fp32 and rounds only its output.
    return s.softmax(dim=-1) @ v  # (B, heads, N, d)


class Packing(NamedTuple):
    """Layout of a packed sequence (``DiT.forward_packed``): runs of equal-sized clips, in sequence
    order, each run ``clips`` clips of ``tokens`` tokens. Attention is block-diagonal over clips;
    the blocks are computed as one batched attention per run, so no score outside a block (no
    padding, no masked-out pair) is ever computed."""

    runs: tuple[tuple[int, int], ...]  # (clips, tokens per clip)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing,
                     mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Block-diagonal attention over a packed sequence. q (1, N, heads, d). Self-attention
    (no mask): k, v (1, N, heads, d) like q. Cross-attention (a mask): k, v (clips, heads, L, d)
    per clip, mask (clips, 1, 1, L). Returns (1, N, heads * d)."""
    per_clip_kv = mask is not None
    heads, d = q.shape[2], v.shape[-1]
    # Each run's output is written in place into one buffer: a torch.cat of the runs would copy
    # every token once more (~10% of a cpu-small training step).
    out = q.new_empty(q.shape[1], heads, d)  # (N, heads, d)
    start, clip = 0, 0
    for g, n in packing.runs:
        qs = q[0, start:start + g * n].unflatten(0, (g, n)).transpose(1, 2)  # (g, heads, n, d)
        if per_clip_kv:
            ks, vs = k[clip:clip + g], v[clip:clip + g]  # (g, heads, L, d)
            ms = mask[clip:clip + g]
        else:
            ks, vs = (a[0, start:start + g * n].unflatten(0, (g, n)).transpose(1, 2) for a in (k, v))  # (g, heads, n, d)
            ms = None
        o = attention(qs, ks, vs, ms, scale)  # (g, heads, n, d)
        out[start:start + g * n].view(g, n, heads, d).copy_(o.transpose(1, 2))
        start, clip = start + g * n, clip + g
    return out.view(1, -1, heads * d)  # (1, N, heads * d)


class SequenceParallel(NamedTuple):
    """Ulysses sequence parallelism (Jacobs et al. 2023, DeepSpeed-Ulysses): the ``size`` ranks
    of ``group`` run the same clips, each holding 1/size of every frame's tokens (a contiguous run
    of the frame's h x w positions). Everything but self-attention is per token; self-attention
    trades token slices for head groups with one all-to-all, attends over the whole sequence for
    heads/size heads, and trades back (``ulysses_attention``). Set with
    ``enable_sequence_parallel``; None (the default) is the single-rank model."""

    group: object  # torch.distributed ProcessGroup
    rank: int
    size: int


class _AllToAll(torch.autograd.Function):
    """x (size, ...): chunk i goes to rank i, chunk j of the result came from rank j. Its own
    adjoint, so the backward is the same exchange."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()  # (empty_like keeps a permuted tensor's strides; the exchange wants rows)
        out = torch.empty_like(x)
        torch.distributed.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        torch.distributed.all_to_all_single(out, grad, group=ctx.group)
        return out, None


class _GatherTokens(torch.autograd.Function):
    """(B, Tp, S/size, d) slices -> (B, Tp, S, d) on every rank of the group. Backward: this rank's
    slice of the gradient, times ``size``: the ranks of a group compute the same loss from the same
    gathered output, and data-parallel averaging divides by the world size, which counts them too."""

    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp, ctx.n = sp, x.shape[2]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(sp.size)]
        torch.distributed.all_gather(parts, x, group=sp.group)
        return torch.cat(parts, dim=2)  # (B, Tp, S, d)

    @staticmethod
    def backward(ctx, grad):
        lo = ctx.sp.rank * ctx.n
        return grad[:, :, lo:lo + ctx.n] * ctx.sp.size, None


def ulysses_attention(q, k, v, sp: SequenceParallel, scale: float | None) -> torch.Tensor:
    """Self-attention over a sequence split across ``sp``'s ranks. q, k, v (B, n, heads, d): this
    rank's n tokens, RoPE applied. Returns (B, n, heads, d), as if one rank held all tokens."""
    B, n, H, d = q.shape
    g = H // sp.size

    def to_heads(x):  # (B, n, H, d) -> (B, H/size, size * n, d): every token, this rank's head group
        x = x.reshape(B, n, sp.size, g, d).permute(2, 0, 3, 1, 4)  # (size, B, g, n, d): head group i -> rank i
        x = _AllToAll.apply(x, sp.group)  # (size, B, g, n, d): chunk j = rank j's tokens
        return x.permute(1, 2, 0, 3, 4).reshape(B, g, sp.size * n, d)  # (B, g, N, d), rank-major tokens

    # Attention is equivariant in the query order and invariant in the key order, so the
    # rank-major token order needs no reordering: the exchange back undoes it.
    o = attention(to_heads(q), to_heads(k), to_heads(v), scale=scale)  # (B, g, N, d)
    o = o.reshape(B, g, sp.size, n, d).permute(2, 0, 3, 1, 4)  # (size, B, n, g, d): rank j's tokens -> rank j
    o = _AllToAll.apply(o, sp.group)  # (size, B, n, g, d): chunk i = head group i
    return o.permute(1, 2, 0, 3, 4).reshape(B, n, H, d)  # (B, n, heads, d)


def enable_sequence_parallel(dit: "DiT", sp: SequenceParallel | None) -> None:
    """Run ``dit``'s forward sequence-parallel over ``sp`` (None: back to one rank). Every rank of
    the group passes the same inputs and gets the whole output."""
    dit.sp = sp
    for block in dit.blocks:
        block.self_attn.sp = sp


class Route(NamedTuple):
    """Token routing in training (TREAD, Krause et al. 2025): blocks ``start`` .. ``end - 1`` see
    only the tokens ``keep`` (B, Tp, n) indexes in each token frame (n of its S); the others skip
    those blocks and rejoin the residual stream unchanged after them, and the output (and so the
    loss) covers every token. Attention among the kept tokens keeps their RoPE positions. Sampling
    never routes. ``random_route`` draws one."""

    start: int
    end: int
    keep: torch.Tensor  # (B, Tp, n) long: token positions within each frame, per clip and frame


def random_route(batch: int, grid: tuple[int, int, int], fraction: float, blocks: tuple[int, int],
                 generator: torch.Generator) -> Route:
    """A Route in which ``fraction`` of each token frame's positions, drawn at random per clip and
    frame, skip ``blocks`` = (start, end); drawn on the CPU from ``generator``."""
    Tp, Hp, Wp = grid
    S = Hp * Wp
    n = max(1, S - round(fraction * S))
    keep = torch.rand(batch, Tp, S, generator=generator).argsort(dim=-1)[..., :n].sort(dim=-1).values
    return Route(blocks[0], blocks[1], keep)


def kept_positions(route: Route, latent_shape: tuple[int, ...], patch: tuple[int, int, int]) -> torch.Tensor:
    """The latent positions of a route's kept tokens: (B, 1, T, h, w) bool for latents of
    ``latent_shape`` (B, c, T, h, w) cut into tokens of ``patch``."""
    B, _, T, h, w = latent_shape
    pt, ph, pw = patch
    Tp, Hp, Wp = T // pt, h // ph, w // pw
    kept = torch.zeros(B, Tp, Hp * Wp, dtype=torch.bool, device=route.keep.device).scatter_(2, route.keep, True)
    kept = kept.view(B, Tp, 1, Hp, 1, Wp, 1).expand(B, Tp, pt, Hp, ph, Wp, pw)
    return kept.reshape(B, 1, T, h, w)


def routed_rope(rope: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor, S: int):
    """RoPE tables (Tp*S, 1, hd) -> the kept tokens' rows, per clip: (B, Tp*n, 1, hd)."""
    B, Tp, n = keep.shape
    frame = torch.arange(Tp, device=keep.device)[None, :, None]  # (1, Tp, 1)
    return tuple(r.view(Tp, S, r.shape[-1])[frame, keep].view(B, Tp * n, 1, r.shape[-1]) for r in rope)


class TextKV(NamedTuple):
    """Per-block cross-attention keys/values, computed once per prompt batch by ``DiT.text_kv``."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: k, v (B, heads, L + 1, head_dim)
    mask: torch.Tensor  # (B, 1, 1, L + 1) bool, True = attend; the last key is the null token
    # (L keys, no null token, when DiTConfig.null_text is off)
    pooled: torch.Tensor | None = None  # (B, D): the mean attended text token (DiTConfig.pooled_text)

    def rows(self, n: int) -> TextKV:
        """The first n prompts'."""
        return TextKV([(k[:n], v[:n]) for k, v in self.kv], self.mask[:n],
                      None if self.pooled is None else self.pooled[:n])


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.bias)
        self.qk_norm, self.span, self.eps = cfg.qk_norm, cfg.qk_norm_span, cfg.norm_eps
        # QK-norm (RMSNorm per head, or across heads) gains; RMSNorm(x) = x * inv_rms(x) * gain.
        self.q_gain = nn.Parameter(torch.ones(cfg.qk_gain_shape)) if cfg.qk_norm else None
        self.k_gain = nn.Parameter(torch.ones(cfg.qk_gain_shape)) if cfg.qk_norm else None
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.sp: SequenceParallel | None = None  # enable_sequence_parallel

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                packing: Packing | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).unbind(2)  # each (B, N, heads, hd)
        scale = None
        if self.qk_norm:
            # rope(RMSNorm(q)): the per-channel gain rides in the RoPE tables and the per-(token,
            # head) 1/rms is a scalar that commutes with the rotation, as does the softmax scale:
            # three passes fewer over q and k.
            q = apply_rope(q * (qk_inv_rms(q, self.span, self.eps) * self.head_dim ** -0.5), *fold_gain(*rope, self.q_gain))
            k = apply_rope(k * qk_inv_rms(k, self.span, self.eps), *fold_gain(*rope, self.k_gain))
            scale = 1.0
        else:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if packing is not None:
            return self.out(packed_attention(q, k, v, packing, scale=scale))
        if self.sp is not None:
            return self.out(ulysses_attention(q, k, v, self.sp, scale).reshape(B, N, D))
        o = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)  # (B, heads, N, hd)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


class CrossAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.kv = nn.Linear(cfg.dim, 2 * cfg.dim, bias=cfg.bias)
        self.qk_norm, self.span, self.eps = cfg.qk_norm, cfg.qk_norm_span, cfg.norm_eps
        self.q_gain = nn.Parameter(torch.ones(cfg.qk_gain_shape)) if cfg.qk_norm else None
        self.k_gain = nn.Parameter(torch.ones(cfg.qk_gain_shape)) if cfg.qk_norm else None
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)

    def text_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, D = context.shape
        k, v = self.kv(context).view(B, L, 2, self.heads, self.head_dim).unbind(2)  # each (B, L, heads, hd)
        if self.qk_norm:
            # q.k sums q_i k_i per channel, so the query's RMSNorm gain can live on the (short,
            # computed once) text keys next to their own.
            k = k * qk_inv_rms(k, self.span, self.eps) * (self.k_gain * self.q_gain).to(k.dtype)
        return k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, L, hd)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q = self.q(x).view(B, N, self.heads, self.head_dim)  # (B, N, heads, hd)
        scale = None
        if self.qk_norm:
            # Its gain is folded into the keys (text_kv), the softmax scale into the 1/rms factor.
            q = q * (qk_inv_rms(q, self.span, self.eps) * self.head_dim ** -0.5)
            scale = 1.0
        if packing is not None:  # each clip attends to its own prompt only
            return self.out(packed_attention(q, *kv, packing, mask, scale))
        o = attention(q.transpose(1, 2), *kv, mask, scale)  # (B, heads, N, hd)
        return self.out(o.transpose(1, 2).reshape(B, N, D))


# ----------------------------------------------------------------------------- block


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        # The block's linears have no biases (as in PaLM, Chowdhery et al. 2022): the modulation
        # shifts already give every token an offset, and a bf16 GEMM with a bias epilogue runs
        # ~20% slower on CPU (oneDNN).
        self.eps = cfg.norm_eps
        self.self_attn = SelfAttention(cfg)
        self.norm_cross = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.cross_attn = CrossAttention(cfg)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        # Exact (erf) GELU: the tanh approximation is ~5x slower on CPU and buys nothing here.
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden, bias=cfg.bias), cfg.gelu_module(),
                                 nn.Linear(hidden, cfg.dim, bias=cfg.bias))
        # Learned per-block offset added to the shared time modulation (adaLN-single, PixArt-alpha).
        self.modulation = nn.Parameter(torch.zeros(6, cfg.dim))

    def forward(self, x, mod, rope, kv, text_mask, packing: Packing | None = None):
        """x (B, T, S, D) fp32 residual stream; mod (B, T, 1, 6, D) fp32 shared time modulation.
        Packed (see DiT.forward_packed): x (1, N, 1, D), mod (1, N, 1, 6, D), one row per token."""
        B, T, S, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.modulation).unbind(3)  # each (B, T, 1, D)
        # Norm and modulation in fp32, per frame: every token takes its own frame's timestep.
        h = torch.addcmul(shift1, F.layer_norm(x, (D,), eps=self.eps), 1 + scale1)
        x = torch.addcmul(x, gate1, self.self_attn(h.view(B, T * S, D), rope, packing).view(B, T, S, D))
        h = self.norm_cross(x)
        x = x + self.cross_attn(h.view(B, T * S, D), kv, text_mask, packing).view(B, T, S, D)
        h = torch.addcmul(shift2, F.layer_norm(x, (D,), eps=self.eps), 1 + scale2)
        return torch.addcmul(x, gate2, self.mlp(h))


# ----------------------------------------------------------------------------- model


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        pt, ph, pw = cfg.patch
        self.patch_dim = cfg.in_channels * pt * ph * pw
        self.patch_embed = nn.Linear(self.patch_dim, cfg.dim)
        self.text_embed = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), cfg.gelu_module(), nn.Linear(cfg.dim, cfg.dim))
        self.null_text = nn.Parameter(torch.zeros(cfg.dim)) if cfg.null_text else None
        self.time_embed = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))  # shared by all blocks
        self.text_pool = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim)) if cfg.pooled_text else None
        # Guidance-distilled students: the scale's embedding is added to the time embedding (as
        # FLUX.1-dev's guidance input; Meng et al. 2023 distil guidance into one such pass).
        self.guidance_embed = (nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
                               if cfg.guidance_embed else None)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.head_modulation = nn.Parameter(torch.zeros(2, cfg.dim))
        self.head = nn.Linear(cfg.dim, self.patch_dim)
        self._rope_cache: dict = {}
        self.sp: SequenceParallel | None = None  # enable_sequence_parallel
        self.init_weights()

    def init_weights(self):
        """The one place weights are initialised. Zero-init makes every block the identity at
        the start (adaLN-zero, Peebles & Xie 2023) and the model output exactly zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.time_embed:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.null_text is not None:
            nn.init.normal_(self.null_text, std=0.02)
        zero = [self.time_proj[1], self.head]
        if self.text_pool is not None:  # the pooled text starts silent, so a bundle continues unchanged
            zero.append(self.text_pool[1])
        if self.guidance_embed is not None:  # a student starts as its teacher's conditional model
            nn.init.normal_(self.guidance_embed[0].weight, std=0.02)
            zero.append(self.guidance_embed[2])
        zero += [b.cross_attn.out for b in self.blocks]  # PixArt-alpha: cross-attention starts silent
        for m in zero:
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head_modulation)
        for b in self.blocks:
            nn.init.zeros_(b.modulation)

    def rope(self, grid: tuple[int, int, int], device, dtype):
        # Tables depend only on the token grid: built once per (grid, device, dtype) and reused.
        # Built outside inference mode, so tables first made while sampling still serve training.
        key = (grid, str(device), dtype)
        if key not in self._rope_cache:
            with torch.inference_mode(False):
                self._rope_cache[key] = rope_tables(grid, self.config.head_dim, self.config.rope_theta, device, dtype)
        return self._rope_cache[key]

    def text_kv(self, text: torch.Tensor, text_mask: torch.Tensor) -> TextKV:
        """text (B, L, D_text), text_mask (B, L) bool -> per-block keys/values (see TextKV)."""
        B, L, _ = text.shape
        if text.shape[-1] != self.config.text_dim or text_mask.shape != (B, L):
            raise VideoditError(f"DiT text: expected text (B, L, {self.config.text_dim}) and mask (B, L), "
                                f"got {tuple(text.shape)} and {tuple(text_mask.shape)}")
        context = self.text_embed(text)  # (B, L, D)
        keep = text_mask.bool()
        if self.null_text is not None:
            null = self.null_text.to(context.dtype).expand(B, 1, -1)  # (B, 1, D)
            context = torch.cat([context, null], dim=1)  # (B, L + 1, D)
            keep = torch.cat([keep, text_mask.new_ones(B, 1, dtype=torch.bool)], dim=1)  # (B, L + 1)
        kv = [b.cross_attn.text_kv(context) for b in self.blocks]
        pooled = None
        if self.text_pool is not None:  # an empty prompt pools to its null token alone
            weight = keep.float()[..., None]  # (B, L + 1, 1)
            pooled = (context.float() * weight).sum(1) / weight.sum(1).clamp(min=1)  # (B, D), summed in fp32
        return TextKV(kv, keep[:, None, None, :], pooled)  # mask (B, 1, 1, L + 1), or (B, 1, 1, L) without the null token

    def _patchify(self, x: torch.Tensor, t: torch.Tensor):
        """Checked x (B, c, T, h, w), t (B, T) or (B,) -> patches (B, Tp, S, c*pt*ph*pw), timesteps
        per token frame (B, Tp) fp32 (a token frame takes the largest t of its pt latent frames)
        and the token grid (Tp, Hp, Wp)."""
        cfg = self.config
        pt, ph, pw = cfg.patch
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise VideoditError(f"DiT input: expected (B, {cfg.in_channels}, T, h, w), got {tuple(x.shape)}")
        B, c, T, H, W = x.shape
        if T % pt or H % ph or W % pw:
            raise VideoditError(f"DiT input: latent size (T, h, w) = {(T, H, W)} must be divisible by the "
                                f"patch {cfg.patch}")
        if t.dim() == 1:
            t = t[:, None].expand(B, T)
        if t.shape != (B, T):
            raise VideoditError(f"DiT timesteps: expected (B, T) = {(B, T)} or (B,), got {tuple(t.shape)}")
        Tp, Hp, Wp = T // pt, H // ph, W // pw
        patches = x.view(B, c, Tp, pt, Hp, ph, Wp, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, Tp, Hp, Wp, c, pt, ph, pw)
        patches = patches.reshape(B, Tp, Hp * Wp, self.patch_dim)  # (B, Tp, S, c*pt*ph*pw)
        return patches, t.float().view(B, Tp, pt).amax(dim=2), (Tp, Hp, Wp)

    def _unpatchify(self, out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """out (B, Tp, S, c*pt*ph*pw) -> (B, c, T, h, w) = ``shape``."""
        pt, ph, pw = self.config.patch
        B, c, T, H, W = shape
        out = out.view(B, T // pt, H // ph, W // pw, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, c, Tp, pt, Hp, ph, Wp, pw)
        return out.reshape(B, c, T, H, W)

    def _text(self, text, text_mask, text_kv: TextKV | None) -> TextKV:
        if text_kv is not None:
            return text_kv
        if text is None or text_mask is None:
            raise VideoditError("DiT: pass text and text_mask, or text_kv")
        return self.text_kv(text, text_mask)

    def _head(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Final modulated norm + linear, fp32: h (..., D), temb broadcastable to h."""
        shift, scale = (temb[..., None, :] + self.head_modulation).unbind(-2)  # each like temb
        h = torch.addcmul(shift, F.layer_norm(h, (self.config.dim,), eps=self.config.norm_eps), 1 + scale)
        return self.head(h)

    def _time_embedding(self, t_frames: torch.Tensor, guidance: torch.Tensor | float | None) -> torch.Tensor:
        """fp32 time embedding (..., D) of timesteps t_frames (...), plus the guidance scale's
        (a number, or one per row of t_frames' first axis; default 1 = no guidance) when the
        model takes one."""
        temb = self.time_embed(timestep_sinusoid(t_frames, self.config.freq_dim))
        if self.guidance_embed is None:
            if guidance is not None:
                raise VideoditError("DiT: a guidance input needs a guidance-distilled model (guidance_embed)")
            return temb
        g = torch.as_tensor(1.0 if guidance is None else guidance, dtype=torch.float, device=t_frames.device)
        g = g.view(-1, *[1] * (t_frames.dim() - 1)).expand_as(t_frames) if g.dim() else g.expand_as(t_frames)
        return temb + self.guidance_embed(timestep_sinusoid(g / GUIDANCE_SCALE, self.config.freq_dim))

    def _pooled_text(self, text_kv: TextKV) -> torch.Tensor:
        """fp32 (B, D): the prompts' pooled text, added to the time embedding (DiTConfig.pooled_text)."""
        if text_kv.pooled is None:
            raise VideoditError("DiT: this model takes pooled text; pass text_kv made by its own text_kv()")
        return self.text_pool(text_kv.pooled.float())

    def _compute_dtype(self, x: torch.Tensor):
        return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, *, text_kv: TextKV | None = None,
                guidance: torch.Tensor | float | None = None, route: Route | None = None) -> torch.Tensor:
        """x (B, c, T, h, w); t (B, T) per latent frame or (B,); text + text_mask, or a precomputed
        text_kv; ``guidance`` (B,) or a number: the guidance scale of a guidance-distilled model
        (DiTConfig.guidance_embed; default 1); ``route``: token routing in training (see Route).
        Returns the velocity (B, c, T, h, w) in fp32. With
        pt > 1 a token frame takes the largest t of its pt latent frames. Lists x and t run
        ``forward_packed`` (so that a DistributedDataParallel wrapper, which only sees forward, can
        train packed)."""
        if isinstance(x, (list, tuple)):
            if route is not None:
                raise VideoditError("DiT: token routing does not go with packed sequences")
            return self.forward_packed(x, t, text, text_mask, text_kv=text_kv, guidance=guidance)
        cfg = self.config
        patches, t_frames, grid = self._patchify(x, t)
        text_kv = self._text(text, text_mask, text_kv)
        B, Tp = t_frames.shape

        # Time: one fp32 embedding per token frame, shared by every block (autocast off: the
        # modulation is applied to the fp32 residual stream and must not be rounded to bf16).
        with torch.autocast(x.device.type, enabled=False):
            temb = self._time_embedding(t_frames, guidance)  # (B, Tp, D)
            if self.text_pool is not None:
                temb = temb + self._pooled_text(text_kv)[:, None]
            mod = self.time_proj(temb).view(B, Tp, 1, 6, cfg.dim)  # (B, Tp, 1, 6, D)

        rope = self.rope(grid, x.device, self._compute_dtype(x))
        if self.sp is not None:  # this rank's run of every frame's tokens, and their RoPE rows
            S, n = patches.shape[2], patches.shape[2] // self.sp.size
            lo = self.sp.rank * n
            patches = patches[:, :, lo:lo + n]  # (B, Tp, S/size, c*pt*ph*pw)
            rope = tuple(r.view(Tp, S, *r.shape[1:])[:, lo:lo + n].flatten(0, 1) for r in rope)  # (Tp*n, 1, hd)
        h = self.patch_embed(patches).float()  # (B, Tp, S, D) fp32 residual stream
        h = self._blocks(h, mod, rope, text_kv, route)

        with torch.autocast(x.device.type, enabled=False):
            out = self._head(h, temb[:, :, None, :])  # (B, Tp, S, c*pt*ph*pw)
        if self.sp is not None:
            out = _GatherTokens.apply(out, self.sp)  # (B, Tp, S, c*pt*ph*pw)
        return self._unpatchify(out, x.shape)

    def _blocks(self, h: torch.Tensor, mod: torch.Tensor, rope, text_kv: TextKV, route: Route | None) -> torch.Tensor:
        """The transformer blocks over h (B, Tp, S, D); with a route, its span sees only the kept
        tokens, which are then written back into the stream that skipped it."""
        if route is not None and (self.sp is not None or not 0 <= route.start < route.end <= len(self.blocks)):
            raise VideoditError(f"DiT route: blocks {route.start}..{route.end - 1} of {len(self.blocks)}, "
                                f"without sequence parallelism")
        B, Tp, S, D = h.shape
        skipped, index, block_rope = None, None, rope
        for i, (block, kv) in enumerate(zip(self.blocks, text_kv.kv)):
            if route is not None and i == route.start:
                index = route.keep.to(h.device)[..., None].expand(-1, -1, -1, D)  # (B, Tp, n, D)
                skipped, h, block_rope = h, h.gather(2, index), routed_rope(rope, route.keep.to(h.device), S)
            h = block(h, mod, block_rope, kv, text_kv.mask)
            if skipped is not None and i == route.end - 1:
                h, skipped, block_rope = skipped.scatter(2, index, h), None, rope
        return h

    def forward_packed(self, xs: list[torch.Tensor], ts: list[torch.Tensor], text: torch.Tensor | None = None,
                       text_mask: torch.Tensor | None = None, *, text_kv: TextKV | None = None,
                       guidance: torch.Tensor | float | None = None) -> list[torch.Tensor]:
        """Sequence packing (NaViT, Dehghani et al. 2023; Sora's "native sizes"): batches of clips
        of different sizes and durations run as ONE token sequence, so the linears see every token
        at once and no token is padding. xs[j] (B_j, c, T_j, h_j, w_j), ts[j] (B_j, T_j) or (B_j,);
        text (sum B_j, L, D_text) + text_mask, or text_kv, with one row per clip in the order of
        xs. Attention is block-diagonal: a clip attends to its own tokens and its own prompt only,
        its RoPE positions start at 0 and its timesteps are its own, so vs[j] equals
        ``forward(xs[j], ts[j], ...)`` up to rounding. Returns velocities like xs, fp32.

        Memory: the time modulation is one row per token here (6 D floats) instead of one per frame."""
        cfg = self.config
        if not xs or len(xs) != len(ts):
            raise VideoditError(f"DiT packed: need one timestep tensor per batch, got {len(xs)} batches "
                                f"and {len(ts)}")
        pieces = [self._patchify(x, t) for x, t in zip(xs, ts)]
        text_kv = self._text(text, text_mask, text_kv)
        clips = sum(x.shape[0] for x in xs)
        if text_kv.mask.shape[0] != clips:
            raise VideoditError(f"DiT packed: {clips} clips but {text_kv.mask.shape[0]} prompts")
        device = xs[0].device
        packing = Packing(tuple((p.shape[0], p.shape[1] * p.shape[2]) for p, _, _ in pieces))
        # Token -> its clip's frame (its row in the concatenated t_frames): (N,)
        frame_of_token, first = [], 0
        for p, _, _ in pieces:
            B, Tp, S, _ = p.shape
            frame_of_token.append((first + torch.arange(B * Tp, device=device)).repeat_interleave(S))
            first += B * Tp
        frame_of_token = torch.cat(frame_of_token)  # (N,)
        N = frame_of_token.shape[0]

        with torch.autocast(device.type, enabled=False):  # fp32 modulation, as in forward
            t_frames = torch.cat([tf.reshape(-1) for _, tf, _ in pieces])  # (frames,)
            frames = torch.tensor([tf.shape[1] for _, tf, _ in pieces for _ in range(tf.shape[0])], device=device)
            if isinstance(guidance, torch.Tensor) and guidance.dim():  # one per clip -> one per frame
                guidance = guidance.to(device).repeat_interleave(frames)
            temb_frames = self._time_embedding(t_frames, guidance)  # (frames, D)
            if self.text_pool is not None:  # one row per clip -> one per frame
                temb_frames = temb_frames + self._pooled_text(text_kv).repeat_interleave(frames, dim=0)
            mod = self.time_proj(temb_frames)[frame_of_token].view(1, N, 1, 6, cfg.dim)  # (1, N, 1, 6, D)

        patches = torch.cat([p.reshape(-1, self.patch_dim) for p, _, _ in pieces])  # (N, c*pt*ph*pw)
        h = self.patch_embed(patches).float().view(1, N, 1, cfg.dim)  # (1, N, 1, D) fp32 residual stream
        dtype = self._compute_dtype(xs[0])
        tables = [self.rope(grid, device, dtype) for _, _, grid in pieces]  # each (n_j, 1, hd)
        # Every clip's positions restart at 0: its grid's table, repeated once per clip of the batch.
        rope = tuple(torch.cat([tab[i].repeat(p.shape[0], 1, 1) for tab, (p, _, _) in zip(tables, pieces)])
                     for i in range(2))  # cos, sin (N, 1, hd)
        for block, kv in zip(self.blocks, text_kv.kv):
            h = block(h, mod, rope, kv, text_kv.mask, packing)

        with torch.autocast(device.type, enabled=False):
            out = self._head(h.view(N, cfg.dim), temb_frames[frame_of_token])  # (N, c*pt*ph*pw)
        outs, start = [], 0
        for x, (p, _, _) in zip(xs, pieces):
            n = p.shape[0] * p.shape[1] * p.shape[2]
            outs.append(self._unpatchify(out[start:start + n].view(p.shape), x.shape))
            start += n
        return outs


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(in_channels=4, dim=64, depth=2, heads=2, text_dim=32, freq_dim=64),
    "cpu-small": DiTConfig(dim=256, depth=8, heads=4),
    # 20.7 M parameters: the largest that ships in fp16 within the package's 60 MB with the VAE.
    "cpu-medium": DiTConfig(dim=320, depth=12, heads=5),
    "s": DiTConfig(dim=384, depth=12, heads=6),
    "b": DiTConfig(dim=768, depth=12, heads=12),
    "l": DiTConfig(dim=1024, depth=24, heads=16),
    "xl": DiTConfig(dim=1536, depth=28, heads=24),
    # Wan 2.1 T2V-1.3B (Apache-2.0), loaded from its diffusers folder by videodit/interop/wan.py.
    "wan-1.3b": DiTConfig(dim=1536, depth=30, heads=12, mlp_ratio=8960 / 1536, text_dim=4096, bias=True, gelu="tanh", qk_norm_span="all", null_text=False),
}
