"""benchmarks/speedrun.py: the fixed-budget protocol sizes each recipe's steps from its own FLOPs,
trains, measures, and compares runs paired."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "speedrun.py"


def speedrun(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent)}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_quick_budget_runs_two_recipes_and_pairs_them(tmp_path):
    root = tmp_path / "runs"
    for recipe in ("baseline", "tread"):
        out = speedrun("run", recipe, "--budget", "quick", "--root", str(root), "--threads", "1", "--prompts", "4",
                       cwd=tmp_path)
        assert f"RESULT {recipe} val_loss=" in out
    base, tread = (json.loads((root / f"quick-{r}" / "speedrun.json").read_text()) for r in ("baseline", "tread"))
    for run in (base, tread):
        assert run["steps"] == int(run["budget_flops"] // run["step_flops"])
        assert run["val_loss"] > 0 and len(json.loads((root / f"quick-{run['recipe']}" / "eval.json").read_text())
                                              ["videos"]) == 4
    # Routing half the tokens past the middle block computes less a step, so it gets more steps.
    assert tread["step_flops"] < base["step_flops"] and tread["steps"] > base["steps"]
    # The two recipes shared one latent cache, hard-linked.
    assert (root / "quick-tread" / "latents-rank0.pt").stat().st_ino == (root / "quick-baseline" / "latents-rank0.pt").stat().st_ino
    table = speedrun("table", str(root / "quick-baseline"), str(root / "quick-tread"), cwd=tmp_path)
    assert "| val loss |" in table and "| mean |" in table and table.count("[") >= 12
