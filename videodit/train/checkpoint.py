"""Training checkpoints (atomic save, exact resume) and checked weight loading.

A checkpoint is one ``.pt`` file holding only tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)`` (no arbitrary pickle code runs):
    {"format": "videodit-checkpoint", "version": 1, "kind": str, "step": int,
     "data_position": int, "config": dict, "model": state_dict, "ema": state_dict | None,
     "optimizer": state_dict | None, "rng": {...}, "extra": dict}
It is written to a temporary file in the same folder and moved into place with os.replace, so a
crash mid-save leaves the previous checkpoint intact. Model bundles (config.json + safetensors)
are separate: see ``load_safetensors_checked``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from videodit.errors import VideoditError

FORMAT = "videodit-checkpoint"
VERSION = 1


# ---------------------------------------------------------------------------------------------
# State-dict checks shared by checkpoints and safetensors bundles
# ---------------------------------------------------------------------------------------------

def check_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """Fail naming ``source`` and every missing / unexpected key and shape mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {_short(wrong)}")
    if problems:
        raise VideoditError(f"{source}: weights do not match the model ({'; '.join(problems)}); "
                            "was it saved with a different config?")


def _short(items: list[str], n: int = 4) -> str:
    return "[" + ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "") + "]"


def save_weights_bundle(model: nn.Module, config, folder: str | Path) -> Path:
    """A module as a bundle folder: config.json (the frozen config dataclass) + model.safetensors."""
    import json

    from safetensors.torch import save_file

    from videodit.config import to_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    return folder


def read_bundle_config(cls, folder: str | Path, what: str):
    """The config dataclass ``cls`` of a bundle folder, with one-line errors naming the file."""
    import json

    from videodit.config import from_dict

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise VideoditError(f"{folder}: not a {what} bundle (no config.json; expected config.json + model.safetensors)")
    try:
        return from_dict(cls, json.loads(cfg_path.read_text()), source=str(cfg_path))
    except (ValueError, json.JSONDecodeError) as e:
        raise VideoditError(f"{cfg_path}: {e}") from None


def load_safetensors_checked(model: nn.Module, path: str | Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise VideoditError(f"{path}: weights file not found")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VideoditError(f"{path}: not a readable safetensors file ({e})") from None
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)


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

def save_checkpoint(path: str | Path, *, kind: str, step: int, data_position: int, config: dict,
                    model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ema: nn.Module | None = None, extra: dict | None = None) -> Path:
    """Write the checkpoint atomically (temp file + os.replace). ``data_position`` is how many
    samples the data stream has handed out, the index to restart it from."""
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path, kind: str) -> dict:
    """Load and validate the payload (no model needed). Fails with one clear line for a missing,
    truncated, foreign or wrong-kind file."""
    path = Path(path)
    if not path.is_file():
        raise VideoditError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / UnpicklingError / EOFError ... for bad files
        raise VideoditError(f"{path}: not a readable checkpoint (corrupt or truncated?): "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VideoditError(f"{path}: not a videodit checkpoint")
    if payload.get("version") != VERSION:
        raise VideoditError(f"{path}: checkpoint version {payload.get('version')}; this videodit reads {VERSION}")
    if payload.get("kind") != kind:
        raise VideoditError(f"{path}: a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    return payload


def config_mismatch(saved: dict, current: dict) -> list[str]:
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def load_checkpoint(path: str | Path, *, kind: str, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, ema: nn.Module | None = None,
                    model_config: dict | None = None, config_key: str = "model") -> dict:
    """Restore model / optimizer / EMA / RNG states in place and return the payload (for
    ``step``, ``data_position``, ``config``, ``extra``). If ``model_config`` is given it must equal
    ``payload["config"][config_key]``; differences are listed in the error."""
    payload = read_checkpoint(path, kind)
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
    return payload
