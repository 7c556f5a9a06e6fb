"""Scale-out on PyTorch's own engine, for the one training loop (videodit/train/loop.py).

Layout. ``torchrun`` starts W processes (one per GPU, on one node or many through its
rendezvous); W = 1 is the ordinary run. With ``--sp N`` (the DiT only) the W ranks form W / N
sequence-parallel groups of N consecutive ranks: the ranks of a group hold the same clips and
split each clip's tokens (videodit.dit.SequenceParallel). The W / N groups are the data-parallel
ranks: group g reads slice g of every global batch (``batch_slice``).

Gradients. ``--parallel ddp`` wraps the model in DistributedDataParallel; ``fsdp`` shards it with
FSDP2 (``fully_shard``): one unit per transformer block (a block's cross-attention is a unit of its
own, because ``DiT.text_kv`` reads its weights before the blocks run) and the root. Both average
gradients over all W ranks; a sequence-parallel forward scales its gradients by N to make that a
mean over the data-parallel groups (videodit.dit, ``_GatherTokens``).

Mixed precision under FSDP: block weights are gathered in bf16 when the trainer runs bf16 autocast
(the block's matmuls run in bf16 under autocast anyway; a block's learned modulation offset is
then rounded to bf16, which DDP does not do), gradients are reduce-scattered in fp32; the root
(time embedding, modulation MLP, head) and the norm layers keep fp32 weights, because the DiT
runs them in fp32. Gloo (CPU) all-gathers and reduce-scatters bf16 and fp32 alike.

Checkpoints. Under FSDP or with W > 1 the loop writes ``torch.distributed.checkpoint`` folders
(``save_dcp``): every rank writes its shards in parallel, ``load_dcp`` reads them back on any
number of ranks (resharding), and the folder has the integrity guarantees of the single-file
checkpoint (videodit/train/checkpoint.py): written to a temporary folder, SHA256SUMS over every
file, moved into place, the previous one kept, verified before use, never a NaN. A single process
without FSDP keeps the single-file format.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from videodit.bundle import file_sha256, first_non_finite
from videodit.errors import VideoditError
from videodit.train.checkpoint import with_fallback

PARALLEL = ("ddp", "fsdp")  # --parallel
DCP_DIR = "checkpoint.dcp"            # OUT/checkpoint.dcp/: the newest distributed checkpoint
DCP_PREV_DIR = "checkpoint.prev.dcp"  # the one before it
DCP_TMP_DIR = ".checkpoint.dcp.tmp"   # being written
DCP_META = "meta.pt"                  # step, config, RNG, guard and small extra states (rank 0's)
SUMS = "SHA256SUMS"                   # sha256sum's format, written last
DCP_FORMAT = "videodit-dcp-checkpoint"
DCP_VERSION = 1
# Methods that run a unit's weights outside its forward: FSDP must gather the weights for them too.
FORWARD_METHODS = ("text_kv",)
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)  # kept fp32 under FSDP (a unit of their own)


def batch_slice(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of ``n`` that data-parallel rank ``rank`` of ``size`` reads
    (as equal as can be; every sample read by exactly one rank)."""
    if n < size:
        raise VideoditError(f"a global batch of {n} clips cannot give each of {size} data-parallel processes "
                            f"one: raise --batch-size to at least {size}")
    return n * rank // size, n * (rank + 1) // size


def is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(t, DTensor)


def local(obj):
    """A nest of states with every DTensor replaced by its local shard (for checks that must not
    start collectives)."""
    if is_dtensor(obj):
        return obj.to_local()
    if isinstance(obj, dict):
        return {k: local(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(local(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------
# Wrapping
# ---------------------------------------------------------------------------------------------

def checkpoint_activations(units: list[nn.Module]) -> None:
    """Recompute each unit's activations in the backward pass instead of storing them. The unit's
    forward is replaced on the instance, so parameter names (and so bundles) do not change."""
    from torch.utils.checkpoint import checkpoint
    for unit in units:
        unit.forward = functools.partial(checkpoint, unit.forward, use_reentrant=False)


def fully_shard_model(model: nn.Module, units: list[nn.Module], bf16: bool) -> None:
    """FSDP2 in place: each unit (and a child with a FORWARD_METHODS method, first) and the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    # cast_forward_inputs=False: the DiT's residual stream and modulation stay fp32 (videodit/dit.py).
    unit_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32,
                                       cast_forward_inputs=False)
    root_policy = MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)
    for unit in units:
        for child in unit.children():
            methods = [m for m in FORWARD_METHODS if hasattr(child, m)]
            if isinstance(child, NORMS) and any(True for _ in child.parameters()):
                fully_shard(child, mp_policy=root_policy)  # CPU layer_norm wants fp32 weights for fp32 input
            elif methods:
                fully_shard(child, mp_policy=unit_policy)
                for m in methods:
                    register_fsdp_forward_method(child, m)
        fully_shard(unit, mp_policy=unit_policy)
    fully_shard(model, mp_policy=root_policy)


def full_state(module: nn.Module) -> dict:
    """The full (unsharded) state dict of a sharded module, on the CPU of rank 0 (empty on the
    other ranks). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s total norm as a plain tensor on the device (a replicated DTensor under
    FSDP)."""
    return norm.full_tensor() if is_dtensor(norm) else norm


# ---------------------------------------------------------------------------------------------
# Distributed checkpoints
# ---------------------------------------------------------------------------------------------

def _write_sums(folder: Path) -> None:
    lines = "".join(f"{file_sha256(p)}  {p.name}\n" for p in sorted(folder.iterdir()) if p.name != SUMS)
    tmp = folder / (SUMS + ".tmp")
    with tmp.open("w") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / SUMS)


def verify_dcp(folder: Path) -> None:
    """Every file SHA256SUMS names is there and matches; one line naming what is wrong."""
    sums = folder / SUMS
    if not folder.is_dir():
        raise VideoditError(f"{folder}: checkpoint not found")
    if not sums.is_file():
        raise VideoditError(f"{folder}: no {SUMS} (the save did not finish, or it was copied without it)")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        if not (folder / name).is_file():
            raise VideoditError(f"{folder}: {name} is missing")
        if file_sha256(folder / name) != digest:
            raise VideoditError(f"{folder}: checksum mismatch in {name} (corrupt or modified since it was saved)")


def read_dcp_meta(folder: Path, kind: str) -> dict:
    verify_dcp(folder)
    try:
        meta = torch.load(folder / DCP_META, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VideoditError(f"{folder}: unreadable {DCP_META}: {type(e).__name__}") from None
    if not isinstance(meta, dict) or meta.get("format") != DCP_FORMAT or meta.get("version") != DCP_VERSION:
        raise VideoditError(f"{folder}: not a videodit distributed checkpoint (version {DCP_VERSION})")
    if meta.get("kind") != kind:
        raise VideoditError(f"{folder}: a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    return meta


def latest_dcp(out: Path, kind: str) -> tuple[dict, Path] | None:
    """The meta of the newest distributed checkpoint under ``out`` that verifies (else the previous
    one, with a warning), or None when there is none. Fails when neither verifies."""
    newest, prev = out / DCP_DIR, out / DCP_PREV_DIR
    if not newest.exists() and not prev.exists():
        return None
    return with_fallback(newest, prev, lambda folder: read_dcp_meta(folder, kind))


def _states(model: nn.Module, optimizer, ema: nn.Module) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
            "ema": get_model_state_dict(ema)}


def _any_rank(flag: bool, world: int, device: torch.device) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def save_dcp(out: Path, *, rank: int, world: int, device: torch.device, meta: dict, model: nn.Module, optimizer, ema: nn.Module) -> Path:
    """Every rank writes its shards of (model, optimizer, EMA) into a temporary folder; rank 0 adds
    ``meta`` and SHA256SUMS, keeps the current folder as the previous one and moves the new one
    into place. Refuses (on every rank) to write NaN / inf states."""
    import torch.distributed.checkpoint as dcp

    states = _states(model, optimizer, ema)
    bad = first_non_finite(local(states)) or first_non_finite(meta.get("extra", {}))
    if _any_rank(bad is not None, world, device):
        raise VideoditError(f"{out / DCP_DIR}: not saved: {bad or 'a state on another rank'} holds NaN or inf "
                            "values (the last good checkpoint is kept)")
    tmp, newest, prev = out / DCP_TMP_DIR, out / DCP_DIR, out / DCP_PREV_DIR
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(world)
    dcp.save(states, checkpoint_id=tmp)  # a collective; every rank writes its own files
    if rank == 0:
        with (tmp / DCP_META).open("wb") as f:
            torch.save({"format": DCP_FORMAT, "version": DCP_VERSION, **meta}, f)
            f.flush()
            os.fsync(f.fileno())
        _write_sums(tmp)
        if newest.exists():
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(newest, prev)  # a crash here leaves prev, which read falls back to
        os.replace(tmp, newest)
    _barrier(world)
    return newest


def load_dcp(folder: Path, *, model: nn.Module, optimizer, ema: nn.Module) -> None:
    """Load a distributed checkpoint into this run's modules, whatever the number of ranks that
    wrote it and whatever their wrapping (DDP, FSDP, none): DCP reshards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    states = _states(model, optimizer, ema)
    try:
        dcp.load(states, checkpoint_id=folder)
    except Exception as e:  # DCP names missing or mis-shaped keys in its own exception types
        raise VideoditError(f"{folder}: does not fit this model ({' '.join(str(e).split())[:300]})") from None
    set_model_state_dict(model, states["model"])
    set_optimizer_state_dict(model, optimizer, states["optimizer"])
    set_model_state_dict(ema, states["ema"])


def load_full(payload: dict, *, model: nn.Module, optimizer, ema: nn.Module) -> None:
    """A single-file checkpoint (full states, the optimizer's keyed by parameter order) into a
    sharded model: resuming a one-process run under FSDP."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, payload["model"], options=full)
    set_model_state_dict(ema, payload["ema"], options=full)
    # The saved optimizer numbers the parameters in its groups' order, the same groups this run's
    # optimizer holds (Task.lr_groups): index i is the i-th parameter of those groups.
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    opt = payload["optimizer"]
    by_name = {"state": {names[i]: s for i, s in opt["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in opt["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=full)


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
