"""Training checkpoints: atomic, checksummed, the last two kept, never a NaN; exact resume.

A checkpoint is one ``.pt`` file holding only tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary pickle code runs):
    {"format": "videodit-checkpoint", "version": 1, "kind": str, "step": int,
     "data_position": int, "config": dict, "model": state_dict, "ema": state_dict | None,
     "optimizer": state_dict | None, "rng": {...}, "extra": dict}
("data_position" is the step: both trainers restart their data from it.) It is written to a
temporary file in the same folder and moved into place with os.replace, so a crash mid-save
leaves the previous checkpoint intact; its SHA-256 goes beside it in checkpoint.pt.sha256
(sha256sum's format), and the checkpoint it replaces stays as checkpoint.prev.pt. Reading
verifies the checksum and refuses NaN / inf states; ``read_latest`` falls back to the previous
checkpoint when the newest fails. Model bundles (config.json + safetensors) are separate: see
``videodit.bundle``.
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from videodit.bundle import check_state_dict, file_sha256, first_non_finite
from videodit.errors import VideoditError, VideoditWarning

FORMAT = "videodit-checkpoint"
VERSION = 1


# ---------------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------------

def capture_rng() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as lists.
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _tuple_to_list(random.getstate()),
    }


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_list_to_tuple(rng["python"]))


def _tuple_to_list(x):
    return [_tuple_to_list(v) for v in x] if isinstance(x, tuple) else x


def _list_to_tuple(x):
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------

PREVIOUS_SUFFIX = ".prev"  # checkpoint.pt -> checkpoint.prev.pt: the one kept before the newest
CHECKSUM_SUFFIX = ".sha256"  # checkpoint.pt.sha256, in sha256sum's format


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + PREVIOUS_SUFFIX + path.suffix)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file in ``path``'s folder, fsync, then os.replace: a crash
    leaves either the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, *, kind: str, step: int, data_position: int, config: dict,
                    model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ema: nn.Module | None = None, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically, with its SHA-256 beside it (``path``.sha256); the checkpoint
    it replaces is kept as checkpoint.prev.pt (with its checksum) for ``load_latest`` to fall back
    to. ``data_position`` is how many samples the data stream has handed out. Refuses to write
    NaN or inf weights or optimizer state: a checkpoint is always a state training can go on from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "version": VERSION, "kind": kind, "step": int(step),
        "data_position": int(data_position), "config": config,
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": capture_rng(),
        "extra": extra or {},
    }
    bad = first_non_finite({k: payload[k] for k in ("model", "ema", "optimizer", "extra")})
    if bad:
        raise VideoditError(f"{path}: not saved: {bad} holds NaN or inf values (the last good checkpoint is kept)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        line = f"{file_sha256(tmp)}  {path.name}\n".encode()  # hashed as it lies on disk
        if path.exists():  # keep the last two: the newest becomes the previous one
            # Its checksum goes to the new name before the file does, so that a process killed at
            # any point between these steps leaves one checkpoint that verifies: first the newest
            # (untouched until it is renamed), then the renamed one (its checksum already there).
            record = _checksum_path(path)
            if record.exists():
                _atomic_write(_checksum_path(previous_path(path)), lambda f: f.write(record.read_bytes()))
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _atomic_write(_checksum_path(path), lambda f: f.write(line))
    return path


def verify_checksum(path: Path) -> None:
    """Compare ``path`` with the SHA-256 recorded beside it when it was saved."""
    record = _checksum_path(path)
    if not record.is_file():
        raise VideoditError(f"{path}: no checksum file {record.name} (the save did not finish, or it was "
                            "copied without it)")
    expected = record.read_text().split()[0] if record.read_text().split() else ""
    if file_sha256(path) != expected:
        raise VideoditError(f"{path}: checksum mismatch (corrupt or modified since it was saved)")


def read_checkpoint(path: str | Path, kind: str, verify: bool = True) -> dict:
    """Load and validate the payload (no model needed). Fails with one clear line for a missing,
    corrupt (checksum), truncated, foreign or wrong-kind file, or one that holds NaN / inf."""
    path = Path(path)
    if not path.is_file():
        raise VideoditError(f"{path}: checkpoint not found")
    if verify:
        verify_checksum(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError ... for bad files
        # Only the exception's type: torch's text advises loading with weights_only=False, which
        # would run whatever code a foreign file holds.
        raise VideoditError(f"{path}: not a readable checkpoint (corrupt or truncated?): {type(e).__name__}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VideoditError(f"{path}: not a videodit checkpoint")
    if payload.get("version") != VERSION:
        raise VideoditError(f"{path}: checkpoint version {payload.get('version')}; this videodit reads {VERSION}")
    if payload.get("kind") != kind:
        raise VideoditError(f"{path}: a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    bad = first_non_finite({k: payload.get(k) for k in ("model", "ema", "optimizer", "extra")})
    if bad:
        raise VideoditError(f"{path}: {bad} holds NaN or inf values; training cannot go on from it")
    return payload


def read_latest(path: str | Path, kind: str) -> tuple[dict, Path]:
    """The newest checkpoint that verifies: ``path``, else the previous one kept beside it (with a
    one-line warning that names what was wrong). Fails when neither can be used."""
    path = Path(path)
    return with_fallback(path, previous_path(path), lambda p: read_checkpoint(p, kind))


def with_fallback(newest: Path, prev: Path, read: Callable[[Path], dict]) -> tuple[dict, Path]:
    """``read(newest)``, or when that fails and ``prev`` exists, ``read(prev)`` with a warning;
    one error naming both problems when neither reads."""
    try:
        return read(newest), newest
    except VideoditError as e:
        if not prev.exists():
            raise
        try:
            payload = read(prev)
        except VideoditError as older:
            raise VideoditError(f"{e}; and the previous one: {older}") from None
        warnings.warn(f"{e}; resuming from {prev.name} (step {payload['step']}) instead", VideoditWarning,
                      stacklevel=3)
        return payload, prev


def config_mismatch(saved: dict, current: dict) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def restore(payload: dict, path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
            ema: nn.Module | None = None, model_config: dict | None = None, config_key: str = "model") -> None:
    """Put a checkpoint's model / optimizer / EMA / RNG states in place. If ``model_config`` is
    given it must equal ``payload["config"][config_key]``; differences are listed in the error."""
    if model_config is not None:
        saved = payload["config"].get(config_key, {})
        diff = config_mismatch(saved, model_config)
        if diff:
            raise VideoditError(f"{path}: model config differs from the checkpoint's: {'; '.join(diff)}")
    check_state_dict(model, payload["model"], f"{path} [model]")
    model.load_state_dict(payload["model"])
    if ema is not None:
        if payload["ema"] is None:
            raise VideoditError(f"{path}: checkpoint has no EMA weights")
        check_state_dict(ema, payload["ema"], f"{path} [ema]")
        ema.load_state_dict(payload["ema"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise VideoditError(f"{path}: checkpoint has no optimizer state")
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as e:
            raise VideoditError(f"{path}: optimizer state does not fit ({e})") from None
    restore_rng(payload["rng"])


def load_checkpoint(path: str | Path, *, kind: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, ema: nn.Module | None = None,
                    model_config: dict | None = None, config_key: str = "model") -> dict:
    """``read_checkpoint`` + ``restore``: returns the payload (for ``step``, ``data_position``,
    ``config``, ``extra``)."""
    path = Path(path)
    payload = read_checkpoint(path, kind)
    restore(payload, path, model=model, optimizer=optimizer, ema=ema, model_config=model_config,
            config_key=config_key)
    return payload
