"""Training throughput of the DiT's step: eager against the fast step (`videodit train --compile`).

    nice -n 10 PYTHONPATH=. python benchmarks/train_throughput.py --device cpu --threads 1
    PYTHONPATH=. python benchmarks/train_throughput.py --device cpu --threads 1 --quick   # ~4 min
    PYTHONPATH=. python benchmarks/train_throughput.py --device cuda                     # + the bucket mix

A step is what videodit/train/loop.py does per step, without data: the DiT's forward under bf16
autocast, the flow-matching loss, backward, gradient clipping, AdamW and the EMA, on random
weights, random latents, random text tokens and timesteps (no VAE, no text encoder, no rendering
in the timed region). Three variants, alternated within every repetition so that load from other
processes hits them alike, each with its own copy of the same weights:

  before   the loop as it was: eager, torch's default AdamW (a Python loop over the tensors on a
           CPU), the EMA one parameter at a time, the loss and gradient norm read back every step
  eager    `--no-compile` today: eager, fused AdamW (skipping a non-finite step on the device),
           foreach EMA, nothing read back per step
  fast     `--compile`: ``eager`` with the DiT's forward and backward through torch.compile
           (static shapes: one graph per shape, compiled on its first step)

Shapes: the bundled model's preset (cpu-medium: dim 320, 12 blocks, 5 heads, 8 latent channels,
text 32 x 384) on 64x64x17 clips (latents 8 x 5 x 16 x 16, 320 tokens a clip), as many as fit
--tokens (default 2,560 on a CPU, 81,920, the bundle's budget, on a GPU). ``--mix`` also times the
bundle's bucket mix (sizes 64x64 64x64 80x48 48x80 x frames 17 17 17 9 1 33, 12 buckets with the
batch of each from the token budget, videodit/data/buckets.py), weighted by the buckets' odds; the
fast step then compiles 12 graphs (on a CPU about 2 minutes each, so it is off there by default).

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one eager step (matmuls and
attention of forward and backward; ~ 6 x params x tokens for the linears plus 12 x blocks x
tokens x seq x dim for attention). MFU = achieved FLOP/s / the bf16 GEMM peak measured in the same
run (a large square bf16 matmul, same device and threads). Compile time = the fast variant's first
two steps at a shape minus two median steps (the second recompiles once: see the warm-up), with a fresh inductor cache (nothing reused from earlier
runs). The last line is ``SUMMARY speedup=<fast / before> tokens_per_s=<fast> mfu=<fast>``.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import tempfile
import time

# Passive OpenMP waiting (as the CLI sets it): spinning threads stall every op on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A fresh inductor cache, so the compile time measured is a cold one.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

import torch  # noqa: E402  (after the settings above, which are read when torch loads)
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from videodit import flow  # noqa: E402
from videodit.data.buckets import plan_buckets  # noqa: E402
from videodit.dit import DiT, DiTConfig  # noqa: E402
from videodit.train import loop  # noqa: E402

LATENT_CHANNELS, TEXT_DIM, TEXT_LEN, VAE_STRIDE = 8, 384, 32, 4
MIX_SIZES = ("64x64", "64x64", "80x48", "48x80")
MIX_FRAMES = (17, 17, 17, 9, 1, 33)
VARIANTS = ("before", "eager", "fast")


class Settings:
    """The loop's settings that make_optimizer reads (videodit/train/dit.py defaults)."""
    lr, weight_decay, grad_clip, ema_decay = 3e-4, 0.0, 1.0, 0.999


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(device: torch.device, quick: bool) -> float:
    """bf16 GEMM FLOP/s of a large square matmul (median of repeated calls)."""
    n = 8192 if device.type == "cuda" else 2048 if quick else 4096
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    times = []
    for i in range(8 if quick else 15):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i >= 2:  # warm-up calls
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def make_batch(shape: tuple[int, int, int, int], device: torch.device, gen: torch.Generator) -> tuple:
    """Random inputs of one step: latents (B, c, T, h, w) as x_t, per-frame t (B, T), a velocity
    target, text tokens (B, 32, 384) with a mask (at least the first 4 tokens kept)."""
    B, T, h, w = shape
    x = torch.randn(B, LATENT_CHANNELS, T, h, w, generator=gen)
    v = torch.randn(B, LATENT_CHANNELS, T, h, w, generator=gen)
    t = torch.rand(B, T, generator=gen)
    text = torch.randn(B, TEXT_LEN, TEXT_DIM, generator=gen)
    lengths = torch.randint(4, TEXT_LEN + 1, (B, 1), generator=gen)
    mask = torch.arange(TEXT_LEN)[None, :] < lengths  # (B, L)
    return tuple(z.to(device) for z in (x, t, v, text, mask))


class Variant:
    """One way of running the step, with its own model, optimizer and EMA."""

    def __init__(self, name: str, model: DiT, device: torch.device):
        self.name = name
        self.model = copy.deepcopy(model)
        self.ema = copy.deepcopy(model).requires_grad_(False)
        params = list(self.model.parameters())
        if name == "before":
            self.optimizer = torch.optim.AdamW(params, lr=Settings.lr, betas=(0.9, 0.99))
        else:
            self.optimizer = loop.make_optimizer(params, Settings, device, sharded=False)
        self.net = loop.compile_model(self.model, len(MIX_SIZES) * len(MIX_FRAMES)) if name == "fast" else self.model
        self.step_count = 0

    def step(self, batch: tuple) -> None:
        x, t, v, text, mask = batch
        with torch.autocast(x.device.type, torch.bfloat16):
            loss = flow.flow_loss(self.net(x, t, text, mask), v)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), Settings.grad_clip)
        decay = min(Settings.ema_decay, (1 + self.step_count) / (2 + self.step_count))
        self.step_count += 1
        if self.name == "before":  # the old loop: host reads, then a per-parameter EMA
            if float(loss.detach()).__abs__() < float("inf") and float(norm) < float("inf"):
                self.optimizer.step()
                with torch.no_grad():
                    for e, p in zip(self.ema.parameters(), self.model.parameters()):
                        e.lerp_(p, 1.0 - decay)
            return
        ok = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        self.optimizer.found_inf = (~ok).float()
        self.optimizer.step()
        loop.ema_update(self.ema, self.model, decay, ok)


def step_flops(model: DiT, batch: tuple) -> int:
    """Forward + backward FLOPs of one step, counted on an eager copy."""
    model = copy.deepcopy(model)
    x, t, v, text, mask = batch
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(x.device.type, torch.bfloat16):
            loss = flow.flow_loss(model(x, t, text, mask), v)
        loss.backward()
    return counter.get_total_flops()


def timed_steps(variant: Variant, batch: tuple, steps: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        variant.step(batch)
    sync(device)
    return (time.perf_counter() - t0) / steps


def bucket_shapes(mix: bool, tokens: int, patch: tuple[int, int, int]) -> list[tuple[tuple, float]]:
    """[((B, T, h, w), odds)]: the bundle's 12 buckets with --mix, else 64x64x17 clips alone."""
    sizes, frames = (MIX_SIZES, MIX_FRAMES) if mix else (("64x64",), (17,))
    plan = plan_buckets(sizes, frames, batch_size=1, tokens_per_batch=tokens, batches_per_step=1, square=False,
                        vae_stride=VAE_STRIDE, patch=patch)
    return [((e.batch, (f - 1) // 4 + 1, h // VAE_STRIDE, w // VAE_STRIDE), e.odds) for (w, h, f), e in plan.items()]


def measure(model: DiT, shapes: list, args, device: torch.device) -> dict:
    """Per variant: odds-weighted tokens / s and FLOP/s over the shapes, and the fast variant's
    compile time (summed over the shapes)."""
    gen = torch.Generator().manual_seed(0)
    batches = [make_batch(shape, device, gen) for shape, _ in shapes]
    flops = [step_flops(model, b) for b in batches]
    variants = [Variant(name, model, device) for name in VARIANTS]
    first = {}
    for i, b in enumerate(batches):  # warm-up: every variant, every shape (the fast one compiles here)
        for v in variants:  # two steps: the DiT's RoPE table cache fills in the first, a guard recompiles
            first[v.name, i] = 2 * timed_steps(v, b, 2, device)
    times = {(v.name, i): [] for v in variants for i in range(len(batches))}
    for run in range(args.runs):
        for i, b in enumerate(batches):
            for v in variants if run % 2 == 0 else variants[::-1]:
                times[v.name, i].append(timed_steps(v, b, args.steps, device))
    result = {}
    for v in variants:
        per_shape = [statistics.median(times[v.name, i]) for i in range(len(batches))]
        seconds = sum(odds * s for (_, odds), s in zip(shapes, per_shape))
        tokens = sum(odds * B * T * h * w // 4 for ((B, T, h, w), odds) in shapes)  # patch 1x2x2
        result[v.name] = {"tokens_per_s": tokens / seconds,
                          "flop_per_s": sum(odds * f for (_, odds), f in zip(shapes, flops)) / seconds,
                          "step_s": per_shape,
                          "compile_s": sum(first[v.name, i] - 2 * per_shape[i] for i in range(len(batches)))}
    return result


def report(name: str, shapes: list, result: dict, peak: float) -> None:
    clips = " + ".join(f"{B}x{T}x{h}x{w}" for (B, T, h, w), _ in shapes)
    print(f"\n{name}: latents {clips if len(shapes) < 4 else f'{len(shapes)} buckets'}")
    print("| variant | tokens/s | model TFLOP/s | MFU | step s (median) | compile s | vs before |")
    print("|---|---|---|---|---|---|---|")
    base = result["before"]["tokens_per_s"]
    for v in VARIANTS:
        r = result[v]
        step = "/".join(f"{s:.3f}" for s in r["step_s"][:3]) + ("/..." if len(r["step_s"]) > 3 else "")
        print(f"| {v} | {r['tokens_per_s']:.0f} | {r['flop_per_s'] / 1e12:.4f} | {r['flop_per_s'] / peak:.3f} | "
              f"{step} | {r['compile_s']:.1f} | {r['tokens_per_s'] / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="half the token budget, 2 runs of 1 step")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch's choice)")
    parser.add_argument("--preset", default="cpu-medium", help="DiT preset (the bundle's: cpu-medium)")
    parser.add_argument("--runs", type=int, default=0, help="timed repetitions (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=0, help="steps per timed repetition (default 2, quick 1)")
    parser.add_argument("--tokens", type=int, default=0, help="DiT tokens per step (default 2560 CPU, 81920 CUDA)")
    parser.add_argument("--mix", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the bundle's 12-bucket mix (default: on with CUDA)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.runs = args.runs or (2 if args.quick else 5)
    args.steps = args.steps or (1 if args.quick else 2)
    tokens = args.tokens or (81920 if device.type == "cuda" else 2560) // (2 if args.quick else 1)
    mix = device.type == "cuda" if args.mix is None else args.mix
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True)
    print(f"torch {torch.__version__}, {args.device} ({torch.cuda.get_device_name() if device.type == 'cuda' else cpu.stdout.strip() or platform.processor()}), "
          f"threads {torch.get_num_threads()}, preset {args.preset}, {tokens} tokens a step, {args.runs} runs x {args.steps} steps")

    torch.manual_seed(0)
    model = DiT(DiTConfig.preset(args.preset, in_channels=LATENT_CHANNELS, text_dim=TEXT_DIM)).to(device)
    with torch.no_grad():  # off the zero init, so no branch runs on special values
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    peak = gemm_peak(device, args.quick)
    print(f"bf16 GEMM peak (measured): {peak / 1e12:.4f} TFLOP/s")
    main_shape = bucket_shapes(False, tokens, model.config.patch)
    result = measure(model, main_shape, args, device)
    report("64x64x17 clips", main_shape, result, peak)
    if mix:
        mix_shapes = bucket_shapes(True, tokens, model.config.patch)
        report("bucket mix, weighted by odds", mix_shapes, measure(model, mix_shapes, args, device), peak)
    fast = result["fast"]
    print(f"SUMMARY speedup={fast['tokens_per_s'] / result['before']['tokens_per_s']:.2f} "
          f"tokens_per_s={fast['tokens_per_s']:.0f} mfu={fast['flop_per_s'] / peak:.3f}")


if __name__ == "__main__":
    main()
