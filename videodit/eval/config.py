"""The evaluator's thresholds, one frozen dataclass (``videodit eval`` flags come from it).

Kept apart from metrics.py so that building the CLI does not import numpy or scipy. What each
threshold means, and the ground-truth floor it leaves room for: docs/EVAL.md. Each field's range
is in its metadata (videodit/config.py): the flags refuse a value outside it before anything runs,
and a config built in Python is checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from videodit.config import check_ranges

# Open ends where the threshold's own end would make a test unpassable or meaningless: a still
# object needs |displacement| < still_threshold, a found object needs presence >= min_presence > 0.
_POSITIVE = {"min": 0, "min_exclusive": True}
_NON_NEGATIVE = {"min": 0}
_FRACTION = {"min": 0, "max": 1}


@dataclass(frozen=True)
class EvalConfig:
    still_threshold: float = field(default=0.04, metadata={
        "help": "net displacement (H) under which an object counts as still", **_POSITIVE})
    gravity_tolerance: float = field(default=0.35, metadata={
        "help": "max relative error of the fitted vertical acceleration against g", **_NON_NEGATIVE})
    speed_tolerance: float = field(default=0.25, metadata={
        "help": "max relative error of a constant speed against its speed word", **_NON_NEGATIVE})
    collision_tolerance: float = field(default=0.3, metadata={
        "help": "max relative error of the exchanged velocities in a collision", **_NON_NEGATIVE})
    area_drift: float = field(default=0.3, metadata={
        "help": "max relative deviation of an object's area from its median", **_NON_NEGATIVE})
    relation_margin: float = field(default=0.02, metadata={
        "help": "min centroid offset (H) along a relation's axis", **_NON_NEGATIVE})
    max_edge_width: float = field(default=2.3, metadata={
        "help": "max median edge width (px of partial coverage per px of perimeter)", **_POSITIVE})
    min_presence: float = field(default=0.5, metadata={
        "help": "fraction of frames in which a colour must (or must not) appear, and in which an "
                "object must be seen to count as found", "min": 0, "max": 1, "min_exclusive": True})
    min_isolation: float = field(default=0.5, metadata={
        "help": "median fraction of the ring around an object's blobs that must be plain "
                "background for it to count as found (coloured noise: ~0.05)", **_FRACTION})
    max_area_ratio: float = field(default=3.0, metadata={
        "help": "an object larger than this many times SynthWorld's largest object is not found",
        **_POSITIVE})
    max_roughness: float = field(default=1.0, metadata={
        "help": "max von Neumann ratio (mean squared frame-to-frame step / variance) of a moving "
                "object's path: <= 0.55 on ground truth, ~2 with the frames in random order",
        **_POSITIVE})
    square_fill: float = field(default=0.89, metadata={
        "help": "fill ratio at or above which a blob is a square", **_FRACTION})
    triangle_fill: float = field(default=0.64, metadata={
        "help": "fill ratio below which a blob is a triangle", **_FRACTION})
    triangle_score: float = field(default=0.05, metadata={
        "help": "centroid offset below the box centre (box heights), less triangle_fill_weight "
                "x (fill - 0.785), above which a blob is a triangle",
        "min": -0.5, "max": 0.5})
    triangle_fill_weight: float = field(default=0.3, metadata={
        "help": "weight of the fill ratio in the triangle score", **_NON_NEGATIVE})

    def __post_init__(self) -> None:
        check_ranges(self)
