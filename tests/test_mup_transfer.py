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
    rows = {tuple(line.split(" | ")[:2]): line for line in out.splitlines() if line.startswith("| 32 |")
            or line.startswith("| 64 |")}
    assert set(rows) == {("| 32", "standard"), ("| 32", "mup"), ("| 64", "standard"), ("| 64", "mup")}
    assert rows[("| 32", "standard")].split(" | ")[2:] == rows[("| 32", "mup")].split(" | ")[2:]
    loss = results["w64-mup-lr0.001"]["val_loss"]
    assert f"{loss:.4f}" in rows[("| 64", "mup")]
    summary = out.splitlines()[-1]
    assert summary.startswith("SUMMARY base_lr=") and "mup_cost=" in summary
    # Finished cells are read back, not trained again: the same table, no training output.
    rc, again, err = mup_transfer("--quick", "--root", str(root), "--threads", "1", cwd=tmp_path)
    assert rc == 0 and again.splitlines()[-1] == summary and "cell width" not in again
    # A base width that is not the narrowest cannot anchor the transfer table.
    rc, _, err = mup_transfer("--widths", "64", "256", "--base", "256", "--root", str(root), cwd=tmp_path)
    assert rc != 0 and "--base 256: must be the narrowest" in err
