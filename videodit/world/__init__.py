"""SynthWorld v1: the built-in captioned physics video world (its contract: the SynthWorld spec, summarised in README.md).

``make_sample(split, index, seed)`` is a pure function returning the clip, its captions and its
ground truth. Modules: palette (colours), physics (constants, closed-form tracks), scene (canvas
checks, geometry, per-family sampling, ground truth), render (anti-aliased rasteriser), captions
(canonical caption, paraphrases, short prompts), cli (``videodit world ...``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videodit.world.captions import scene_captions
from videodit.world.physics import FPS
from videodit.world.render import render
from videodit.world.scene import FAMILIES, Scene, check_canvas, family_possible, parse_size, sample_scene, truth_record

__all__ = ["FAMILIES", "FPS", "Sample", "Scene", "check_canvas", "family_possible", "make_sample", "parse_size",
           "sample_scene"]


@dataclass(frozen=True)
class Sample:
    frames: np.ndarray          # (F, H, W, 3) uint8 RGB
    caption: str                # canonical caption
    paraphrases: list[str]
    short: list[str]
    truth: dict                 # JSON-serialisable ground truth, captions included
    scene: Scene


def make_sample(split: str, index: int, seed: int = 0, *, width: int = 64, height: int = 64,
                frames: int = 17, family: str | None = None) -> Sample:
    """Sample ``index`` of ``split``: a pure function of all its arguments, bit for bit."""
    scene = sample_scene(split, index, seed, width=width, height=height, frames=frames, family=family)
    caption, para, short = scene_captions(scene)
    truth = truth_record(scene)
    truth.update(caption=caption, paraphrases=para, short=short)
    return Sample(frames=render(scene), caption=caption, paraphrases=para, short=short, truth=truth, scene=scene)
