"""Fine-tuning cost on this machine: full fine-tuning of the bundled DiT against LoRA adapters,
same run, same data, same batch. Each variant is a real `videodit train --init bundled` process
(so peak memory is that process's own); the step time is the median over the logged steps after
the first few (warm-up of kernels and caches).

    python benchmarks/finetune.py --steps 12 --batch-size 8 --threads 2 --lora 8 --runs 3
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 3  # first logged steps left out of the median


def run_once(out: Path, args, lora: int) -> float:
    """Median seconds per step of one training process."""
    cmd = [sys.executable, "-m", "videodit.cli", "train", "--init", "bundled", "--out", str(out),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
           "--sample-every", "0", "--save-every", "100000", "--log-every", "1", "--no-resume", "--warmup-steps", "1"]
    if lora:
        cmd += ["--lora", str(lora)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    with (out / "log.csv").open(newline="") as f:
        rates = [float(r["it_per_s"]) for r in csv.DictReader(f)][SKIP:]
    return statistics.median(1 / r for r in rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lora", type=int, default=8, help="adapter rank of the LoRA variant")
    p.add_argument("--runs", type=int, default=3, help="alternating runs of each variant")
    args = p.parse_args()
    times: dict[str, list[float]] = {"full": [], f"lora {args.lora}": []}
    peaks: dict[str, list[float]] = {k: [] for k in times}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):  # alternating, so drifts of a noisy machine hit both alike
            for name, lora in (("full", 0), (f"lora {args.lora}", args.lora)):
                times[name].append(run_once(Path(tmp) / f"{name}-{i}", args, lora))
        for name, lora in ((f"lora {args.lora}", args.lora), ("full", 0)):
            peaks[name].append(_peak_alone(args, lora, Path(tmp) / f"peak-{lora}"))
    full = statistics.median(times["full"])
    print(f"bundled DiT, batch {args.batch_size} 64x64x17, {args.threads} threads, {args.runs} runs x "
          f"{args.steps} steps (median step time; peak RSS of the training process)")
    for name in times:
        step = statistics.median(times[name])
        print(f"  {name:8s} {step:.3f} s/step ({full / step:.2f}x full's speed), peak {peaks[name][0]:.2f} GiB")


def _peak_alone(args, lora: int, out: Path) -> float:
    """Peak RSS (GiB) of one short training process, measured by a fresh interpreter (the
    RUSAGE_CHILDREN peak is the largest of all children so far, so each gets its own parent)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cmd = [sys.executable, "-m", "videodit.cli", "train", "--init", "bundled", "--out", str(out), "--steps", "3",
           "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--sample-every", "0",
           "--save-every", "100000", "--no-resume"] + (["--lora", str(lora)] if lora else [])
    kib = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    return int(kib.split()[-1]) / 2**20


if __name__ == "__main__":
    main()
