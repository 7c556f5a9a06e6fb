"""Samplers: integrate the flow ODE from noise (t = 1) to latents (t = 0), see ``videodit.flow``.

    latents = generate(dit, text, text_mask, shape=(B, c, T, h, w), config=SamplerConfig(seed=1))

Pieces, from the inside out:
- ``solve``: a stateless loop over an explicit list of timesteps with Euler or Heun steps, given
  any velocity function v(x, t) with t (B, T) per latent frame;
- ``FrameCondition``: clean latent frames held at t = 0 (given a timestep of 0 and re-imposed
  after every step). Image-to-video, extension, connecting two clips and loops are all this one
  mechanism with different frame masks;
- ``guided_velocity``: classifier-free guidance (Ho & Salimans 2022) with the conditional and
  the unconditional (or negative-prompt) passes in one batch, against text K/V computed once,
  optionally only inside a timestep interval (Kynkaanniemi et al. 2024), the conditional pass
  alone elsewhere;
- ``generate``: seeded noise, the shifted timestep list, autocast, all of the above; every
  prompting mode samples through it, SDEdit too (a clean start noised to a time < 1).

Unconditional = the empty prompt = an all-False text mask (``videodit.text``); a negative prompt's
embedding takes its place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from videodit import flow
from videodit.dit import TextKV
from videodit.errors import VideoditError
from videodit.modes import SOLVERS

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B,c,T,h,w), t (B,T)) -> v


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = field(default=30, metadata={"help": "ODE steps (Heun uses two model calls per step, the others one)"})
    solver: str = field(default="euler", metadata={
        "help": f"one of {SOLVERS}; dpm++2m = DPM-Solver++(2M), second order at Euler's cost; distilled = "
                "Euler steps of the bundle's distilled student, one pass per step with the guidance scale as its "
                "input (videodit/distill.py)"})
    guidance: float = field(default=5.0, metadata={"help": "classifier-free guidance scale; 1 = no guidance"})
    guidance_interval: tuple[float, float] = field(default=(0.0, 1.0), metadata={
        "help": "guide only at steps whose timestep t has lo <= t <= hi; elsewhere the conditional velocity "
                "alone, one pass (guidance in a limited interval, Kynkaanniemi et al. 2024); (0, 1) = every step"})
    shift: float | None = field(default=None, metadata={
        "help": "timestep shift s (t' = s t / (1 + (s-1) t)); unset = flow.resolution_shift of the latent size"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    bf16: bool = field(default=True, metadata={
        "help": "run the DiT under bf16 autocast (CPU with AVX512-BF16/AMX, CUDA)"})

    def __post_init__(self):
        # Checked, and stored as a tuple of floats whatever sequence came in (a JSON list, argparse's list).
        object.__setattr__(self, "guidance_interval", check_interval(self.guidance_interval))


def check_interval(interval) -> tuple[float, float]:
    """A guidance interval (lo, hi) with 0 <= lo <= hi <= 1, or a clear error."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise VideoditError(f"guidance interval {interval!r}: expected two numbers LO HI") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise VideoditError(f"guidance interval ({lo}, {hi}): need 0 <= LO <= HI <= 1 (timesteps run from 1 = "
                            f"noise to 0 = clean; (0, 1) guides every step)")
    return lo, hi


@dataclass(frozen=True)
class FrameCondition:
    """Clean latent frames to hold fixed: ``latents`` (B, c, T, h, w) holds their values (other
    frames are ignored), ``mask`` (T,) or (B, T) bool marks which latent frames are given."""

    latents: torch.Tensor
    mask: torch.Tensor

    def expanded_mask(self, B: int, T: int) -> torch.Tensor:
        mask = self.mask.bool()
        if mask.dim() == 1:
            mask = mask[None].expand(B, -1)
        if mask.shape != (B, T):
            raise VideoditError(f"conditioning frame mask {tuple(self.mask.shape)}: expected (T,) or (B, T) "
                                f"with B, T = {B}, {T}")
        return mask

    def impose(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.expanded_mask(x.shape[0], x.shape[2])[:, None, :, None, None]  # (B, 1, T, 1, 1)
        return torch.where(mask, self.latents.to(x.dtype), x)


def solve(velocity: Velocity, x: torch.Tensor, timesteps: torch.Tensor, solver: str = "euler",
          cond: FrameCondition | None = None, on_step: Callable[[int, int], None] | None = None,
          guided: tuple[float, float] | None = None) -> torch.Tensor:
    """Integrate dx/dt = v from timesteps[0] to timesteps[-1] (normally 1 -> 0), starting at x.
    ``guided``: the guidance interval of ``velocity``, if it has one: the field jumps at its ends,
    and the multistep solver does not extrapolate across them."""
    if solver not in SOLVERS:
        raise VideoditError(f"sampler solver {solver!r}: expected one of {SOLVERS}")
    B, T = x.shape[0], x.shape[2]
    # Conditioning frames live at t = 0: their timestep is 0 at every step, their values are re-imposed.
    free = torch.ones(B, T, device=x.device) if cond is None else (~cond.expanded_mask(B, T)).float()

    def v_at(x, t):
        return velocity(x, torch.full((B, T), t, device=x.device) * free)

    def held(x):
        return x if cond is None else cond.impose(x)

    x = held(x)
    steps = len(timesteps) - 1
    previous = None  # dpm++2m: (t, the clean estimate) of the step before
    for i in range(steps):
        t, t_next = timesteps[i].item(), timesteps[i + 1].item()
        dt = t_next - t
        v = v_at(x, t)
        if solver == "dpm++2m":
            if guided is not None and previous is not None \
                    and in_interval(previous[0], guided) != in_interval(t, guided):
                previous = None  # the velocity jumped between the two steps: a first-order step
            x_next, previous = held(dpm_2m_step(x, v, t, t_next, previous, last=i == steps - 1)), (t, x - t * v)
        else:
            x_next = held(x + dt * v)
        if solver == "heun":
            # Trapezoidal corrector (Karras et al. 2022, Alg. 1). It is applied on the last step too:
            # the flow velocity is defined at t = 0, unlike the sigma-parametrised denoiser there.
            x_next = held(x + dt * 0.5 * (v + v_at(x_next, t_next)))
        x = x_next
        if on_step is not None:
            on_step(i + 1, steps)
    return x


def _log_snr(t: float) -> float:
    """lambda(t) = log(alpha / sigma) on the path x_t = (1 - t) x0 + t eps; -inf at t = 1, inf at t = 0."""
    return math.inf if t <= 0 else -math.inf if t >= 1 else math.log((1 - t) / t)


def dpm_2m_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float,
                previous: tuple[float, torch.Tensor] | None, last: bool) -> torch.Tensor:
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) on the flow path, alpha = 1 - t,
    sigma = t: the exact solution of the ODE in log-SNR lambda with the clean estimate
    x0 = x - t v extrapolated linearly in lambda from this step's and the previous step's. One
    velocity per step, as Euler, which it equals when there is no previous step (from t = 1,
    where lambda = -inf) and on the last step (to t = 0: the clean estimate itself, as the
    reference's lower-order final step)."""
    x0 = x - t * v
    # x_next = (sigma_next / sigma) x + alpha_next (1 - e^{-h}) D, with e^{-h} = e^{lambda - lambda_next}
    # written as a ratio so that t = 1 (alpha = 0) and t_next = 0 (sigma_next = 0) stay finite.
    decay = ((1 - t) * t_next) / (t * (1 - t_next))
    h, lam = _log_snr(t_next) - _log_snr(t), _log_snr(t)
    if previous is not None and not last and math.isfinite(h) and math.isfinite(lam - _log_snr(previous[0])):
        r = (lam - _log_snr(previous[0])) / h
        x0 = x0 + (x0 - previous[1]) / (2 * r)
    return (t_next / t) * x + (1 - t_next) * (1 - decay) * x0


def in_interval(t: float, interval: tuple[float, float]) -> bool:
    """Whether a step at timestep t is guided: lo <= t <= hi, the ends included (t is float32)."""
    return interval[0] - 1e-6 <= t <= interval[1] + 1e-6


def pad_text(text: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, L, D) tokens and their (B, L) mask to ``length`` with masked zeros."""
    extra = length - text.shape[1]
    return F.pad(text, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def guided_velocity(dit, text_kv: TextKV, guidance: float, interval: tuple[float, float] = (0.0, 1.0)) -> Velocity:
    """Velocity with classifier-free guidance. ``text_kv`` is ``dit.text_kv`` of the 2B prompts
    [conditional; unconditional or negative] when guidance != 1, of the B prompts otherwise.
    Steps whose timestep lies outside ``interval`` run the conditional pass alone (B rows): at
    high noise guidance inflates the layout, at low noise it sharpens the DiT's specks
    (docs/MODEL.md measures both)."""
    lo, hi = check_interval(interval)
    if dit.config.guidance_embed:  # a distilled student: the guidance scale is an input, one pass
        return lambda x, t: dit(x, t, text_kv=text_kv, guidance=guidance)
    if guidance == 1.0:
        return lambda x, t: dit(x, t, text_kv=text_kv)
    conditional: list = []  # the conditional half of text_kv, sliced once when first needed

    def velocity(x, t):
        if not in_interval(t.amax().item(), (lo, hi)):  # the step's timestep (held frames sit at 0)
            if not conditional:
                B = x.shape[0]
                conditional.append(text_kv.rows(B))
            return dit(x, t, text_kv=conditional[0]).float()
        v = dit(torch.cat([x, x]), torch.cat([t, t]), text_kv=text_kv)  # (2B, c, T, h, w)
        v_cond, v_uncond = v.float().chunk(2)
        return v_uncond + guidance * (v_cond - v_uncond)

    return velocity


def start_point(shape: tuple[int, ...], config: SamplerConfig, patch: tuple[int, int, int], device,
                start: torch.Tensor | None = None, start_time: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at the first timestep, the timesteps) for latents of ``shape`` (B, c, T, h, w): seeded
    noise at t = 1, or with ``start`` (clean latents of ``shape``) the point x_t on the flow path
    at t = ``start_time`` and the generation schedule cut there (SDEdit, Meng et al. 2022)."""
    # Noise drawn on the CPU from the seed, so a seed gives the same video on every device.
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(config.seed)).to(device)
    shift = config.shift if config.shift is not None else flow.shift_for(shape, patch)
    timesteps = flow.sampling_timesteps(config.steps, shift)
    if start is None:
        if start_time != 1.0:
            raise VideoditError(f"start time {start_time}: sampling from noise starts at 1; give start latents")
        return noise, timesteps
    if tuple(start.shape) != tuple(shape):
        raise VideoditError(f"start latents {tuple(start.shape)}: expected {tuple(shape)}")
    if not 0.0 <= start_time <= 1.0:
        raise VideoditError(f"start time {start_time}: must be in [0, 1] (0 keeps the start, 1 ignores it)")
    # The generation schedule, cut at the start time: the same step density where both run.
    timesteps = torch.cat([torch.tensor([start_time]), timesteps[timesteps < start_time]])
    return (1 - start_time) * start.to(device) + start_time * noise, timesteps  # x_t (flow.py)


def generate(dit, text: torch.Tensor, text_mask: torch.Tensor, shape: tuple[int, int, int, int, int],
             config: SamplerConfig = SamplerConfig(), *, negative: tuple[torch.Tensor, torch.Tensor] | None = None,
             cond: FrameCondition | None = None, start: torch.Tensor | None = None, start_time: float = 1.0,
             on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Text embeddings (B, L, D_text) + mask (B, L) -> latents of ``shape`` (B, c, T, h, w), fp32.

    ``negative``: (tokens, mask) of negative prompts (B or 1 rows) used in place of the empty
    prompt for guidance. ``cond``: clean latent frames to keep (see FrameCondition).
    ``start``, ``start_time``: begin from clean latents ``start`` noised to t = ``start_time``
    instead of from noise at t = 1 (see start_point).
    """
    B = shape[0]
    if text.shape[0] != B:
        raise VideoditError(f"generate: {text.shape[0]} prompts for a batch of {B} latents")
    if config.solver == "distilled" and not dit.config.guidance_embed:
        raise VideoditError("solver 'distilled' samples a distilled student (videodit/distill.py); this DiT is not one")
    if dit.config.guidance_embed and negative is not None:
        raise VideoditError("a distilled student has no negative prompt (its one pass has the guidance built in); "
                            "sample its teacher with --solver euler")
    device = next(dit.parameters()).device
    text, text_mask = text.to(device), text_mask.to(device)
    x, timesteps = start_point(shape, config, dit.config.patch, device, start, start_time)

    if config.guidance != 1.0 and not dit.config.guidance_embed:
        if negative is None:
            neg_text, neg_mask = text.new_zeros(B, 1, text.shape[2]), text_mask.new_zeros(B, 1)
        else:
            if negative[0].shape[0] not in (1, B):
                raise VideoditError(f"generate: {negative[0].shape[0]} negative prompts for {B} prompts; give 1 or {B}")
            neg_text, neg_mask = (n.to(device).expand(B, *n.shape[1:]) for n in negative)
        length = max(text.shape[1], neg_text.shape[1])
        text, text_mask = (torch.cat(pair) for pair in zip(pad_text(text, text_mask, length),
                                                            pad_text(neg_text, neg_mask, length)))
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=config.bf16)
    # One autocast region for the whole loop, so the bf16 copies of the weights are made once.
    # no_grad, not inference_mode: autocast caches no weight casts in inference mode (torch 2.13),
    # and re-casting all weights every step cost ~15% of a sampling run's CPU time (benchmarks/RESULTS.md).
    with torch.no_grad(), autocast:
        text_kv = dit.text_kv(text, text_mask)
        velocity = guided_velocity(dit, text_kv, config.guidance, config.guidance_interval)
        guided = config.guidance != 1.0 and not dit.config.guidance_embed
        return solve(velocity, x, timesteps, config.solver, cond, on_step,
                     config.guidance_interval if guided else None).float()
