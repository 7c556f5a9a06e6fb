"""Evaluator results of one model at several sizes, paired: docs/SIZES.md's table.

    for s in 64x64 80x48 48x80; do
      videodit eval --model bundled --n 60 --size $s --frames 17 --videos ev$s --json ev$s.json
    done
    python benchmarks/eval_sizes.py ev64x64.json ev80x48.json ev48x80.json

Every file must hold the same prompts with the same seeds (``eval --model`` gives video i the seed
SEED + i), so sizes compare paired: per metric, the accuracy over all videos that ask for it
(in-distribution and held-out pooled) with a bootstrap 95 % interval, and each later file's
difference from the first one with a paired bootstrap interval (1000 resamples of the prompts,
seed 0, as ``videodit eval``'s own intervals).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

METRICS = ("background", "color", "shape", "count", "motion")
RESAMPLES = 1000


def outcomes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Prompts and, per metric, (n_videos,) with 1 pass / 0 fail / NaN not asked."""
    videos = json.loads(path.read_text())["videos"]
    table = {}
    for m in METRICS:
        table[m] = np.array([np.nan if m not in v["metrics"] or v["metrics"][m]["passed"] is None
                             else float(v["metrics"][m]["passed"]) for v in videos])
    return [v["prompt"] for v in videos], table


def interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    idx = rng.integers(0, len(values), (RESAMPLES, len(values)))  # (resamples, n)
    means = np.nanmean(values[idx], axis=1)
    return float(np.nanpercentile(means, 2.5)), float(np.nanpercentile(means, 97.5))


def main(paths: list[str]) -> None:
    runs = [(Path(p).stem, *outcomes(Path(p))) for p in paths]
    base_name, base_prompts, base = runs[0]
    for name, prompts, _ in runs[1:]:
        if prompts != base_prompts:
            raise SystemExit(f"{name}: not the prompts of {base_name}; sizes compare only paired")
    header = "| metric | " + " | ".join(f"{name} (n)" for name, _, _ in runs) + " | " + \
        " | ".join(f"{name} - {base_name}" for name, _, _ in runs[1:]) + " |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for m in METRICS:
        cells, diffs = [], []
        for name, _, table in runs:
            v = table[m][~np.isnan(table[m])]
            lo, hi = interval(v, np.random.default_rng(0))
            cells.append(f"{v.mean():.2f} [{lo:.2f}, {hi:.2f}] ({len(v)})")
        for name, _, table in runs[1:]:
            both = ~np.isnan(table[m]) & ~np.isnan(base[m])
            d = table[m][both] - base[m][both]
            lo, hi = interval(d, np.random.default_rng(0))
            diffs.append(f"{d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]")
        print(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    scores = [json.loads(Path(p).read_text())["score"] for p in paths]
    print("| SCORE in_dist / heldout (all metrics) | " + " | ".join(
        f"{s['in_dist']:.3f} / {s['heldout']:.3f}" for s in scores) + " |" + " |" * (len(runs) - 1))


if __name__ == "__main__":
    main(sys.argv[1:])
