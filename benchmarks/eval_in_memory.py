"""Score a model bundle on SynthWorld eval prompts without writing videos: batched generation
(fast on a GPU) and the evaluator on the decoded frames in memory, plus framing statistics.

    python benchmarks/eval_in_memory.py MODEL --n 300 --size 80x48 --json ev.json [--batch 100]

``videodit eval --model`` is the reference: one video per prompt, seed SEED + i, written as mp4 and
read back. Here a batch of prompts shares one sampler seed (SEED + first index of the batch), so
the noise differs from ``videodit eval``'s and the frames skip the mp4 round trip (which moves
ground-truth scores by nothing, docs/EVAL.md). Use it to compare models measured the same way,
e.g. the native-size and square-crop models of docs/SIZES.md on a machine without PyAV.

The JSON is ``videodit eval --json``'s (``benchmarks/eval_sizes.py`` reads it) with a
"framing" entry: ``videodit.eval.framing.framing_stats`` of the generated videos (objects
touching the borders, their spread and travel along the frame's long axis) and of SynthWorld
eval clips rendered at that size ("truth"), for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model bundle folder, or 'bundled'")
    ap.add_argument("--n", type=int, default=300, help="SynthWorld eval prompts (default 300)")
    ap.add_argument("--size", default=None, help="WxH (default: the bundle's)")
    ap.add_argument("--frames", type=int, default=None, help="4k+1 (default: the bundle's)")
    ap.add_argument("--batch", type=int, default=100, help="prompts per generation batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    ap.add_argument("--guidance", type=float, default=None, help="guidance (default: the bundle's)")
    ap.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="guide only at timesteps LO <= t <= HI (default: the bundle's)")
    ap.add_argument("--shift", type=float, default=None,
                    help="sampler timestep shift (default: the bundle's, i.e. resolution-aware)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    ap.add_argument("--json", required=True, help="write the results here")
    args = ap.parse_args()

    import torch

    from videodit.eval import evaluate
    from videodit.eval.framing import framing_stats
    from videodit.pipeline import Pipeline
    from videodit.eval.sampling import eval_prompts
    from videodit.world import make_sample
    from videodit.world.scene import parse_size

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    pipe = Pipeline.load(args.model, device=device)
    if args.shift is not None:
        pipe.config = dataclasses.replace(pipe.config, sampler=dataclasses.replace(pipe.config.sampler, shift=args.shift))
    size = parse_size(args.size, name="size") if args.size else pipe.config.size
    frames = args.frames or pipe.config.frames
    prompts = eval_prompts(args.n)
    t0 = time.perf_counter()
    videos = []
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start:start + args.batch]
        out = pipe(batch, size=size, frames=frames, steps=args.steps, guidance=args.guidance, seed=args.seed + start,
                   guidance_interval=args.guidance_interval)
        videos += list(out)
    t_gen = time.perf_counter() - t0
    result = evaluate(videos, prompts, fps=pipe.config.fps)
    truth = [make_sample("eval", i, 0, width=size[0], height=size[1], frames=frames).frames for i in range(args.n)]
    report = result.to_json()
    report["framing"] = {"generated": framing_stats(videos, per_video=True), "truth": framing_stats(truth)}
    report["setup"] = {"model": args.model, "size": f"{size[0]}x{size[1]}", "frames": frames, "n": args.n,
                       "batch": args.batch, "seed": args.seed, "device": device, "shift": args.shift,
                       "guidance_interval": args.guidance_interval,
                       "generate_s": round(t_gen, 1)}
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(result.score_line())
    print("framing", json.dumps(report["framing"]), f"generate {t_gen:.1f} s")


if __name__ == "__main__":
    main()
