"""The one training loop. The DiT and VAE trainers (train/dit.py, train/vae.py) each plug a
``Task`` into it — their model, data and loss for one step — and the loop owns the rest:

  device and torchrun set-up (DDP or FSDP2, sequence-parallel groups: videodit/train/distributed.py)
  -> resume from the newest checkpoint that verifies (or the task's init) -> per step: a
  generator seeded by (seed, step), the same on every rank, warm-up + cosine learning rate,
  the task's loss, backward, gradient clipping, AdamW, EMA -> divergence guard -> log.csv ->
  atomic, checksummed checkpoints (the last two kept) every ``save_every`` steps / ``save_minutes``
  minutes and at the end -> the task's bundle. One process without FSDP writes the single-file
  checkpoint (videodit/train/checkpoint.py); several processes, or FSDP, write a
  torch.distributed.checkpoint folder with the same guarantees (distributed.py); a run resumes
  from whichever of the two holds the later step, on any number of processes.

Data parallel: --batch-size is the global batch. Every rank draws the random numbers of the whole
global batch from the step's generator and takes the rows of its slice, and the tasks read only
their slice of the global batch (distributed.batch_slice), so W processes train on the same
samples with the same draws as one process: the loss curves agree up to the order of the
floating-point reductions (docs/SCALING.md gives the measured difference).

Exact resume: every random draw of a step comes from that step's generator and the data restart
at the step's position, so "N steps straight" and "k steps, kill, resume, N - k steps" give the
same weights bit for bit (tests/test_loop.py kills real runs). log.csv rows after the step a run
resumes from are dropped before it goes on, so no step is logged twice.

Divergence: a NaN / inf loss or gradient norm never reaches the weights (the step is skipped),
and a smoothed loss at ``GUARD_FACTOR`` times its best is treated the same way; the guard then
restores the last healthy snapshot (model, EMA, optimizer, the task's other modules), halves the
learning rate and goes on. The host does not wait for the device every step: the guard reads the
buffered losses back on logged, snapshot and checkpoint steps (``Run.check``), so it rolls back
up to ``log_every`` steps after the divergence. After ``MAX_ROLLBACKS`` rollbacks the run stops with a clear error
(exit code 2) and the last checkpoint on disk stays the last good one. Without normalisation
layers a too-high learning rate can kill a network for good: on a GPU the VAE at lr 1e-3, batch
16 diverged at step ~600 and its posterior collapsed (KL -> 0) for the remaining 3300 steps.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Iterator, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from videodit.train import distributed as D

from videodit.device import pick_device
from videodit.errors import VideoditError
from videodit.train.checkpoint import (capture_rng, config_mismatch, previous_path, read_latest, restore,
                                       restore_rng, save_checkpoint)


class LoopSettings(Protocol):
    """The fields of a trainer's config that the loop reads (DiTTrainConfig and VAETrainConfig
    both have them)."""
    out: str
    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    ema_decay: float
    seed: int
    device: str
    threads: int
    save_every: int
    save_minutes: float
    log_every: int
    max_minutes: float
    resume: bool
    parallel: str                  # "ddp" or "fsdp" (distributed.PARALLEL)
    activation_checkpointing: bool
    dist_timeout: float            # minutes a collective may wait (a dead rank) before the job fails
    bf16: bool


@dataclass
class StepResult:
    loss: torch.Tensor     # scalar to backpropagate
    monitor: torch.Tensor  # detached scalar the divergence guard watches (often ``loss``)
    logs: dict[str, float | str] = field(default_factory=dict)  # extra log.csv columns


class Task(Protocol):
    """What a trainer plugs into the loop (see DiTTask, VAETask)."""
    kind: str                        # checkpoint kind, "dit" or "vae"
    model: nn.Module                 # the module AdamW trains (its requires_grad parameters)
    ema: nn.Module                   # its exponential moving average (what bundles hold)
    run_config: dict                 # stored in every checkpoint; run_config["model"] must match to resume
    log_fields: tuple[str, ...]      # extra log.csv columns, in order (StepResult.logs keys)
    csv_logs: tuple[str, ...]        # other per-step CSV files the task writes under out (first column: step)
    ema_warmup: int                  # EMA decay ramps up as (1 + s) / (ema_warmup + s)
    compile_shapes: int              # torch.compile the model for this many input shapes (0 = eager)

    def lr_groups(self) -> list[dict]: ...        # AdamW's parameter groups, each with "lr_scale" (x the schedule's lr)
    def extra_modules(self) -> dict: ...          # other state to checkpoint and roll back (name -> module / optimizer)
    def init(self) -> None: ...                   # start from --init when there is no checkpoint
    def batches(self, step: int) -> Iterator: ...  # the data of step ``step`` on
    def step(self, net: nn.Module, batch, step: int, gen: torch.Generator, lr: float) -> StepResult: ...
    def after_step(self, step: int, done: bool) -> None: ...  # periodic work (samples), main rank
    def on_save(self) -> None: ...                # beside each checkpoint (the DiT's bundle), main rank
    def finish(self) -> Path: ...                 # the final bundle, main rank
    def fsdp_units(self, module: nn.Module) -> list[nn.Module]: ...  # the FSDP / checkpointing units of model or EMA
    def wants_ema(self, step: int, done: bool) -> bool: ...  # after_step reads the EMA now (FSDP gathers it)


# ---------------------------------------------------------------------------------------------
# Device and torchrun
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sp: int = 1                  # ranks per sequence-parallel group (consecutive ranks)
    sp_group: object = None      # this rank's sequence-parallel process group (sp > 1)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel index: the slice of each global batch it reads."""
        return self.rank // self.sp

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp


def setup(cfg: LoopSettings, sp: int = 1) -> DistInfo:
    """Threads, then the torchrun process group when launched by torchrun (WORLD_SIZE > 1); one
    process is the same program with world size 1. A collective that waits longer than
    ``cfg.dist_timeout`` minutes (a rank died or hangs) raises, so the job ends instead of hanging."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: let cuDNN pick its kernels
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % sp:
        raise VideoditError(f"--sp {sp}: must divide the number of processes ({world})")
    if world == 1:
        return DistInfo(0, 1, 0, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             timeout=timedelta(minutes=cfg.dist_timeout))
    sp_group = None
    if sp > 1:  # every rank creates every group, in the same order (new_group is a collective)
        for first in range(0, world, sp):
            group = torch.distributed.new_group(list(range(first, first + sp)))
            if first <= rank < first + sp:
                sp_group = group
    return DistInfo(rank, world, local_rank, device, sp, sp_group)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank_mean(value: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """The mean of a scalar over ranks, so that every rank takes the same decision."""
    if dist.world_size > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= dist.world_size
    return value


def main_flag(flag: bool, dist: DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank (its clock decides when a time-boxed run stops)."""
    if dist.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=dist.device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


# ---------------------------------------------------------------------------------------------
# Schedule, seeds, EMA
# ---------------------------------------------------------------------------------------------

def lr_at(step: int, cfg: LoopSettings, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine from lr to lr/10 over the steps, or over the --max-minutes
    budget when that is further along (then the run is not bit-reproducible)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_fraction)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator every random draw of one step on one rank comes from."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4096 + rank)


def ema_update(ema: nn.Module, model: nn.Module, decay: float, ok: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied. One foreach
    call per kind of tensor instead of a Python loop over the parameters (the same lerp kernel,
    so the same values bit for bit). ``ok``: a 0-dim bool on the device; where it is False the
    weight is 0 and the EMA stays as it is, decided without a host synchronisation."""
    weight = 1.0 - decay if ok is None else ok * (1.0 - decay)  # float32 0-dim tensor: (1 - decay) or 0
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], weight)
        buffers = list(ema.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(model.buffers()))


def one_lr_group(model: nn.Module) -> list[dict]:
    """Task.lr_groups for one learning rate: every trainable parameter of ``model`` at scale 1."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]


def make_optimizer(params: list[nn.Parameter] | list[dict], cfg: LoopSettings, device: torch.device,
                   sharded: bool) -> torch.optim.AdamW:
    """AdamW over ``params`` (parameters, or groups of them: Task.lr_groups), fused (one kernel
    over all parameters; CPU and CUDA) unless the parameters are FSDP shards, which take the
    foreach implementation. The fused kernel also skips a step on the device when
    ``optimizer.found_inf`` is 1 (Run.train_step). cpu-medium on one CPU thread: 13 ms a step
    fused, 43 ms torch's default (a loop over the tensors), 79 ms foreach."""
    fused = not sharded and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                             fused=fused or None, foreach=None if fused else True)


def compile_model(net: nn.Module, shapes: int) -> nn.Module:
    """``net`` through torch.compile with static shapes: one graph (forward and backward) per
    input shape, compiled the first time a step meets that shape, so the recompiles dynamo warns
    about, one per size bucket, are expected. Its recompile limit is raised to hold ``shapes``
    graphs (past the limit it would silently fall back to eager)."""
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, shapes + 1)
    return torch.compile(net, dynamic=False)


# ---------------------------------------------------------------------------------------------
# Divergence guard
# ---------------------------------------------------------------------------------------------

GUARD_SMOOTHING = 0.98      # EMA of the watched loss (about 50 steps)
GUARD_FACTOR = 3.0          # smoothed loss at this multiple of its best so far = diverged
GUARD_HEALTHY = 1.5         # snapshots are taken only while the smoothed loss is under this multiple
GUARD_SNAPSHOT_EVERY = 200  # steps between in-memory snapshots
MAX_ROLLBACKS = 4           # the fifth divergence stops the run


class TrainingDiverged(VideoditError):
    pass


class DivergenceGuard:
    """Watches the loss after every step; on a non-finite loss or gradient, or a blow-up of the
    smoothed loss, restores the last healthy snapshot and halves the learning rate (module
    docstring)."""

    def __init__(self, warmup_steps: int, state: dict | None = None):
        state = state or {}
        self.warmup_steps = warmup_steps
        self.lr_scale: float = state.get("lr_scale", 1.0)
        self.smoothed: float | None = state.get("smoothed")
        self.best: float | None = state.get("best")
        self.rollbacks: int = state.get("rollbacks", 0)
        self.snapshot: dict | None = None

    def state(self) -> dict:
        return {"lr_scale": self.lr_scale, "smoothed": self.smoothed, "best": self.best,
                "rollbacks": self.rollbacks}

    def take_snapshot(self, step: int, modules: dict) -> None:
        self.snapshot = {"step": step, "smoothed": self.smoothed,
                         "states": {name: copy.deepcopy(m.state_dict()) for name, m in modules.items()}}

    def observe(self, step: int, loss: float, modules: dict) -> str | None:
        """Call after each step with the step count and the (rank-averaged) watched loss, NaN when
        the step was skipped; ``modules`` maps names to the modules / optimizers to snapshot.
        Returns a message when it rolled back; raises TrainingDiverged when it gives up."""
        finite = math.isfinite(loss)
        if finite:
            self.smoothed = loss if self.smoothed is None else (
                GUARD_SMOOTHING * self.smoothed + (1 - GUARD_SMOOTHING) * loss)
            if step >= self.warmup_steps:
                self.best = self.smoothed if self.best is None else min(self.best, self.smoothed)
        blown = finite and self.best is not None and step >= self.warmup_steps and self.smoothed > GUARD_FACTOR * self.best
        if finite and not blown:
            if step % GUARD_SNAPSHOT_EVERY == 0 and (self.best is None or self.smoothed < GUARD_HEALTHY * self.best):
                self.take_snapshot(step, modules)
            return None
        what = f"the loss became {loss}" if not finite else (
            f"the loss diverged (smoothed {self.smoothed:.4g}, best {self.best:.4g})")
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            raise TrainingDiverged(f"{what} at step {step}, after {MAX_ROLLBACKS} rollbacks that each halved "
                                   f"the learning rate: lower --lr (or raise --warmup-steps); the last "
                                   "checkpoint holds the last good weights")
        for name, m in modules.items():
            m.load_state_dict(copy.deepcopy(self.snapshot["states"][name]))
        self.lr_scale *= 0.5
        self.smoothed = self.snapshot["smoothed"]
        return (f"{what} at step {step}: restored the weights of step {self.snapshot['step']}, "
                f"learning rate x{self.lr_scale:g} (rollback {self.rollbacks} of {MAX_ROLLBACKS})")


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------

class CsvLog:
    """A CSV file with a header; rows are appended and flushed, and ``truncate(step)`` drops the
    rows after ``step`` (a resumed run replays them)."""

    def __init__(self, path: Path, fields: tuple[str, ...]):
        self.path, self.fields = path, fields

    def truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # a row cut short by a kill
        keep = lines[:1] + [line for line in lines[1:] if _row_step(line) is not None and _row_step(line) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, self.path)

    def write(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.fields), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _row_step(line: str) -> int | None:
    head = line.split(",", 1)[0]
    return int(head) if head.isdigit() else None


def short_value(value) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "it_per_s", "elapsed_s")


def train(cfg: LoopSettings, make_task, progress: bool = True, sp: int = 1) -> Path:
    """Set up devices, build the task (``make_task(dist)``), run the loop; returns the task's
    final bundle."""
    dist = setup(cfg, sp)
    try:
        return run(cfg, make_task(dist), dist, progress)
    finally:
        cleanup()


@dataclass
class Run:
    """What one training run holds besides the task: the optimizer, the EMA the loop updates (the
    task's own, or under FSDP a copy sharded like the model, whose full state is gathered into the
    task's on rank 0 whenever a bundle or a sample needs it), the guard and the log."""
    cfg: LoopSettings
    task: Task
    dist: DistInfo
    out: Path
    log: CsvLog
    sharded: bool
    optimizer: torch.optim.Optimizer
    ema: nn.Module
    guard: DivergenceGuard
    step: int = 0
    # (step, watched loss or NaN for a skipped step, gradient norm) of the steps the guard has
    # not seen yet, as device scalars: read back together at the next check.
    unchecked: list[tuple[int, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def use_dcp(self) -> bool:
        return self.sharded or self.dist.world_size > 1

    @property
    def guarded(self) -> dict:
        return {"model": self.task.model, "ema": self.ema, "optimizer": self.optimizer, **self.task.extra_modules()}

    def gather_ema(self) -> None:
        if self.sharded:
            state = D.full_state(self.ema)  # a collective
            if self.dist.is_main:
                self.task.ema.load_state_dict(state)

    def save(self) -> None:
        # Both tasks restart their data from the step, so the data position is the step.
        task, dist, step = self.task, self.dist, self.step
        extra = {"guard": self.guard.state(), **{k: m.state_dict() for k, m in task.extra_modules().items()}}
        if self.use_dcp:
            D.save_dcp(self.out, rank=dist.rank, world=dist.world_size, device=dist.device, model=task.model,
                       optimizer=self.optimizer, ema=self.ema,
                       meta={"kind": task.kind, "step": step, "data_position": step, "config": task.run_config,
                             "rng": capture_rng(), "extra": extra, "world_size": dist.world_size})
        else:
            save_checkpoint(self.out / "checkpoint.pt", kind=task.kind, step=step, data_position=step,
                            config=task.run_config, model=task.model, optimizer=self.optimizer, ema=task.ema,
                            extra=extra)
        self.gather_ema()
        if dist.is_main:
            task.on_save()

    def train_step(self, net: nn.Module, batch, lr: float) -> StepResult:
        """One step: the task's loss, backward, clipping, AdamW and EMA, none of which waits for
        the device. A step whose loss or gradient norm is not finite leaves the weights, the
        optimizer state and the EMA as they were: the fused AdamW skips it on the device
        (``found_inf``); FSDP's foreach AdamW reads the flag back. The guard sees the step at the
        next ``check``."""
        cfg, task, dist, step = self.cfg, self.task, self.dist, self.step
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        # The same generator on every rank: each draws the global batch's numbers, keeps its rows.
        result = task.step(net, batch, step, step_generator(cfg.seed, step, 0), lr)
        monitor = rank_mean(result.monitor.detach().float(), dist)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()  # a NaN loss gives NaN gradients, which the step below skips
        norm = D.full_norm(nn.utils.clip_grad_norm_(task.model.parameters(), cfg.grad_clip))
        ok = torch.isfinite(monitor) & torch.isfinite(norm)  # the same on every rank (rank-averaged)
        decay = min(cfg.ema_decay, (1 + step) / (task.ema_warmup + step))
        if self.optimizer.defaults["fused"]:
            self.optimizer.found_inf = (~ok).float()
            self.optimizer.step()
            ema_update(self.ema, task.model, decay, ok)
        elif bool(ok):  # a host synchronisation: FSDP only
            self.optimizer.step()
            ema_update(self.ema, task.model, decay)
        self.step += 1
        nan = torch.full_like(monitor, math.nan)
        self.unchecked.append((self.step, torch.where(ok, monitor, nan), torch.where(ok, norm.float(), nan)))
        return result

    def check(self) -> float:
        """The guard sees every step since the last check, in order (one read-back from the
        device); returns the last one's gradient norm (NaN when it was skipped). A rollback
        discards the steps after the one that caused it: they were taken on the trajectory it
        throws away. The loop checks on logged, snapshot and saved steps, so a divergence is
        acted on at most --log-every steps late."""
        if not self.unchecked:
            return math.nan
        steps = [s for s, _, _ in self.unchecked]
        values = torch.stack([torch.stack([m, n]) for _, m, n in self.unchecked]).tolist()  # (steps, 2)
        self.unchecked.clear()
        for step, (monitor, _) in zip(steps, values):
            message = self.guard.observe(step, monitor, self.guarded)
            if message:
                if self.dist.is_main:
                    tqdm.write(f"videodit: warning: {message}", file=sys.stderr)
                break
        return values[-1][1]


def run(cfg: LoopSettings, task: Task, dist: DistInfo, progress: bool = True) -> Path:
    r, net = _start_run(cfg, task, dist)
    batches = task.batches(r.step)
    bar = tqdm(total=cfg.steps, initial=r.step, desc=f"train {task.kind}", disable=not (progress and dist.is_main),
               dynamic_ncols=True)
    t_start = t_save = t_log = time.monotonic()
    last_log = r.step
    budget = 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    try:
        while r.step < cfg.steps:
            lr = lr_at(r.step, cfg, (time.monotonic() - t_start) / budget) * r.guard.lr_scale
            result = r.train_step(net, next(batches), lr)
            step = r.step
            bar.update(1)
            now = time.monotonic()
            logging = step % cfg.log_every == 0 or step == cfg.steps  # the same on every rank
            out_of_time = main_flag(now - t_start > budget, dist)
            done = step == cfg.steps or out_of_time
            # Rank 0's clock decides a time-based save: every rank takes part in a distributed one.
            saving = main_flag(done or step % cfg.save_every == 0 or now - t_save > 60 * cfg.save_minutes, dist)
            # The host waits for the device only here: the guard must have seen every step before
            # a log row, a snapshot (GUARD_SNAPSHOT_EVERY) or a checkpoint.
            if logging or saving or step % GUARD_SNAPSHOT_EVERY == 0:
                grad_norm = r.check()
            if logging:  # the rank mean of the loss (a collective) only for the logged steps
                loss = float(rank_mean(result.loss.detach().float(), dist))
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if dist.is_main and logging:
                rate = (step - last_log) / max(now - t_log, 1e-9)
                last_log, t_log = step, now
                r.log.write({"step": step, "loss": f"{loss:.6g}", "lr": f"{lr:.4g}", "grad_norm": f"{grad_norm:.5g}",
                             "it_per_s": f"{rate:.4g}", "elapsed_s": f"{now - t_start:.1f}",
                             **{k: short_value(v) for k, v in result.logs.items()}})
            if saving:
                r.save()
                t_save = time.monotonic()
            elif task.wants_ema(step, done):
                r.gather_ema()
            if dist.is_main:
                task.after_step(step, done)
            if out_of_time:
                tqdm.write(f"stopping at step {step}: --max-minutes {cfg.max_minutes:g} reached")
                break
        if not _has_checkpoint(r.out, r.use_dcp):
            r.save()  # --steps 0 trains nothing, but the run has a checkpoint like any other
    finally:
        bar.close()
    return task.finish() if dist.is_main else r.out / "bundle"


def _start_run(cfg: LoopSettings, task: Task, dist: DistInfo) -> tuple[Run, nn.Module]:
    """Resume from the newest checkpoint that verifies (or the task's init), shard or wrap the
    model for several processes; returns the run and the module the steps call."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sharded = cfg.parallel == "fsdp" and dist.world_size > 1
    log = CsvLog(out / "log.csv", LOG_FIELDS + tuple(task.log_fields))
    found = _find_checkpoint(cfg, task, dist, out)
    if found is None:  # before any wrapping: the task loads --init into its plain modules
        task.init()
        if dist.is_main:
            for p in [log.path] + [out / name for name in task.csv_logs]:
                p.unlink(missing_ok=True)
    ema = task.ema
    if cfg.activation_checkpointing:
        D.checkpoint_activations(task.fsdp_units(task.model))
    if sharded:
        ema = copy.deepcopy(task.ema)
        D.fully_shard_model(ema, task.fsdp_units(ema), bf16=False)
        D.fully_shard_model(task.model, task.fsdp_units(task.model), bf16=cfg.bf16)
    groups = task.lr_groups()
    optimizer = make_optimizer(groups, cfg, dist.device, sharded)
    r = Run(cfg, task, dist, out, log, sharded, optimizer, ema, DivergenceGuard(cfg.warmup_steps))
    if found is not None:
        r.step, r.guard = _resume(*found, cfg, task, dist, optimizer, ema, sharded, log)
        # A checkpoint's groups name the implementation and learning-rate scales it ran with: this run's rule.
        for group, ours in zip(optimizer.param_groups, groups):
            group.update(fused=optimizer.defaults["fused"], foreach=optimizer.defaults["foreach"],
                         lr_scale=ours["lr_scale"])
    r.guard.take_snapshot(r.step, r.guarded)
    net = task.model
    if dist.world_size > 1 and not sharded:
        net = nn.parallel.DistributedDataParallel(task.model, device_ids=[dist.device.index]
                                                  if dist.device.type == "cuda" else None)
    if task.compile_shapes:
        net = compile_model(net, task.compile_shapes)
    return r, net


def _has_checkpoint(out: Path, use_dcp: bool) -> bool:
    return (out / D.DCP_DIR).exists() if use_dcp else (out / "checkpoint.pt").exists()


def _find_checkpoint(cfg: LoopSettings, task: Task, dist: DistInfo, out: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint that verifies, the single-file one or the distributed one, whichever
    holds the later step (a run may change its number of processes): (payload or meta, path), or
    None for a fresh start. A partial save left by a kill is removed first."""
    path = out / "checkpoint.pt"
    if dist.is_main:
        for stale in out.glob(".checkpoint*.tmp"):  # a run killed mid-save
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    if dist.world_size > 1:
        torch.distributed.barrier()
    if not cfg.resume:
        return None
    found = None
    if path.exists() or previous_path(path).exists():
        found = read_latest(path, task.kind)
    distributed = D.latest_dcp(out, task.kind)
    if distributed is not None and (found is None or distributed[0]["step"] > found[0]["step"]):
        found = distributed
    if found is not None:
        diff = config_mismatch(found[0]["config"].get("model", {}), task.run_config["model"])
        if diff:
            raise VideoditError(f"{found[1]}: model config differs from the checkpoint's: {'; '.join(diff)}")
    return found


def _resume(payload: dict, used: Path, cfg: LoopSettings, task: Task, dist: DistInfo, optimizer, ema: nn.Module,
            sharded: bool, log: CsvLog):
    """Put the found checkpoint in place (any format into any wrapping); returns the step and the
    divergence guard (its state is part of the checkpoint)."""
    if used.is_dir():
        D.load_dcp(used, model=task.model, optimizer=optimizer, ema=ema)
        restore_rng(payload["rng"])
    elif sharded:
        D.load_full(payload, model=task.model, optimizer=optimizer, ema=ema)
        restore_rng(payload["rng"])
    else:
        restore(payload, used, model=task.model, optimizer=optimizer, ema=task.ema)
    for name, module in task.extra_modules().items():
        if name not in payload["extra"]:
            raise VideoditError(f"{used}: checkpoint has no {name} state (it was trained with other settings)")
        module.load_state_dict(payload["extra"][name])
    step = payload["step"]
    if dist.is_main:
        for p in [log.path] + [Path(cfg.out) / name for name in task.csv_logs]:
            CsvLog(p, ()).truncate(step)
        print(f"resumed from {used} at step {step}")
    return step, DivergenceGuard(cfg.warmup_steps, payload["extra"].get("guard"))
