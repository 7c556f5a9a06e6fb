"""Scale-out (videodit/train/distributed.py, the loop, the SP path of videodit/dit.py) on the CPU
with gloo and two processes: the same loss curve as one process at the same global batch, FSDP2
= DDP, sequence parallelism = one rank (forward and backward), save on 2 -> resume on 1 and on 1 ->
resume on 2 (with two learning-rate groups), a killed
rank ends the job and a rerun resumes. The VAE trainer: 2 processes (DDP, FSDP2) follow one
process's curve and resume on one; the divergence guard rolls sharded states back on every rank
and a run that keeps diverging exits 2 on every rank; periodic samples under FSDP2 do not hang.

Tolerances (measured with these tiny runs, bf16 autocast): the logged losses agree to the 6
digits log.csv keeps; the final weights differ by ~1e-4 at most (bf16 matmuls of a 2-clip and a
4-clip batch round differently). Sequence parallelism: forward and gradients agree within 1e-5
(fp32) of one rank. The VAE (its decoder runs bf16 autocast): losses within 8e-5 relative, final
weights within 1.5e-4."""

from __future__ import annotations

import csv
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

RUN = ["--device", "cpu", "--preset", "tiny", "--batch-size", "4", "--sizes", "32x32", "--frames", "5",
       "--sample-every", "0", "--log-every", "1", "--warmup-steps", "2", "--save-every", "2", "--threads", "1"]
WEIGHT_TOLERANCE = 5e-4  # final bundle weights, 1 vs 2 processes (measured 1.2e-4)
LOSS_TOLERANCE = 1e-5    # relative, per logged step (measured: equal to log.csv's 6 digits)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _videodit(out, vae, *extra, procs: int = 1, steps: int = 4, timeout: int = 300) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "videodit"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-port", str(_port()),
        "-m", "videodit"]
    cmd = launch + ["train", *RUN, "--vae", str(vae), "--out", str(out), "--steps", str(steps), *extra]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(out) -> list[float]:
    with open(out / "log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def _weights(out) -> dict:
    from safetensors.torch import load_file
    return load_file(out / "bundle" / "dit" / "model.safetensors")


def _assert_close(a, b):
    assert len(_losses(a)) == len(_losses(b))
    for x, y in zip(_losses(a), _losses(b)):
        assert abs(x - y) <= LOSS_TOLERANCE * abs(x), (_losses(a), _losses(b))
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    diff = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert diff < WEIGHT_TOLERANCE, diff


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_vae):
    """One process, two with DDP and two with FSDP2: 4 steps at a global batch of 4."""
    root = tmp_path_factory.mktemp("scale")
    _videodit(root / "one", tiny_vae)
    _videodit(root / "ddp", tiny_vae, procs=2)
    _videodit(root / "fsdp", tiny_vae, "--parallel", "fsdp", procs=2)
    return root


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(runs):
    _assert_close(runs / "one", runs / "ddp")
    # several processes write distributed checkpoints: the newest and the previous, checksummed
    for name in ("checkpoint.dcp", "checkpoint.prev.dcp"):
        assert (runs / "ddp" / name / "SHA256SUMS").is_file()
    assert not (runs / "ddp" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_fsdp_equals_ddp(runs):
    _assert_close(runs / "ddp", runs / "fsdp")


@pytest.mark.slow
def test_save_on_two_resume_on_one_gives_the_same_next_steps(runs, tiny_vae, tmp_path):
    """The FSDP run's sharded checkpoint of step 4, resumed by one process, trains steps 5-6 as the
    one-process run resumed from its own checkpoint does."""
    for name in ("fsdp", "one"):
        shutil.copytree(runs / name, tmp_path / name)
        result = _videodit(tmp_path / name, tiny_vae, steps=6)
        assert "resumed from" in result.stdout and "at step 4" in result.stdout
    _assert_close(tmp_path / "one", tmp_path / "fsdp")
    assert (tmp_path / "fsdp" / "checkpoint.pt").is_file()  # one process writes the single-file format


@pytest.mark.slow
def test_one_process_checkpoint_resumes_under_fsdp_with_mup_learning_rates(tiny_vae, tmp_path):
    """A one-process run with --mup-base-dim (two parameter groups) stopped at step 2 and resumed by
    two FSDP2 processes follows the one-process run to step 4: the single-file optimizer state
    lands on the right parameters of each group."""
    mup = ("--mup-base-dim", "16")
    _videodit(tmp_path / "one", tiny_vae, *mup)
    _videodit(tmp_path / "fsdp", tiny_vae, *mup, steps=2)
    result = _videodit(tmp_path / "fsdp", tiny_vae, *mup, "--parallel", "fsdp", procs=2)
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    _assert_close(tmp_path / "one", tmp_path / "fsdp")


def test_corrupt_distributed_checkpoint_falls_back_to_the_previous(tmp_path):
    """The DCP folder's checksums are verified; a damaged newest falls back to the previous one."""
    import torch.nn as nn

    from videodit.errors import VideoditError
    from videodit.train import distributed as D

    torch.manual_seed(0)
    model, ema = nn.Linear(4, 3), nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    for step in (2, 4):
        D.save_dcp(tmp_path, rank=0, world=1, device=torch.device("cpu"), model=model, optimizer=opt, ema=ema,
                   meta={"kind": "dit", "step": step, "config": {}, "extra": {}})
    assert D.latest_dcp(tmp_path, "dit")[0]["step"] == 4
    shard = next((tmp_path / D.DCP_DIR).glob("*.distcp"))
    shard.write_bytes(b"\0" * 64 + shard.read_bytes()[64:])
    with pytest.warns(Warning, match="checksum mismatch"):
        meta, used = D.latest_dcp(tmp_path, "dit")
    assert meta["step"] == 2 and used.name == D.DCP_PREV_DIR
    fresh, fresh_ema = nn.Linear(4, 3), nn.Linear(4, 3)
    D.load_dcp(used, model=fresh, optimizer=torch.optim.AdamW(fresh.parameters()), ema=fresh_ema)
    assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh_ema.weight, ema.weight)
    with pytest.raises(VideoditError, match="not saved"):
        model.weight.data[0, 0] = float("nan")
        D.save_dcp(tmp_path, rank=0, world=1, device=torch.device("cpu"), model=model, optimizer=opt, ema=ema,
                   meta={"kind": "dit", "step": 6, "config": {}, "extra": {}})


def _sp_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from videodit.dit import DiT, DiTConfig, SequenceParallel, enable_sequence_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    cfg = DiTConfig.preset("tiny", heads=4)
    ref = DiT(cfg)
    for p in ref.parameters():  # zero-init layers would hide errors in the gradients
        torch.nn.init.normal_(p, std=0.2)
    sp = DiT(cfg)
    sp.load_state_dict(ref.state_dict())
    enable_sequence_parallel(sp, SequenceParallel(dist.group.WORLD, rank, 2))
    x = torch.randn(2, 4, 3, 8, 8)  # (B, c, T, h, w): 16 tokens per frame, 8 per rank
    t = torch.rand(2, 3)
    text, mask = torch.randn(2, 5, cfg.text_dim), torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()
    weight = torch.randn_like(x)
    results = []
    for model in (ref, sp):
        v = model(x, t, text, mask)
        (v * weight).sum().backward()
        results.append((v.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (v_ref, g_ref), (v_sp, g_sp) = results
    # Each rank's gradients hold its tokens' part, times the group size (see _GatherTokens):
    # their mean over the group (what DDP / FSDP take) is the one-rank gradient.
    for g in g_sp.values():
        dist.all_reduce(g)
        g /= 2
    queue.put((rank, (v_sp - v_ref).abs().max().item(),
               max(((g_sp[n] - g_ref[n]).abs().max() / g_ref[n].abs().max().clamp_min(1e-12)).item() for n in g_ref)))
    dist.destroy_process_group()


def test_sequence_parallel_equals_one_rank_forward_and_backward():
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_sp_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for rank, forward, backward in out:
        assert forward < 1e-5, (rank, forward)
        assert backward < 1e-5, (rank, backward)


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_a_rerun_resumes(tmp_path, tiny_vae):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
           "-m", "videodit", "train", *RUN, "--vae", str(tiny_vae), "--out", str(out), "--steps", "200",
           "--dist-timeout", "0.5"]
    job = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.dcp").exists():
        assert job.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.5)
    # rank 1: the torchrun child whose environment says RANK=1
    children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    rank1 = next(int(c) for c in children if b"RANK=1\0" in open(f"/proc/{c}/environ", "rb").read())
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    job.wait(timeout=120)
    assert job.returncode != 0
    assert time.monotonic() - killed < 60  # torchrun stops the survivors; a hang would take the timeout
    result = _videodit(out, tiny_vae, "--dist-timeout", "0.5", procs=2, steps=12)
    assert "resumed from" in result.stdout
    steps = [int(row.split(",")[0]) for row in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 13))  # no step logged twice


# -- periodic samples under FSDP2 --------------------------------------------------------------


@pytest.mark.slow
def test_fsdp_samples_on_rank_0_without_hanging_the_others(tmp_path, tiny_vae):
    """--sample-every under FSDP: every rank gathers the EMA to rank 0, which samples while the
    others wait in the next step's collectives; a hang would end the job after --dist-timeout."""
    out = tmp_path / "run"
    start = time.monotonic()
    _videodit(out, tiny_vae, "--parallel", "fsdp", "--sample-every", "2", "--sample-prompts", "1",
              "--sample-steps", "1", "--dist-timeout", "0.5", procs=2)
    assert time.monotonic() - start < 120
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000002", "step_000004"]
    rows = (out / "eval.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]


# -- the VAE trainer ---------------------------------------------------------------------------

# Crops, --crop-focus windows and posterior noise all on: each is drawn for the global batch.
VAE_RUN = ["--device", "cpu", "--preset", "tiny", "--batch-size", "4", "--width", "32", "--height", "32",
           "--frames", "9", "--crop-size", "16", "--crop-frames", "5", "--crop-focus", "--stats-batches", "1",
           "--log-every", "1", "--warmup-steps", "2", "--save-every", "2", "--threads", "1"]
VAE_LOSS_TOLERANCE = 2e-4  # relative (measured 8e-5; draws made per rank were 3e-4 .. 5e-3 off)


def _train_vae(out, *extra, procs: int = 1, steps: int = 4) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "videodit"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-port", str(_port()),
        "-m", "videodit"]
    cmd = launch + ["train-vae", *VAE_RUN, "--out", str(out), "--steps", str(steps), *extra]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _vae_close(a, b):
    with open(a / "log.csv") as fa, open(b / "log.csv") as fb:
        rows_a, rows_b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "l1", "kl", "psnr"):
            x, y = float(ra[key]), float(rb[key])
            same_nan = math.isnan(x) and math.isnan(y)  # a step the guard skipped
            assert same_nan or abs(x - y) <= VAE_LOSS_TOLERANCE * abs(x), (key, rows_a, rows_b)
    from safetensors.torch import load_file
    wa, wb = (load_file(d / "bundle" / "model.safetensors") for d in (a, b))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < WEIGHT_TOLERANCE


@pytest.fixture(scope="module")
def vae_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_scale")
    _train_vae(root / "one")
    _train_vae(root / "ddp", procs=2)
    _train_vae(root / "fsdp", "--parallel", "fsdp", procs=2)
    return root


@pytest.mark.slow
def test_vae_two_processes_follow_the_one_process_loss_curve(vae_runs):
    _vae_close(vae_runs / "one", vae_runs / "ddp")
    _vae_close(vae_runs / "one", vae_runs / "fsdp")
    assert (vae_runs / "fsdp" / "checkpoint.dcp" / "SHA256SUMS").is_file()


@pytest.mark.slow
def test_vae_fsdp_checkpoint_resumes_on_one_process(vae_runs, tmp_path):
    for name in ("fsdp", "one"):
        shutil.copytree(vae_runs / name, tmp_path / name)
        result = _train_vae(tmp_path / name, steps=6)
        assert "resumed from" in result.stdout and "at step 4" in result.stdout
    _vae_close(tmp_path / "one", tmp_path / "fsdp")


# -- the divergence guard under FSDP2 -----------------------------------------------------------


def _guard_worker(rank: int, world: int, port: int, out: str, nan_from: int, nan_to: int, queue) -> None:
    """One rank of a `videodit train-vae` run whose loss is NaN at step indices [nan_from, nan_to),
    snapshots every 3 steps; puts (rank, exit code) and saves this rank's full model state to
    OUT/rank{rank}.pt when the run ends."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from videodit.cli import main
    from videodit.train import loop
    from videodit.train.distributed import local
    from videodit.train.vae import VAETask

    loop.GUARD_SNAPSHOT_EVERY = 3  # a snapshot with optimizer state, older than the NaN step
    step, run = VAETask.step, loop.run

    def nan_step(self, net, x, i, gen, lr):
        result = step(self, net, x, i, gen, lr)
        if nan_from <= i < nan_to:
            result = loop.StepResult(result.loss * math.nan, result.monitor * math.nan, result.logs)
        return result

    def keep_state(cfg, task, dist, progress=True):
        path = run(cfg, task, dist, progress)
        full = get_model_state_dict(task.model, options=StateDictOptions(full_state_dict=True))  # every rank
        torch.save({k: v.detach().cpu() for k, v in full.items()}, f"{out}/rank{rank}.pt")
        return path

    observe = loop.DivergenceGuard.observe

    def checked_observe(self, i, loss, modules):  # after a rollback: this rank's shards = the snapshot's
        message = observe(self, i, loss, modules)
        if message:
            restored = all(_same(local(m.state_dict()), local(self.snapshot["states"][n])) for n, m in modules.items())
            with open(f"{out}/restored{rank}", "a") as f:
                f.write(f"{i} {restored}\n")
        return message

    VAETask.step, loop.run, loop.DivergenceGuard.observe = nan_step, keep_state, checked_observe
    rc = main(["train-vae", *VAE_RUN, "--out", out, "--steps", "8", "--dist-timeout", "0.5"]
              + (["--parallel", "fsdp"] if world > 1 else []))
    queue.put((rank, rc))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _guard_run(out, world: int, nan_from: int, nan_to: int) -> list:
    ctx = torch.multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), _port()
    procs = [ctx.Process(target=_guard_worker, args=(r, world, port, str(out), nan_from, nan_to, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = sorted((queue.get(timeout=180) for _ in procs), key=lambda r: r[0])
    finally:
        for p in procs:
            p.join(60)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0] * world
    return results


@pytest.mark.slow
def test_fsdp_rollback_restores_sharded_states_on_every_rank(tmp_path, capfd):
    """A NaN loss at step 5 under FSDP2 restores the sharded model, EMA and AdamW state of step 3
    (the snapshot) and halves the lr: the run then follows one process doing the same, and every
    rank ends with the same weights."""
    one = _guard_run(tmp_path / "one", 1, 4, 5)
    two = _guard_run(tmp_path / "two", 2, 4, 5)
    assert "restored the weights of step 3, learning rate x0.5 (rollback 1 of 4)" in capfd.readouterr().err
    assert [rc for _, rc in one + two] == [0, 0, 0]
    for rank in (0, 1):  # model, EMA and AdamW shards equal the snapshot's right after the rollback
        assert (tmp_path / "two" / f"restored{rank}").read_text() == "5 True\n"
    ref, rank0, rank1 = (torch.load(tmp_path / run / f"rank{r}.pt") for run, r in (("one", 0), ("two", 0), ("two", 1)))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert max((ref[k] - rank0[k]).abs().max().item() for k in ref) < WEIGHT_TOLERANCE
    with open(tmp_path / "two" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[4]["grad_norm"] == "nan"
    from videodit.train.loop import lr_at
    from videodit.train.vae import VAETrainConfig
    cfg = VAETrainConfig(steps=8, warmup_steps=2)
    assert float(rows[5]["lr"]) == pytest.approx(0.5 * lr_at(5, cfg), rel=1e-3)
    _vae_close(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_fsdp_run_that_keeps_diverging_exits_2_on_every_rank(tmp_path, capfd):
    start = time.monotonic()
    results = _guard_run(tmp_path / "run", 2, 2, 10**9)
    assert [rc for _, rc in results] == [2, 2]
    for rank in (0, 1):  # four rollbacks on every rank, each restoring the snapshot, then the stop
        assert (tmp_path / "run" / f"restored{rank}").read_text() == "".join(f"{i} True\n" for i in (3, 4, 5, 6))
    assert time.monotonic() - start < 120
    err = capfd.readouterr().err
    assert "after 4 rollbacks" in err and "lower --lr" in err
    assert not (tmp_path / "run" / "bundle").exists()
