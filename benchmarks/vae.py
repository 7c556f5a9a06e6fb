"""VAE speed, memory and quality on this machine.

    python benchmarks/vae.py                       # the bundled VAE (or --preset for an untrained one)
    python benchmarks/vae.py --threads 2 --runs 5 --quality 64 --real clip.mp4 --json out.json

Speed: encode (+ --refine steps of encode-time refinement) + decode of one clip (bf16 autocast,
batch 1), median wall time over --runs after one warm-up, reported as frames per second, at
64x64x17 and 256x256x17.
Memory: peak resident memory above the loaded model of encode + decode of 65 frames at 256x256,
one-shot vs chunked (--chunk-frames), each measured in a fresh child process.
Quality (--quality N): mean PSNR / SSIM and the evaluator's colour / shape / count accuracy on N
held-out SynthWorld clips (eval split, 64x64x17); --real: PSNR / SSIM on the first 17 frames of a
real video (centre-cropped to 256x256 when larger).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SPEED_SHAPES = ((17, 64, 64), (17, 256, 256))  # (frames, height, width)
MEMORY_SHAPE = (65, 256, 256)


def load_vae(args):
    import torch

    from videodit.reconstruct import DEFAULT_BUNDLE
    from videodit.vae import PRESETS, VideoVAE

    torch.set_num_threads(args.threads)
    if args.preset:
        return VideoVAE(PRESETS[args.preset]).eval(), f"preset {args.preset} (untrained)"
    path = Path(args.model) if args.model else DEFAULT_BUNDLE
    return VideoVAE.from_pretrained(path), str(path)


def speed(vae, runs: int, refine: int = 0) -> list[dict]:
    import torch

    rows = []
    for frames, h, w in SPEED_SHAPES:
        x = torch.rand(1, 3, frames, h, w) * 2 - 1
        enc, ref, dec = [], [], []
        with torch.no_grad():
            vae.decode(vae.refine(x, vae.encode(x), min(refine, 1)))  # warm-up (allocator, oneDNN kernels)
            for _ in range(runs):
                t0 = time.perf_counter()
                z = vae.encode(x)
                t1 = time.perf_counter()
                z = vae.refine(x, z, refine)
                t2 = time.perf_counter()
                vae.decode(z)
                t3 = time.perf_counter()
                enc.append(t1 - t0)
                ref.append(t2 - t1)
                dec.append(t3 - t2)
        e, r, d = statistics.median(enc), statistics.median(ref), statistics.median(dec)
        rows.append({"shape": f"{frames}x{h}x{w}", "encode_s": e, "refine_steps": refine, "refine_s": r,
                     "decode_s": d, "encode_decode_fps": frames / (e + r + d)})
    return rows


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def memory_child(args) -> None:
    """Runs in a fresh process: print peak RSS growth (MB) of one encode + decode."""
    import torch

    vae, _ = load_vae(args)
    frames, h, w = MEMORY_SHAPE
    x = torch.rand(1, 3, frames, h, w) * 2 - 1
    chunk = args.chunk_frames if args.memory_child == "chunked" else None
    base = _rss_mb()
    with torch.no_grad():
        vae.decode(vae.encode(x, chunk_frames=chunk), chunk_frames=chunk)
    print(json.dumps({"peak_mb_above_model": _rss_mb() - base}))


def memory(args) -> dict:
    out = {}
    for mode in ("one_shot", "chunked"):
        cmd = [sys.executable, __file__, "--memory-child", mode, "--threads", str(args.threads),
               "--chunk-frames", str(args.chunk_frames)]
        cmd += ["--preset", args.preset] if args.preset else (["--model", args.model] if args.model else [])
        runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
                           .splitlines()[-1])["peak_mb_above_model"] for _ in range(args.memory_runs)]
        out[mode] = statistics.median(runs)
    return out


def real_video(vae, path: str, refine: int = 0) -> dict:
    from videodit.reconstruct import reconstruct_frames, ssim
    from videodit.video import psnr, read_video

    clip = read_video(path, max_frames=17).frames
    _, H, W, _ = clip.shape
    side = min(256, H, W)
    y0, x0 = (H - side) // 2, (W - side) // 2
    clip = clip[:, y0:y0 + side, x0:x0 + side]
    out, _, _ = reconstruct_frames(vae, clip, refine=refine)
    return {"video": path, "shape": "x".join(map(str, clip.shape[:3])), "psnr": psnr(clip, out),
            "ssim": ssim(clip, out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="VAE bundle (default: the bundled one)")
    p.add_argument("--preset", default=None, help="benchmark an untrained preset instead of a bundle")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per shape (default: 5)")
    p.add_argument("--memory-runs", type=int, default=3, help="child processes per memory mode (default: 3)")
    p.add_argument("--chunk-frames", type=int, default=16, help="frames per chunk in chunked mode (default: 16)")
    p.add_argument("--quality", type=int, default=0, help="also evaluate N held-out SynthWorld clips")
    p.add_argument("--real", default=None, help="also report PSNR / SSIM on this real video")
    p.add_argument("--refine", type=int, default=0,
                   help="steps of encode-time refinement (VideoVAE.refine) in the speed, quality and real-video "
                        "rows (default: 0, the encoder alone; `videodit reconstruct` uses 5)")
    p.add_argument("--skip-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--json", default=None, help="write the results here as JSON")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args)
        return

    import torch

    vae, source = load_vae(args)
    result = {"model": source, "threads": args.threads, "torch": torch.__version__,
              "params_m": sum(q.numel() for q in vae.parameters()) / 1e6, "refine": args.refine,
              "speed": speed(vae, args.runs, args.refine)}
    for row in result["speed"]:
        refined = f"refine x{args.refine} {row['refine_s']:.3f} s  " if args.refine else ""
        print(f"{row['shape']:>12}: encode {row['encode_s']:.3f} s  {refined}decode {row['decode_s']:.3f} s  "
              f"-> {row['encode_decode_fps']:.1f} frames/s (encode{'+refine' if args.refine else ''}+decode)")
    if not args.skip_memory:
        result["memory_65x256x256_mb"] = mem = memory(args)
        print(f"peak memory, 65x256x256 encode+decode: one-shot {mem['one_shot']:.0f} MB, "
              f"chunked ({args.chunk_frames} frames) {mem['chunked']:.0f} MB (above the loaded model)")
    if args.quality:
        from videodit.eval.reconstruction import evaluate_reconstruction

        result["quality"] = q = evaluate_reconstruction(vae, args.quality, progress=True, refine=args.refine)
        print(f"SynthWorld eval x{q['clips']}: PSNR {q['psnr']:.2f} dB (min {q['psnr_min']:.2f})  "
              f"SSIM {q['ssim']:.4f} (min {q['ssim_min']:.4f})  colour {q['recon_color']:.3f}  "
              f"shape {q['recon_shape']:.3f}  count {q['recon_count']:.3f}  "
              f"(originals: {q['truth_color']:.3f} / {q['truth_shape']:.3f} / {q['truth_count']:.3f})")
    if args.real:
        result["real"] = r = real_video(vae, args.real, args.refine)
        print(f"real video {r['video']} ({r['shape']}): PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
