"""The worker: threads that keep the pipelines loaded, take queued jobs from the store one at a
time each, render them with videodit.prompting, and write the files.

Progress: every sampling run reports its steps (``on_step``); a job of several runs (windows of a
long video, a loop's closing bridge, an extension) counts the runs it expects (``expected_runs``),
so progress climbs 0 -> 99 across them, and 100 once the files are written. Cancelling (DELETE)
sets an event that the next step sees: the run stops there and the job's files are removed.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from videodit import prompting
from videodit.errors import VideoditError
from videodit.modes import DEFAULT_STRENGTH
from videodit.pipeline import Pipeline
from videodit.serve.store import Job, Store, atomic_path
from videodit.vae import TEMPORAL_STRIDE
from videodit.video import read_image, read_video, write_video

THUMBNAIL = "thumbnail.webp"
SPRITESHEET = "spritesheet.jpg"
VIDEO = "video.mp4"
VARIANTS = {"video": (VIDEO, "video/mp4"), "thumbnail": (THUMBNAIL, "image/webp"),
            "spritesheet": (SPRITESHEET, "image/jpeg")}
SPRITES = 16  # frames in a spritesheet, evenly spaced, in rows of SPRITE_COLUMNS
SPRITE_COLUMNS = 4
IDLE_WAIT_S = 1.0  # a worker re-reads the queue at least this often (notify wakes it sooner)


class Cancelled(Exception):
    pass


def seconds_text(frames: int, fps: float) -> str:
    """Seconds as the API writes them: 17 frames at 8 fps -> "2" (frame 0 is at time 0)."""
    return f"{(frames - 1) / fps:g}"


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.split("x")
    return int(width), int(height)


def _tracked(pipe: Pipeline, on_step: Callable[[int, int], None]) -> Pipeline:
    """A shallow copy of ``pipe`` (same modules) whose every sampling run reports to ``on_step``:
    prompting's modes call ``pipe.generate_latents`` and take no callback themselves."""
    tracked = copy.copy(pipe)
    tracked.generate_latents = functools.partial(pipe.generate_latents, on_step=on_step)
    return tracked


def _extension_step(window: int) -> int:
    """New frames per window of an extension (prompting._forward with the default overlap)."""
    T = (window - 1) // TEMPORAL_STRIDE + 1
    return window - (TEMPORAL_STRIDE * (max(1, T // 2) - 1) + 1)


def expected_runs(job: Job, window: int) -> int:
    """How many sampling runs ``render`` makes for ``job`` (for progress only)."""
    p = job.params
    if job.mode == "extend":
        return math.ceil(p["new_frames"] / _extension_step(window))
    if job.mode in ("remix", "edit"):
        return 1
    frames = p["frames"]
    if p.get("loop"):
        frames, _ = prompting.loop_lengths(frames, window)
    return 1 + len(prompting.window_seams(frames, window)) + (1 if p.get("loop") else 0)


def source_clip(store: Store, job: Job) -> np.ndarray:
    """The clip a remix, edit or extension starts from: an upload, or a completed video."""
    if job.params.get("input"):
        return read_video(store.root / "inputs" / job.params["input"]).frames
    path = store.video_dir(job.source_id) / VIDEO
    if not path.is_file():
        raise VideoditError(f"video {job.source_id} was deleted before this job ran")
    return read_video(path).frames


def render(pipe: Pipeline, store: Store, job: Job, on_step: Callable[[int, int], None]) -> np.ndarray:
    """The job's frames (F, H, W, 3) uint8; every mode goes through videodit.prompting's one sampler."""
    p = job.params
    size = parse_size(job.size)
    sampler = pipe.sampler(seed=p.get("seed", 0), steps=p.get("steps"), guidance=p.get("guidance"))
    common = dict(size=size, sampler=sampler, negative=p.get("negative_prompt", ""))
    tracked = _tracked(pipe, on_step)
    if job.mode in ("remix", "edit", "extend"):
        clip, _ = prompting.fit_frames(source_clip(store, job), size)
        if job.mode == "extend":
            return prompting.extend(tracked, job.prompt, clip, "forward", new_frames=p["new_frames"], **common)
        return prompting.edit(tracked, job.prompt, clip, p.get("strength", DEFAULT_STRENGTH), **common)
    image = None
    if job.mode == "animate":
        image, _ = prompting.fit_frames(read_image(store.root / "inputs" / p["input"])[None], size)
        image = image[0]
    frames = p["frames"]
    if p.get("loop"):
        return prompting.loop(tracked, job.prompt, frames=frames, image=image, **common)
    if frames > pipe.config.frames:
        return prompting.long_video(tracked, job.prompt, frames, image=image, **common)
    if image is not None:
        return prompting.animate(tracked, job.prompt, image, frames=frames, **common)
    return tracked(job.prompt, frames=frames, size=size, steps=p.get("steps"), guidance=p.get("guidance"),
                   seed=p.get("seed", 0), negative=p.get("negative_prompt", ""))


def write_outputs(folder: Path, frames: np.ndarray, fps: float) -> None:
    """video.mp4, a thumbnail (the middle frame) and a spritesheet, each written atomically."""
    from PIL import Image

    with atomic_path(folder / VIDEO) as tmp:
        write_video(tmp, frames, fps=fps)
    with atomic_path(folder / THUMBNAIL) as tmp:
        Image.fromarray(frames[len(frames) // 2]).save(tmp, lossless=True)
    picks = frames[np.linspace(0, len(frames) - 1, min(SPRITES, len(frames))).round().astype(int)]
    rows = math.ceil(len(picks) / SPRITE_COLUMNS)
    F, H, W, _ = picks.shape
    sheet = np.zeros((rows * H, SPRITE_COLUMNS * W, 3), np.uint8)
    for i, frame in enumerate(picks):
        r, c = divmod(i, SPRITE_COLUMNS)
        sheet[r * H:(r + 1) * H, c * W:(c + 1) * W] = frame
    with atomic_path(folder / SPRITESHEET) as tmp:
        Image.fromarray(sheet).save(tmp, quality=90)


class Worker:
    """``threads`` worker threads over one store and the loaded pipelines (name -> Pipeline)."""

    def __init__(self, store: Store, pipes: dict[str, Pipeline], threads: int = 1):
        self.store, self.pipes, self.threads = store, pipes, threads
        self._wake = threading.Condition()
        self._running: dict[str, threading.Event] = {}  # video id -> its cancel event
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> list[str]:
        """Queue again what a dead server left in progress, then start; returns those ids."""
        requeued = self.store.requeue_interrupted()
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"videodit-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return requeued

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for event in list(self._running.values()):
            event.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel(self, video_id: str) -> None:
        event = self._running.get(video_id)
        if event is not None:
            event.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim()
            if job is None:
                with self._wake:
                    self._wake.wait(IDLE_WAIT_S)
                continue
            self._running[job.id] = cancel = threading.Event()
            try:
                self._run(job, cancel)
            except Exception:  # the store itself failed (a full disk...): log it, keep the thread alive
                traceback.print_exc(file=sys.stderr)
            finally:
                self._running.pop(job.id, None)

    def _run(self, job: Job, cancel: threading.Event) -> None:
        pipe = self.pipes[job.model]
        state = {"runs_done": 0, "progress": 0, "runs": 1}

        def on_step(done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled
            progress = min(99, int(100 * (state["runs_done"] + done / total) / state["runs"]))
            if done == total:
                state["runs_done"] += 1
            if progress > state["progress"]:
                state["progress"] = progress
                self.store.set_progress(job.id, progress)

        try:
            state["runs"] = max(1, expected_runs(job, pipe.config.frames))
            frames = render(pipe, self.store, job, on_step)
            if cancel.is_set():
                raise Cancelled
            write_outputs(self.store.video_dir(job.id), frames, pipe.config.fps)
        except Cancelled:
            if self._stop.is_set():
                return  # shutting down: the job stays in progress and is queued again on restart
            self.store.remove_files(job.id)
            return
        except VideoditError as e:
            self.store.fail(job.id, "invalid_request", " ".join(str(e).split()))
            return
        except Exception as e:  # a bug: the job fails, the worker lives on, the traceback is logged
            traceback.print_exc(file=sys.stderr)
            self.store.fail(job.id, "internal_error", f"{type(e).__name__}: {e}")
            return
        if not self.store.complete(job.id, seconds_text(len(frames), pipe.config.fps)):
            self.store.remove_files(job.id)  # deleted while the files were being written
