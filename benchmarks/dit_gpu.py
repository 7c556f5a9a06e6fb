"""videodit's DiT against diffusers' WanTransformer3DModel at Wan 2.1 T2V-1.3B's shape, same run.

    PYTHONPATH=. python benchmarks/dit_gpu.py --device cuda            # the Wan-1.3B shape (a GPU)
    PYTHONPATH=. python benchmarks/dit_gpu.py --device cpu --shape small

Both models hold the same random weights (diffusers' model made first, its state dict mapped
into videodit's DiT by videodit/interop/wan.py), fp32 parameters, run under bf16 autocast: the
precision policy of videodit (docs/DESIGN.md) applied to both. Cases:
- forward: 480p x 81 frames, latents (16, 21, 60, 104) = 32,760 tokens, batch 1, no grad;
- train:   480p x 17 frames, latents (16, 5, 60, 104) = 7,800 tokens, forward + backward.
Text: 512 tokens x 4096 (Wan's padded UMT5 embedding), all attended. ``--shape small`` keeps
the structure at a size a CPU runs in seconds (dim 256, 4 blocks, 512 text tokens x 256).
Ours and the peer alternate within each repetition. Reported: median seconds, peer / ours,
max |ours - peer| of the output (bf16 rounding, not a bug: fp32 agreement is tests/test_wan.py's),
and on CUDA the peak memory of each. Needs diffusers (the ``bench`` or ``wan`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # benchmarks/dit.py: passive OpenMP on shared CPUs

import torch  # noqa: E402

from videodit.dit import PRESETS, DiT  # noqa: E402
from videodit.interop import wan  # noqa: E402

warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")  # diffusers' RMSNorm

TEXT_TOKENS = 512
SHAPES = {
    # (peer config, forward latent (T, h, w), train latent (T, h, w))
    "wan-1.3b": (dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096),
                 (21, 60, 104), (5, 60, 104)),
    "small": (dict(num_attention_heads=4, attention_head_dim=64, ffn_dim=1024, num_layers=4, text_dim=256),
              (5, 16, 24), (2, 16, 24)),
}


def build(shape: str, device: torch.device):
    from diffusers import WanTransformer3DModel

    cfg = dict(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6) | SHAPES[shape][0]
    torch.manual_seed(0)
    peer = WanTransformer3DModel(**cfg)
    dit_cfg = wan.dit_config({"_class_name": wan.TRANSFORMER_CLASS, **cfg}, shape)
    if shape == "wan-1.3b":
        assert dit_cfg == PRESETS["wan-1.3b"]
    ours = DiT(dit_cfg)
    ours.load_state_dict(wan.dit_state(peer.state_dict(), dit_cfg))
    return ours.to(device).eval(), peer.to(device).eval(), dit_cfg


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=tuple(s for s in SHAPES), default=None,
                        help="wan-1.3b (default on CUDA) or small (default on CPU)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case and model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per case and model first")
    parser.add_argument("--cases", nargs="+", default=["forward", "train"], choices=("forward", "train"))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = args.shape or ("wan-1.3b" if device.type == "cuda" else "small")
    ours, peer, cfg = build(shape, device)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, TEXT_TOKENS, cfg.text_dim, generator=g).to(device)
    mask = torch.ones(1, TEXT_TOKENS, dtype=torch.bool, device=device)
    t = torch.tensor([0.7], device=device)
    autocast = torch.autocast(device.type, torch.bfloat16)

    def call(model, x, train):
        with autocast:
            out = ours(x, t, text, mask) if model is ours else peer(x, t * 1000, text, return_dict=False)[0]
        if train:
            out.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
        return out

    results = []
    for case in args.cases:
        train = case == "train"
        T, h, w = SHAPES[shape][2 if train else 1]
        x = torch.randn(1, 16, T, h, w, generator=g).to(device)
        tokens = T * (h // 2) * (w // 2)
        times = {"ours": [], "peer": []}
        peak = {}
        outs = {}
        for rep in range(args.warmup + args.runs):
            for name, model in (("ours", ours), ("peer", peer)):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                t0 = time.perf_counter()
                with torch.set_grad_enabled(train):
                    out = call(model, x, train)
                sync(device)
                if rep >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
                if device.type == "cuda":
                    peak[name] = torch.cuda.max_memory_allocated(device) / 2**30
                outs[name] = out.detach().float()
                del out
        diff = (outs["ours"] - outs["peer"]).abs().max().item()
        row = dict(case=case, tokens=tokens, ours_s=statistics.median(times["ours"]),
                   peer_s=statistics.median(times["peer"]), max_abs_diff=diff, peak_gib=peak or None)
        row["peer_over_ours"] = row["peer_s"] / row["ours_s"]
        results.append(row)
        print(f"{case:8s} {tokens:6d} tokens  ours {row['ours_s']:.3f} s  peer {row['peer_s']:.3f} s  "
              f"peer/ours {row['peer_over_ours']:.2f}  max|diff| {diff:.3g}"
              + (f"  peak GiB ours {peak['ours']:.1f} peer {peak['peer']:.1f}" if peak else ""), flush=True)
        del outs
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"shape {shape}, {machine}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(shape=shape, device=machine, torch=torch.__version__, results=results), f, indent=2)


if __name__ == "__main__":
    main()
