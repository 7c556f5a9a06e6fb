"""Prompting with images and videos, measured on SynthWorld (docs/PROMPTING.md).

    python benchmarks/prompting.py                                 # the bundled model, 20 samples a row
    python benchmarks/prompting.py --model runs/dit/bundle --n 50 --steps 30 --rows animate loop --json p.json
    python benchmarks/prompting.py --n 1 --examples docs/prompting     # the example clips in the docs

Every row draws its inputs from the SynthWorld eval split at the bundle's size (sample i, seed 0;
one-object "single" scenes where a trajectory or a colour swap must be read off), samples with
seed i, and scores with the evaluator (videodit.eval) and the measurements below. A row's
"pass" is the fraction of samples meeting every condition of its target:

  animate   PSNR of frame 0 vs the image >= 30 dB (as decoded: the written frame 0 IS the image)
            and the evaluator's motion metric passes                               target 0.85
  extend    forward and backward, half a clip given, half generated: colour and shape pass on
            the generated frames and the trajectory does not jump at the seam (the step across it within 2 px of the
            scene's true step: one-object scenes are deterministic)
                                                                                   target 0.90
  connect   bridge from A's last frame to B's first (B starts a window - 4 frames after A ends in
            the same scene): PSNR >= 28 dB at both ends, as decoded                target 0.90
            (also the VAE's ceiling at B[0]: the scene's true latents decoded, and with the last
            latent made by trail_latents)
  loop      last->first frame difference <= the median consecutive-frame difference  target 0.90
  edit      colour word swapped in the caption, strength --strength: the evaluator's colour and
            motion metrics pass for the new prompt                                 target 0.80
  still     --frames 1: colour and shape pass                                      target 0.95
  long      65 frames vs 17 (same prompts and seeds): evaluator accuracy per metric within 0.05,
            and seam ratio = mean frame difference across window seams / within windows (~1)

Frame difference: mean absolute uint8 difference over pixels and channels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROWS = ("animate", "extend", "connect", "loop", "edit", "still", "long")
TARGETS = {"animate": 0.85, "extend": 0.90, "connect": 0.90, "loop": 0.90, "edit": 0.80, "still": 0.95}
SEAM_JUMP_PX = 2.0
LONG_FRAMES = 65
EXAMPLE_QUALITY = 80


def frame_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def centroids(frames: np.ndarray, color: str) -> np.ndarray:
    """(F, 2) centre (x, y) in px of the largest component of ``color`` per frame, NaN where none."""
    from videodit.eval.measure import measure

    m = measure(frames)
    out = np.full((len(frames), 2), np.nan)
    for f, comps in enumerate(m.of_color(color)):
        if comps:
            c = max(comps, key=lambda c: c.area)
            out[f] = c.x, c.y
    return out


def seam_jump(path: np.ndarray, truth: np.ndarray, seam: int) -> float:
    """|step into frame ``seam`` - the true step| in px, paths (F, 2): the generated side of an
    extension should move across the seam as the scene's own physics does (SynthWorld's single
    scenes are deterministic, so the true continuation is known, bounces included)."""
    return float(np.linalg.norm((path[seam] - path[seam - 1]) - (truth[seam] - truth[seam - 1])))


def write_example(path: Path, frames: np.ndarray, fps: float) -> None:
    """A docs example: lossy animated webp (quality EXAMPLE_QUALITY: lossless noisy 65-frame clips
    run to 250 KB), or a PNG for one frame. The measurements use the uint8 frames, not these files."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    if len(images) == 1:
        images[0].save(path)
        return
    images[0].save(path, format="WEBP", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                   loop=0, quality=EXAMPLE_QUALITY, method=6)


def nanmean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def scores(frames: np.ndarray, prompt: str, fps: float) -> dict[str, bool | None]:
    from videodit.eval.metrics import score_video

    return {k: m.passed for k, m in score_video(frames, prompt, fps).metrics.items()}


# ---------------------------------------------------------------------------------------------
# Rows: each returns one record per sample with its measured values and "pass"
# ---------------------------------------------------------------------------------------------

def row_animate(pipe, ctx, i):
    from videodit import prompting
    from videodit.video import psnr

    s = ctx.sample(i, ctx.window)
    video = prompting.animate(pipe, s.caption, s.frames[0], sampler=ctx.sampler(i))
    ctx.keep(i, "animate_input", s.frames[:1], s.caption)
    ctx.keep(i, "animate", video, s.caption)
    db = psnr(video[0], s.frames[0])  # frame 0 as written (the decoding of the exact image latent)
    motion = scores(video, s.caption, ctx.fps).get("motion")
    return {"psnr_frame0_db": db, "motion": motion, "jump_0_1": frame_diff(video[0], video[1]),
            "pass": db >= 30 and motion is not False}


def row_extend(pipe, ctx, i):
    from videodit import prompting

    s = ctx.sample(i, 2 * ctx.window - 1, family="single")
    color = s.truth["objects"][0]["color"]
    half = ctx.window
    out = {}
    for direction, clip, seam in (("forward", s.frames[:half], half), ("backward", s.frames[half - 1:], half - 1)):
        video = prompting.extend(pipe, s.caption, clip, direction, new_frames=half - 1, sampler=ctx.sampler(i))
        ctx.keep(i, f"extend_{direction}", video, s.caption)
        # Colour and shape of the new frames alone: the output holds the given clip untouched, which
        # would pass them on its own.
        sc = scores(video[seam:] if direction == "forward" else video[:seam], s.caption, ctx.fps)
        jump = seam_jump(centroids(video, color), centroids(s.frames, color), seam)
        out[direction] = {"color": sc.get("color"), "shape": sc.get("shape"), "seam_jump_px": jump,
                          "pass": bool(sc.get("color") and sc.get("shape") and jump <= SEAM_JUMP_PX)}
    out["pass"] = out["forward"]["pass"] and out["backward"]["pass"]
    return out


def row_connect(pipe, ctx, i):
    from videodit import prompting
    from videodit.vae import TEMPORAL_STRIDE
    from videodit.video import psnr

    s = ctx.sample(i, ctx.window + 8, family="single")
    a, b = s.frames[:5], s.frames[ctx.window:]  # B[0] sits window - 4 frames after A[-1], as in bridge
    span = prompting.bridge(pipe, s.caption, a, b, sampler=ctx.sampler(i))
    ctx.keep(i, "connect", np.concatenate([a, span[1:-1], b]), s.caption)  # what prompting.connect returns
    start, end = psnr(span[0], a[-1]), psnr(span[-1], b[0])
    # The VAE's ceiling: the scene's own window A[-1] .. B[3] encoded (a perfect DiT), decoded; then
    # with its last latent made as the bridge makes it (trail_latents), the rest true.
    truth = s.frames[len(a) - 1 : len(a) - 1 + ctx.window]
    latents = prompting.encode_frames(pipe, truth).clone()  # an inference tensor: clone to write into it
    ideal = psnr(pipe.decode_latents(latents)[0][-TEMPORAL_STRIDE], b[0])
    latents[:, :, -1:] = prompting.trail_latents(pipe, b[:TEMPORAL_STRIDE], ctx.window)
    trail = psnr(pipe.decode_latents(latents)[0][-TEMPORAL_STRIDE], b[0])
    return {"psnr_start_db": start, "psnr_end_db": end, "psnr_end_true_latents_db": ideal,
            "psnr_end_true_but_trail_db": trail, "ceiling_pass": ideal >= 28,
            "pass": start >= 28 and end >= 28}


def row_loop(pipe, ctx, i):
    from videodit import prompting

    s = ctx.sample(i, ctx.window)
    video = prompting.loop(pipe, s.caption, sampler=ctx.sampler(i))
    ctx.keep(i, "loop", video, s.caption)
    wrap = frame_diff(video[-1], video[0])
    median = statistics.median(frame_diff(video[f], video[f + 1]) for f in range(len(video) - 1))
    return {"wrap_diff": wrap, "median_diff": median, "pass": wrap <= median}


def row_edit(pipe, ctx, i):
    from videodit import prompting
    from videodit.world.palette import COLORS

    s = ctx.sample(i, ctx.window, family="single")
    old = s.truth["objects"][0]["color"]
    names = list(COLORS)
    new = names[(names.index(old) + 1 + i % (len(names) - 1)) % len(names)]
    prompt = s.caption.replace(old, new, 1)
    video = prompting.edit(pipe, prompt, s.frames, ctx.strength, sampler=ctx.sampler(i))
    ctx.keep(i, "edit_source", s.frames, s.caption)
    ctx.keep(i, "edit", video, prompt)
    sc = scores(video, prompt, ctx.fps)
    path_old, path_new = centroids(s.frames, old), centroids(video, new)
    kept = nanmean(np.linalg.norm(path_old - path_new, axis=1))
    return {"from": old, "to": new, "color": sc.get("color"), "motion": sc.get("motion"),
            "mean_path_distance_px": kept, "pass": bool(sc.get("color") and sc.get("motion") is not False)}


def row_still(pipe, ctx, i):
    s = ctx.sample(i, 1)
    image = pipe(s.caption, frames=1, seed=ctx.seed + i, steps=ctx.steps, guidance=ctx.guidance, solver=ctx.solver)
    ctx.keep(i, "still", image, s.caption)
    sc = scores(image, s.caption, ctx.fps)
    return {"color": sc.get("color"), "shape": sc.get("shape"), "pass": bool(sc.get("color") and sc.get("shape"))}


def row_long(pipe, ctx, i):
    from videodit import prompting

    s = ctx.sample(i, ctx.window)
    long = prompting.long_video(pipe, s.caption, LONG_FRAMES, sampler=ctx.sampler(i))
    ctx.keep(i, "long", long, s.caption)
    short = pipe(s.caption, seed=ctx.seed + i, steps=ctx.steps, guidance=ctx.guidance, solver=ctx.solver)
    seams = prompting.window_seams(LONG_FRAMES, ctx.window)
    diffs = [frame_diff(long[f], long[f + 1]) for f in range(len(long) - 1)]
    across = [diffs[f - 1] for f in seams]
    within = [d for f, d in enumerate(diffs) if f + 1 not in seams]
    return {"long": scores(long, s.caption, ctx.fps), "short": scores(short, s.caption, ctx.fps),
            "seam_diff": float(np.mean(across)), "within_diff": float(np.mean(within)),
            "seam_ratio": float(np.mean(across) / max(np.mean(within), 1e-6))}


ROW_FNS = {"animate": row_animate, "extend": row_extend, "connect": row_connect, "loop": row_loop,
           "edit": row_edit, "still": row_still, "long": row_long}


class Context:
    """What every row needs: the bundle's size and window, the sampler settings."""

    def __init__(self, pipe, args):
        self.pipe, self.steps, self.guidance, self.seed = pipe, args.steps, args.guidance, args.seed
        self.solver = args.solver
        self.strength, self.fps = args.strength, pipe.config.fps
        self.window, self.size = pipe.config.frames, tuple(pipe.config.size)
        self.examples = Path(args.examples) if args.examples else None
        self.captions = {}  # example file name -> the prompt it was made from

    def keep(self, i, name, frames, prompt):
        """Write sample 0 of a row to the examples folder: .png for one frame, animated .webp else."""
        if self.examples is None or i != 0:
            return
        path = self.examples / (name + (".png" if len(frames) == 1 else ".webp"))
        write_example(path, frames, self.fps)
        self.captions[path.name] = prompt

    def sample(self, i, frames, family=None):
        from videodit.world import make_sample

        width, height = self.size
        return make_sample("eval", i, width=width, height=height, frames=frames, family=family)

    def sampler(self, i):
        return self.pipe.sampler(seed=self.seed + i, steps=self.steps, guidance=self.guidance, solver=self.solver)


def summarize(name: str, records: list[dict]) -> dict:
    out = {"n": len(records)}
    if name == "long":
        metrics = sorted({k for r in records for k in r["long"]})
        for m in metrics:
            acc = [np.mean([bool(r[part][m]) for r in records if r[part].get(m) is not None] or [np.nan])
                   for part in ("long", "short")]
            out[f"{m}_65_vs_17"] = (float(acc[0]), float(acc[1]))
        pairs = [v for k, v in out.items() if k.endswith("_65_vs_17") and not np.isnan(v).any()]
        out["within_0.05"] = all(abs(a - b) <= 0.05 for a, b in pairs)
        out["seam_ratio"] = float(np.mean([r["seam_ratio"] for r in records]))
        return out
    out["pass"] = float(np.mean([bool(r["pass"]) for r in records]))
    out["target"] = TARGETS[name]
    numeric = {k for r in records for k, v in r.items() if isinstance(v, float) and k != "pass"}
    for k in sorted(numeric):
        out[f"mean_{k}"] = nanmean(r[k] for r in records)
    if name == "extend":
        for d in ("forward", "backward"):
            out[f"{d}_pass"] = float(np.mean([bool(r[d]["pass"]) for r in records]))
            out[f"{d}_mean_seam_jump_px"] = nanmean(r[d]["seam_jump_px"] for r in records)
    if name == "connect":
        out["ceiling_pass"] = float(np.mean([r["ceiling_pass"] for r in records]))
    return out


def main(argv=None) -> int:
    from videodit.modes import SOLVERS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model bundle (default: the bundled model)")
    ap.add_argument("--n", type=int, default=20, help="samples per row")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--steps", type=int, help="sampler steps (default: the bundle's)")
    ap.add_argument("--guidance", type=float, help="guidance (default: the bundle's)")
    ap.add_argument("--solver", choices=SOLVERS,
                    help="sampler solver (default: the bundle's; distilled = its few-step student)")
    ap.add_argument("--strength", type=float, default=0.6, help="edit strength")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--json", help="write every record and the summary here")
    ap.add_argument("--examples", metavar="DIR", help="also write each row's sample 0 (seed --seed) here: "
                    "NAME.webp, NAME.png for one frame, and captions.json")
    args = ap.parse_args(argv)

    import torch

    from videodit.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    ctx = Context(pipe, args)
    if ctx.examples:
        ctx.examples.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.rows:
        t0 = time.perf_counter()
        records = [ROW_FNS[name](pipe, ctx, i) for i in range(args.n)]
        results[name] = {"summary": summarize(name, records), "records": records,
                         "seconds": time.perf_counter() - t0}
        print(f"{name:8s} {json.dumps(results[name]['summary'])}  ({results[name]['seconds']:.0f} s)", flush=True)
    if ctx.examples:
        (ctx.examples / "captions.json").write_text(json.dumps(ctx.captions, indent=1) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model or "bundled", "n": args.n, "rows": results},
                                              indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
