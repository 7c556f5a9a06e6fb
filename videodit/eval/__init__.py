"""The SynthWorld evaluator: scores videos against their prompts (docs/EVAL.md).

parse (prompt -> expected content), measure (video -> palette components), metrics (per-video
pass / fail with raw values), report (accuracy table with bootstrap intervals, JSON, HTML), cli
(``videodit eval``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from videodit.eval.config import EvalConfig
    from videodit.eval.report import EvalResult


def evaluate(videos: list[np.ndarray | None], prompts: list[str], fps: float | list[float] = 8.0,
             cfg: EvalConfig | None = None, progress: bool = False) -> EvalResult:
    """Score videos (uint8 (F, H, W, 3) each, None for a missing one: it fails every metric its
    prompt asks for) against their prompts, one to one. ``fps`` is one rate or one per video."""
    # Imported here so that ``import videodit.eval`` (done by the CLI) stays light.
    from tqdm import tqdm

    from videodit.errors import VideoditError
    from videodit.eval.config import EvalConfig
    from videodit.eval.metrics import score_video
    from videodit.eval.report import summarize

    cfg = cfg or EvalConfig()
    if len(videos) != len(prompts):
        raise VideoditError(f"evaluate: {len(videos)} videos but {len(prompts)} prompts; "
                            f"they are paired one to one")
    rates = list(fps) if isinstance(fps, (list, tuple)) else [fps] * len(videos)
    results = [score_video(v, p, rates[i], cfg, index=i)
               for i, (v, p) in enumerate(tqdm(list(zip(videos, prompts)), desc="eval",
                                               unit="video", disable=not progress))]
    return summarize(results, cfg)
