"""benchmarks/speedrun.py: the fixed-budget protocol sizes each recipe's steps from its own FLOPs,
trains, measures, and compares runs paired."""

from __future__ import annotations

import importlib.util
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
    assert all(run["val_loss_empty"] > 0 for run in (base, tread))
    # Given frames are left out of the loss: the conditioned losses are their own numbers.
    assert all(0 < run[k] != run["val_loss"] for run in (base, tread) for k in ("val_loss_animate", "val_loss_extend"))
    assert f"| val loss, animate / extend | {base['val_loss_animate']:.4f} / {base['val_loss_extend']:.4f} |" in table
    gap = base["val_loss_empty"] - base["val_loss"]
    assert f"| text gap | {gap:.4f} |" in table
    # The same pair twice as two "seeds": each seed's difference and the pooled one agree.
    pair = f"{root / 'quick-baseline'},{root / 'quick-tread'}"
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in
            speedrun("pooled", pair, pair, cwd=tmp_path).splitlines()}
    mean = rows["| mean"]
    assert mean[0] == mean[1] and mean[0].split()[0] == mean[2].split()[0]
    assert rows["| val loss"][0] == f"{tread['val_loss']:.4f} vs {base['val_loss']:.4f}"
    # An existing bundle measured as a reference column: the baseline's own bundle measures the same.
    out = speedrun("measure", str(root / "quick-baseline" / "bundle"), "--name", "ref", "--flops", "1e12",
                   "--steps", "10", "--root", str(root), "--threads", "1", "--prompts", "4", cwd=tmp_path)
    ref = json.loads((root / "ref" / "speedrun.json").read_text())
    assert "RESULT ref val_loss=" in out and ref["val_loss"] == base["val_loss"] and ref["step_flops"] == 10 ** 11
    assert ref["score"] == base["score"]
    table = speedrun("table", str(root / "ref"), str(root / "quick-baseline"), cwd=tmp_path)
    assert "| FLOPs | 1e+12 |" in table and "+0.000 [+0.00, +0.00]" in table
    # revalue recomputes both val losses of a finished run the same way.
    (root / "ref" / "speedrun.json").write_text(json.dumps({k: v for k, v in ref.items() if k != "val_loss_empty"}))
    speedrun("revalue", str(root / "ref"), "--threads", "1", cwd=tmp_path)
    again = json.loads((root / "ref" / "speedrun.json").read_text())
    assert again.keys() == ref.keys() and again["score"] == ref["score"]
    assert all(abs(again[k] - ref[k]) < 1e-4 * ref[k]
               for k in ("val_loss", "val_loss_empty", "val_loss_animate", "val_loss_extend"))


def test_a_seed_replicate_trains_the_same_budget_on_its_own_cache(tmp_path):
    """--seed N: the same recipe and steps under another seed, and a latent cache of its own (seed 0's
    clips are not seed N's)."""
    spec = importlib.util.spec_from_file_location("speedrun", SCRIPT)
    speedrun_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speedrun_module)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cfg0, flops0 = speedrun_module.train_config("baseline", "quick", tmp_path / "a")
    cfg1, flops1 = speedrun_module.train_config("baseline", "quick", tmp_path / "b", seed=1)
    assert (cfg0.seed, cfg1.seed) == (0, 1) and flops0 == flops1 and cfg0.steps == cfg1.steps
    (tmp_path / "latents-16-b4.pt").write_bytes(b"seed 0")
    speedrun_module.link_cache(cfg1, tmp_path, keep=False)
    assert not (tmp_path / "b" / "latents-rank0.pt").exists()
    (tmp_path / "b" / "latents-rank0.pt").write_bytes(b"seed 1")
    speedrun_module.link_cache(cfg1, tmp_path, keep=True)
    assert (tmp_path / "latents-16-b4-s1.pt").read_bytes() == b"seed 1"


def test_a_bucket_mix_counts_each_buckets_flops_by_its_share_and_caches_apart(tmp_path):
    """A recipe with an image bucket next to the clips: a step's FLOPs are each bucket's step
    averaged over the buckets' shares, and its latent cache is not the one-bucket recipes'."""
    import dataclasses
    spec = importlib.util.spec_from_file_location("speedrun", SCRIPT)
    speedrun_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speedrun_module)
    cfg = speedrun_module.recipe_config("baseline", "quick", tmp_path)
    one = {f: speedrun_module.step_flops(dataclasses.replace(cfg, frames=(f,))) for f in (1, 5)}
    assert 0 < one[1] < one[5]
    mixed = speedrun_module.step_flops(dataclasses.replace(cfg, frames=(5, 5, 5, 1)))
    assert abs(mixed - (0.75 * one[5] + 0.25 * one[1])) < 1e-6 * mixed
    (tmp_path / "run").mkdir()
    mix = dataclasses.replace(cfg, out=str(tmp_path / "run"), frames=(17, 1), tokens_per_batch=1280)
    (tmp_path / "run" / "latents-rank0.pt").write_bytes(b"images")
    speedrun_module.link_cache(mix, tmp_path, keep=True)
    assert (tmp_path / "latents-16-b4-f17-1-t1280.pt").read_bytes() == b"images"
    assert not (tmp_path / "latents-16-b4.pt").exists()
