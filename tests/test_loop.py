"""The one training loop (videodit/train/loop.py): exact resume after kill -9, checkpoint
integrity and fallback, the divergence guard, logs without replayed rows."""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from videodit.cli import main
from videodit.errors import VideoditError
from videodit.train import loop
from videodit.train.checkpoint import previous_path, read_checkpoint, save_checkpoint

STEPS = 10


def _train_args(out, vae, steps=STEPS, *extra) -> list[str]:
    return ["train", "--preset", "tiny", "--vae", str(vae), "--out", str(out), "--steps", str(steps),
            "--batch-size", "2", "--sizes", "32x32", "--frames", "5", "--sample-every", "0", "--save-every", "1",
            "--log-every", "1", "--warmup-steps", "2", "--threads", "1", "--seed", "3", *extra]


def _log_rows(out) -> list[dict]:
    with (out / "log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_run(a, b) -> None:
    ca, cb = read_checkpoint(a / "checkpoint.pt", "dit"), read_checkpoint(b / "checkpoint.pt", "dit")
    assert ca["step"] == cb["step"] == STEPS
    for part in ("model", "ema"):
        for k, v in ca[part].items():
            assert torch.equal(v, cb[part][k]), f"{part}.{k} differs"
    for k, v in ca["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], cb["optimizer"]["state"][k]["exp_avg_sq"]), f"optimizer {k} differs"
    rows_a, rows_b = _log_rows(a), _log_rows(b)
    assert [r["step"] for r in rows_b] == [str(s) for s in range(1, STEPS + 1)], "a step is logged twice or missing"
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["grad_norm"] for r in rows_a] == [r["grad_norm"] for r in rows_b]


def test_kill_9_at_random_points_resumes_bit_identically(tmp_path, tiny_vae):
    """Real `videodit train` processes, killed with SIGKILL at random moments (mid-step, mid-save,
    mid-log), resumed until they finish: the loss curve and the final weights equal an
    uninterrupted run's bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    assert main(_train_args(straight, tiny_vae)) == 0

    cmd = [sys.executable, "-m", "videodit.cli", *_train_args(tmp_path / "killed", tiny_vae)]
    rng = random.Random(int(os.environ.get("VIDEODIT_FUZZ_SEED", "0")))
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 3:
            log = tmp_path / "killed" / "log.csv"
            target = rng.randint(1, STEPS - 2)
            while proc.poll() is None:  # wait until the run has logged a few more steps, then a random moment more
                if log.exists() and len(log.read_text().splitlines()) - 1 >= target:
                    time.sleep(rng.uniform(0.0, 0.5))
                    break
                time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
    assert proc.returncode == 0 and kills >= 2, f"{kills} kills"
    _assert_same_run(straight, tmp_path / "killed")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_vae, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(_train_args(straight, tiny_vae)) == 0
    assert main(_train_args(run, tiny_vae, 4)) == 0
    ckpt = run / "checkpoint.pt"
    assert read_checkpoint(previous_path(ckpt), "dit")["step"] == 3  # the last two are kept
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2: len(data) // 2 + 256] = bytes(256)  # 256 overwritten bytes
    ckpt.write_bytes(bytes(data))
    with pytest.raises(VideoditError, match="checkpoint.pt: checksum mismatch"):
        read_checkpoint(ckpt, "dit")
    with pytest.warns(UserWarning, match=r"checksum mismatch.*resuming from checkpoint.prev.pt \(step 3\)"):
        assert main(_train_args(run, tiny_vae)) == 0
    _assert_same_run(straight, run)


def test_both_checkpoints_corrupt_is_a_one_line_error(tmp_path, tiny_vae, capsys):
    run = tmp_path / "run"
    assert main(_train_args(run, tiny_vae, 3)) == 0
    for path in (run / "checkpoint.pt", previous_path(run / "checkpoint.pt")):
        path.write_bytes(path.read_bytes()[:1000])
    capsys.readouterr()
    assert main(_train_args(run, tiny_vae)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt: checksum mismatch" in err[0] and "checkpoint.prev.pt" in err[0]
    assert "weights_only" not in err[0]


def test_divergence_stops_with_exit_2_and_never_saves_non_finite_weights(tmp_path, tiny_vae, capsys):
    run = tmp_path / "run"
    assert main(_train_args(run, tiny_vae, 40, "--lr", "1e8", "--warmup-steps", "0")) == 2
    err = capsys.readouterr().err
    assert "lower --lr" in err.strip().splitlines()[-1] and "rollback 1 of" in err
    from safetensors.torch import load_file

    for path in (run / "checkpoint.pt", previous_path(run / "checkpoint.pt")):
        if path.exists():
            payload = read_checkpoint(path, "dit")  # verifies checksum and finite values
            assert all(torch.isfinite(v).all() for v in payload["model"].values())
    if (run / "bundle").exists():
        for k, v in load_file(run / "bundle" / "dit" / "model.safetensors").items():
            assert torch.isfinite(v).all(), k


def test_save_refuses_and_read_rejects_non_finite_states(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    with pytest.raises(VideoditError, match=r"model.weight holds NaN"):
        save_checkpoint(tmp_path / "c.pt", kind="dit", step=1, data_position=1, config={}, model=model)
    assert not (tmp_path / "c.pt").exists()
    # A file that holds NaN (written around the check) is refused on load, naming the tensor.
    with torch.no_grad():
        model.weight[0, 0] = 0.0
    path = save_checkpoint(tmp_path / "c.pt", kind="dit", step=1, data_position=1, config={}, model=model)
    payload = torch.load(path, weights_only=True)
    payload["model"]["bias"][0] = math.inf
    torch.save(payload, path)
    with pytest.raises(VideoditError, match="checksum mismatch"):
        read_checkpoint(path, "dit")
    with pytest.raises(VideoditError, match=r"model.bias holds NaN or inf"):
        read_checkpoint(path, "dit", verify=False)


def test_guard_rolls_back_on_nan_and_gives_up_after_max_rollbacks():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    modules = {"model": model, "optimizer": opt}
    guard = loop.DivergenceGuard(warmup_steps=0)
    guard.take_snapshot(0, modules)
    good = model.weight.detach().clone()
    for i in range(1, loop.MAX_ROLLBACKS + 1):
        with torch.no_grad():
            model.weight.add_(1.0)
        message = guard.observe(i, math.nan, modules)
        assert message and "restored the weights of step 0" in message
        assert torch.equal(model.weight, good) and guard.lr_scale == 0.5 ** i
    with pytest.raises(loop.TrainingDiverged, match="lower --lr"):
        guard.observe(loop.MAX_ROLLBACKS + 1, math.inf, modules)
    assert loop.DivergenceGuard(0, guard.state()).rollbacks == loop.MAX_ROLLBACKS + 1  # survives a checkpoint


def test_guard_rolls_back_a_blown_up_loss_and_lets_a_noisy_one_be():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    modules = {"model": model, "optimizer": opt}
    guard = loop.DivergenceGuard(warmup_steps=10)
    rng = np.random.default_rng(0)
    for step in range(1, loop.GUARD_SNAPSHOT_EVERY + 1):  # a healthy, noisy, falling loss never trips it
        assert guard.observe(step, 1.0 / step**0.2 * rng.uniform(0.7, 1.3), modules) is None
    good = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(5.0)  # a bad update ...
    message = guard.observe(loop.GUARD_SNAPSHOT_EVERY + 1, 50.0, modules)  # ... and the loss explodes
    message = message or guard.observe(loop.GUARD_SNAPSHOT_EVERY + 2, 50.0, modules)
    assert message and "restored the weights of step 200" in message
    assert torch.equal(model.weight, good) and guard.lr_scale == 0.5


def test_csv_log_truncate_drops_replayed_and_cut_rows(tmp_path):
    log = loop.CsvLog(tmp_path / "log.csv", ("step", "loss"))
    for s in range(1, 6):
        log.write({"step": s, "loss": 0.1 * s})
    with log.path.open("a") as f:
        f.write("6,0.")  # a row cut short by a kill
    log.truncate(3)
    assert log.path.read_text().splitlines() == ["step,loss", "1,0.1", "2,0.2", "3,0.30000000000000004"]


def test_schedule_warms_up_then_decays_to_a_tenth():
    class Cfg:
        lr, warmup_steps, steps = 1.0, 10, 110

    assert loop.lr_at(0, Cfg) == pytest.approx(0.1)
    assert loop.lr_at(10, Cfg) == pytest.approx(1.0)
    assert loop.lr_at(110, Cfg) == pytest.approx(0.1)
    assert loop.lr_at(20, Cfg, time_fraction=1.0) == pytest.approx(0.1)  # the time budget spent
