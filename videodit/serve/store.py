"""Jobs on disk: one SQLite table (stdlib sqlite3) and one folder per video under the data folder.

    DIR/videodit.sqlite3      the jobs (the queue is the rows whose status is "queued")
    DIR/videos/ID/            video.mp4, thumbnail.webp, spritesheet.jpg once completed
    DIR/inputs/ID.EXT         the uploaded image or clip a job was made from

Durability: SQLite in WAL mode with synchronous=FULL, so a row written is a row kept through a
kill -9; files are written to a temporary name in their folder and renamed (``atomic_path``),
so a file under its final name is complete. A job becomes "completed" only after its files are in
place. On start, jobs left "in_progress" by a dead server are queued again under the same id
(``requeue_interrupted``); one interrupted ``MAX_ATTEMPTS`` times is failed instead, so a
request that kills the server cannot kill it forever.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

STATUSES = ("queued", "in_progress", "completed", "failed")
MAX_ATTEMPTS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order: the queue's order and the list's
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,                    -- hash of the API key that made it ("" without keys)
    idempotency_key TEXT,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,                     -- text | animate | remix | edit | extend
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    size TEXT NOT NULL,                     -- WxH
    seconds TEXT NOT NULL,
    prompt TEXT NOT NULL,
    source_id TEXT,                         -- the video remixed, edited or extended
    params TEXT NOT NULL,                   -- JSON: frames, seed, steps, guidance, ... (worker.render)
    error TEXT,                             -- JSON: {"code", "message"}
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS videos_idempotency ON videos (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    owner: str
    idempotency_key: str | None
    model: str
    mode: str
    status: str
    progress: int
    created_at: int
    completed_at: int | None
    size: str
    seconds: str
    prompt: str
    source_id: str | None
    params: dict
    error: dict | None
    attempts: int

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        data = dict(row)
        data["params"] = json.loads(data["params"])
        data["error"] = json.loads(data["error"]) if data["error"] else None
        return cls(**data)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` with the same suffix (writers pick the format by
    suffix); on success it is fsynced and renamed to ``path``, on failure removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


class Store:
    """The job table and the data folder. Safe to share between threads (one connection, one lock)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "videos").mkdir(parents=True, exist_ok=True)
        (self.root / "inputs").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.root / "videodit.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def video_dir(self, video_id: str) -> Path:
        return self.root / "videos" / video_id

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # -- creating and reading -------------------------------------------------------------------
    def add(self, *, owner: str, model: str, mode: str, size: str, seconds: str, prompt: str, params: dict,
            source_id: str | None = None, idempotency_key: str | None = None, video_id: str | None = None) -> Job:
        """A new queued job; with an ``idempotency_key`` the owner used before, that earlier job."""
        video_id = video_id or f"video_{uuid.uuid4().hex}"
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO videos (id, owner, idempotency_key, model, mode, status, created_at, size, seconds,"
                    " prompt, source_id, params) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (video_id, owner, idempotency_key, model, mode, int(time.time()), size, seconds, prompt,
                     source_id, json.dumps(params)))
            except sqlite3.IntegrityError:
                if idempotency_key is None:
                    raise
                row = self._db.execute("SELECT * FROM videos WHERE owner = ? AND idempotency_key = ?",
                                       (owner, idempotency_key)).fetchone()
                return Job.from_row(row)
            return Job.from_row(self._db.execute("SELECT * FROM videos WHERE id = ?", (video_id,)).fetchone())

    def get(self, video_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when there is none or it belongs to another owner (None: any owner)."""
        rows = self._query("SELECT * FROM videos WHERE id = ?", (video_id,))
        job = Job.from_row(rows[0]) if rows else None
        return job if job is not None and owner in (None, job.owner) else None

    def list(self, owner: str, limit: int, after: Job | None = None, order: str = "desc") -> tuple[list[Job], bool]:
        """Up to ``limit`` jobs of ``owner`` after the job ``after`` in creation order (newest first
        for "desc"), and whether more follow."""
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        where, args = "owner = ?", [owner]
        if after is not None:
            where += f" AND seq {op} ?"
            args.append(after.seq)
        rows = self._query(f"SELECT * FROM videos WHERE {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1))
        return [Job.from_row(r) for r in rows[:limit]], len(rows) > limit

    def pending(self) -> int:
        return self._query("SELECT COUNT(*) FROM videos WHERE status IN ('queued', 'in_progress')")[0][0]

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM videos GROUP BY status")
        return {status: 0 for status in STATUSES} | {r[0]: r[1] for r in rows}

    # -- the worker's side ----------------------------------------------------------------------
    def claim(self) -> Job | None:
        """Take the oldest queued job, marking it in_progress (one claimant wins)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM videos WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE videos SET status = 'in_progress', progress = 0, attempts = attempts + 1 "
                             "WHERE id = ?", (row["id"],))
            return Job.from_row(self._db.execute("SELECT * FROM videos WHERE id = ?", (row["id"],)).fetchone())

    def set_progress(self, video_id: str, progress: int) -> None:
        self._change("UPDATE videos SET progress = ? WHERE id = ? AND status = 'in_progress'", (progress, video_id))

    def complete(self, video_id: str, seconds: str) -> bool:
        """Mark done (its files are in place); False when the job was deleted meanwhile."""
        return self._change("UPDATE videos SET status = 'completed', progress = 100, completed_at = ?, seconds = ?"
                            " WHERE id = ? AND status = 'in_progress'", (int(time.time()), seconds, video_id)) == 1

    def fail(self, video_id: str, code: str, message: str) -> None:
        self._change("UPDATE videos SET status = 'failed', completed_at = ?, error = ? WHERE id = ?",
                     (int(time.time()), json.dumps({"code": code, "message": message}), video_id))

    def requeue_interrupted(self) -> list[str]:
        """Queue again the jobs a dead server left in progress; fail those tried MAX_ATTEMPTS times."""
        with self._lock:
            rows = self._db.execute("SELECT id, attempts FROM videos WHERE status = 'in_progress'").fetchall()
        requeued = []
        for row in rows:
            if row["attempts"] >= MAX_ATTEMPTS:
                self.fail(row["id"], "interrupted", f"the server stopped during this job {row['attempts']} times")
            else:
                self._change("UPDATE videos SET status = 'queued', progress = 0 WHERE id = ?", (row["id"],))
                requeued.append(row["id"])
        return requeued

    def delete(self, video_id: str) -> None:
        """Remove the row, then the files (a crash in between leaves files no row names, never the
        reverse); the job's input is removed with it."""
        job = self.get(video_id)
        self._change("DELETE FROM videos WHERE id = ?", (video_id,))
        self.remove_files(video_id, job.params.get("input") if job else None)

    def remove_files(self, video_id: str, input_name: str | None = None) -> None:
        shutil.rmtree(self.video_dir(video_id), ignore_errors=True)
        self.remove_input(input_name)

    def remove_input(self, name: str | None) -> None:
        if name:
            (self.root / "inputs" / name).unlink(missing_ok=True)
