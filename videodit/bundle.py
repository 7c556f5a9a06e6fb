"""Model bundles on disk: read, write, verify. Used by inference (pipeline.py, vae.py) and training.

A weights bundle is a folder (docs/DESIGN.md, "Conventions": config.json + safetensors, never pickle):
    config.json          the module's frozen config dataclass as JSON
    model.safetensors    its state dict
    SHA256SUMS           the SHA-256 of every other file, in sha256sum's format
A model bundle (pipeline.py) is a folder of the same kind holding its own config.json and
SHA256SUMS, and two weights bundles, vae/ and dit/, each with their own. ``sha256sum -c SHA256SUMS``
inside any of them checks it by hand.

Writing (``writing``): the folder is built as a temporary sibling, its SHA256SUMS written, its
files synced, then swapped into place, so a crash leaves the old bundle or the new one, never
half of one (the DiT trainer rewrites OUT/bundle with every checkpoint). Tensors must be finite.
Reading: every file is hashed against SHA256SUMS as it is read, and tensors are checked finite;
a mismatch, a missing file or a folder without SHA256SUMS is a one-line VideoditError naming the
file. ``write_checksums`` (``python -m videodit.bundle DIR``) records them for a folder you trust.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from videodit.config import from_dict, to_dict
from videodit.errors import VideoditError

if TYPE_CHECKING:
    import torch.nn as nn

BUNDLED = Path(__file__).resolve().parent / "assets" / "bundle"  # the model bundle shipped in the package
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CHECKSUMS = "SHA256SUMS"
_HASH_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path) -> Path:
    """Record the SHA-256 of the files of ``folder`` in its SHA256SUMS, and likewise in every
    subfolder holding a config.json (vae/, dit/). Only for folders you trust: loading then accepts
    their files as they are now."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoditError(f"{folder}: not a folder")
    for sub in sorted(folder.iterdir()):
        if sub.is_dir() and (sub / CONFIG).is_file():
            write_checksums(sub)
    return _write_sums(folder)


def _write_sums(folder: Path) -> Path:
    """SHA256SUMS for the files directly in ``folder`` (not itself, not hidden files)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS
                   and not p.name.startswith("."))
    # Two spaces: sha256sum's text mode, which `sha256sum -c` reads.
    (folder / CHECKSUMS).write_text("".join(f"{file_sha256(folder / n)}  {n}\n" for n in names))
    return folder / CHECKSUMS


def _recorded(folder: Path) -> dict[str, str]:
    """name -> hex digest from ``folder``/SHA256SUMS; every listed file must exist."""
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise VideoditError(f"{folder}: no {CHECKSUMS}, so its files cannot be verified; if you trust this folder, "
                            f"record them with `python -m videodit.bundle {folder}`")
    recorded = {}
    for i, line in enumerate(sums.read_text().splitlines(), 1):
        digest, sep, name = line.partition(" ")
        name = name[1:] if name[:1] in (" ", "*") else name  # " name" (text mode) or "*name" (binary)
        if not sep or len(digest) != 64 or not name:
            raise VideoditError(f"{sums}:{i}: not a sha256sum line ({line[:80]!r})")
        recorded[name] = digest.lower()
    for name in recorded:
        if not (folder / name).is_file():
            raise VideoditError(f"{folder / name}: missing (listed in {CHECKSUMS})")
    return recorded


def verify_file(path: str | Path, data: bytes | None = None) -> None:
    """Check ``path`` (or ``data``, its bytes already read) against its folder's SHA256SUMS."""
    path = Path(path)
    recorded = _recorded(path.parent)
    if path.name not in recorded:
        raise VideoditError(f"{path}: not listed in {path.parent / CHECKSUMS}, so it cannot be verified")
    actual = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
    if actual != recorded[path.name]:
        raise VideoditError(f"{path}: checksum mismatch (corrupt or modified since it was saved)")


def first_non_finite(states) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf in a nest of dicts / lists
    (state dicts, optimizer states), or None."""
    import torch

    stack = [("", states)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, torch.Tensor):
            # A sum is NaN or inf when an element is (or when huge values overflow: hence the
            # exact check after it); summing is ~7x faster than isfinite().all() on a CPU.
            if (value.is_floating_point() and not bool(torch.isfinite(value.sum(dtype=torch.float32)))
                    and not bool(torch.isfinite(value).all())):
                return name
        elif isinstance(value, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{name}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


# ---------------------------------------------------------------------------------------------
# Atomic writing
# ---------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths in one step


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux renameat2); False where the OS cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (a rename is durable only after both)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(new: Path, folder: Path) -> None:
    """Put ``new`` where ``folder`` is, the old folder removed."""
    if not folder.exists():
        os.rename(new, folder)
        return
    if _exchange(new, folder):
        shutil.rmtree(new)  # now the old bundle
        return
    # Two renames: between them only the old folder (complete, renamed) exists.
    old = folder.with_name(f".{folder.name}.old-{secrets.token_hex(4)}")
    os.rename(folder, old)
    os.rename(new, folder)
    shutil.rmtree(old)


@contextmanager
def writing(folder: str | Path) -> Iterator[Path]:
    """Build a bundle folder atomically: yields an empty temporary sibling to write into; on
    success writes its SHA256SUMS (subfolders hold their own) and swaps it into place. An existing
    ``folder`` is replaced only when it is a bundle (has config.json) or is empty."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG).is_file():
        raise VideoditError(f"{folder}: exists and is not a bundle (no {CONFIG}); not replacing it")
    if folder.exists() and not folder.is_dir():
        raise VideoditError(f"{folder}: exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        _write_sums(tmp)
        for path in [*tmp.rglob("*"), tmp]:
            _fsync(path)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(folder.parent)


# ---------------------------------------------------------------------------------------------
# Weights bundles
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
    """A module as a bundle folder: config.json (the frozen config dataclass) + model.safetensors
    + SHA256SUMS, written atomically. Refuses weights holding NaN or inf."""
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, f"{folder}: not saved")
    with writing(folder) as tmp:
        write_config(config, tmp)
        save_tensors(state, tmp / WEIGHTS)
    return folder


def check_finite(state: dict, where: str) -> None:
    bad = first_non_finite(state)
    if bad:
        raise VideoditError(f"{where}: tensor {bad} holds NaN or inf values")


def save_tensors(state: dict, path: Path) -> None:
    """Finite tensors to a safetensors file (inside a ``writing`` folder, which checksums it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    check_finite(state, f"{path}: not saved")
    save_file(state, str(path))


def load_tensors(path: str | Path) -> dict:
    """The verified (SHA256SUMS), finite tensors of a safetensors file, with one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise VideoditError(f"{path}: weights file not found")
    verify_file(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise VideoditError(f"{path}: not a readable safetensors file ({e})") from None
    check_finite(state, str(path))
    return state


def write_config(config, folder: Path) -> None:
    (folder / CONFIG).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def read_config(folder: str | Path, what: str, contents: str) -> dict:
    """The verified config.json of a bundle folder as a dict. ``what`` names the kind of bundle
    and ``contents`` what it should hold, for the error when there is no config.json."""
    folder = Path(folder)
    path = folder / CONFIG
    if not path.is_file():
        raise VideoditError(f"{folder}: not a {what} bundle (no {CONFIG}; expected {contents})")
    data = path.read_bytes()
    verify_file(path, data)
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VideoditError(f"{path}: not valid JSON ({e})") from None


def read_bundle_config(cls, folder: str | Path, what: str):
    """The config dataclass ``cls`` of a weights bundle folder, with one-line errors naming the file."""
    data = read_config(folder, what, f"{CONFIG} + {WEIGHTS}")
    try:
        return from_dict(cls, data, source=str(Path(folder) / CONFIG))
    except ValueError as e:
        raise VideoditError(str(e)) from None


def load_safetensors_checked(model: nn.Module, path: str | Path, assign: bool = False) -> None:
    """Load verified, finite weights that fit ``model`` (every key and shape) into it. ``assign``:
    the model's tensors are replaced by the loaded ones, converted to the model's dtypes (for a
    model built on the meta device, which has no storage to copy into)."""
    state = load_tensors(path)
    check_state_dict(model, state, str(path))
    if assign:
        current = model.state_dict()
        state = {k: v.to(current[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=assign)


def main(argv: list[str] | None = None) -> int:
    """``python -m videodit.bundle DIR...``: write SHA256SUMS for bundle folders you trust."""
    folders = sys.argv[1:] if argv is None else argv
    if not folders or any(f.startswith("-") for f in folders):
        print("usage: python -m videodit.bundle DIR [DIR ...]\n"
              "Record SHA-256 checksums (SHA256SUMS) of the files of each bundle folder and of its\n"
              "vae/ and dit/ subfolders. Only for folders you trust.", file=sys.stderr)
        return 2
    for folder in folders:
        try:
            write_checksums(folder)
        except VideoditError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote checksums for {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
