"""Fused attention (scaled_dot_product_attention) against the explicit softmax(q k^T) v, without
gradients, at the bundled DiT's sampling sizes: which path is cheaper at short sequences.

    python benchmarks/attention.py                      # 5 heads of 64, 320 tokens, text 33 keys
    python benchmarks/attention.py --tokens 1280 --batch 2 --threads 2

Rows: self-attention (tokens x tokens) and cross-attention to the text (tokens x text keys, with a
mask), at batch 1 (a conditional step) and --batch (a guided step), bf16 on the CPU. Medians of
--runs repetitions of 10 calls each, the two paths alternating. Its last line:
    SUMMARY fused_over_explicit=<median time ratio over the rows; < 1: the fused kernel is faster>
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def explicit(q, k, v, mask=None):
    s = q @ k.transpose(-1, -2)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(dim=-1) @ v


def timed(fn, calls: int = 10) -> float:
    a = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - a) / calls * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=320)
    ap.add_argument("--text", type=int, default=33, help="text keys (32 tokens + the null token)")
    ap.add_argument("--heads", type=int, default=5)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print("| attention | batch | keys | fused ms | explicit ms | fused / explicit |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for batch in sorted({1, args.batch}):
        for name, keys in (("self", args.tokens), ("cross", args.text)):
            q = torch.randn(batch, args.heads, args.tokens, args.head_dim, generator=g).bfloat16()
            k, v = (torch.randn(batch, args.heads, keys, args.head_dim, generator=g).bfloat16() for _ in range(2))
            mask = None
            if name == "cross":  # a prompt of 20 tokens, padding masked out, the null token kept
                mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
                mask[..., 20:keys - 1] = False
            fused_ms, explicit_ms = [], []
            with torch.no_grad():
                for _ in range(args.runs):
                    fused_ms.append(timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)))
                    explicit_ms.append(timed(lambda: explicit(q, k, v, mask)))
            a, b = statistics.median(fused_ms), statistics.median(explicit_ms)
            ratios.append(a / b)
            print(f"| {name} | {batch} | {keys} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)
    print(f"SUMMARY fused_over_explicit={statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
