"""SynthWorld scenes: canvas validation, shape geometry, and sampling one scene per family and split.

Geometry (world units, 1 = canvas height H; x in [0, W/H] left to right, y in [0, 1] top to bottom):
- An object's position is the centroid of its area. For circles and squares that is the centre;
  for the point-up equilateral triangle it sits one third of the height above the base, so the
  centroid of its rendered pixels tracks the ground truth exactly.
- Triangle side = TRIANGLE_SIDE x size, height = side x sqrt(3) / 2.

Sampling (choices where the SynthWorld spec is silent):
- A scene is a pure function of (split, index, seed, width, height, frames, family): the random
  stream is numpy's PCG64 seeded by SeedSequence([split id, seed, index, family id, purpose]) and
  only uses ``random()`` / ``integers()``, whose streams numpy keeps identical across platforms.
- Discrete choices (family, colours, shape, size, motion, speed) are drawn only among those that
  can fit the canvas for the whole clip; continuous ones (positions, drop heights, contact time)
  are drawn inside the ranges that keep every object fully inside the canvas, then multi-object
  constraints are checked and the attempt redrawn when they fail (MAX_TRIES attempts).
- With frames = 1 the clip is a still image: every object is "still", and the collision and
  occlusion families (which need motion) are unavailable.
- Motion is picked uniformly among the feasible motions, then the speed among the feasible speeds.
- pair / count: objects keep a clear gap (MIN_GAP) for the whole clip, not only at frame 0, so no
  two ever pass through each other. count motions: still, left, right, up, down, falls, bounces
  (all objects the same motion and speed). pair and relation objects have different colours.
- relation: the two boxes are apart by RELATION_MARGIN along the stated axis, and the offset
  along the other axis is at most RELATION_DOMINANCE times the offset along the stated one.
- collision: two circles of one size at the same height (head-on), each approaching at its own
  speed; contact happens between one frame after the start and one frame before the end (and
  within the middle half of the clip), so the approach and the separation are both visible.
- occlusion: a gray wall stands on the floor and reaches above the object; the object floats at
  constant speed, is fully visible at the first and last frames and fully hidden for at least one
  frame in between. Backgrounds black or white only.
- Splits: "train" never uses a held-out (colour, shape) pair. "eval" is a separate random stream;
  in EVAL_HELDOUT_FRACTION of its samples (decided by the sample's first draw) exactly one object
  (or, in count, the group of identical objects) has a held-out pair and truth["heldout"] is true;
  the rest of eval has no held-out pair at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from videodit.errors import VideoditError
from videodit.world.palette import BACKGROUNDS, COLORS, WALL_BACKGROUNDS
from videodit.world.physics import (FPS, G, RESTITUTION, SIZES, SPEEDS, Track, floor_bounces,
                                    head_on_collision, uniform)

FAMILIES = ("single", "pair", "count", "relation", "collision", "occlusion")
SHAPES = ("circle", "square", "triangle")
HELDOUT_PAIRS = (("purple", "circle"), ("orange", "square"), ("cyan", "triangle"), ("pink", "square"))
SPLITS = ("train", "eval")
RELATIONS = ("left_of", "right_of", "above", "below")

CONSTANT_MOTIONS = ("still", "left", "right", "up", "down")
GRAVITY_MOTIONS = ("falls", "bounces", "thrown_left", "thrown_right")
SINGLE_MOTIONS = CONSTANT_MOTIONS + GRAVITY_MOTIONS
COUNT_MOTIONS = CONSTANT_MOTIONS + ("falls", "bounces")
SPEED_MOTIONS = ("left", "right", "up", "down", "thrown_left", "thrown_right")

TRIANGLE_SIDE = 1.1          # triangle side / size (spec)
EVAL_HELDOUT_FRACTION = 0.3  # share of eval samples showing a held-out (colour, shape) pair
MIN_SIDE, MAX_SIDE, SIDE_STEP = 32, 512, 16
MIN_ASPECT = 0.5             # W / H; objects are sized by H, so a narrower canvas cannot hold a pair
MAX_TRIES = 200
MIN_GAP = 0.04               # H; keeps anti-aliased edges of two objects from sharing a pixel at 32 px
RELATION_MARGIN = 0.06       # H
RELATION_DOMINANCE = 0.5
PREFERRED_DROP = 0.15        # H; drops start at least this high when the clip allows
MIN_DROP = 0.02              # H; the smallest drop that still shows a fall
THROW_RISE = (0.08, 0.45)    # H; apex height above the launch point
WALL_HEADROOM = 0.1          # H; room above an occluded object for the wall's top
WALL_EXTRA = 0.15            # H; the wall is at most this much wider than its narrowest valid width
OCCLUSION_SLACK = 0.01       # H; keeps a frame strictly inside the fully hidden interval


# ---------------------------------------------------------------- canvas and arguments

def _nearest_side(n: int) -> str:
    """The valid side(s) nearest to n: '48', or '32 or 48' when n is halfway."""
    low = min(MAX_SIDE, max(MIN_SIDE, SIDE_STEP * (n // SIDE_STEP)))
    high = min(MAX_SIDE, max(MIN_SIDE, low + SIDE_STEP if n % SIDE_STEP else low))
    if n - low == high - n and low != high:
        return f"{low} or {high}"
    return str(low if abs(n - low) < abs(high - n) else high)


def check_canvas(width: int, height: int, frames: int) -> None:
    """Raise VideoditError unless (width, height, frames) is a valid SynthWorld clip shape."""
    for name, n in (("width", width), ("height", height)):
        if not isinstance(n, (int, np.integer)) or n < MIN_SIDE or n > MAX_SIDE or n % SIDE_STEP:
            nearest = f"; nearest valid: {_nearest_side(int(n))}" if isinstance(n, (int, float)) else ""
            raise VideoditError(f"{name} {n!r}: must be a multiple of {SIDE_STEP} from {MIN_SIDE} to {MAX_SIDE}"
                                f"{nearest}")
    if width < MIN_ASPECT * height:
        wider = SIDE_STEP * math.ceil(MIN_ASPECT * height / SIDE_STEP)
        lower = SIDE_STEP * int(width / MIN_ASPECT / SIDE_STEP)
        raise VideoditError(f"size {width}x{height}: objects are sized by the height, so the width must be at least "
                            f"{MIN_ASPECT:g} x height; nearest valid: {wider}x{height} or {width}x{lower}")
    if not isinstance(frames, (int, np.integer)) or frames < 1 or (frames - 1) % 4:
        nearest = ""
        if isinstance(frames, (int, float)):
            low = 1 + 4 * max(0, (int(frames) - 1) // 4)
            options = [v for v in (low, low + 4) if abs(v - frames) == min(abs(low - frames), abs(low + 4 - frames))]
            nearest = "; nearest valid: " + " or ".join(map(str, options))
        raise VideoditError(f"frames {frames!r}: must be 4k+1 (1, 5, 9, 17, 33, ...){nearest}")


def parse_size(text: str | tuple[int, int], name: str = "size") -> tuple[int, int]:
    """'WIDTHxHEIGHT' (or a (w, h) pair) -> (width, height) of positive ints; every --size and
    sizes list parses here. What a size must be is checked where it is used: ``check_canvas``
    for SynthWorld clips, ``Pipeline.latent_shape`` for a model."""
    if isinstance(text, str):
        parts = text.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise VideoditError(f"{name} {text!r}: expected WIDTHxHEIGHT, e.g. 64x64 or 80x48")
        width, height = int(parts[0]), int(parts[1])
    else:
        width, height = (int(v) for v in text)
    if width < 1 or height < 1:
        raise VideoditError(f"{name} {width}x{height}: width and height must be at least 1")
    return width, height


# ---------------------------------------------------------------- shape geometry

def extents(shape: str, size: str) -> tuple[float, float, float, float]:
    """(left, right, up, down): distances from the centroid to the bounding box edges, H units."""
    s = SIZES[size]
    if shape == "triangle":
        side = TRIANGLE_SIDE * s
        height = side * math.sqrt(3) / 2
        return side / 2, side / 2, 2 * height / 3, height / 3
    return s / 2, s / 2, s / 2, s / 2


def area(shape: str, size: str) -> float:
    s = SIZES[size]
    if shape == "circle":
        return math.pi * s * s / 4
    if shape == "square":
        return s * s
    side = TRIANGLE_SIDE * s
    return side * side * math.sqrt(3) / 4


def _area_left_of(shape: str, size: str, u: np.ndarray) -> np.ndarray:
    """Area of the shape left of the vertical line at offset ``u`` from its centroid."""
    s = SIZES[size]
    if shape == "square":
        return s * np.clip(u + s / 2, 0.0, s)
    if shape == "circle":
        r = s / 2
        d = np.clip(u, -r, r)
        # Circular segment right of the line: r^2 acos(d / r) - d sqrt(r^2 - d^2).
        return math.pi * r * r - (r * r * np.arccos(d / r) - d * np.sqrt(r * r - d * d))
    side = TRIANGLE_SIDE * s
    height = side * math.sqrt(3) / 2
    # The vertical chord at offset v is height (1 - 2|v| / side); integrate from the left corner.
    d = np.clip(u, -side / 2, side / 2)
    left_part = height * (d + side / 2) ** 2 / side
    right_part = side * height / 2 - height * (side / 2 - d) ** 2 / side
    return np.where(d <= 0, left_part, right_part)


def visible_fraction(shape: str, size: str, x: np.ndarray, wall_x0: float, wall_x1: float) -> np.ndarray:
    """Share of the object's area not behind a wall spanning [wall_x0, wall_x1] (the wall covers
    the object's full height). Rounded to 1e-6 so the record does not depend on libm's last bit."""
    covered = _area_left_of(shape, size, wall_x1 - x) - _area_left_of(shape, size, wall_x0 - x)
    return np.round(np.clip(1.0 - covered / area(shape, size), 0.0, 1.0), 6)


# ---------------------------------------------------------------- scene records

@dataclass(frozen=True)
class SceneObject:
    color: str
    shape: str
    size: str
    motion: str
    speed: str | None          # a SPEEDS key for SPEED_MOTIONS and collision balls, else None
    x: Track                   # centroid, H units
    y: Track
    bounce_times: tuple[float, ...] = ()


@dataclass(frozen=True)
class Scene:
    split: str
    index: int
    seed: int
    family: str
    width: int
    height: int
    frames: int
    background: str
    heldout: bool
    objects: tuple[SceneObject, ...]   # in drawing order: later objects cover earlier ones
    relation: dict | None = None
    wall: tuple[float, float, float, float] | None = None   # x0, x1, y0, y1 in H units
    collision_time: float | None = None

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.frames) / FPS

    def states(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-frame centroids and visible fractions: x, y in H units and visible in [0, 1],
        each (objects, frames)."""
        t = self.times
        xs = np.stack([o.x.at(t) for o in self.objects])
        ys = np.stack([o.y.at(t) for o in self.objects])
        if self.wall is None:
            vis = np.ones_like(xs)
        else:
            vis = np.stack([visible_fraction(o.shape, o.size, xs[i], self.wall[0], self.wall[1])
                            for i, o in enumerate(self.objects)])
        return xs, ys, vis


def _nearest_frame(t: float) -> int:
    return int(math.floor(t * FPS + 0.5))


def truth_record(scene: Scene) -> dict:
    """The JSON-serialisable ground truth (the shared interface's ``Sample.truth``).

    Positions are object centroids in pixels, pixel column i covering [i, i + 1) (its centre is at
    i + 0.5); velocities in px/s (vy < 0 is upward); event frames are the frames nearest to the
    event times. Beyond the shared fields: per object "speed" (a SPEEDS key or null) and
    "extents_px" (left, right, up, down from the centroid to the bounding box), and the exact event
    times in seconds, events "bounce_times" and "collision_time"."""
    H = scene.height
    xs, ys, vis = scene.states()
    objects = []
    for o in scene.objects:
        objects.append({
            "color": o.color, "shape": o.shape, "size": o.size, "motion": o.motion, "speed": o.speed,
            "size_px": SIZES[o.size] * H,
            "x0": float(o.x.at(0.0)) * H, "y0": float(o.y.at(0.0)) * H,
            "vx": float(o.x.velocity(0.0)) * H, "vy": float(o.y.velocity(0.0)) * H,
            "extents_px": [e * H for e in extents(o.shape, o.size)],
        })
    states = [[{"x": round(float(xs[i, k]) * H, 6), "y": round(float(ys[i, k]) * H, 6),
                "visible": float(vis[i, k])} for i in range(len(scene.objects))]
              for k in range(scene.frames)]
    events = {
        "bounce_frames": [[_nearest_frame(t) for t in o.bounce_times] for o in scene.objects],
        "bounce_times": [list(o.bounce_times) for o in scene.objects],
        "collision_frame": None if scene.collision_time is None else _nearest_frame(scene.collision_time),
        "collision_time": scene.collision_time,
        "hidden_frames": [[k for k in range(scene.frames) if vis[i, k] == 0.0] for i in range(len(scene.objects))],
    }
    wall = None
    if scene.wall is not None:
        wall = dict(zip(("x0", "x1", "y0", "y1"), (v * H for v in scene.wall)))
    return {
        "version": 1, "split": scene.split, "index": scene.index, "seed": scene.seed, "family": scene.family,
        "width": scene.width, "height": scene.height, "frames": scene.frames, "fps": FPS,
        "background": scene.background, "heldout": scene.heldout, "objects": objects,
        "relation": scene.relation, "wall": wall, "states": states, "events": events,
    }


# ---------------------------------------------------------------- sampling helpers

class RandomDraw:
    """The sample's random stream, restricted to the platform-stable numpy calls."""

    def __init__(self, entropy: list[int]):
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(self._rng.random())

    def pick(self, options):
        options = list(options)
        return options[int(self._rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return float(self._rng.random()) < p


def seed_entropy(split: str, index: int, seed: int, family: str | None, purpose: int) -> list[int]:
    """SeedSequence entropy of one sample's random stream (purpose 0: scene, 1: captions)."""
    if split not in SPLITS:
        raise VideoditError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    if family is not None and family not in FAMILIES:
        raise VideoditError(f"family {family!r}: choose one of {', '.join(FAMILIES)} (or leave it out to mix them)")
    for name, n in (("index", index), ("seed", seed)):
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise VideoditError(f"{name} {n!r}: must be a non-negative integer")
    family_id = 0 if family is None else 1 + FAMILIES.index(family)
    return [SPLITS.index(split), int(seed), int(index), family_id, purpose]


@dataclass(frozen=True)
class _Clip:
    aspect: float     # W / H
    duration: float   # (frames - 1) / FPS, seconds
    frames: int


def _speed(speed: str | None) -> float:
    return 0.0 if speed is None else SPEEDS[speed]


def _fits(shape: str, size: str, motion: str, speed: str | None, clip: _Clip) -> bool:
    """Whether some start keeps the object fully inside the canvas for the whole clip."""
    left, right, up, down = extents(shape, size)
    width, height = left + right, up + down
    travel = _speed(speed) * clip.duration
    if width > clip.aspect or height > 1.0:
        return False
    if motion == "still":
        return True
    if clip.frames == 1:
        return False
    if motion in ("left", "right"):
        return width + travel <= clip.aspect
    if motion in ("up", "down"):
        return height + travel <= 1.0
    if motion == "falls":
        return height + MIN_DROP <= 1.0
    if motion == "bounces":
        # The first impact needs a frame before it and one after it.
        return height + MIN_DROP <= 1.0 and clip.duration >= 1 / FPS + math.sqrt(2 * MIN_DROP / G)
    return width + travel <= clip.aspect and height + THROW_RISE[0] <= 1.0   # thrown_*


def _speeds_for(motion: str) -> tuple[str | None, ...]:
    return tuple(SPEEDS) if motion in SPEED_MOTIONS else (None,)


def _choose_motion(draw: RandomDraw, shape: str, size: str, motions: tuple[str, ...], clip: _Clip):
    feasible = [m for m in motions if any(_fits(shape, size, m, s, clip) for s in _speeds_for(m))]
    motion = draw.pick(feasible)
    speed = draw.pick([s for s in _speeds_for(motion) if _fits(shape, size, motion, s, clip)])
    return motion, speed


def _sizes_for(shape: str, motions: tuple[str, ...], clip: _Clip) -> list[str]:
    return [z for z in SIZES if any(_fits(shape, z, m, s, clip) for m in motions for s in _speeds_for(m))]


def _looks(heldout: bool, shapes: tuple[str, ...]) -> list[tuple[str, str]]:
    if heldout:
        return [p for p in HELDOUT_PAIRS if p[1] in shapes]
    return [(c, s) for c in COLORS for s in shapes if (c, s) not in HELDOUT_PAIRS]


def _pick_looks(draw: RandomDraw, n: int, heldout: bool, shapes: tuple[str, ...] = SHAPES) -> list[tuple[str, str]]:
    """n (colour, shape) pairs of different colours; exactly one is held out when ``heldout``."""
    special = int(draw.pick(range(n))) if heldout else -1
    looks: list[tuple[str, str]] = []
    for i in range(n):
        used = {c for c, _ in looks}
        looks.append(draw.pick([lk for lk in _looks(i == special, shapes) if lk[0] not in used]))
    return looks


def _place(draw: RandomDraw, shape: str, size: str, motion: str, speed: str | None, clip: _Clip) -> SceneObject:
    """Draw a start state that keeps the object inside the canvas for the whole clip (the motion
    must satisfy ``_fits``) and build its closed-form tracks."""
    left, right, up, down = extents(shape, size)
    T, A, v = clip.duration, clip.aspect, _speed(speed)
    vx = {"left": -v, "right": v, "thrown_left": -v, "thrown_right": v}.get(motion, 0.0)
    x0 = draw.uniform(left + max(0.0, -vx * T), A - right - max(0.0, vx * T))
    if motion in CONSTANT_MOTIONS:
        vy = {"up": -v, "down": v}.get(motion, 0.0)
        y0 = draw.uniform(up + max(0.0, -vy * T), 1.0 - down - max(0.0, vy * T))
        return SceneObject("", shape, size, motion, speed, uniform(x0, vx), uniform(y0, vy))
    y_floor = 1.0 - down
    room = y_floor - up                  # the highest start has the object's top at y = 0
    if motion in ("falls", "bounces"):
        high = room
        if motion == "bounces":          # first impact at least one frame before the end
            high = min(high, G * (T - 1 / FPS) ** 2 / 2)
        drop = draw.uniform(min(PREFERRED_DROP, high / 2), high)
        y0, vy0 = y_floor - drop, 0.0
        restitution = RESTITUTION if motion == "bounces" else 0.0
    else:
        rise = draw.uniform(THROW_RISE[0], min(THROW_RISE[1], room))
        y0, vy0 = y_floor - draw.uniform(0.0, room - rise), -math.sqrt(2 * G * rise)
        restitution = RESTITUTION
    y_track, bounces = floor_bounces(y0, vy0, y_floor, restitution, T)
    return SceneObject("", shape, size, motion, speed, uniform(x0, vx), y_track, tuple(bounces))


def _colored(obj: SceneObject, color: str) -> SceneObject:
    return SceneObject(color, obj.shape, obj.size, obj.motion, obj.speed, obj.x, obj.y, obj.bounce_times)


def _apart(objects: list[SceneObject], clip: _Clip) -> bool:
    """Bounding boxes stay MIN_GAP apart at every frame and three instants between frames."""
    t = np.linspace(0.0, clip.duration, 4 * (clip.frames - 1) + 1)
    boxes = []
    for o in objects:
        left, right, up, down = extents(o.shape, o.size)
        x, y = o.x.at(t), o.y.at(t)
        boxes.append((x - left, x + right, y - up, y + down))
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            gap = np.maximum.reduce([a[0] - b[1], b[0] - a[1], a[2] - b[3], b[2] - a[3]])
            if gap.min() < MIN_GAP:
                return False
    return True


# ---------------------------------------------------------------- families

def _single(draw: RandomDraw, clip: _Clip, heldout: bool) -> dict | None:
    (color, shape), = _pick_looks(draw, 1, heldout)
    size = draw.pick(_sizes_for(shape, SINGLE_MOTIONS, clip))
    motion, speed = _choose_motion(draw, shape, size, SINGLE_MOTIONS, clip)
    return {"objects": [_colored(_place(draw, shape, size, motion, speed, clip), color)]}


def _pair(draw: RandomDraw, clip: _Clip, heldout: bool) -> dict | None:
    objects = []
    for color, shape in _pick_looks(draw, 2, heldout):
        size = draw.pick(_sizes_for(shape, CONSTANT_MOTIONS, clip))
        motion, speed = _choose_motion(draw, shape, size, CONSTANT_MOTIONS, clip)
        objects.append(_colored(_place(draw, shape, size, motion, speed, clip), color))
    return {"objects": objects} if _apart(objects, clip) else None


def _count(draw: RandomDraw, clip: _Clip, heldout: bool) -> dict | None:
    (color, shape), = _pick_looks(draw, 1, heldout)
    n = draw.pick((2, 3))
    size = draw.pick(_sizes_for(shape, COUNT_MOTIONS, clip))
    motion, speed = _choose_motion(draw, shape, size, COUNT_MOTIONS, clip)
    objects = [_colored(_place(draw, shape, size, motion, speed, clip), color) for _ in range(n)]
    return {"objects": objects} if _apart(objects, clip) else None


def _relation(draw: RandomDraw, clip: _Clip, heldout: bool) -> dict | None:
    (c0, s0), (c1, s1) = _pick_looks(draw, 2, heldout)
    z0 = draw.pick(_sizes_for(s0, ("still",), clip))
    z1 = draw.pick(_sizes_for(s1, ("still",), clip))
    e0, e1 = extents(s0, z0), extents(s1, z1)
    horizontal_room = clip.aspect - (e0[0] + e0[1] + e1[0] + e1[1]) - RELATION_MARGIN
    vertical_room = 1.0 - (e0[2] + e0[3] + e1[2] + e1[3]) - RELATION_MARGIN
    relations = [r for r in RELATIONS if (horizontal_room if r in ("left_of", "right_of") else vertical_room) >= 0]
    if not relations:
        return None
    relation = draw.pick(relations)
    # "first" is the object on the left (or on top); the subject (object 0) is first for
    # left_of / above and second for right_of / below.
    first_is_subject = relation in ("left_of", "above")
    (ea, eb) = (e0, e1) if first_is_subject else (e1, e0)
    if relation in ("left_of", "right_of"):
        xa = draw.uniform(ea[0], clip.aspect - ea[1] - RELATION_MARGIN - eb[0] - eb[1])
        xb = draw.uniform(xa + ea[1] + RELATION_MARGIN + eb[0], clip.aspect - eb[1])
        ya, yb = draw.uniform(ea[2], 1.0 - ea[3]), draw.uniform(eb[2], 1.0 - eb[3])
        if abs(ya - yb) > RELATION_DOMINANCE * (xb - xa):
            return None
    else:
        ya = draw.uniform(ea[2], 1.0 - ea[3] - RELATION_MARGIN - eb[2] - eb[3])
        yb = draw.uniform(ya + ea[3] + RELATION_MARGIN + eb[2], 1.0 - eb[3])
        xa, xb = draw.uniform(ea[0], clip.aspect - ea[1]), draw.uniform(eb[0], clip.aspect - eb[1])
        if abs(xa - xb) > RELATION_DOMINANCE * (yb - ya):
            return None
    (x0, y0), (x1, y1) = ((xa, ya), (xb, yb)) if first_is_subject else ((xb, yb), (xa, ya))
    objects = [SceneObject(c0, s0, z0, "still", None, uniform(x0, 0.0), uniform(y0, 0.0)),
               SceneObject(c1, s1, z1, "still", None, uniform(x1, 0.0), uniform(y1, 0.0))]
    return {"objects": objects, "relation": {"subject": 0, "relation": relation, "object": 1}}


def _collision_fits(size: str, v_left: float, v_right: float, clip: _Clip) -> bool:
    # Contact at mid-clip needs the least room: 4 radii plus the larger speed times the duration.
    return clip.frames >= 5 and 2 * SIZES[size] + max(v_left, v_right) * clip.duration <= clip.aspect


def _collision(draw: RandomDraw, clip: _Clip, heldout: bool) -> dict | None:
    (c0, _), (c1, _) = _pick_looks(draw, 2, heldout, shapes=("circle",))
    options = [(z, a, b) for z in SIZES for a in SPEEDS for b in SPEEDS
               if _collision_fits(z, SPEEDS[a], SPEEDS[b], clip)]
    size, speed_left, speed_right = draw.pick(options)
    v_left, v_right, T, r = SPEEDS[speed_left], SPEEDS[speed_right], clip.duration, SIZES[size] / 2
    t_contact = draw.uniform(max(1 / FPS, T / 4), min(T - 1 / FPS, 3 * T / 4))
    # Farthest excursions of each ball, before or after contact (velocities are exchanged).
    reach_left = max(v_left * t_contact, v_right * (T - t_contact))
    reach_right = max(v_right * t_contact, v_left * (T - t_contact))
    low, high = 2 * r + reach_left, clip.aspect - 2 * r - reach_right
    if low > high:
        return None
    x_left, x_right = head_on_collision(draw.uniform(low, high), r, v_left, v_right, t_contact)
    y = uniform(draw.uniform(r, 1.0 - r), 0.0)
    objects = [SceneObject(c0, "circle", size, "right", speed_left, x_left, y),
               SceneObject(c1, "circle", size, "left", speed_right, x_right, y)]
    return {"objects": objects, "collision_time": t_contact}


def _occlusion_fits(shape: str, size: str, speed: str, clip: _Clip) -> bool:
    left, right, up, down = extents(shape, size)
    width, v, T = left + right, SPEEDS[speed], clip.duration
    # Fully visible, then fully hidden for over a frame interval, then fully visible again.
    return (clip.frames > 1 and v * T >= 2 * width + v / FPS + OCCLUSION_SLACK
            and v * T + width <= clip.aspect and up + down + WALL_HEADROOM <= 1.0)


def _occlusion(draw: RandomDraw, clip: _Clip, heldout: bool) -> dict | None:
    (color, shape), = _pick_looks(draw, 1, heldout)
    options = [(z, s) for z in SIZES for s in SPEEDS if _occlusion_fits(shape, z, s, clip)]
    if not options:
        return None
    size, speed = draw.pick(options)
    motion = draw.pick(("left", "right"))
    left, right, up, down = extents(shape, size)
    width, v, T = left + right, SPEEDS[speed], clip.duration
    wall_low = width + v / FPS + OCCLUSION_SLACK
    wall_width = draw.uniform(wall_low, min(v * T - width, wall_low + WALL_EXTRA))
    gap = draw.uniform(0.0, v * T - width - wall_width)   # start distance from the wall
    if motion == "right":
        x0 = draw.uniform(left, clip.aspect - v * T - right)
        wall_x0 = x0 + right + gap
        wall_x1 = wall_x0 + wall_width
    else:
        x0 = draw.uniform(left + v * T, clip.aspect - right)
        wall_x1 = x0 - left - gap
        wall_x0 = wall_x1 - wall_width
    y0 = draw.uniform(up + WALL_HEADROOM, 1.0 - down)
    top = y0 - up
    wall_y0 = draw.uniform(max(0.0, top - WALL_HEADROOM - 0.05), top - 0.04)
    vx = v if motion == "right" else -v
    obj = SceneObject(color, shape, size, motion, speed, uniform(x0, vx), uniform(y0, 0.0))
    return {"objects": [obj], "wall": (wall_x0, wall_x1, wall_y0, 1.0)}


def _family_possible(family: str, clip: _Clip) -> bool:
    if family == "collision":
        return any(_collision_fits(z, SPEEDS["slowly"], SPEEDS["slowly"], clip) for z in SIZES)
    if family == "occlusion":
        return any(_occlusion_fits(sh, z, s, clip) for sh in SHAPES for z in SIZES for s in SPEEDS)
    return True   # single, pair, count, relation: still objects always fit a valid canvas


def family_possible(family: str, width: int, height: int, frames: int) -> bool:
    """Whether ``family`` can happen in a width x height clip of ``frames`` frames."""
    return _family_possible(family, _Clip(width / height, (frames - 1) / FPS, frames))


def check_family(family: str, width: int, height: int, frames: int) -> None:
    """Raise VideoditError, naming the frame counts that fit, unless ``family_possible``."""
    if family not in FAMILIES:
        raise VideoditError(f"family {family!r}: choose one of {', '.join(FAMILIES)}")
    if not family_possible(family, width, height, frames):
        fits = [f for f in range(1, 514, 4) if family_possible(family, width, height, f)]
        if not fits:
            hint = f"it never fits {width}x{height}; use a wider canvas"
        elif fits == list(range(fits[0], fits[-1] + 1, 4)):
            hint = f"at {width}x{height} it needs {fits[0]} to {fits[-1]} frames"
        else:  # the feasible durations have gaps (discrete speeds): name them
            shown = ", ".join(map(str, fits[:12])) + (", ..." if len(fits) > 12 else "")
            hint = f"at {width}x{height} it fits these frame counts only: {shown}"
        raise VideoditError(f"family {family!r} cannot happen in a {width}x{height} clip of {frames} frames: {hint}")


def sample_scene(split: str, index: int, seed: int = 0, *, width: int = 64, height: int = 64,
                 frames: int = 17, family: str | None = None) -> Scene:
    """The scene (no pixels) of sample ``index``; ``family=None`` mixes the families uniformly."""
    check_canvas(width, height, frames)
    draw = RandomDraw(seed_entropy(split, index, seed, family, purpose=0))
    clip = _Clip(width / height, (frames - 1) / FPS, frames)
    if family is None:
        family = draw.pick([f for f in FAMILIES if _family_possible(f, clip)])
    else:
        check_family(family, width, height, frames)
    heldout = split == "eval" and draw.chance(EVAL_HELDOUT_FRACTION)
    sampler = {"single": _single, "pair": _pair, "count": _count, "relation": _relation,
               "collision": _collision, "occlusion": _occlusion}[family]
    for _ in range(MAX_TRIES):
        parts = sampler(draw, clip, heldout)
        if parts is not None:
            break
    else:
        raise VideoditError(f"could not fit a {family!r} scene into {width}x{height} with {frames} frames "
                            f"after {MAX_TRIES} tries; use fewer frames or a larger canvas")
    background = draw.pick(WALL_BACKGROUNDS if family == "occlusion" else BACKGROUNDS)
    return Scene(split=split, index=int(index), seed=int(seed), family=family, width=width, height=height,
                 frames=frames, background=background, heldout=heldout, objects=tuple(parts["objects"]),
                 relation=parts.get("relation"), wall=parts.get("wall"),
                 collision_time=parts.get("collision_time"))
