"""Sample a model on fixed SynthWorld eval prompts and score the clips: the evaluator as a
training-time signal (``videodit train --sample-every``) and the prompt list of ``videodit eval
--model``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from videodit.eval import evaluate
from videodit.video import write_video
from videodit.world.captions import canonical_caption
from videodit.world.scene import sample_scene


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """The first ``n`` canonical captions of the SynthWorld eval split (fixed across runs)."""
    return [canonical_caption(sample_scene("eval", i, seed)) for i in range(n)]


def sample_and_evaluate(pipe, prompts: list[str], out_dir: Path, steps: int, guidance: float) -> dict:
    """Generate one clip per prompt (seed = its index), write them as mp4 under ``out_dir``, and
    return the evaluator's scores and each metric's pass rate over all the prompts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = []
    for i, prompt in enumerate(prompts):
        sampler = dataclasses.replace(pipe.config.sampler, steps=steps, guidance=guidance, seed=i)
        frames = pipe.decode_latents(pipe.generate_latents([prompt], frames=pipe.config.frames,
                                                           size=pipe.config.size, sampler=sampler))[0]
        write_video(out_dir / f"{i:05d}.mp4", frames, fps=pipe.config.fps)
        videos.append(frames)
    (out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
    return summarize(evaluate(videos, prompts, fps=pipe.config.fps, progress=False))


def summarize(result) -> dict:
    """An evaluation (videodit.eval.evaluate) -> its SCORE in and out of distribution and each
    metric's pass rate over every video it applies to."""
    summary = {"score_in_dist": result.score["in_dist"], "score_heldout": result.score["heldout"]}
    for name in result.table["in_dist"]:
        outcomes = [v.metrics[name].passed for v in result.videos
                    if name in v.metrics and v.metrics[name].passed is not None]
        summary[name] = sum(outcomes) / len(outcomes) if outcomes else float("nan")
    return summary
