"""Load on `videodit serve`: N concurrent clients of the real ``openai`` SDK on loopback, each
creating, polling and downloading videos; then every job is accounted for.

    PYTHONPATH=. python benchmarks/serve_load.py                       # bundled model, 8 clients x 2 videos
    PYTHONPATH=. python benchmarks/serve_load.py --tiny --clients 16 --videos 4   # API overhead: a random tiny model
    PYTHONPATH=. python benchmarks/serve_load.py --workers 2 --time-limit 120

The server runs as its own process (`videodit serve`) on a fresh data folder. Bounded: every
client makes at most --videos videos and starts none after --time-limit seconds. Checks: every
created id completes once (none failed, lost or listed twice), every mp4 decodes with the
requested frame count. Reports the latency from create to completed (p50 / p95), the latency of
the create request itself, and throughput (videos per minute over the whole run).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks its Videos API deprecated


def tiny_bundle(path: Path) -> Path:
    import torch

    from videodit.dit import DiT, DiTConfig
    from videodit.pipeline import BundleConfig, Pipeline
    from videodit.sample import SamplerConfig
    from videodit.text import TextEncoder, TextEncoderConfig
    from videodit.vae import PRESETS, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(PRESETS["tiny"])
    text = TextEncoder(TextEncoderConfig())
    dit = DiT(DiTConfig.preset("tiny", in_channels=vae.cfg.latent_channels, text_dim=text.dim))
    return Pipeline(vae, dit, text, BundleConfig(sampler=SamplerConfig(steps=4), size=(32, 32), frames=9)).save(path)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model bundle (default: the bundled model)")
    ap.add_argument("--tiny", action="store_true", help="a random tiny model instead: measures the server, not the model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--videos", type=int, default=2, help="videos per client")
    ap.add_argument("--workers", type=int, default=1, help="the server's --workers")
    ap.add_argument("--time-limit", type=float, default=300, help="no client starts a video after this many seconds")
    ap.add_argument("--threads", type=int, default=2, help="OMP threads of the server process")
    args = ap.parse_args()

    import av
    import httpx
    from openai import OpenAI

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    model = str(tiny_bundle(tmp / "tiny")) if args.tiny else args.model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "videodit.cli", "serve", "--port", str(port), "--data", str(tmp / "data"),
           "--workers", str(args.workers), "--max-queue", str(args.clients * args.videos + 1)]
    if model:
        cmd += ["--model", f"videodit={model}"]
    server = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    try:
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)

        latencies, create_ms, created, problems = [], [], [], []
        lock = threading.Lock()
        start = time.perf_counter()

        def client(i: int) -> None:
            c = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=600)
            for j in range(args.videos):
                if time.perf_counter() - start > args.time_limit:
                    return
                t0 = time.perf_counter()
                video = c.videos.create(prompt=f"A red ball bounces on a black background. ({i}.{j})",
                                        extra_body={"seed": i * 100 + j})
                t1 = time.perf_counter()
                with lock:
                    created.append(video.id)
                    create_ms.append(1000 * (t1 - t0))
                video = c.videos.poll(video.id, poll_interval_ms=100)
                t2 = time.perf_counter()
                data = c.videos.download_content(video.id).content
                with av.open(io.BytesIO(data)) as f:
                    frames = sum(1 for _ in f.decode(video=0))
                expected = round(float(video.seconds) * 8) + 1 if args.tiny else None
                with lock:
                    latencies.append(t2 - t0)
                    if video.status != "completed":
                        problems.append(f"{video.id}: {video.status} {video.error}")
                    elif expected and frames != expected:
                        problems.append(f"{video.id}: {frames} frames, expected {expected}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start

        c = OpenAI(base_url=f"{base}/v1", api_key="unused")
        listed = [v.id for v in c.videos.list(limit=100)]
        statuses = [v.status for v in c.videos.list(limit=100)]
        lost = sorted(set(created) - set(listed))
        duplicated = len(listed) - len(set(listed))
        extra = sorted(set(listed) - set(created))
    finally:
        server.terminate()
        server.wait(30)

    n = len(latencies)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; model: "
          f"{'random tiny (32x32, 9 frames, 4 steps)' if args.tiny else (model or 'bundled')}; "
          f"server --workers {args.workers}, {args.threads} OMP threads; {args.clients} clients x {args.videos} videos\n")
    print("| videos | completed | failed | lost | duplicated | p50 s | p95 s | create p50 ms | create p95 ms | videos/min | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {n} | {statuses.count('completed')} | {statuses.count('failed')} | {len(lost)} | {duplicated + len(extra)} "
          f"| {percentile(latencies, 0.5):.2f} | {percentile(latencies, 0.95):.2f} | {statistics.median(create_ms):.0f} "
          f"| {percentile(create_ms, 0.95):.0f} | {60 * n / wall:.1f} | {wall:.1f} |")
    for p in problems:
        print("problem:", p)
    ok = not problems and not lost and not duplicated and not extra and statuses.count("completed") == len(created)
    print(f"SUMMARY videos={n} lost={len(lost)} duplicated={duplicated + len(extra)} p50_s={percentile(latencies, 0.5):.2f} "
          f"p95_s={percentile(latencies, 0.95):.2f} per_min={60 * n / wall:.1f} ok={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
