"""benchmarks/mup_transfer.py: a learning-rate sweep at two widths, with one learning rate and with
muP's, read back from finished cells into the transfer table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "mup_transfer.py"


def mup_transfer(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent)}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stdout, done.stderr


def test_quick_sweep_trains_each_cell_once_and_tabulates_the_transfer(tmp_path):
    root = tmp_path / "speedrun" / "mup"
    rc, out, err = mup_transfer("--quick", "--root", str(root), "--threads", "1", cwd=tmp_path)
    assert rc == 0, err[-3000:]
    cells = sorted(p.name for p in root.iterdir())
    # At the base width muP is the standard run: 2 lrs x (width 32 once, width 64 twice).
    assert cells == ["w32-standard-lr0.001", "w32-standard-lr0.004", "w64-mup-lr0.001", "w64-mup-lr0.004",
                     "w64-standard-lr0.001", "w64-standard-lr0.004"]
    results = {name: json.loads((root / name / "result.json").read_text()) for name in cells}
    assert all(r["val_loss"] > 0 and r["steps"] == 4 for r in results.values())
    assert results["w64-mup-lr0.004"]["val_loss"] != results["w64-standard-lr0.004"]["val_loss"]
    rows = {tuple(line.split(" | ")[:2]): line for line in out.split("text gap after")[0].splitlines()
            if line.startswith("| 32 |") or line.startswith("| 64 |")}
    assert set(rows) == {("| 32", "standard"), ("| 32", "mup"), ("| 64", "standard"), ("| 64", "mup")}
    assert rows[("| 32", "standard")].split(" | ")[2:] == rows[("| 32", "mup")].split(" | ")[2:]
    loss = results["w64-mup-lr0.001"]["val_loss"]
    assert f"{loss:.4f}" in rows[("| 64", "mup")]
    summary = out.splitlines()[-1]
    assert summary.startswith("SUMMARY base_lr=") and "mup_cost=" in summary and "text_mup_lr=" in summary
    # The text gap of every cell (empty captions' val loss minus the captions'), in a second table.
    gap = results["w64-mup-lr0.001"]["val_loss_empty"] - loss
    gaps = [line for line in out.split("text gap after")[1].splitlines() if line.startswith("| 64 | mup |")]
    assert len(gaps) == 1 and f"{gap:.4f}" in gaps[0]
    # Finished cells are read back, not trained again: the same table, no training output.
    rc, again, err = mup_transfer("--quick", "--root", str(root), "--threads", "1", cwd=tmp_path)
    assert rc == 0 and again.splitlines()[-1] == summary and "cell width" not in again
    # A base width that is not the narrowest cannot anchor the transfer table.
    rc, _, err = mup_transfer("--widths", "64", "256", "--base", "256", "--root", str(root), cwd=tmp_path)
    assert rc != 0 and "--base 256: must be the narrowest" in err


def test_a_cell_the_guard_gives_up_on_is_recorded_as_diverged(tmp_path, monkeypatch, capsys):
    """A learning rate too high for a width ends in TrainingDiverged: the cell is kept as diverged
    (not retrained, not a crash of the sweep) and the table says so, as it names rollbacks."""
    import argparse
    import importlib.util
    import math

    import videodit.train.dit
    from videodit.train.loop import TrainingDiverged

    spec = importlib.util.spec_from_file_location("mup_transfer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def diverge(cfg):
        raise TrainingDiverged("loss nan at step 3, after 4 rollbacks")
    monkeypatch.setattr(videodit.train.dit, "train_dit", diverge)
    args = argparse.Namespace(root=str(tmp_path / "speedrun" / "mup"), budget="quick", threads=1, device="cpu",
                              base=32, steps=4, widths=[32, 64], lrs=[1e-3, 4e-3], seed=0)
    result = module.cell(args, 64, "mup", 4e-3)
    assert math.isinf(result["val_loss"]) and "rollbacks" in result["diverged"]
    assert math.isinf(module.cell(args, 64, "mup", 4e-3)["val_loss"])  # read back, not trained again
    losses = {(32, "standard"): {1e-3: 0.9, 4e-3: 0.8}, (32, "mup"): {1e-3: 0.9, 4e-3: 0.8},
              (64, "standard"): {1e-3: 0.7, 4e-3: 0.75}, (64, "mup"): {1e-3: 0.6, 4e-3: math.inf}}
    rollbacks = {row: {1e-3: 0, 4e-3: 0} for row in losses}
    rollbacks[(64, "standard")][4e-3] = 2
    gaps = {row: {1e-3: 0.02, 4e-3: 0.01} for row in losses}
    gaps[(64, "mup")][4e-3] = math.nan  # a diverged cell has no text gap
    module.table(args, losses, rollbacks, {"depth": 2, "head_dim": 32}, gaps)
    out = capsys.readouterr().out
    assert "| 64 | mup | **0.6000** | diverged | 0.001 | +inf |" in out
    assert "| 64 | standard | **0.7000** | 0.7500 (2) | 0.001 | +0.0500 |" in out
    assert "rolled back n times" in out
    assert "| 64 | mup | **0.0200** | - | 0.001 |" in out
    assert out.splitlines()[-1] == ("SUMMARY base_lr=0.004 standard_lr=0.001 mup_lr=0.001 standard_cost=0.0500 "
                                    "mup_cost=inf text_base_lr=0.001 text_standard_lr=0.001 text_mup_lr=0.001")
