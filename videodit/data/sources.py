"""Where training videos come from (``videodit prepare SRC``): a folder, or a CSV / JSONL list.

SRC is one of
  a folder   searched recursively for media files (MEDIA_SUFFIXES); the caption of ``a/b.mp4`` is
             ``a/b.txt`` (stripped). Other files (.txt, .json, .md ...) are not media: they are
             counted by suffix in the report, never read as samples.
  a .csv     rows ``path,caption[,start,end]`` with an optional header naming those columns;
  a .jsonl   one {"path", "caption"[, "start", "end"]} object per line;
             paths relative to the list's folder, start / end in seconds (empty = whole video).
A sample without a caption gets one from a captioner (``Captioner``) when one is given; a line of
a list that cannot be parsed is skipped with its reason (``Listing.skipped``), never dropped.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from videodit.errors import VideoditError
from videodit.video import IMAGE_SUFFIXES

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".flv",
                  ".wmv", ".3gp", ".ogv")
# Audio files are listed too, so that a sound file in a video folder is reported (no video
# stream) instead of passing unnoticed.
AUDIO_SUFFIXES = (".m4a", ".wav", ".mp3", ".aac", ".flac", ".ogg", ".opus")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES + AUDIO_SUFFIXES
CAPTIONER_TIMEOUT_S = 600


@dataclass(frozen=True)
class Source:
    path: str                  # as found: absolute, or as resolved from the list's folder
    caption: str | None        # None: no caption file / column (a captioner may give one)
    start: float | None = None  # seconds; None = from the beginning
    end: float | None = None    # seconds; None = to the end
    origin: str = ""           # "list.csv:12" for list rows, for messages


@dataclass
class Listing:
    sources: list[Source]
    skipped: dict[str, str] = field(default_factory=dict)  # name -> reason (unparseable list rows)
    ignored: dict[str, int] = field(default_factory=dict)  # suffix -> count of non-media files


def list_sources(src: str | Path) -> Listing:
    """Every sample SRC names, in a fixed order (sorted paths; list order for lists)."""
    src = Path(src)
    if src.is_dir():
        return _list_folder(src)
    if not src.is_file():
        raise VideoditError(f"{src}: no such folder or file")
    suffix = src.suffix.lower()
    if suffix == ".csv":
        return _list_rows(src, _csv_rows(src))
    if suffix in (".jsonl", ".json"):
        return _list_rows(src, _jsonl_rows(src))
    raise VideoditError(f"{src}: expected a folder of videos, a .csv or a .jsonl list")


def _list_folder(root: Path) -> Listing:
    listing = Listing([])
    files = sorted(p for p in root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))  # no .git, .DS_Store
    media = [p for p in files if p.suffix.lower() in MEDIA_SUFFIXES]
    captions = {p.with_suffix(".txt") for p in media}
    for path in files:
        if path not in captions and path.suffix.lower() not in MEDIA_SUFFIXES:
            suffix = path.suffix.lower() or "(none)"
            listing.ignored[suffix] = listing.ignored.get(suffix, 0) + 1
    for path in media:
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(errors="replace").strip() if caption_file.is_file() else None
        listing.sources.append(Source(str(path), caption))
    return listing


def _csv_rows(path: Path):
    with open(path, newline="", errors="replace") as f:
        rows = list(csv.reader(f))
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if "path" in header:
        names, rows, first = header, rows[1:], 2
    else:
        names, first = ["path", "caption", "start", "end"], 1
    for n, row in enumerate(rows, first):
        if not any(c.strip() for c in row):
            continue
        if len(row) > len(names):
            yield n, None, f"{len(row)} columns, expected at most {len(names)} ({', '.join(names)})"
        else:
            yield n, dict(zip(names, row)), None


def _jsonl_rows(path: Path):
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, f"not JSON ({e.msg})"
            continue
        yield (n, row, None) if isinstance(row, dict) else (n, None, "not a JSON object")


def _list_rows(listfile: Path, rows) -> Listing:
    listing = Listing([])
    for n, row, problem in rows:
        origin = f"{listfile}:{n}"
        if problem is None:
            try:
                listing.sources.append(_row_source(listfile.parent, row, origin))
                continue
            except ValueError as e:
                problem = str(e)
        listing.skipped[origin] = f"bad list row: {problem}"
    return listing


def _row_source(folder: Path, row: dict, origin: str) -> Source:
    path = str(row.get("path") or "").strip()
    if not path:
        raise ValueError("no path")
    caption = row.get("caption")
    caption = str(caption).strip() if caption is not None and str(caption).strip() else None
    start, end = (_seconds(row.get(k), k) for k in ("start", "end"))
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end {end} is not after start {start}")
    return Source(str(folder / path), caption, start, end, origin)


def _seconds(value, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{name} {value!r} must be a finite number of seconds >= 0")
    return seconds


# ---------------------------------------------------------------------------------------------
# Captioners: a video path -> its caption, for the samples that come without one.


@dataclass(frozen=True)
class Captioner:
    """Exactly one of ``function`` ("module:function", a callable taking the path and returning
    the caption) and ``command`` (a shell-style command line, run with the path as its last
    argument; the caption is its stdout). Plain strings, so worker processes can rebuild it."""

    function: str = ""
    command: str = ""

    def __post_init__(self) -> None:
        if self.function and self.command:
            raise VideoditError("give --captioner or --captioner-cmd, not both")
        if self.command and not shlex.split(self.command):
            raise VideoditError("--captioner-cmd: empty command")

    def __bool__(self) -> bool:
        return bool(self.function or self.command)

    def describe(self) -> str:
        return f"--captioner {self.function}" if self.function else f"--captioner-cmd {self.command!r}"

    def load(self) -> Callable[[str], str]:
        if self.function:
            return load_function(self.function)
        argv = shlex.split(self.command)

        def run(path: str) -> str:
            try:
                done = subprocess.run([*argv, path], capture_output=True, text=True, timeout=CAPTIONER_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise RuntimeError(f"cannot run {argv[0]}: {e}") from None
            if done.returncode:
                last = (done.stderr.strip().splitlines() or [""])[-1]
                raise RuntimeError(f"exit code {done.returncode}{': ' + last if last else ''}")
            return done.stdout

        return run


def load_function(spec: str) -> Callable[[str], str]:
    """'package.module:function' -> the function (one-line errors naming the spec)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise VideoditError(f"--captioner {spec!r}: expected MODULE:FUNCTION, e.g. "
                            "videodit.data.sources:synthworld_caption")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise VideoditError(f"--captioner {spec!r}: cannot import {module} ({e})") from None
    except AttributeError:
        raise VideoditError(f"--captioner {spec!r}: {module} has no {name}") from None
    if not callable(fn):
        raise VideoditError(f"--captioner {spec!r}: {name} is not callable")
    return fn


def synthworld_caption(path: str | Path) -> str:
    """The exact caption of a clip written by ``videodit world render``: the "caption" field of
    the ground-truth record NNNNN.json beside NNNNN.mp4."""
    record = Path(path).with_suffix(".json")
    try:
        caption = json.loads(record.read_text())["caption"]
    except FileNotFoundError:
        raise VideoditError(f"{record}: no SynthWorld ground-truth record beside the clip") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise VideoditError(f"{record}: not a SynthWorld ground-truth record (no \"caption\")") from None
    return str(caption)
