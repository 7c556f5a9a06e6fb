"""Speed of our DiT against diffusers' WanTransformer3DModel, same shape, same run.

    PYTHONPATH=. python benchmarks/dit.py            # full: >= 5 timed runs per case after warm-up
    PYTHONPATH=. python benchmarks/dit.py --quick    # under a minute: smaller batch, fewer runs
    PYTHONPATH=. python benchmarks/dit.py --profile  # also profile our bf16 training step

Shape (both models): dim 384, 12 layers, 6 heads, FFN 1536, patch 1x2x2, 16 latent channels,
latent 5x16x16 (320 tokens per clip), text 32 tokens x 384, batch 8. Cases: inference forward and
training forward+backward, each in fp32 and under bf16 autocast. Ours and the peer are timed
alternately within each repetition so that load from other processes hits both alike.

FLOPs are counted analytically (matmuls and attention only, 2 per multiply-add; backward = 2x
forward). MFU is achieved FLOP/s over the best bf16 GEMM throughput measured in the same run on
this model's own GEMM shapes and a large square one. Needs diffusers (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
import warnings

# OpenMP threads spin while they wait by default; on a shared machine, as soon as another process
# takes a core, every parallel region then stalls (measured 5-10x slower on 2 loaded cores).
# Passive waiting keeps the comparison meaningful there. Set OMP_WAIT_POLICY=ACTIVE to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after the OpenMP setting, which is read when torch loads)

from videodit.dit import DiT, DiTConfig  # noqa: E402

# diffusers' Wan RMSNorm warns on every bf16 call that it cannot use the fused kernel.
warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")

SHAPE = dict(dim=384, depth=12, heads=6, ffn=1536, channels=16, patch=(1, 2, 2), latent=(5, 16, 16), text_len=32,
             text_dim=384)


def build_ours() -> DiT:
    s = SHAPE
    cfg = DiTConfig(in_channels=s["channels"], patch=s["patch"], dim=s["dim"], depth=s["depth"], heads=s["heads"],
                    mlp_ratio=s["ffn"] / s["dim"], text_dim=s["text_dim"])
    return DiT(cfg)


def build_peer():
    from diffusers import WanTransformer3DModel

    s = SHAPE
    return WanTransformer3DModel(
        patch_size=s["patch"], num_attention_heads=s["heads"], attention_head_dim=s["dim"] // s["heads"],
        in_channels=s["channels"], out_channels=s["channels"], text_dim=s["text_dim"], freq_dim=256,
        ffn_dim=s["ffn"], num_layers=s["depth"], cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)


def randomise(model: torch.nn.Module, seed: int) -> None:
    # The same random weights statistics in both, so neither runs on the special values of its
    # initialisation (ours is zero-initialised by design).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def forward_flops(batch: int) -> float:
    """Matmul + attention FLOPs of one forward pass (same count for both models)."""
    s = SHAPE
    D, L, c = s["dim"], s["text_len"], s["channels"]
    T, H, W = s["latent"]
    pt, ph, pw = s["patch"]
    N = (T // pt) * (H // ph) * (W // pw)
    tokens = batch * N
    patch_dim = c * pt * ph * pw
    per_block = (
        2 * tokens * D * 3 * D          # fused QKV
        + 4 * batch * N * N * D         # QK^T and PV
        + 2 * tokens * D * D            # self-attention out
        + 2 * tokens * D * D            # cross-attention Q
        + 2 * batch * L * D * 2 * D     # cross-attention K, V from the text
        + 4 * batch * N * L * D         # cross-attention QK^T and PV
        + 2 * tokens * D * D            # cross-attention out
        + 2 * 2 * tokens * D * s["ffn"]  # MLP up and down
    )
    embed = 2 * tokens * patch_dim * D * 2 + 2 * batch * L * (s["text_dim"] * D + D * D)
    return s["depth"] * per_block + embed


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak(quick: bool, device: torch.device) -> tuple[float, str]:
    """Best bf16 GEMM GFLOP/s over the model's own GEMM shapes and one large square GEMM."""
    D, F = SHAPE["dim"], SHAPE["ffn"]
    tokens = 2560
    square = 8192 if device.type == "cuda" else 2048 if quick else 4096
    shapes = [(tokens, D, 3 * D), (tokens, D, F), (tokens, F, D), (square, square, square)]
    best, best_shape = 0.0, ""
    for m, k, n in shapes:
        a = torch.randn(m, k, dtype=torch.bfloat16, device=device)
        b = torch.randn(k, n, dtype=torch.bfloat16, device=device)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10 if quick else 30):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t0)
        rate = 2 * m * k * n / statistics.median(times) / 1e9
        if rate > best:
            best, best_shape = rate, f"{m}x{k}x{n}"
    return best, best_shape


class Case:
    """One model in one mode (fp32 / bf16 autocast, inference / training), callable once per run."""

    def __init__(self, name, model, call, train: bool, bf16: bool):
        self.name, self.model, self.call, self.train, self.bf16 = name, model, call, train, bf16
        self.times: list[float] = []

    def run_once(self) -> float:
        device = next(self.model.parameters()).device
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=self.bf16)
        sync(device)
        t0 = time.perf_counter()
        if self.train:
            with autocast:
                out = self.call()
            out.float().square().mean().backward()
            self.model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast:
                self.call()
        sync(device)
        return time.perf_counter() - t0


def make_cases(batch: int, device: torch.device):
    s = SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, s["channels"], *s["latent"], generator=g).to(device)
    t = torch.rand(batch, generator=g).to(device)
    text = torch.randn(batch, s["text_len"], s["text_dim"], generator=g).to(device)
    mask = torch.ones(batch, s["text_len"], dtype=torch.bool, device=device)
    ours, peer = build_ours(), build_peer()
    randomise(ours, 1)
    randomise(peer, 1)
    ours.to(device)
    peer.to(device)

    def call_ours():
        return ours(x, t, text, mask)

    def call_peer():
        # Wan's timesteps run 0..1000; the value does not change the work.
        return peer(x, t * 1000, text, return_dict=False)[0]

    cases = []
    for train in (False, True):
        for bf16 in (False, True):
            mode = f"{'train' if train else 'infer'}-{'bf16' if bf16 else 'fp32'}"
            cases.append((Case(f"ours {mode}", ours, call_ours, train, bf16),
                          Case(f"peer {mode}", peer, call_peer, train, bf16)))
    return cases, ours, peer


def profile(case: Case) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            case.run_once()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 2, 3 timed runs: under a minute")
    parser.add_argument("--batch", type=int, default=None, help="clips per batch (default 8, quick 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per case (default 7, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per case first (default 2, quick 1)")
    parser.add_argument("--profile", action="store_true", help="print a profiler table of our bf16 training step")
    args = parser.parse_args()
    batch = args.batch or (2 if args.quick else 8)
    runs = args.runs or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
                      platform.processor())
    if device.type == "cuda":
        model_name += f"; gpu: {torch.cuda.get_device_name(device)}"
    import diffusers

    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  device: {device}  cpu: {model_name}  threads: "
          f"{torch.get_num_threads()}  torch {torch.__version__}  diffusers {diffusers.__version__}")
    print(f"# shape: {SHAPE}  batch {batch}  runs {runs} (median)  warm-up {warmup}  "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  load average {os.getloadavg()[0]:.2f}")

    cases, ours, peer = make_cases(batch, device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    print(f"# params: ours {n_ours / 1e6:.2f} M, peer {n_peer / 1e6:.2f} M")

    for pair in cases:
        for case in pair:
            for _ in range(warmup):
                case.run_once()
        for _ in range(runs):
            for case in pair:  # alternate, so background load hits both alike
                case.times.append(case.run_once())
    peak, peak_shape = gemm_peak(args.quick, device)
    print(f"# bf16 GEMM peak: {peak:.0f} GFLOP/s ({peak_shape})")

    fwd = forward_flops(batch)
    print(f"{'case':<22}{'median ms':>11}{'min ms':>9}{'GFLOP/s':>10}{'MFU':>7}")
    result = {}
    for pair in cases:
        for case in pair:
            med = statistics.median(case.times)
            flops = fwd * (3 if case.train else 1)
            rate = flops / med / 1e9
            result[case.name] = (med, rate)
            print(f"{case.name:<22}{med * 1e3:>11.1f}{min(case.times) * 1e3:>9.1f}{rate:>10.0f}{rate / peak:>7.1%}")

    def best(who, kind):
        return min((result[f"{who} {kind}-{p}"][0], p) for p in ("fp32", "bf16"))

    summary = {}
    for kind in ("infer", "train"):
        (ours_t, ours_p), (peer_t, peer_p) = best("ours", kind), best("peer", kind)
        summary[kind] = (peer_t / ours_t, result[f"ours {kind}-{ours_p}"][1] / peak)
        print(f"# {kind}: ours best {ours_p} {ours_t * 1e3:.1f} ms, peer best {peer_p} {peer_t * 1e3:.1f} ms, "
              f"speedup {peer_t / ours_t:.2f}x")
    print(f"# load average now {os.getloadavg()[0]:.2f}")
    if args.profile:
        profile(cases[3][0])
    print(f"SUMMARY speedup_infer={summary['infer'][0]:.2f} speedup_train={summary['train'][0]:.2f} "
          f"mfu_infer={summary['infer'][1]:.3f} mfu_train={summary['train'][1]:.3f}")


if __name__ == "__main__":
    main()
