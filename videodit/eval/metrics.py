"""Per-video metrics: what the prompt asks for (parse.py) against what the video shows (measure.py).

Every metric gives a pass / fail boolean plus the raw measured values, or N/A (``passed=None``)
when the prompt does not ask for it. Units: positions in H (canvas height), time in seconds,
speeds in H/s, accelerations in H/s^2. Thresholds live in ``EvalConfig`` (docs/EVAL.md explains
each one and gives the ground-truth floor measured on SynthWorld renders).

A metric never passes on what is not there: when an object it measures is not found (seen in
too few frames, or not a blob on plain background: noise) it fails and says why, and so do the
path metrics (motion, speed, gravity, collision, occlusion) when a moving object's path is not
coherent in time (frames out of order). Background and sharpness need some object of the prompt
found, not every one.

Metrics:
- background: the dominant palette background is the one named (a wall implies black or white).
- color: every named colour is present in most frames, and no unnamed colour is.
- shape: each object's shape class from the fill ratio of its bounding box (square ~1.0, circle
  ~0.785, triangle ~0.5) and the height of its centroid in the box (a point-up triangle's
  centroid sits 1/6 of its height below the box centre; a circle's and a square's at the centre).
- count: the most common number of components per frame of each named colour.
- relation: the sign of the centroid offset along the named axis, that axis dominating.
- motion: the sign of the net displacement beyond ``still_threshold``, "still" when under it;
  falls land without rebounding, bounces rebound, thrown objects rise first, colliding balls
  close their gap and open it again.
- speed: the fitted constant velocity against the speed word (no word = "normal", the SynthWorld
  caption convention); thrown objects by their horizontal speed, colliding balls by their approach.
- gravity: one vertical acceleration fitted over every airborne segment of y(t) (segments split
  at floor contacts), against G.
- collision: elastic equal-mass collision exchanges the velocities: the relative error of the
  post-collision velocities against the pre-collision ones, swapped.
- consistency: each object is present in every frame where it can be seen, and its area stays
  within ``area_drift`` of its median (flicker, vanishing and morphing fail).
- occlusion: the object starts on one side of the wall and ends on the other in the named
  direction, keeps its colour and shape, and is missing only while its path is behind the wall.
- sharpness: the median edge width (partly covered pixels per unit of perimeter) of every object
  in the video.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from videodit.eval.config import EvalConfig
from videodit.eval.measure import COLOR_NAMES, Component, Measurement, measure
from videodit.eval.parse import GRAVITY_MOTIONS, LINEAR_MOTIONS, ObjectSpec, ParsedPrompt, parse_prompt
from videodit.world.physics import G, SIZES, SPEEDS
from videodit.world.scene import HELDOUT_PAIRS, SHAPES
from videodit.world.scene import area as object_area

CIRCLE_FILL = np.pi / 4
WALL_SLACK = 0.5   # px: the wall's and the object's sub-pixel edges are each measured to ~0.25 px
LARGEST_AREA = max(object_area(s, z) for s in SHAPES for z in SIZES)   # H^2: a large square

METRICS = ("background", "color", "shape", "count", "relation", "motion", "speed", "gravity",
           "collision", "consistency", "occlusion", "sharpness")


@dataclass(frozen=True)
class MetricResult:
    passed: bool | None          # None: not applicable to the prompt
    values: dict                 # raw measurements, JSON-serialisable


@dataclass
class Track:
    """One prompt object's measured path (count groups: the mean of their components)."""
    label: str
    spec: ObjectSpec
    color: str | None
    t: np.ndarray                # (F,) seconds
    x: np.ndarray                # (F,) H, NaN where not measured
    y: np.ndarray
    n: np.ndarray                # (F,) number of components of the group's colour
    area: np.ndarray             # (F,) px, total over the group
    visible: np.ndarray          # (F,) bool: frames where the object can be seen (not behind a wall)
    components: list[list[Component]]
    ref_area: float | None = None   # the full area, px (see _reference_area)
    count: int = 1                  # how many identical objects the track follows
    missing: str | None = None      # why the object counts as not found (see _why_missing)

    def roughness(self) -> float | None:
        """Von Neumann ratio of the centroid path: mean squared step between consecutive measured
        frames over the variance of the positions. Constant-velocity motion over 17 frames gives
        0.04, a bounce a few tenths; frames in random order give ~2 (whatever the motion)."""
        ok = ~np.isnan(self.x)
        p = np.stack([self.x[ok], self.y[ok]], 1)                           # (n, 2)
        if len(p) < 3:
            return None
        spread = float(((p - p.mean(0)) ** 2).sum(1).mean())
        steps = float((np.diff(p, axis=0) ** 2).sum(1).mean())
        return steps / spread if spread > 0 else 0.0

    def instances(self, height: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-object (x, y) paths in H: components linked frame to frame by the assignment
        that moves them least (count groups have at most three objects)."""
        if self.count == 1:
            return [(self.x, self.y)]
        F, k = len(self.t), self.count
        xs, ys = np.full((k, F), np.nan), np.full((k, F), np.nan)
        prev = None
        for f in range(F):
            cs = self.components[f][:k]
            if len(cs) < k:
                continue
            pts = np.array([[c.x, c.y] for c in cs]) / height               # (k, 2)
            if prev is None:
                order = list(np.argsort(pts[:, 0]))
            else:
                order = min(itertools.permutations(range(k)),
                            key=lambda perm: np.abs(pts[list(perm)] - prev).sum())
            pts = pts[list(order)]
            xs[:, f], ys[:, f] = pts[:, 0], pts[:, 1]
            prev = pts
        return list(zip(xs, ys))


@dataclass
class VideoResult:
    index: int
    prompt: str
    parsed: ParsedPrompt
    heldout: bool
    metrics: dict[str, MetricResult]
    error: str | None = None     # missing or unreadable video
    tracks: list[Track] = field(default_factory=list)
    measurement: Measurement | None = None

    @property
    def n_failed(self) -> int:
        return sum(m.passed is False for m in self.metrics.values())


# --- applicability (from the prompt alone) ----------------------------------------------------

def applicable(p: ParsedPrompt) -> tuple[str, ...]:
    objs = p.objects
    out = []
    if p.background is not None or p.family == "occlusion":
        out.append("background")
    if any(o.color for o in objs):
        out.append("color")
    if any(o.shape for o in objs):
        out.append("shape")
    if objs:
        out.append("count")
    if p.relation is not None:
        out.append("relation")
    if any(o.motion for o in objs):
        out.append("motion")
    if any(_expects_speed(o, p) for o in objs):
        out.append("speed")
    if any(o.motion in GRAVITY_MOTIONS for o in objs):
        out.append("gravity")
    if p.family == "collision" and len(objs) == 2:
        out.append("collision")
    if objs:
        out.append("consistency")
    if p.family == "occlusion":
        out.append("occlusion")
    if objs:
        out.append("sharpness")
    return tuple(m for m in METRICS if m in out)


def _expects_speed(o: ObjectSpec, p: ParsedPrompt) -> bool:
    if p.family == "collision":
        return True
    return o.motion in LINEAR_MOTIONS + ("thrown_left", "thrown_right")


# --- scoring one video -----------------------------------------------------------------------

def score_video(frames: np.ndarray | None, prompt: str | ParsedPrompt, fps: float = 8.0,
                cfg: EvalConfig = EvalConfig(), index: int = 0, error: str | None = None) -> VideoResult:
    """Score one video (uint8 (F, H, W, 3), or None when missing) against its prompt."""
    p = prompt if isinstance(prompt, ParsedPrompt) else parse_prompt(prompt)
    names = applicable(p)
    heldout = p.is_heldout(HELDOUT_PAIRS)
    if frames is None:
        why = error or "missing video"
        return VideoResult(index, p.text, p, heldout,
                           {m: MetricResult(False, {"error": why}) for m in names}, error=why)
    m = measure(frames)
    tracks = _tracks(p, m, fps, cfg)
    results = {}
    for name in names:
        unmeasurable = _unmeasurable(name, p, tracks, cfg)
        results[name] = (MetricResult(False, {"error": "not measurable", "objects": unmeasurable})
                         if unmeasurable else _METRIC_FNS[name](p, m, tracks, cfg))
    return VideoResult(index, p.text, p, heldout, results, error=None, tracks=tracks, measurement=m)


def _tracks(p: ParsedPrompt, m: Measurement, fps: float, cfg: EvalConfig) -> list[Track]:
    """Assign each prompt object a palette colour and build its per-frame track."""
    F, H = m.n_frames, m.height
    t = np.arange(F) / fps
    named = {o.color for o in p.objects if o.color}
    # An object without a colour word takes the most frequent colour no other object named.
    frequency = {c: sum(any(k.color == c for k in fr) for fr in m.components) for c in COLOR_NAMES}
    free = sorted((c for c in COLOR_NAMES if c not in named and frequency[c] > 0),
                  key=lambda c: -frequency[c])
    tracks = []
    for i, o in enumerate(p.objects):
        color = o.color or (free.pop(0) if free else None)
        comps = m.of_color(color) if color else [[] for _ in range(F)]
        n = np.array([len(c) for c in comps])
        want = o.count if o.count is not None else _mode([k for k in n if k >= 2], default=2)
        x, y, area = (np.full(F, np.nan) for _ in range(3))
        for f, cs in enumerate(comps):
            cs = cs[:want]   # largest first
            if len(cs) == want:
                x[f] = np.mean([c.x for c in cs]) / H
                y[f] = np.mean([c.y for c in cs]) / H
                area[f] = sum(c.area for c in cs)
        label = " ".join(w for w in (o.color, o.shape) if w) or f"object {i}"
        tr = Track(label, o, color, t, x, y, n, area, np.ones(F, bool), comps, count=want)
        tr.ref_area = _reference_area(tr, m.wall)
        tracks.append(tr)
    if p.family == "occlusion" and m.wall is not None:
        for tr in tracks:
            tr.visible = ~_behind_wall(tr, m, partly=True)
    for tr in tracks:
        tr.missing = _why_missing(tr, m.height, cfg)
    return tracks


def _why_missing(tr: Track, height: int, cfg: EvalConfig) -> str | None:
    """None when the track follows a coherent object: seen in at least ``min_presence`` of the
    frames where it can be seen, its blobs on plain background (the largest blob of a colour in
    coloured noise is surrounded by more noise), and no larger than a SynthWorld object allows."""
    if tr.color is None:
        return "no colour left to look for"
    seen = ~np.isnan(tr.area)
    presence = float(seen[tr.visible].mean()) if tr.visible.any() else 0.0
    if presence < cfg.min_presence:
        return f"seen in {presence:.0%} of the frames where it can be seen"
    comps = [c for f in np.flatnonzero(seen) for c in tr.components[f][:tr.count]]
    isolation = float(np.median([c.isolation for c in comps]))
    if isolation < cfg.min_isolation:
        return f"not on plain background (isolation {isolation:.2f}): noise, not an object"
    size = float(np.median([c.area for c in comps])) / (LARGEST_AREA * height ** 2)
    if size > cfg.max_area_ratio:
        return f"{size:.1f} times the largest SynthWorld object"
    return None


PATH_METRICS = ("motion", "speed", "gravity", "collision", "occlusion")   # read the frame order


def _unmeasurable(name: str, p: ParsedPrompt, tracks: list[Track],
                  cfg: EvalConfig) -> dict[str, str]:
    """{object: why} for the objects a metric measures that it cannot: not found, or (for the
    path metrics) moving on a path that is not coherent in time. The background and sharpness
    need some object of the prompt, not every one: an empty canvas, or noise over a background
    colour, is not the scene the prompt asks for."""
    if name in ("background", "sharpness"):
        return {} if any(tr.missing is None for tr in tracks) else {
            tr.label: tr.missing for tr in tracks}
    out = {}
    for tr in _measured_objects(name, p, tracks):
        if tr.missing:
            out[tr.label] = tr.missing
        elif name in PATH_METRICS and tr.spec.motion not in (None, "still"):
            rough = tr.roughness()
            if rough is None:
                out[tr.label] = "seen in fewer than 3 frames"
            elif rough > cfg.max_roughness:
                out[tr.label] = f"path not coherent in time (roughness {rough:.2f})"
    return out


def _measured_objects(name: str, p: ParsedPrompt, tracks: list[Track]) -> list[Track]:
    """The objects a metric measures: it fails when one of them is not found."""
    if name == "relation":
        return [tracks[p.relation.subject], tracks[p.relation.object]]
    if name == "occlusion":
        return tracks[:1]
    if name == "color":
        return [tr for tr in tracks if tr.spec.color]
    if name == "shape":
        return [tr for tr in tracks if tr.spec.shape]
    if name == "speed":
        return [tr for tr in tracks if _expects_speed(tr.spec, p)]
    if name == "gravity":
        return [tr for tr in tracks if tr.spec.motion in GRAVITY_MOTIONS]
    if name == "motion" and p.family != "collision":
        return [tr for tr in tracks if tr.spec.motion]
    return tracks   # count, consistency, collision (and its motion): every object


def _mode(values, default):
    values = list(values)
    if not values:
        return default
    uniq, counts = np.unique(values, return_counts=True)
    return int(uniq[np.argmax(counts)])


def _reference_area(tr: Track, wall: tuple[float, ...] | None) -> float | None:
    """The object's full area: the median over frames where it is clear of the wall (or, when
    it never is, the upper quartile over all frames)."""
    present = np.flatnonzero(~np.isnan(tr.area))
    if len(present) == 0:
        return None
    clear = [tr.area[f] for f in present if wall is None or all(
        c.right < wall[0] - 0.5 or c.left > wall[1] + 0.5 for c in tr.components[f][:tr.count])]
    return float(np.median(clear)) if clear else float(np.percentile(tr.area[present], 75))


def full_frames(tr: Track) -> np.ndarray:
    """Frames where the object is measured at (nearly) its full area."""
    ok = ~np.isnan(tr.area)
    if tr.ref_area is None:
        return np.zeros_like(ok)
    return ok & (tr.area >= 0.85 * tr.ref_area)


def _behind_wall(tr: Track, m: Measurement, partly: bool) -> np.ndarray:
    """Frames where the object's path (a constant-velocity fit to its fully visible frames)
    overlaps the wall (partly=True) or lies entirely behind it (partly=False)."""
    F, H = m.n_frames, m.height
    full = full_frames(tr)
    if full.sum() < 2:
        return np.zeros(F, bool)
    slope, icpt = np.polyfit(tr.t[full], tr.x[full], 1)
    xs = (icpt + slope * tr.t) * H                            # px
    half = np.median([max(c.right - c.x, c.x - c.left) for f in np.flatnonzero(full)
                      for c in tr.components[f][:1]])
    left, right = m.wall[0], m.wall[1]
    if partly:
        return (xs + half > left - WALL_SLACK) & (xs - half < right + WALL_SLACK)
    return (xs - half >= left - WALL_SLACK) & (xs + half <= right + WALL_SLACK)


# --- the metrics -----------------------------------------------------------------------------

def _background(p, m, tracks, cfg) -> MetricResult:
    allowed = p.allowed_backgrounds()
    return MetricResult(m.background in allowed, {
        "measured": m.background, "fraction": round(m.background_fraction, 4),
        "expected": list(allowed)})


def _color(p, m, tracks, cfg) -> MetricResult:
    presence = {}
    for tr in tracks:
        if tr.spec.color:
            vis = tr.visible
            presence[tr.spec.color] = float((tr.n[vis] >= 1).mean()) if vis.any() else 0.0
    claimed = {tr.color for tr in tracks if tr.color}
    uncoloured = sum(1 for tr in tracks if not tr.spec.color)
    others = {}
    for c in COLOR_NAMES:
        if c in claimed:
            continue
        share = float(np.mean([any(k.color == c for k in fr) for fr in m.components]))
        if share >= cfg.min_presence:
            others[c] = round(share, 3)
    ok = all(v >= cfg.min_presence for v in presence.values()) and len(others) <= uncoloured
    return MetricResult(ok, {"presence": {k: round(v, 3) for k, v in presence.items()},
                             "unexpected": others})


def classify_shape(fill: float, offset: float, cfg: EvalConfig) -> str:
    """Square / circle / triangle from the fill ratio of the bounding box and the centroid's
    offset below the box centre (in box heights: 1/6 for a point-up triangle, 0 for a circle or
    square). The two are combined because a small triangle's tip blurs away in H.264's
    half-resolution chroma (green on gray has almost no luma contrast), raising its fill
    towards a circle's."""
    score = offset - cfg.triangle_fill_weight * (fill - CIRCLE_FILL)
    if score > cfg.triangle_score or fill < cfg.triangle_fill:
        return "triangle"
    return "square" if fill >= cfg.square_fill else "circle"


def _shape_of(tr: Track, frames: np.ndarray, cfg: EvalConfig) -> tuple[str | None, dict]:
    """One shape for the object: the medians of its per-frame descriptors, classified once."""
    comps = [c for f in np.flatnonzero(frames) for c in tr.components[f][:tr.count]]
    if not comps:
        return None, {}
    fill = float(np.median([c.fill for c in comps]))
    offset = float(np.median([(c.y - 0.5 * (c.top + c.bottom)) / max(c.bottom - c.top, 1e-6)
                              for c in comps]))
    return classify_shape(fill, offset, cfg), {"fill": round(fill, 3), "offset": round(offset, 3)}


def _shape(p, m, tracks, cfg) -> MetricResult:
    ok, values = True, {}
    for tr in tracks:
        if not tr.spec.shape:
            continue
        got, info = _shape_of(tr, full_frames(tr) & tr.visible, cfg)
        values[tr.label] = {"measured": got, **info}
        ok &= got == tr.spec.shape
    return MetricResult(ok, values)


def _count(p, m, tracks, cfg) -> MetricResult:
    ok, values = True, {}
    for tr in tracks:
        got = _mode(tr.n[tr.visible], default=0)
        want = tr.spec.count
        values[tr.label] = {"measured": got, "expected": want if want is not None else ">=2"}
        ok &= (got == want) if want is not None else got >= 2
    return MetricResult(ok, values)


def _relation(p, m, tracks, cfg) -> MetricResult:
    r = p.relation
    s, o = tracks[r.subject], tracks[r.object]
    both = ~np.isnan(s.x) & ~np.isnan(o.x)
    if not both.any():
        return MetricResult(False, {"error": "subject and object never seen together"})
    dx = float(np.median(s.x[both] - o.x[both]))
    dy = float(np.median(s.y[both] - o.y[both]))
    mg = cfg.relation_margin
    ok = {"left_of": dx < -mg and abs(dy) <= abs(dx), "right_of": dx > mg and abs(dy) <= abs(dx),
          "above": dy < -mg and abs(dx) <= abs(dy), "below": dy > mg and abs(dx) <= abs(dy),
          "beside": abs(dx) > mg and abs(dy) <= abs(dx)}[r.relation]
    return MetricResult(ok, {"dx": round(dx, 4), "dy": round(dy, 4)})


def _endpoints(tr: Track) -> tuple[np.ndarray, np.ndarray] | None:
    ok = np.flatnonzero(~np.isnan(tr.x))
    if len(ok) < 2:
        return None
    return (np.array([tr.x[ok[0]], tr.y[ok[0]]]), np.array([tr.x[ok[-1]], tr.y[ok[-1]]]))


def _rebound(y: np.ndarray, rise: float) -> bool:
    """Whether y (down = +) rises by ``rise`` after some low point (a bounce)."""
    y = y[~np.isnan(y)]
    if len(y) < 3:
        return False
    lowest_so_far = np.maximum.accumulate(y)
    return bool((lowest_so_far - y).max() > rise)


def _motion_one(tr: Track, height: int, cfg: EvalConfig) -> tuple[bool, dict]:
    ends = _endpoints(tr)
    if ends is None:
        return False, {"error": "not found"}
    (x0, y0), (x1, y1) = ends
    dx, dy = x1 - x0, y1 - y0
    thr = cfg.still_threshold
    values = {"dx": round(float(dx), 4), "dy": round(float(dy), 4)}
    motion = tr.spec.motion

    def along(main: float, other: float, sign: int) -> bool:
        return sign * main > thr and abs(other) <= max(thr, 0.5 * abs(main))

    if motion == "still":
        ok = abs(dx) < thr and abs(dy) < thr
    elif motion == "left":
        ok = along(dx, dy, -1)
    elif motion == "right":
        ok = along(dx, dy, 1)
    elif motion == "up":
        ok = along(dy, dx, -1)
    elif motion == "down":
        ok = along(dy, dx, 1)
    elif motion in ("falls", "bounces"):
        rebounds = [_rebound(y, 0.5 * thr) for _, y in tr.instances(height)]
        rebound = all(rebounds) if motion == "bounces" else any(rebounds)
        values["rebound"] = rebound
        ok = dy > thr and abs(dx) < thr and rebound == (motion == "bounces")
    else:   # thrown, thrown_left, thrown_right
        rise = float(y0 - np.nanmin(tr.y))
        values["rise"] = round(rise, 4)
        side = {"thrown_left": -1, "thrown_right": 1}.get(motion, int(np.sign(dx)))
        ok = side * dx > thr and rise > thr
    return bool(ok), values


def _motion(p, m, tracks, cfg) -> MetricResult:
    if p.family == "collision" and len(tracks) == 2:
        return _approach(tracks, cfg)
    ok, values = True, {}
    for tr in tracks:
        if tr.spec.motion is None:
            continue
        passed, v = _motion_one(tr, m.height, cfg)
        values[tr.label] = {"expected": tr.spec.motion, **v}
        ok &= passed
    return MetricResult(ok, values)


def _approach(tracks: list[Track], cfg: EvalConfig) -> MetricResult:
    a, b = tracks
    both = ~np.isnan(a.x) & ~np.isnan(b.x)
    if both.sum() < 3:
        return MetricResult(False, {"error": "the two balls are not both seen"})
    gap = np.abs(a.x - b.x)[both]
    closing = float(gap[0] - gap.min())
    opening = float(gap[-1] - gap.min())
    ok = closing > cfg.still_threshold and opening > cfg.still_threshold
    return MetricResult(ok, {"closing": round(closing, 4), "opening": round(opening, 4)})


def _slope(t: np.ndarray, v: np.ndarray) -> float | None:
    ok = ~np.isnan(v)
    if ok.sum() < 2:
        return None
    return float(np.polyfit(t[ok], v[ok], 1)[0])


def _speed(p, m, tracks, cfg) -> MetricResult:
    ok, values = True, {}
    collide = _contact_frame(tracks) if p.family == "collision" and len(tracks) == 2 else None
    for tr in tracks:
        if not _expects_speed(tr.spec, p):
            continue
        want = SPEEDS[tr.spec.speed or "normal"]
        # Frames clear of the wall give unbiased centroids; when the path hugs the wall, fall
        # back to frames with (nearly) the full area.
        full = full_frames(tr) & tr.visible
        if full.sum() < 2:
            full = full_frames(tr)
        if p.family == "collision":
            pre = np.arange(m.n_frames) <= (-1 if collide is None else collide - 1)
            v = _slope(tr.t[full & pre], tr.x[full & pre])
        elif tr.spec.motion in ("up", "down"):
            v = _slope(tr.t[full], tr.y[full])
        else:
            v = _slope(tr.t[full], tr.x[full])
        if v is None:
            values[tr.label] = {"error": "too few frames to fit a speed"}
            ok = False
            continue
        err = abs(abs(v) - want) / want
        values[tr.label] = {"measured": round(abs(v), 4), "expected": want,
                            "rel_error": round(err, 4)}
        ok &= err <= cfg.speed_tolerance
    return MetricResult(ok, values)


def fit_gravity(t: np.ndarray, y: np.ndarray, floor_tol: float) -> tuple[float | None, int]:
    """One acceleration shared by every airborne segment of y(t) (y down, H units).

    Floor contacts are the frames within ``floor_tol`` of the lowest point reached, and the local
    maxima of y (a bounce between two frames leaves the nearer frame as a local maximum). The
    segments between contacts are fitted as y = a_s + b_s t + g t^2 / 2 with a shared g.
    Returns (g, number of frames used); g is None when no segment has 3 frames, or when the
    frames only just determine the fit (three points fix a parabola, whatever g they imply).
    """
    ok = ~np.isnan(y)
    if ok.sum() < 3:
        return None, 0
    low = np.nanmax(y)
    contact = ~ok | (y >= low - floor_tol)
    yy = np.where(ok, y, -np.inf)
    for k in range(1, len(y) - 1):
        if ok[k] and yy[k] >= yy[k - 1] and yy[k] >= yy[k + 1]:
            contact[k] = True
    segments, run = [], []
    for k in range(len(y)):
        if contact[k]:
            if len(run) >= 3:
                segments.append(run)
            run = []
        else:
            run.append(k)
    if len(run) >= 3:
        segments.append(run)
    used = sum(len(seg) for seg in segments)
    if used <= 1 + 2 * len(segments):   # unknowns: g, and a start and a speed per segment
        return None, 0
    rows, rhs = [], []
    for s, seg in enumerate(segments):
        for k in seg:
            row = np.zeros(1 + 2 * len(segments))
            row[0] = 0.5 * t[k] ** 2
            row[1 + 2 * s], row[2 + 2 * s] = 1.0, t[k]
            rows.append(row)
            rhs.append(y[k])
    sol, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return float(sol[0]), used


def _gravity(p, m, tracks, cfg) -> MetricResult:
    ok, values = True, {}
    for tr in tracks:
        if tr.spec.motion not in GRAVITY_MOTIONS:
            continue
        fits = [fit_gravity(tr.t, y, floor_tol=0.5 / m.height) for _, y in tr.instances(m.height)]
        if any(g is None for g, _ in fits):
            values[tr.label] = {"error": "fewer than 3 airborne frames in a row"}
            ok = False
            continue
        gs = [g for g, _ in fits]
        err = max(abs(g - G) / G for g in gs)
        values[tr.label] = {"g": round(float(np.mean(gs)), 4), "expected": G,
                            "rel_error": round(err, 4), "frames": sum(n for _, n in fits)}
        ok &= err <= cfg.gravity_tolerance
    return MetricResult(ok, values)


def _contact_frame(tracks: list[Track]) -> int | None:
    a, b = tracks
    gap = np.abs(a.x - b.x)
    if np.isnan(gap).all():
        return None
    return int(np.nanargmin(gap))


def _collision(p, m, tracks, cfg) -> MetricResult:
    k = _contact_frame(tracks)
    if k is None:
        return MetricResult(False, {"error": "the two balls are not both seen"})
    frames = np.arange(m.n_frames)
    pre, post = frames <= k - 1, frames >= k + 1
    def left_to_right(tr: Track) -> float:  # median x before the contact; 0 when never seen then
        seen = tr.x[pre][~np.isnan(tr.x[pre])]
        return float(np.median(seen)) if seen.size else 0.0

    a, b = sorted(tracks, key=left_to_right)
    v = [_slope(tr.t[sel], tr.x[sel]) for tr in (a, b) for sel in (pre, post)]
    if any(x is None for x in v):
        return MetricResult(False, {"error": "too few frames before or after the contact",
                                    "contact_frame": k})
    a_pre, a_post, b_pre, b_post = v
    scale = abs(a_pre) + abs(b_pre)
    err = (abs(a_post - b_pre) + abs(b_post - a_pre)) / max(scale, 1e-6)
    return MetricResult(err <= cfg.collision_tolerance, {
        "contact_frame": k, "left_pre": round(a_pre, 4), "left_post": round(a_post, 4),
        "right_pre": round(b_pre, 4), "right_post": round(b_post, 4), "rel_error": round(err, 4)})


def _consistency(p, m, tracks, cfg) -> MetricResult:
    ok, values = True, {}
    for tr in tracks:
        want = tr.spec.count or _mode(tr.n[tr.n >= 2], default=2)
        vis = tr.visible
        present = tr.n >= want
        missing = np.flatnonzero(vis & ~present).tolist()
        full = ~np.isnan(tr.area) & vis
        drift = float(np.max(np.abs(tr.area[full] / np.median(tr.area[full]) - 1))) if full.any() else None
        passed = not missing and drift is not None and drift <= cfg.area_drift
        values[tr.label] = {"missing_frames": missing,
                            "area_drift": None if drift is None else round(drift, 4)}
        ok &= passed
    return MetricResult(ok, values)


def _occlusion(p, m, tracks, cfg) -> MetricResult:
    tr = tracks[0]
    if m.wall is None:
        return MetricResult(False, {"error": "no wall found"})
    left, right = m.wall[0] / m.height, m.wall[1] / m.height
    seen = np.flatnonzero(full_frames(tr))
    if len(seen) < 2:
        return MetricResult(False, {"error": "object not seen", "wall": list(m.wall)})
    x_first, x_last = tr.x[seen[0]], tr.x[seen[-1]]
    direction = tr.spec.motion if tr.spec.motion in ("left", "right") else (
        "right" if x_last > x_first else "left")
    crossed = (x_first < left and x_last > right) if direction == "right" else (
        x_first > right and x_last < left)
    starts_whole = seen[0] == 0 and seen[-1] == m.n_frames - 1
    # Same shape on both sides of the wall.
    centre = 0.5 * (left + right)
    before = np.zeros(m.n_frames, bool)
    after = np.zeros(m.n_frames, bool)
    side = -1 if direction == "right" else 1
    before[seen] = side * (tr.x[seen] - centre) > 0
    after[seen] = side * (tr.x[seen] - centre) < 0
    shape_before, _ = _shape_of(tr, before, cfg)
    shape_after, _ = _shape_of(tr, after, cfg)
    same_shape = shape_before is not None and shape_before == shape_after and (
        tr.spec.shape is None or shape_before == tr.spec.shape)
    # Missing (or cut) only behind the wall; gone while entirely behind it.
    partly = _behind_wall(tr, m, partly=True)
    entirely = _behind_wall(tr, m, partly=False)
    cut = ~full_frames(tr)
    hidden_elsewhere = np.flatnonzero(cut & ~partly).tolist()
    shows_through = np.flatnonzero(entirely & (np.nan_to_num(tr.area) > 0.5 * tr.ref_area)).tolist()
    ok = bool(crossed and starts_whole and same_shape and not hidden_elsewhere and not shows_through
              and entirely.any())
    return MetricResult(ok, {
        "wall_px": [round(v, 2) for v in m.wall], "x_first": round(float(x_first), 4),
        "x_last": round(float(x_last), 4), "crossed": bool(crossed),
        "shape_before": shape_before, "shape_after": shape_after,
        "hidden_elsewhere": hidden_elsewhere, "visible_behind_wall": shows_through,
        "hidden_frames": np.flatnonzero(cut).tolist()})


def _sharpness(p, m, tracks, cfg) -> MetricResult:
    # Every object in the video, named or not (a wrong colour is the color metric's business),
    # but not blobs of noise: those have thresholded, hence sharp, edges.
    widths = [c.edge_width for fr in m.components for c in fr if c.isolation >= cfg.min_isolation]
    if not widths:
        return MetricResult(False, {"error": "no object found"})
    w = float(np.median(widths))
    return MetricResult(w <= cfg.max_edge_width, {"edge_width": round(w, 3)})


_METRIC_FNS = {
    "background": _background, "color": _color, "shape": _shape, "count": _count,
    "relation": _relation, "motion": _motion, "speed": _speed, "gravity": _gravity,
    "collision": _collision, "consistency": _consistency, "occlusion": _occlusion,
    "sharpness": _sharpness,
}
