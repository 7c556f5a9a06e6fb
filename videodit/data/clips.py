"""One training clip from one source (``videodit prepare``): decode, resample, pick a start away
from scene cuts, resize to a size bucket. Runs in worker processes; everything it returns or
raises is picklable.

  1. Decode with PyAV, keeping only the frames the target rate shows: output frame k, at
     ``start + k / fps`` seconds, is the source frame on screen then (the last one whose
     timestamp is not later), so 30, 25, 12 or variable-rate sources and GIF delays all map to
     ``fps``. Each kept frame is scaled by swscale straight to the size that covers its bucket.
  2. Scene cuts: a cut is between two resampled frames whose mean absolute grey-level
     difference exceeds ``scene_cut`` (0..1); the clip is the cut-free stretch of ``frames``
     frames nearest the middle of the source.
  3. Centre-crop to the bucket: the --sizes entry nearest in aspect ratio (|log ratio|).
Images (IMAGE_SUFFIXES) are 1-frame clips with no duration filters.

A source that cannot make a clip raises ``Skip(kind, reason)``; the kinds are the filters the
report counts (SKIP_KINDS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videodit.errors import VideoditError
from videodit.video import DEFAULT_FPS, IMAGE_SUFFIXES, read_image
from videodit.world.scene import parse_size

RESIZE_MODES = ("bucket", "crop")
# Kinds of skipped sources, in the order the report lists them.
SKIP_KINDS = ("bad list row", "unreadable", "truncated", "no caption", "captioner failed", "too short",
              "too long", "scene cuts")
_TIME_EPS = 1e-3  # seconds: a frame stamped within 1 ms after an output time counts as on screen


@dataclass(frozen=True)
class ClipConfig:
    fps: float = field(default=DEFAULT_FPS, metadata={
        "help": "frame rate clips are resampled to (the model's rate)", "min": 0, "min_exclusive": True,
        "group": "clips"})
    frames: int = field(default=17, metadata={
        "help": "frames per video clip, 4k+1 (images are 1 frame)", "min": 1, "group": "clips"})
    sizes: tuple[str, ...] = field(default=("64x64",), metadata={
        "help": "size buckets WxH, as for `videodit train --sizes`", "group": "clips"})
    resize: str = field(default="bucket", metadata={
        "help": "bucket: scale to cover the --sizes entry nearest in aspect ratio, then centre-crop; "
                "crop: the same to the one size --sizes names, whatever the aspect ratio",
        "choices": RESIZE_MODES, "group": "clips"})
    min_seconds: float = field(default=0.0, metadata={
        "help": "skip videos shorter than this", "min": 0, "group": "filters"})
    max_seconds: float = field(default=0.0, metadata={
        "help": "skip videos longer than this (0 = no limit)", "min": 0, "group": "filters"})
    scene_cut: float = field(default=0.3, metadata={
        "help": "scene-cut threshold: mean absolute grey difference (0..1) between consecutive resampled "
                "frames; clips avoid cuts (0 = no cut detection)", "min": 0, "max": 1, "group": "filters"})

    def check(self) -> None:
        if (self.frames - 1) % 4:
            raise VideoditError(f"--frames {self.frames}: must be 4k+1 (1, 5, 9, 17, 33, ...)")
        if not self.sizes:
            raise VideoditError("--sizes: give at least one WxH")
        for s in self.sizes:
            parse_size(s, name="--sizes")
        if self.resize == "crop" and len(set(self.sizes)) > 1:
            raise VideoditError(f"--resize crop: crops to one size; --sizes names {len(self.sizes)}")
        if self.max_seconds and self.max_seconds < self.min_seconds:
            raise VideoditError(f"--max-seconds {self.max_seconds}: below --min-seconds {self.min_seconds}")

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [parse_size(s, name="--sizes") for s in self.sizes]


@dataclass
class Clip:
    frames: np.ndarray   # (F, H, W, 3) uint8 (layouts: videodit/video.py)
    start: float         # seconds into the source
    bucket: str          # "WxHxF"


class Skip(Exception):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def pick_size(width: float, height: float, cfg: ClipConfig) -> tuple[int, int]:
    """The bucket (w, h) for a source of ``width`` x ``height`` display pixels."""
    shapes = cfg.shapes
    if cfg.resize == "crop":
        return shapes[0]
    aspect = math.log(width / height)
    return min(shapes, key=lambda s: abs(math.log(s[0] / s[1]) - aspect))  # first listed on ties


def cover_size(width: float, height: float, target: tuple[int, int]) -> tuple[int, int]:
    """The smallest scaling of width x height that covers ``target`` (w, h) (then centre-cropped)."""
    scale = max(target[0] / width, target[1] / height)
    return max(target[0], round(width * scale)), max(target[1], round(height * scale))


def centre_crop(frame: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) -> (h, w, 3) centred, target = (w, h)."""
    H, W = frame.shape[:2]
    y0, x0 = (H - target[1]) // 2, (W - target[0]) // 2
    return frame[y0:y0 + target[1], x0:x0 + target[0]]


def _scale(frame, size: tuple[int, int], source_size: tuple[int, int]) -> np.ndarray:
    """An av.VideoFrame -> (h, w, 3) uint8 RGB of ``size`` (w, h): area averaging when shrinking."""
    from av.video.reformatter import Interpolation

    # Full horizontal chroma interpolation and accurate rounding, as videodit/video.py reads.
    shrink = size[0] < source_size[0]
    interpolation = ((Interpolation.AREA if shrink else Interpolation.BICUBIC) | Interpolation.FULL_CHR_H_INT
                     | Interpolation.ACCURATE_RND)
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], interpolation=interpolation,
                            src_color_range=frame.color_range)


def make_clip(path: str, cfg: ClipConfig, start: float | None = None, end: float | None = None) -> Clip:
    """The clip of one source (see the module docstring); raises Skip."""
    p = Path(path)
    if not p.is_file():
        raise Skip("unreadable", "no such file")
    if p.stat().st_size == 0:
        raise Skip("unreadable", "empty file (0 bytes)")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return _image_clip(p, cfg)
    return _video_clip(p, cfg, start or 0.0, math.inf if end is None else end)


def _image_clip(path: Path, cfg: ClipConfig) -> Clip:
    import av

    try:
        rgb = read_image(path)
    except VideoditError as e:
        raise Skip("unreadable", str(e).removeprefix(f"{path}: ")) from None
    size = pick_size(rgb.shape[1], rgb.shape[0], cfg)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    scaled = _scale(frame, cover_size(rgb.shape[1], rgb.shape[0], size), (rgb.shape[1], rgb.shape[0]))
    return Clip(centre_crop(scaled, size)[None].copy(), 0.0, f"{size[0]}x{size[1]}x1")


def _video_clip(path: Path, cfg: ClipConfig, start: float, end: float) -> Clip:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        head = path.read_bytes()[:12]
        hint = " (an MP4/MOV cut off before its index: truncated)" if head[4:8] == b"ftyp" else ""
        raise Skip("truncated" if hint else "unreadable",
                   f"cannot open as a video{hint}: {getattr(e, 'strerror', None) or e}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise Skip("unreadable", f"no video stream (streams found: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        sar = float(stream.sample_aspect_ratio or 1) or 1.0  # non-square pixels: display width = w * sar
        declared = (container.duration / 1e6) if container.duration else None
        if cfg.max_seconds and declared and declared - start > cfg.max_seconds and end == math.inf:
            raise Skip("too long", f"{declared:.1f} s, longer than --max-seconds {cfg.max_seconds:g}")
        size = pick_size(ctx.width * sar, ctx.height, cfg)
        cover = cover_size(ctx.width * sar, ctx.height, size)
        rate = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
        frames, decoded, failure = _resample(container, stream, cfg.fps, start, end, cover, size, rate)
        declared_frames = stream.frames
    if failure is not None:
        raise Skip("truncated", f"decoding failed after {decoded} frames: {getattr(failure, 'strerror', None) or failure}")
    if not decoded:
        raise Skip("unreadable", "no decodable video frames")
    if end == math.inf and declared_frames and decoded < declared_frames - max(1, declared_frames // 50):
        raise Skip("truncated", f"the container declares {declared_frames} frames but only {decoded} decode")
    seconds = len(frames) / cfg.fps
    if seconds < cfg.min_seconds:
        raise Skip("too short", f"{seconds:.2f} s, shorter than --min-seconds {cfg.min_seconds:g}")
    if cfg.max_seconds and seconds > cfg.max_seconds + 1 / cfg.fps:
        raise Skip("too long", f"{seconds:.1f} s, longer than --max-seconds {cfg.max_seconds:g}")
    if len(frames) < cfg.frames:
        raise Skip("too short", f"{len(frames)} frames at {cfg.fps:g} fps ({seconds:.2f} s); a clip needs "
                                f"{cfg.frames} ({cfg.frames / cfg.fps:.2f} s)")
    video = np.stack(frames)  # (N, h, w, 3)
    first = clip_start(video, cfg.frames, cfg.scene_cut)
    return Clip(video[first:first + cfg.frames].copy(), start + first / cfg.fps, f"{size[0]}x{size[1]}x{cfg.frames}")


def _resample(container, stream, fps: float, start: float, end: float, cover, size, rate: float):
    """Frames on screen at start + k / fps (< end), scaled to ``cover`` and cropped to ``size``;
    also the number of source frames decoded and the decoding error that stopped it, if any."""
    import av

    out: list[np.ndarray] = []
    source_size = (stream.codec_context.width, stream.codec_context.height)
    shown, shown_rgb, t_first, decoded, failure = None, None, None, 0, None
    step, k = 1.0 / fps, 0

    def emit_until(t: float) -> None:
        # Output times before ``t`` show the frame on screen (``shown``).
        nonlocal k, shown_rgb
        while start + k * step < min(t, end) - _TIME_EPS:
            if shown_rgb is None:
                shown_rgb = centre_crop(_scale(shown, cover, source_size), size)
            out.append(shown_rgb)
            k += 1

    try:
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else decoded / rate
            t_first = t if t_first is None else t_first
            t -= t_first  # seconds since the first frame: some streams start at a non-zero time
            decoded += 1
            if shown is not None:
                emit_until(t)
            elif t > start + _TIME_EPS:
                k = math.ceil((t - start) / step - _TIME_EPS)  # nothing was on screen before this frame
            shown, shown_rgb = frame, None
            last_t, last_duration = t, (float(frame.duration * frame.time_base)
                                        if frame.duration and frame.time_base else 1.0 / rate)
            if start + k * step >= end:
                break
    except (av.FFmpegError, OSError) as e:
        failure = e
    if shown is not None and failure is None:
        emit_until(last_t + last_duration)
    return out, decoded, failure


def scene_cuts(video: np.ndarray, threshold: float) -> np.ndarray:
    """(N, H, W, 3) uint8 -> bool (N,): True at frame k when k starts a new scene (a cut between
    frames k - 1 and k). Frame 0 never does."""
    grey = video.astype(np.float32).mean(axis=-1) / 255.0  # (N, H, W)
    diff = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # (N - 1,)
    return np.concatenate([[False], diff > threshold]) if threshold else np.zeros(len(video), bool)


def clip_start(video: np.ndarray, frames: int, threshold: float) -> int:
    """The first frame of the cut-free ``frames``-frame stretch nearest the middle; Skip when
    every stretch holds a cut."""
    cuts = scene_cuts(video, threshold)
    n_starts = len(video) - frames + 1
    # cut_in[s]: cuts at frames s + 1 .. s + frames - 1 (a cut at s itself is the stretch's start).
    csum = np.concatenate([[0], np.cumsum(cuts)])
    cut_in = csum[np.arange(n_starts) + frames] - csum[np.arange(n_starts) + 1]
    free = np.flatnonzero(cut_in == 0)
    if not len(free):
        where = ", ".join(f"{k / max(len(video), 1):.0%}" for k in np.flatnonzero(cuts)[:5])
        raise Skip("scene cuts", f"no {frames}-frame stretch without a scene cut ({int(cuts.sum())} cuts, "
                                 f"at {where} of the video; --scene-cut {threshold:g})")
    middle = (n_starts - 1) / 2
    return int(free[np.argmin(np.abs(free - middle))])
