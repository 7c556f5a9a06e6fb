"""Prompting with images and videos: every mode is clean latent frames held at t = 0 during
sampling (``videodit.sample.FrameCondition``), with a different frame mask. docs/PROMPTING.md.

    pipe = Pipeline.load()
    animate(pipe, prompt, image)                     # the image becomes frame 0
    animate(pipe, prompt, image, last_image=img2)    # connect two images
    extend(pipe, prompt, clip, "forward")            # clip + new frames (or new frames + clip)
    connect(pipe, prompt, clip_a, clip_b)            # A + a generated transition + B
    bridge(pipe, prompt, clip_a, clip_b)             # the transition alone, from A[-1] to B[0]
    loop(pipe, prompt)                               # the last frame leads back to the first
    edit(pipe, new_prompt, clip, strength=0.6)       # SDEdit: keep the motion, change the content
    long_video(pipe, prompt, frames=65)              # sliding windows beyond the trained length
Every function returns uint8 frames (F, H, W, 3) and takes ``sampler`` (None = the bundle's
defaults, see ``Pipeline.sampler``) and a ``negative`` prompt.

Where a condition's latents come from (the VAE is causal, vae.py):
- the first latent frame is one frame encoded alone, so an image or a clip's last frame put at
  frame 0 is exact, and so is a leading clip of 4j + 1 frames (its j + 1 latents are the same
  whatever follows them): frame 0, extension forward and every sliding window are exact;
- a trailing latent frame covers 4 frames and depends on every earlier frame, which are not
  known yet. It is made by encoding a window-long clip whose unknown frames are copies of the
  first given frame, then keeping the trailing latents: the last image (4 frames of it), the
  head of a clip to extend backward, the start of B in connect and of the loop.
After decoding, an extension's original clip replaces its decoded frames (the output contains the
clip untouched). The image at frame 0 is exact in latent space, but its pixels replace the decoded
frame only with ``paste_image``: measured with a half-trained VAE (29.4 dB on frame 0), the mean
frame difference from frame 0 to frame 1 was 0.99 in SynthWorld clips, 0.81 when decoded, and
2.31 with the input pasted over the decoded frame 0: a visible step (docs/PROMPTING.md).

Windows: the model knows clips of its trained length (the bundle's ``frames``, 17). A longer
video is made window by window; each window is held on the last ``overlap`` latent frames of
what exists (re-encoded from pixels so that the window starts with a lone first frame, as every
training clip does) and adds 4 (T - overlap) frames. Window i is sampled with seed + i.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch

from videodit.errors import VideoditError
from videodit.modes import DEFAULT_STRENGTH, DIRECTIONS
from videodit.pipeline import Pipeline
from videodit.sample import FrameCondition, SamplerConfig
from videodit.vae import TEMPORAL_STRIDE
from videodit.video import frames_to_tensor, read_image, read_video

MIN_BRIDGE = 2 * TEMPORAL_STRIDE + 1  # a window held at both ends needs a free latent frame between them


# ---------------------------------------------------------------------------------------------
# Inputs: fit images and clips to the output size
# ---------------------------------------------------------------------------------------------

def fit_frames(frames: np.ndarray, size: tuple[int, int], name: str = "input") -> tuple[np.ndarray, str | None]:
    """Scale (F, H, W, 3) uint8 so it covers ``size`` = (width, height), then centre-crop. Returns
    the frames and a one-line note when they changed (None when they already fit)."""
    from PIL import Image

    width, height = size
    F, H, W, _ = frames.shape
    if (W, H) == (width, height):
        return frames, None
    scale = max(width / W, height / H)
    sw, sh = max(width, round(W * scale)), max(height, round(H * scale))
    left, top = (sw - width) // 2, (sh - height) // 2
    out = np.stack([np.asarray(Image.fromarray(f).resize((sw, sh), Image.Resampling.LANCZOS)
                               .crop((left, top, left + width, top + height))) for f in frames])
    return out, f"{name} is {W}x{H}; resized and centre-cropped to {width}x{height}"


def load_image(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """An image file fitted to ``size``: (H, W, 3) uint8 and the fit note (see fit_frames)."""
    frames, note = fit_frames(read_image(path)[None], size, str(path))
    return frames[0], note


def load_clip(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """A video file (anything read_video reads) fitted to ``size``: (F, H, W, 3) uint8 and the note."""
    return fit_frames(read_video(path).frames, size, str(path))


def _fitted(frames: np.ndarray, size: tuple[int, int], name: str, min_frames: int = 1) -> np.ndarray:
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3):
        desc = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise VideoditError(f"{name}: expected uint8 frames (F, H, W, 3), got {desc}")
    if len(frames) < min_frames:
        raise VideoditError(f"{name}: has {len(frames)} frame(s), needs at least {min_frames}")
    frames, note = fit_frames(frames, size, name)
    if note:
        warnings.warn(note, stacklevel=3)
    return frames


def _image(image: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.ndim == 3):
        raise VideoditError(f"{name}: expected a uint8 image (H, W, 3), got "
                            f"{getattr(image, 'shape', type(image).__name__)}")
    return _fitted(image[None], size, name)[0]


# ---------------------------------------------------------------------------------------------
# Conditions: latents for given frames, and the mask that holds them
# ---------------------------------------------------------------------------------------------

def encode_frames(pipe: Pipeline, frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3), F = 4k + 1 -> normalised latents (1, c, k + 1, h, w)."""
    # A copy: frames read from files can be read-only arrays, which torch.from_numpy warns about.
    return pipe.encode_video(frames_to_tensor(np.array(frames))[None]).float()


def lead_latents(pipe: Pipeline, video: np.ndarray, latents: int) -> tuple[torch.Tensor, int]:
    """The last ``4 (n - 1) + 1`` frames of ``video`` encoded, n = min(latents, what the video
    holds): exact leading latents for a window that continues the video. Returns (1, c, n, h, w)
    and the number of frames they cover."""
    n = min(latents, (len(video) - 1) // TEMPORAL_STRIDE + 1)
    covered = TEMPORAL_STRIDE * (n - 1) + 1
    return encode_frames(pipe, video[len(video) - covered:]), covered


def trail_latents(pipe: Pipeline, chunk: np.ndarray, window: int) -> torch.Tensor:
    """Trailing latents (1, c, m, h, w) for a window of ``window`` frames ending on ``chunk``
    (4m frames). The frames before it are unknown; copies of the chunk's first frame stand in."""
    m = len(chunk) // TEMPORAL_STRIDE
    if m < 1 or len(chunk) % TEMPORAL_STRIDE or window - len(chunk) < 1:
        raise VideoditError(f"trail_latents: chunk of {len(chunk)} frames in a window of {window}; "
                            f"need a multiple of {TEMPORAL_STRIDE} frames shorter than the window")
    prefix = np.repeat(chunk[:1], window - len(chunk), axis=0)
    return encode_frames(pipe, np.concatenate([prefix, chunk]))[:, :, -m:]


def head_chunk(clip: np.ndarray) -> np.ndarray:
    """The first 4 frames of a clip, its last frame repeated when it is shorter (an image)."""
    chunk = clip[:TEMPORAL_STRIDE]
    return np.concatenate([chunk, np.repeat(chunk[-1:], TEMPORAL_STRIDE - len(chunk), axis=0)])


def condition(shape: tuple[int, ...], lead: torch.Tensor | None = None,
              trail: torch.Tensor | None = None) -> FrameCondition:
    """Hold ``lead`` latents (1, c, j, h, w) at the start and ``trail`` (1, c, m, h, w) at the end
    of a latent sequence of ``shape`` (c, T, h, w)."""
    c, T, h, w = shape
    given = [t for t in (lead, trail) if t is not None]
    if not given:
        raise VideoditError("condition: give lead or trail latents (or none at all: no FrameCondition)")
    latents = torch.zeros(1, c, T, h, w, device=given[0].device)
    mask = torch.zeros(T, dtype=torch.bool, device=given[0].device)
    if lead is not None:
        latents[:, :, : lead.shape[2]] = lead
        mask[: lead.shape[2]] = True
    if trail is not None:
        latents[:, :, T - trail.shape[2]:] = trail
        mask[T - trail.shape[2]:] = True
    if mask.all():
        raise VideoditError(f"every one of the {T} latent frames is given; nothing is left to generate "
                            f"(use a longer window)")
    return FrameCondition(latents, mask)


# ---------------------------------------------------------------------------------------------
# One window
# ---------------------------------------------------------------------------------------------

def _window(pipe: Pipeline, prompt: str, frames: int, size: tuple[int, int], sampler: SamplerConfig,
            negative: str, cond: FrameCondition | None) -> np.ndarray:
    """Sample ``frames`` frames held on ``cond`` and decode them: (frames, H, W, 3) uint8."""
    latents = pipe.generate_latents([prompt], frames=frames, size=size, sampler=sampler, negative=negative, cond=cond)
    return pipe.decode_latents(latents)[0]


def _settings(pipe: Pipeline, sampler: SamplerConfig | None, size: tuple[int, int] | None,
              window: int | None) -> tuple[SamplerConfig, tuple[int, int], int]:
    sampler = sampler or pipe.config.sampler
    size = tuple(size or pipe.config.size)
    window = window or pipe.config.frames
    pipe.latent_shape(window, size)  # a clear error for a window or size the model cannot take
    return sampler, size, window


def _reseed(sampler: SamplerConfig, i: int) -> SamplerConfig:
    return dataclasses.replace(sampler, seed=sampler.seed + i)


def _overlap(window: int, overlap: int | None) -> int:
    T = (window - 1) // TEMPORAL_STRIDE + 1
    overlap = max(1, T // 2) if overlap is None else overlap
    if not 1 <= overlap < T:
        raise VideoditError(f"overlap {overlap}: must be 1 .. {T - 1} latent frames for a window of {window} frames")
    return overlap


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------

def animate(pipe: Pipeline, prompt: str, image: np.ndarray | None = None, last_image: np.ndarray | None = None, *,
            frames: int | None = None, size: tuple[int, int] | None = None, sampler: SamplerConfig | None = None,
            negative: str = "", paste_image: bool = False) -> np.ndarray:
    """Start on ``image`` (latent frame 0 is exactly the image's), end on ``last_image`` (the last 4
    frames are held on a still of it), or both. One window of ``frames`` (default: the bundle's).
    Frame 0 is the VAE's decoding of the image; ``paste_image`` writes the image itself there
    (exact, but frame 1 continues from the decoding: a step as large as the VAE's error)."""
    if image is None and last_image is None:
        raise VideoditError("animate: give an image, a last image or both")
    sampler, size, frames = _settings(pipe, sampler, size, frames)
    if frames == 1:
        raise VideoditError("frames=1: the image would be the whole video, nothing is left to generate; "
                            f"animate with {TEMPORAL_STRIDE + 1} frames or more")
    shape = pipe.latent_shape(frames, size)
    first = None if image is None else _image(image, size, "image")
    lead = None if first is None else encode_frames(pipe, first[None])
    trail = None
    if last_image is not None:
        if frames < TEMPORAL_STRIDE + 1:
            raise VideoditError(f"frames={frames}: a last image needs at least {TEMPORAL_STRIDE + 1} frames")
        last = _image(last_image, size, "last image")
        trail = trail_latents(pipe, np.repeat(last[None], TEMPORAL_STRIDE, axis=0), frames)
    video = _window(pipe, prompt, frames, size, sampler, negative, condition(shape, lead, trail))
    if paste_image and first is not None:
        video[0] = first
    return video


def _forward(pipe: Pipeline, prompt: str, video: np.ndarray, total: int, window: int, overlap: int,
             size: tuple[int, int], sampler: SamplerConfig, negative: str, first_seed: int) -> np.ndarray:
    """Append windows to ``video`` until it has ``total`` frames; window i gets seed + first_seed + i."""
    shape = pipe.latent_shape(window, size)
    i = first_seed
    while len(video) < total:
        lead, covered = lead_latents(pipe, video, overlap)
        out = _window(pipe, prompt, window, size, _reseed(sampler, i), negative, condition(shape, lead=lead))
        video = np.concatenate([video, out[covered:]])  # the decoded context is dropped, the pixels kept
        i += 1
    return video[:total]


def _backward(pipe: Pipeline, prompt: str, video: np.ndarray, total: int, window: int, overlap: int,
              size: tuple[int, int], sampler: SamplerConfig, negative: str) -> np.ndarray:
    """Prepend windows to ``video`` until it has ``total`` frames."""
    shape = pipe.latent_shape(window, size)
    i = 0
    while len(video) < total:
        m = min(overlap, len(video) // TEMPORAL_STRIDE)
        trail = trail_latents(pipe, video[: TEMPORAL_STRIDE * m], window)
        out = _window(pipe, prompt, window, size, _reseed(sampler, i), negative, condition(shape, trail=trail))
        video = np.concatenate([out[: window - TEMPORAL_STRIDE * m], video])
        i += 1
    return video[len(video) - total:]


def window_seams(frames: int, window: int, overlap: int | None = None) -> list[int]:
    """The first frame of every window after the first in ``long_video(frames, window, overlap)``."""
    overlap = _overlap(window, overlap)
    step = window - (TEMPORAL_STRIDE * (overlap - 1) + 1)  # new frames per window (lead_latents)
    return list(range(window, frames, step))


def long_video(pipe: Pipeline, prompt: str, frames: int, *, image: np.ndarray | None = None,
               window: int | None = None, overlap: int | None = None, size: tuple[int, int] | None = None,
               sampler: SamplerConfig | None = None, negative: str = "", paste_image: bool = False) -> np.ndarray:
    """``frames`` (4k + 1) frames in windows of ``window`` frames (default: the bundle's trained
    length), each held on ``overlap`` latent frames of the video so far (default: half a window).
    With ``image``, the first window animates it (``paste_image``: see animate)."""
    sampler, size, window = _settings(pipe, sampler, size, window)
    overlap = _overlap(window, overlap)
    pipe.latent_shape(frames, size)
    first = min(window, frames)
    if image is None:
        video = _window(pipe, prompt, first, size, sampler, negative, None)
    else:
        video = animate(pipe, prompt, image, frames=first, size=size, sampler=sampler, negative=negative,
                        paste_image=paste_image)
    return _forward(pipe, prompt, video, frames, window, overlap, size, sampler, negative, 1)


def extend(pipe: Pipeline, prompt: str, clip: np.ndarray, direction: str = "forward", *,
           new_frames: int | None = None, window: int | None = None, overlap: int | None = None,
           size: tuple[int, int] | None = None, sampler: SamplerConfig | None = None,
           negative: str = "") -> np.ndarray:
    """The clip with ``new_frames`` (default: the window length - 1) generated after its end
    (forward) or before its start (backward); the clip's own frames are returned untouched."""
    if direction not in DIRECTIONS:
        raise VideoditError(f"extend direction {direction!r}: expected one of {DIRECTIONS}")
    sampler, size, window = _settings(pipe, sampler, size, window)
    overlap = _overlap(window, overlap)
    new_frames = window - 1 if new_frames is None else new_frames
    if new_frames < 1:
        raise VideoditError(f"extend frames {new_frames}: must be >= 1")
    if direction == "forward":
        clip = _fitted(clip, size, "clip")
        return _forward(pipe, prompt, clip, len(clip) + new_frames, window, overlap, size, sampler, negative, 0)
    clip = _fitted(clip, size, "clip to extend backward", min_frames=TEMPORAL_STRIDE)
    return _backward(pipe, prompt, clip, len(clip) + new_frames, window, overlap, size, sampler, negative)


def _bridge(pipe: Pipeline, prompt: str, before: np.ndarray, after: np.ndarray, window: int,
            size: tuple[int, int], sampler: SamplerConfig, negative: str) -> np.ndarray:
    if window < MIN_BRIDGE:
        raise VideoditError(f"window {window}: a transition needs at least {MIN_BRIDGE} frames")
    lead = encode_frames(pipe, before[-1:])
    trail = trail_latents(pipe, head_chunk(after), window)
    out = _window(pipe, prompt, window, size, sampler, negative,
                  condition(pipe.latent_shape(window, size), lead, trail))
    return out[: window - TEMPORAL_STRIDE + 1]


def bridge(pipe: Pipeline, prompt: str, before: np.ndarray, after: np.ndarray, *, frames: int | None = None,
           size: tuple[int, int] | None = None, sampler: SamplerConfig | None = None,
           negative: str = "") -> np.ndarray:
    """One window of ``frames`` (4k + 1 >= 9, default: the bundle's) from ``before``'s last frame
    to ``after``'s first, both as decoded: frame 0 is held on before[-1] (exact in latent space),
    the last 4 frames on after[:4], so after[0] is frame ``frames`` - 4, where this returns ends
    (``frames`` - 3 frames). connect and loop keep the frames between the two ends."""
    sampler, size, frames = _settings(pipe, sampler, size, frames)
    before, after = _fitted(before, size, "before"), _fitted(after, size, "after")
    return _bridge(pipe, prompt, before, after, frames, size, sampler, negative)


def connect(pipe: Pipeline, prompt: str, a: np.ndarray, b: np.ndarray, *, frames: int | None = None,
            size: tuple[int, int] | None = None, sampler: SamplerConfig | None = None,
            negative: str = "") -> np.ndarray:
    """Clip A, then ``frames`` - 5 generated frames leading from A's last frame into B's first
    (the inside of ``bridge``), then clip B. ``frames`` (4k + 1 >= 9, default: the bundle's)."""
    sampler, size, frames = _settings(pipe, sampler, size, frames)
    a, b = _fitted(a, size, "clip A"), _fitted(b, size, "clip B")
    return np.concatenate([a, _bridge(pipe, prompt, a, b, frames, size, sampler, negative)[1:-1], b])


def loop_lengths(frames: int, window: int) -> tuple[int, int]:
    """(frames of the first pass, window of the closing bridge) for a loop of ``frames`` frames:
    first + bridge - 5 = frames, both 4k + 1, the bridge as long as half the loop allows."""
    if frames < MIN_BRIDGE or (frames - 1) % TEMPORAL_STRIDE:
        raise VideoditError(f"loop frames={frames}: must be 4k+1 and at least {MIN_BRIDGE}")
    if window < MIN_BRIDGE:
        raise VideoditError(f"loop window {window}: must be at least {MIN_BRIDGE} frames")
    k = (frames - 1) // TEMPORAL_STRIDE + 1  # k_first + k_bridge, with frames = 4 k_first + 1, ...
    k_bridge = min(max(2, k // 2), (window - 1) // TEMPORAL_STRIDE, k - 1)
    return TEMPORAL_STRIDE * (k - k_bridge) + 1, TEMPORAL_STRIDE * k_bridge + 1


def loop(pipe: Pipeline, prompt: str, *, frames: int | None = None, image: np.ndarray | None = None,
         window: int | None = None, overlap: int | None = None, size: tuple[int, int] | None = None,
         sampler: SamplerConfig | None = None, negative: str = "", paste_image: bool = False) -> np.ndarray:
    """``frames`` frames whose last leads back to the first: a first pass V (from text, or
    animating ``image``, see animate for ``paste_image``), then a bridge from V's last frame into
    V's first 4 frames."""
    sampler, size, window = _settings(pipe, sampler, size, window)
    frames = frames or pipe.config.frames
    first, closing_window = loop_lengths(frames, window)
    video = long_video(pipe, prompt, first, image=image, window=window, overlap=overlap, size=size,
                       sampler=sampler, negative=negative, paste_image=paste_image)
    # seed + first: past every seed of the first pass (each of its windows adds at least one frame).
    closing = _bridge(pipe, prompt, video, video, closing_window, size, _reseed(sampler, first), negative)
    return np.concatenate([video, closing[1:-1]])


def edit(pipe: Pipeline, prompt: str, clip: np.ndarray, strength: float = DEFAULT_STRENGTH, *,
         size: tuple[int, int] | None = None, sampler: SamplerConfig | None = None,
         negative: str = "") -> np.ndarray:
    """SDEdit (Meng et al. 2022): encode the clip, move it to t = ``strength`` on the flow path
    with seeded noise, integrate from there to 0 under ``prompt``. 0 keeps the clip (up to the
    VAE), 1 ignores it. Returns as many frames as the clip has."""
    if not 0.0 <= strength <= 1.0:
        raise VideoditError(f"strength {strength}: must be in [0, 1] (0 keeps the clip, 1 ignores it)")
    sampler, size, _ = _settings(pipe, sampler, size, None)
    clip = _fitted(clip, size, "clip")
    F = len(clip)
    padded = -(-(F - 1) // TEMPORAL_STRIDE) * TEMPORAL_STRIDE + 1  # 4k + 1 >= F: repeat the last frame
    clip4 = np.concatenate([clip, np.repeat(clip[-1:], padded - F, axis=0)])
    pipe.check_memory(1, padded, size, sampler.guidance)  # clear errors before the clip is encoded
    latents = pipe.generate_latents([prompt], frames=padded, size=size, sampler=sampler, negative=negative,
                                    start=encode_frames(pipe, clip4), start_time=strength)
    return pipe.decode_latents(latents)[0][:F]
