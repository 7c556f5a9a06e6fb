"""Training throughput of sequence packing vs size bucketing alone, same run.

    PYTHONPATH=. python benchmarks/packing.py               # 5 repetitions, ~2-4 minutes on 1 thread
    PYTHONPATH=. python benchmarks/packing.py --reps 2 --draws 4   # quick look

Workload: the cpu-small DiT (8 latent channels, the bundled VAE's) on the mixed buckets the
bundled model was trained on: sizes 64x64 (x2), 80x48, 48x80 and frames 17 (x3), 9, 1, 33, i.e.
what ``videodit train --sizes ... --frames ... --tokens-per-batch B`` draws. One fixed, seeded list
of bucket draws is trained on both ways:
  bucketing: one draw per step, its batch holding ~B tokens (``bucket_plan`` without --pack);
  packing:   ``--pack N`` draws per step, each batch holding ~B/N tokens, run as one sequence
             (``DiT.forward_packed``).
So both see the same buckets in the same proportions and about B tokens per step. A step is
forward + backward under bf16 autocast (no optimizer: it costs the same per token both ways).
The two modes alternate within each repetition so machine load hits both alike; clips/s and
tokens/s are medians over repetitions, from wall time and from process CPU time (which other
processes on a shared machine disturb less).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/dit.py

import torch  # noqa: E402

from videodit.dit import DiT, DiTConfig  # noqa: E402
from videodit.train.dit import DiTTrainConfig, bucket_plan  # noqa: E402

SIZES = ("64x64", "64x64", "80x48", "48x80")
FRAMES = (17, 17, 17, 9, 1, 33)
LATENT_CHANNELS, VAE_STRIDE, TEXT_LEN, TEXT_DIM = 8, 4, 24, 384


def make_batch(key, batch: int, gen: torch.Generator):
    w, h, f = key
    T = (f - 1) // 4 + 1
    x = torch.randn(batch, LATENT_CHANNELS, T, h // VAE_STRIDE, w // VAE_STRIDE, generator=gen)
    return x, torch.rand(batch, T, generator=gen)


def step(model, batches, text, mask, packed: bool) -> None:
    xs, ts = [b[0] for b in batches], [b[1] for b in batches]
    with torch.autocast("cpu", torch.bfloat16):
        if packed:
            vs = model.forward_packed(xs, ts, text, mask)
        else:
            vs = [model(xs[0], ts[0], text, mask)]
    loss = sum(v.float().square().mean() for v in vs)
    loss.backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    p.add_argument("--pack", type=int, default=2)
    p.add_argument("--draws", type=int, default=12, help="bucket draws per repetition (a multiple of --pack)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DiT(DiTConfig.preset("cpu-small", in_channels=LATENT_CHANNELS))
    for prm in model.parameters():  # random weights everywhere (zero-init layers would skip work)
        torch.nn.init.normal_(prm, std=0.02)
    patch = model.config.patch
    plans = {}
    for name, pack in (("bucketing", 0), ("packing", args.pack)):
        cfg = DiTTrainConfig(sizes=SIZES, frames=FRAMES, tokens_per_batch=args.tokens_per_batch, pack=pack)
        plans[name] = bucket_plan(cfg, VAE_STRIDE, patch)
    keys = list(plans["bucketing"])
    odds = torch.tensor([plans["bucketing"][k].odds for k in keys])
    gen = torch.Generator().manual_seed(0)
    draws = [keys[i] for i in torch.multinomial(odds, args.draws, replacement=True, generator=gen)]

    # Every step's inputs, built once: (batches, text, mask, clips, tokens).
    steps = {}
    for name, per_step in (("bucketing", 1), ("packing", args.pack)):
        steps[name] = []
        for i in range(0, len(draws), per_step):
            batches = [make_batch(k, plans[name][k].batch, gen) for k in draws[i:i + per_step]]
            clips = sum(b[0].shape[0] for b in batches)
            tokens = sum(plans[name][k].tokens * plans[name][k].batch for k in draws[i:i + per_step])
            text = torch.randn(clips, TEXT_LEN, TEXT_DIM, generator=gen)
            steps[name].append((batches, text, torch.ones(clips, TEXT_LEN, dtype=torch.bool), clips, tokens))

    for name in steps:  # warm-up: every shape once (RoPE tables, oneDNN kernels)
        for batches, text, mask, _, _ in steps[name]:
            step(model, batches, text, mask, name == "packing")
    results = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(args.reps):
        for name in steps:
            w0, c0 = time.perf_counter(), time.process_time()
            for batches, text, mask, _, _ in steps[name]:
                step(model, batches, text, mask, name == "packing")
            results[name]["wall"].append(time.perf_counter() - w0)
            results[name]["cpu"].append(time.process_time() - c0)

    print(f"cpu-small ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), {args.threads} thread(s), "
          f"budget {args.tokens_per_batch} tokens/step, pack {args.pack}, {len(draws)} draws x {args.reps} reps")
    print("| mode | steps | clips | tokens/step (mean) | clips/s wall | tokens/s wall | clips/s CPU | tokens/s CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for name in steps:
        clips = sum(s[3] for s in steps[name])
        tokens = sum(s[4] for s in steps[name])
        wall, cpu = statistics.median(results[name]["wall"]), statistics.median(results[name]["cpu"])
        print(f"| {name} | {len(steps[name])} | {clips} | {tokens / len(steps[name]):.0f} | {clips / wall:.2f} | "
              f"{tokens / wall:.0f} | {clips / cpu:.2f} | {tokens / cpu:.0f} |")
    print("runs (s wall): " + "; ".join(f"{n} " + " ".join(f"{v:.2f}" for v in r["wall"]) for n, r in results.items()))


if __name__ == "__main__":
    main()
