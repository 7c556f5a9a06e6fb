"""Frozen-dataclass configs <-> argparse flags.

Every config is a frozen dataclass; a CLI builds its flags from the fields (``--field-name``).
A field's metadata says everything about its flag, once:
    help            the help text
    min, max        the accepted range (inclusive; "min_exclusive" / "max_exclusive": True for
                    open ends); it applies to each element of a tuple field
    choices         the accepted values of a str field
    path            "file" or "dir": a non-empty value must name an existing one (words in
                    "or", e.g. ("bundled",), are accepted as they are)
    group           the --help section the flag is listed under
Int and float values must be finite numbers whatever the metadata says. The CLI's ``type=``
functions refuse a bad value before anything runs (a usage error, exit code 2), and
``check_ranges`` refuses the same values in a config built in Python. The same config is stored
as JSON inside every checkpoint and model bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from videodit.errors import VideoditError

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """int | None -> int; tuple[int, ...] stays a tuple type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def describe_range(limits: Mapping[str, Any]) -> str:
    """'>= 1', '> 0', 'in [0, 1)' ... from a field's metadata ('' when it states no range)."""
    lo, hi = limits.get("min"), limits.get("max")
    if lo is not None and hi is not None:
        return (f"in {'(' if limits.get('min_exclusive') else '['}{lo}, "
                f"{hi}{')' if limits.get('max_exclusive') else ']'}")
    if lo is not None:
        return f"{'>' if limits.get('min_exclusive') else '>='} {lo}"
    if hi is not None:
        return f"{'<' if limits.get('max_exclusive') else '<='} {hi}"
    return ""


def range_error(value: float, limits: Mapping[str, Any]) -> str | None:
    """Why ``value`` is outside the range ``limits`` states, or None when it is inside."""
    wanted = describe_range(limits)
    if not math.isfinite(value):
        return f"must be a finite number{' ' + wanted if wanted else ''} (got {value})"
    lo, hi = limits.get("min"), limits.get("max")
    below = lo is not None and (value <= lo if limits.get("min_exclusive") else value < lo)
    above = hi is not None and (value >= hi if limits.get("max_exclusive") else value > hi)
    if below or above:
        return f"must be {wanted} (got {value})"
    return None


def number(kind: type, **limits: Any) -> Callable[[str], Any]:
    """An argparse ``type=``: parse ``kind`` (int or float), refusing nan, inf and values outside
    ``limits`` (the metadata keys min, max, min_exclusive, max_exclusive)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} (got {text!r})") from None
        problem = range_error(value, limits)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def path_error(value: str, kind: str, words: tuple[str, ...] = ()) -> str | None:
    """Why ``value`` does not name an existing ``kind`` ("file", "dir" or "any"), or None."""
    if value in words:
        return None
    path = Path(value)
    found = {"file": path.is_file, "dir": path.is_dir, "any": path.exists}[kind]()
    if found:
        return None
    what = {"file": "file", "dir": "folder", "any": "file or folder"}[kind]
    return f"no such {what}: {value}" + (f" (or give {' / '.join(map(repr, words))})" if words else "")


def existing(kind: str = "any", words: tuple[str, ...] = ()) -> Callable[[str], str]:
    """An argparse ``type=`` for an input that must exist: a "file", a "dir" or "any" path
    (``words``, e.g. ("bundled",), are accepted as they are)."""
    def parse(text: str) -> str:
        problem = path_error(text, kind, words)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    return parse


def _field_type(kind: Any, meta: Mapping[str, Any]) -> Callable[[str], Any]:
    if kind in (int, float):
        return number(kind, **{k: meta[k] for k in ("min", "max", "min_exclusive", "max_exclusive") if k in meta})
    if kind is str and meta.get("path"):
        # Empty means "not given" for a path field (its default).
        check = existing(meta["path"], tuple(meta.get("or", ())))
        return lambda text: text and check(text)
    return kind


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` flag per dataclass field, in the --help section its "group"
    metadata names (the accepted range and the default, unless None, are shown in --help)."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        name = f.metadata.get("group", f"{cls.__name__} fields")
        if name not in groups:
            groups[name] = parser.add_argument_group(name)
        group = groups[name]
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        # A None default means "decided at run time": the field's help says how.
        shown = f"default: {default!r}" if default is not None else ""
        notes = [note for note in (describe_range(f.metadata), shown) if note]
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} ({'; '.join(notes)})" if help_text and notes else help_text or "; ".join(notes)
        if tp is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            group.add_argument(_flag(f.name), type=_field_type(elem, f.metadata), nargs="+", default=None,
                               help=help_text)
        else:
            group.add_argument(_flag(f.name), type=_field_type(tp, f.metadata), default=None,
                               choices=f.metadata.get("choices"), help=help_text)


def check_ranges(cfg: Any) -> None:
    """Refuse, naming the flag, any field value outside what its metadata states (the same
    checks the CLI's flags make): numbers finite and in range, choices, paths that must exist."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            problem = None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                problem = range_error(v, f.metadata)
            elif isinstance(v, str) and "choices" in f.metadata and v not in f.metadata["choices"]:
                problem = f"must be one of {', '.join(f.metadata['choices'])} (got {v!r})"
            elif isinstance(v, str) and v and f.metadata.get("path"):
                problem = path_error(v, f.metadata["path"], tuple(f.metadata.get("or", ())))
            if problem:
                raise VideoditError(f"{_flag(f.name)}: {problem}")


def dataclass_from_args(base: T, args: argparse.Namespace) -> T:
    """Return ``base`` with every field whose flag was given on the command line replaced."""
    changes = {}
    for f in dataclasses.fields(base):
        value = getattr(args, f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **changes)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build ``cls`` from a dict, failing with a message that names unknown or missing keys."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list) and typing.get_origin(_base_type(hints[k])) is tuple:
            v = tuple(v)
        kwargs[k] = v
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"{source}: cannot build {cls.__name__}: {e}") from None


def save_json(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return from_dict(cls, data, source=str(path))
