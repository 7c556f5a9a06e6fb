"""Flow matching (rectified flow), as pure functions. The time convention lives here:

- t in [0, 1]; t = 0 is data, t = 1 is pure Gaussian noise.
- The path is the straight line x_t = (1 - t) x0 + t eps (Liu et al. 2022; Lipman et al. 2023).
- The model predicts the velocity v = dx_t/dt = eps - x0; sampling integrates from t = 1 to t = 0.
- A shift s > 1 spends more of the time axis near noise: t' = s t / (1 + (s - 1) t).

Timesteps are per latent frame: ``t`` is (B,) or (B, T) for latents (B, c, T, h, w), so clean
conditioning frames can sit at t = 0 next to noisy ones.
"""

from __future__ import annotations

import math

import torch

from videodit.errors import VideoditError


def _per_frame(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (B,) or (B, T) -> broadcastable against x (B, c, T, h, w): (B, 1, T or 1, 1, 1)."""
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] != x.shape[0] or t.shape[1] not in (1, x.shape[2]):
        raise VideoditError(f"timesteps {tuple(t.shape)} do not match latents {tuple(x.shape)}: "
                            "expected (B,) or (B, T)")
    return t[:, None, :, None, None].to(x.dtype)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training pair: noisy x_t = (1 - t) x0 + t noise and the target velocity noise - x0."""
    tt = _per_frame(t, x0)
    return (1 - tt) * x0 + tt * noise, noise - x0


def flow_loss(v_pred: torch.Tensor, v_target: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity error. frame_mask (B, T) bool selects the frames that count, so
    clean conditioning frames (t = 0, nothing to predict) are left out of the loss; a mask
    (B, 1, T, h, w) selects single latent positions (token-masked training)."""
    err = (v_pred.float() - v_target.float()).square()  # (B, c, T, h, w)
    if frame_mask is None:
        return err.mean()
    if frame_mask.dim() == 2:
        frame_mask = frame_mask[:, None, :, None, None]
    w = frame_mask.to(err.dtype).expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1)


def min_snr_weight(t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy", their v-prediction form min(SNR, gamma) / (SNR + 1)) for the velocity loss
    at timesteps t, with the straight path's SNR = ((1 - t) / t)^2. As an x0 loss this weighs each
    t by min(SNR, gamma): low-noise steps are capped at gamma, and the weight falls to 0 at pure
    noise. Times 0 (clean conditioning frames, not in the loss) get weight 0."""
    if gamma <= 0:
        raise VideoditError(f"min-SNR gamma {gamma}: must be > 0")
    t = t.float()
    signal, noise = (1 - t).square(), t.square()  # SNR = signal / noise
    return torch.minimum(signal, gamma * noise) / (signal + noise)


def logit_normal(shape, mean: float = 0.0, std: float = 1.0, *, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """Training timesteps t = sigmoid(mean + std * n), n ~ N(0, 1): concentrates training on the
    middle of the path, where the velocity is hardest to predict (SD3, Esser et al. 2024, Sec. 3.1;
    mean 0, std 1 was their best)."""
    n = torch.randn(shape, generator=generator, device=device)
    return torch.sigmoid(mean + std * n)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t): s > 1 moves timesteps toward noise, s = 1 is the identity."""
    if shift <= 0:
        raise VideoditError(f"timestep shift {shift}: must be > 0")
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(num_tokens: int, base_tokens: int = 256, base_shift: float = 1.0) -> float:
    """Shift for a latent with ``num_tokens`` DiT tokens (frames x height x width), relative to a
    base size where ``base_shift`` is right.

    More tokens carry more redundant signal, so the same noise level destroys less of the
    content; to keep the signal-to-noise ratio seen at a timestep comparable, the schedule is
    shifted by sqrt(tokens / base tokens) (SD3, Esser et al. 2024, Sec. 5.3.2, who derive it for
    pixel count; Wan 2.1 likewise raises its shift with resolution). Counting frames as well as
    pixels makes it duration-aware: a longer clip of the same frames is shifted further.
    """
    if num_tokens < 1 or base_tokens < 1:
        raise VideoditError(f"resolution_shift: token counts must be >= 1, got {num_tokens}, {base_tokens}")
    return base_shift * math.sqrt(num_tokens / base_tokens)


def shift_for(latent_shape: tuple[int, ...], patch: tuple[int, int, int]) -> float:
    """``resolution_shift`` for latents of ``latent_shape`` (..., T, h, w) cut into DiT tokens of
    ``patch`` (pt, ph, pw): the shift the samplers and the DiT trainer use by default."""
    T, h, w = latent_shape[-3:]
    pt, ph, pw = patch
    return resolution_shift((T // pt) * (h // ph) * (w // pw))


def sampling_timesteps(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """(steps + 1,) timesteps from 1 (noise) down to 0 (data): uniform, then shifted."""
    if steps < 1:
        raise VideoditError(f"sampling steps {steps}: must be >= 1")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64), shift).float()
