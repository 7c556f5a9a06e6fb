"""How DiT step time and memory grow with video length and size.

    PYTHONPATH=. python benchmarks/scaling.py            # cpu-small and s, every shape below
    PYTHONPATH=. python benchmarks/scaling.py --quick    # cpu-small only, 1 warm-up + 2 runs, a few minutes

Latents follow the bundled s4c8 VAE (videodit/assets/bundle/vae): spatial stride 4, temporal
stride 4 (F = 4k + 1 frames -> k + 1 latent frames), 8 channels; the DiT patch is 1x2x2. So
17 frames at 64x64 are a 5x16x16 latent and 5 * 8 * 8 = 320 tokens. Shapes: frames 17, 33, 65
at 64x64, and sizes 64, 128, 256 at 17 frames (320 to 5120 tokens).

Per shape, in a fresh process (so its peak RSS is the shape's own):
  sampling step  one guided Euler step at batch 1: the DiT forward on the [cond; uncond] batch
                 of 2, bf16 autocast, no_grad, text K/V precomputed (as videodit.sample does)
  training step  batch 1: forward under bf16 autocast, flow loss, backward, AdamW step
Random weights (timing does not depend on them), 32 text tokens. A shape whose peak RSS,
extrapolated from the smaller shapes of the same preset (linearly; see fit_rss), would
pass --mem-gib is skipped and only its estimate printed. Last line:
    SUMMARY <preset>_<frames>f<size>_{sample,train}_ms=<x> ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the videodit command does (videodit/cli.py)

VAE_STRIDE, VAE_TSTRIDE, LATENT_CHANNELS = 4, 4, 8  # the bundled s4c8 VAE
TEXT_LEN, TEXT_DIM = 32, 384  # the bundled text encoder's max_length and width
SHAPES = [(17, 64), (33, 64), (65, 64), (17, 128), (17, 256)]  # (frames, square size)


def latent(frames: int, size: int) -> tuple[int, int, int]:
    return (frames - 1) // VAE_TSTRIDE + 1, size // VAE_STRIDE, size // VAE_STRIDE


def tokens(frames: int, size: int) -> int:
    T, h, w = latent(frames, size)
    return T * (h // 2) * (w // 2)  # patch 1x2x2


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(preset: str, frames: int, size: int, warmup: int, runs: int) -> dict:
    """One shape in this process: step times (s) and peak RSS (MB) after each part."""
    import torch

    from videodit.dit import DiT, DiTConfig
    from videodit.flow import flow_loss

    torch.manual_seed(0)
    dit = DiT(DiTConfig.preset(preset, in_channels=LATENT_CHANNELS, text_dim=TEXT_DIM))
    with torch.no_grad():  # non-zero weights everywhere (the model zero-initialises its output layers)
        for p in dit.parameters():
            p.normal_(0, 0.02)
    base = rss_mb()
    T, h, w = latent(frames, size)
    x = torch.randn(1, LATENT_CHANNELS, T, h, w)
    text = torch.randn(1, TEXT_LEN, TEXT_DIM)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool)
    autocast = torch.autocast("cpu", torch.bfloat16)

    # Sampling: the guided step's DiT call on [x; x] with [text; empty] (videodit.sample).
    text2 = torch.cat([text, torch.zeros_like(text)])
    mask2 = torch.cat([mask, torch.zeros_like(mask)])
    times = []
    with torch.no_grad(), autocast:  # no_grad: autocast then casts the weights once (videodit.sample)
        kv = dit.text_kv(text2, mask2)
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            v = dit(torch.cat([x, x]), torch.full((2, T), 0.5), text_kv=kv).float()
            v_cond, v_uncond = v.chunk(2)
            x_next = x - 0.03 * (v_uncond + 4.0 * (v_cond - v_uncond))
            times.append(time.perf_counter() - t0)
    sample_s, sample_rss = statistics.median(times[warmup:]), rss_mb()
    del kv, v, x_next

    # Training: one optimiser step at batch 1.
    dit.train()
    opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
    target = torch.randn_like(x)
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        with autocast:
            pred = dit(x, torch.full((1, T), 0.5), text, mask)
        loss = flow_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return dict(tokens=tokens(frames, size), params=sum(p.numel() for p in dit.parameters()),
                sample_s=sample_s, train_s=statistics.median(times[warmup:]), base_mb=base,
                sample_rss_mb=sample_rss, train_rss_mb=rss_mb())


def fit_rss(points: list[tuple[int, float]], n: int) -> float:
    """Peak RSS (MB) at n tokens, on the line through the two largest (tokens, MB) points. Past
    videodit.dit.EXPLICIT_ATTENTION_MAX_SCORES every attention is the fused kernel, whose memory is
    linear in tokens; below it CPU training stores score matrices (quadratic), so the line through
    two smaller shapes is steeper than the truth there: an over-estimate, the safe side."""
    (n0, m0), (n1, m1) = sorted(points)[-2:]
    return m1 + (m1 - m0) / (n1 - n0) * (n - n1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cpu-small only, 1 warm-up and 2 timed runs")
    parser.add_argument("--presets", default=None, help="comma-separated DiT presets (default cpu-small,s)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per step (default 3, quick 2)")
    parser.add_argument("--mem-gib", type=float, default=6.0,
                        help="skip a shape whose estimated peak RSS passes this (GiB; the machine is shared)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: PRESET,FRAMES,SIZE,WARMUP,RUNS -> JSON
    args = parser.parse_args()
    if args.one:
        preset, frames, size, warmup, runs = args.one.split(",")
        print(json.dumps(measure(preset, int(frames), int(size), int(warmup), int(runs))))
        return

    presets = (args.presets or ("cpu-small" if args.quick else "cpu-small,s")).split(",")
    runs = args.runs or (2 if args.quick else 3)
    warmup = 1
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
                      platform.processor())
    mem_total = next(int(line.split()[1]) / 2**20 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  cpu: {model_name}  {os.cpu_count()} CPUs  "
          f"{mem_total:.1f} GiB  threads {torch.get_num_threads()}  torch {torch.__version__}  "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  load {os.getloadavg()[0]:.2f}")
    print(f"# median of {runs} after {warmup} warm-up; sampling = guided step (DiT at batch 2), training = batch 1")
    print(f"{'preset':<10}{'frames':>7}{'size':>6}{'latent':>10}{'tokens':>7}{'sample ms':>11}{'train ms':>10}"
          f"{'train us/tok':>13}{'RSS sample':>11}{'RSS train':>10}  load")
    summary = []
    for preset in presets:
        sample_pts, train_pts, done = [], [], []
        for frames, size in sorted(SHAPES, key=lambda s: tokens(*s)):
            n = tokens(frames, size)
            lat = "x".join(map(str, latent(frames, size)))
            if len(train_pts) >= 2:
                est = fit_rss(train_pts, n)
                if est > args.mem_gib * 1024:
                    print(f"{preset:<10}{frames:>7}{size:>6}{lat:>10}{n:>7}{'skipped':>11}{'':>10}{'':>13}"
                          f"{fit_rss(sample_pts, n):>9.0f}e{est:>9.0f}e  (estimated, over --mem-gib)")
                    continue
            out = subprocess.run([sys.executable, __file__, "--one", f"{preset},{frames},{size},{warmup},{runs}"],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
            if out.returncode:
                sys.exit(f"{preset} {frames}f {size}: failed\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            sample_pts.append((n, r["sample_rss_mb"]))
            train_pts.append((n, r["train_rss_mb"]))
            done.append((n, r))
            per_tok = r["train_s"] / n * 1e6
            print(f"{preset:<10}{frames:>7}{size:>6}{lat:>10}{n:>7}{r['sample_s'] * 1e3:>11.1f}"
                  f"{r['train_s'] * 1e3:>10.1f}{per_tok:>13.1f}{r['sample_rss_mb']:>10.0f}M{r['train_rss_mb']:>9.0f}M"
                  f"  {os.getloadavg()[0]:.2f}", flush=True)
            key = f"{preset}_{frames}f{size}"
            summary += [f"{key}_sample_ms={r['sample_s'] * 1e3:.1f}", f"{key}_train_ms={r['train_s'] * 1e3:.1f}"]
        # How cost grows: the exponent k in time ~ tokens^k between the smallest and largest shape run.
        if len(done) >= 2:
            (n0, a), (n1, b) = done[0], done[-1]
            k_s = math.log(b["sample_s"] / a["sample_s"]) / math.log(n1 / n0)
            k_t = math.log(b["train_s"] / a["train_s"]) / math.log(n1 / n0)
            print(f"# {preset}: {done[0][1]['params'] / 1e6:.1f} M params; {n0} -> {n1} tokens: sampling step "
                  f"x{b['sample_s'] / a['sample_s']:.1f} (~N^{k_s:.2f}), training step x{b['train_s'] / a['train_s']:.1f}"
                  f" (~N^{k_t:.2f})")
            for label, pts in (("sampling", sample_pts), ("training", train_pts)):
                (n0, m0), (n1, m1) = sorted(pts)[-2:]
                full = n1 + (mem_total * 1024 - m1) * (n1 - n0) / max(m1 - m0, 1e-9)  # tokens at MemTotal
                # The same token count as a 64x64 video (64 tokens per latent frame) or a 17-frame square one.
                frames = 4 * (full / 64 - 1) + 1
                side = 8 * (full / 5) ** 0.5
                print(f"#   {label}: {(m1 - m0) / (n1 - n0) * 1024:.0f} KiB per extra token; peak RSS reaches "
                      f"{mem_total:.0f} GiB at ~{full / 1e3:.0f}k tokens (extrapolated): ~{frames:.0f} frames at "
                      f"64x64 or 17 frames at ~{side:.0f}x{side:.0f}")
    print("SUMMARY " + " ".join(summary))


if __name__ == "__main__":
    main()
