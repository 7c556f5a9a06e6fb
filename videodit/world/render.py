"""Anti-aliased rasteriser for SynthWorld scenes: (F, H, W, 3) uint8 RGB.

Each object is rasterised with SUPERSAMPLE x SUPERSAMPLE samples per pixel inside a small window
that follows it from frame to frame (all frames at once, no per-pixel Python), and its coverage
blends its colour over what is already there: ``out = out (1 - c) + colour c``. Pixels fully
inside an object therefore carry its palette colour exactly. Objects are drawn in scene order
(later ones cover earlier ones), then the wall, whose coverage is computed exactly (it is an
axis-aligned box). Everything is IEEE arithmetic and comparisons, so renders are bit-identical
on any machine.

Pixel convention: pixel column i covers x in [i, i + 1) px, so its centre is at i + 0.5; a scene
position x (H units) is at x * H px.
"""

from __future__ import annotations

import math

import numpy as np

from videodit.world.palette import BACKGROUNDS, COLORS, WALL_RGB
from videodit.world.scene import TRIANGLE_SIDE, Scene, extents
from videodit.world.physics import SIZES

SUPERSAMPLE = 4


def _inside(shape: str, size_px: float, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Whether offsets (dx, dy) from the centroid, in px, fall inside the shape."""
    if shape == "circle":
        r = size_px / 2
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = size_px / 2
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    side = TRIANGLE_SIDE * size_px
    height = side * math.sqrt(3) / 2
    # Point up, centroid at the origin: base at dy = h/3, apex at dy = -2h/3; the half-width at
    # height dy is (dy + 2h/3) / h * side / 2 (multiplied out to avoid a division).
    return (dy <= height / 3) & (np.abs(dx) * height <= (dy + 2 * height / 3) * (side / 2))


def _draw_object(canvas: np.ndarray, shape: str, size: str, cx: np.ndarray, cy: np.ndarray,
                 color: tuple[int, int, int], wall: tuple[float, ...] | None) -> None:
    """Blend one object into ``canvas`` (F, H, W, 3) float32 at centroids cx, cy (F,) in px.
    Samples inside ``wall`` (x0, x1, y0, y1 px) are left out: the wall drawn later hides them, and
    without this an object fully behind the wall would tint the wall's anti-aliased edge pixels."""
    F, H, W, _ = canvas.shape
    S = SUPERSAMPLE
    left, right, up, down = (e * H for e in extents(shape, size))
    # A fixed-size window per frame that contains the whole object, kept inside the canvas.
    nw, nh = min(W, math.ceil(left + right) + 2), min(H, math.ceil(up + down) + 2)
    ox = np.clip(np.floor(cx - left).astype(np.int64), 0, W - nw)   # (F,)
    oy = np.clip(np.floor(cy - up).astype(np.int64), 0, H - nh)
    sub_x = (np.arange(nw * S) + 0.5) / S                          # sample offsets in the window, px
    sub_y = (np.arange(nh * S) + 0.5) / S
    dx = ox[:, None] + sub_x[None, :] - cx[:, None]                # (F, nw*S)
    dy = oy[:, None] + sub_y[None, :] - cy[:, None]                # (F, nh*S)
    inside = _inside(shape, SIZES[size] * H, dx[:, None, :], dy[:, :, None])   # (F, nh*S, nw*S)
    if wall is not None:
        sx = (ox[:, None] + sub_x[None, :])[:, None, :]            # (F, 1, nw*S) sample x, px
        sy = (oy[:, None] + sub_y[None, :])[:, :, None]            # (F, nh*S, 1)
        inside &= ~((sx >= wall[0]) & (sx <= wall[1]) & (sy >= wall[2]) & (sy <= wall[3]))
    # Count covered samples per pixel: sum the contiguous last axis first (much faster than a
    # mean over both axes at once); at most S*S = 16, so uint8 holds it.
    hits = inside.view(np.uint8).reshape(F, nh, S, nw, S).sum(axis=4, dtype=np.uint8).sum(axis=2, dtype=np.uint8)
    cover = hits.astype(np.float32) * np.float32(1 / (S * S))     # (F, nh, nw), exact: S*S is a power of 2

    frame = np.arange(F)[:, None, None]
    rows = (oy[:, None] + np.arange(nh))[:, :, None]               # (F, nh, 1)
    cols = (ox[:, None] + np.arange(nw))[:, None, :]               # (F, 1, nw)
    c = cover[..., None]                                           # (F, nh, nw, 1)
    canvas[frame, rows, cols] = canvas[frame, rows, cols] * (1 - c) + np.asarray(color, np.float32) * c


def _box_cover(n: int, lo: float, hi: float) -> np.ndarray:
    """Exact coverage of pixels [i, i+1), i < n, by the interval [lo, hi] (px)."""
    i = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(i + 1, hi) - np.maximum(i, lo), 0.0, 1.0).astype(np.float32)


def render(scene: Scene) -> np.ndarray:
    """The scene's frames, (F, H, W, 3) uint8 RGB."""
    F, H, W = scene.frames, scene.height, scene.width
    canvas = np.empty((F, H, W, 3), np.float32)
    for channel, value in enumerate(BACKGROUNDS[scene.background]):   # ~6x faster than broadcasting an RGB triple
        canvas[..., channel] = value
    xs, ys, _ = scene.states()
    wall = None if scene.wall is None else tuple(v * H for v in scene.wall)   # px
    for i, obj in enumerate(scene.objects):
        _draw_object(canvas, obj.shape, obj.size, xs[i] * H, ys[i] * H, COLORS[obj.color], wall)
    if wall is not None:
        x0, x1, y0, y1 = wall
        cover = _box_cover(H, y0, y1)[:, None, None] * _box_cover(W, x0, x1)[None, :, None]   # (H, W, 1)
        canvas = canvas * (1 - cover) + np.asarray(WALL_RGB, np.float32) * cover
    return np.rint(canvas).astype(np.uint8)
