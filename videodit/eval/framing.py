"""Framing statistics of a set of videos: do objects use the frame, and are they cut off?

Sora's report compares a model trained on native sizes with one trained on square crops: the
latter "sometimes generates videos where the subject is only partially in view". These numbers
measure that on SynthWorld-style videos (palette objects on a plain background), along each
video's long axis (x for square and widescreen frames, y for vertical ones):

- ``edge_frames``: the fraction of frames in which some object touches one of the two borders
  across that axis (SynthWorld's ground truth rarely has an object at the left or right border,
  0.016 of frames at 80x48 over 300 eval clips; along y, objects resting on the floor touch the
  bottom border);
- ``spread``: the range of all object centres along the axis, as a fraction of the frame's
  length on it (how much of the frame the video uses), averaged over videos;
- ``travel``: how far the largest object moves along the axis from the first frame to the last,
  same unit, averaged over videos where both frames show an object.

Objects are palette blobs on plain background (``Component.isolation``, as the metrics count
them): blobs of noise are not objects, and noise has none.
"""

from __future__ import annotations

import numpy as np


def framing_stats(videos, per_video: bool = False) -> dict:
    """``videos``: uint8 (F, H, W, 3) arrays -> {"edge_frames", "spread", "travel", "videos"}; with
    ``per_video`` also {"per_video": {"edge_frames": [...], "spread": [...], "travel": [...]}} (travel
    None where a first or last frame shows no object), for paired intervals."""
    from videodit.eval.config import EvalConfig
    from videodit.eval.measure import measure

    min_isolation = EvalConfig().min_isolation
    edge, spread, travel = [], [], []
    for frames in videos:
        m = measure(frames)
        vertical = m.height > m.width
        length = m.height if vertical else m.width
        touching, centres = 0, []
        objects = [[c for c in comps if c.isolation >= min_isolation] for comps in m.components]
        for comps in objects:
            lows = [c.top if vertical else c.left for c in comps]
            highs = [c.bottom if vertical else c.right for c in comps]
            touching += any(lo <= 0.5 or hi >= length - 0.5 for lo, hi in zip(lows, highs))
            centres += [c.y if vertical else c.x for c in comps]
        edge.append(touching / max(1, m.n_frames))
        spread.append((max(centres) - min(centres)) / length if centres else 0.0)
        first, last = objects[0], objects[-1]
        if first and last:
            a, b = max(first, key=lambda c: c.area), max(last, key=lambda c: c.area)
            travel.append(abs((b.y - a.y) if vertical else (b.x - a.x)) / length)
        else:
            travel.append(None)
    moved = [t for t in travel if t is not None]
    out = {"edge_frames": float(np.mean(edge)) if edge else float("nan"),
           "spread": float(np.mean(spread)) if spread else float("nan"),
           "travel": float(np.mean(moved)) if moved else float("nan"), "videos": len(edge)}
    if per_video:
        out["per_video"] = {"edge_frames": edge, "spread": spread, "travel": travel}
    return out
