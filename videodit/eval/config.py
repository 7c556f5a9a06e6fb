"""The evaluator's thresholds, one frozen dataclass (``videodit eval`` flags come from it).

Kept apart from metrics.py so that building the CLI does not import numpy or scipy. What each
threshold means, and the ground-truth floor it leaves room for: docs/EVAL.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EvalConfig:
    still_threshold: float = field(default=0.04, metadata={
        "help": "net displacement (H) under which an object counts as still"})
    gravity_tolerance: float = field(default=0.35, metadata={
        "help": "max relative error of the fitted vertical acceleration against g"})
    speed_tolerance: float = field(default=0.25, metadata={
        "help": "max relative error of a constant speed against its speed word"})
    collision_tolerance: float = field(default=0.3, metadata={
        "help": "max relative error of the exchanged velocities in a collision"})
    area_drift: float = field(default=0.3, metadata={
        "help": "max relative deviation of an object's area from its median"})
    relation_margin: float = field(default=0.02, metadata={
        "help": "min centroid offset (H) along a relation's axis"})
    max_edge_width: float = field(default=2.3, metadata={
        "help": "max median edge width (px of partial coverage per px of perimeter)"})
    min_presence: float = field(default=0.5, metadata={
        "help": "fraction of frames in which a colour must (or must not) appear, and in which an "
                "object must be seen to count as found"})
    min_isolation: float = field(default=0.5, metadata={
        "help": "median fraction of the ring around an object's blobs that must be plain "
                "background for it to count as found (coloured noise: ~0.05)"})
    max_area_ratio: float = field(default=3.0, metadata={
        "help": "an object larger than this many times SynthWorld's largest object is not found"})
    max_roughness: float = field(default=1.0, metadata={
        "help": "max von Neumann ratio (mean squared frame-to-frame step / variance) of a moving "
                "object's path: <= 0.55 on ground truth, ~2 with the frames in random order"})
    square_fill: float = field(default=0.89, metadata={
        "help": "fill ratio at or above which a blob is a square"})
    triangle_fill: float = field(default=0.64, metadata={
        "help": "fill ratio below which a blob is a triangle"})
    triangle_score: float = field(default=0.05, metadata={
        "help": "centroid offset below the box centre (box heights), less triangle_fill_weight "
                "x (fill - 0.785), above which a blob is a triangle"})
    triangle_fill_weight: float = field(default=0.3, metadata={
        "help": "weight of the fill ratio in the triangle score"})
