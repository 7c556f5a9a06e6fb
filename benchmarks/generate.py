"""End-to-end generation time with a model bundle, split into load / text / sampling / decode.

    python benchmarks/generate.py --model runs/dit/bundle --runs 5
    python benchmarks/generate.py                # the bundled model
    python benchmarks/generate.py --cold 0 --profile   # where a sampling run's time goes
    python benchmarks/generate.py --compare-steps 30 16 8 4 --compare-prompts 100   # speed vs quality
    python benchmarks/generate.py --compile      # the DiT through torch.compile (the warm-up compiles)
    python benchmarks/generate.py --steps 30     # another step count (--solver another solver)

Each run is one `Pipeline` call at the bundle's default settings (frames, size, steps, guidance),
seed = run index, after one warm-up call (its time is printed: with --compile it holds the
compilation, cached on disk by torch's inductor for later processes). Prints medians over the
runs, the peak resident memory of the process, and the cold-start time of the whole `videodit generate` command (a fresh
process: imports, model load, generation, mp4 write), median of --cold runs. Its last line:
    SUMMARY sample_decode_s=<x> cold_command_s=<x> peak_rss_mb=<x>

--compare-steps N ...: before the timing runs, a table of the sampler at each step count N over
the first --compare-prompts SynthWorld eval prompts (seed of clip i = i): the full model (Euler,
the bundle's guidance and interval: two passes per guided step) and, when the bundle has one,
its distilled student (one pass per step); for each, the median seconds of sampling + decoding a
clip, the DiT passes per clip, the evaluator's SCORE in / out of distribution and the pass rates
of colour, shape, count and motion (docs/EVAL.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from videodit.modes import SOLVERS


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the videodit command does (videodit/cli.py)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model bundle folder (default: the bundled model)")
    parser.add_argument("--runs", type=int, default=5, help="timed generations after one warm-up")
    parser.add_argument("--cold", type=int, default=3, help="cold `videodit generate` commands to time (0 = skip)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--compile", action="store_true",
                        help="load the pipeline with compile=True (torch.compile of the DiT), the cold command too")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one sampling run")
    parser.add_argument("--compare-steps", type=int, nargs="+", default=None, metavar="N",
                        help="print the steps | seconds | evaluator metrics table for these step counts")
    parser.add_argument("--compare-prompts", type=int, default=100, help="eval prompts per --compare-steps row")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                        help="guide only at timesteps LO <= t <= HI (default: the bundle's; 0 1 = every step)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps of the timed runs and the cold "
                        "command (default: the bundle's)")
    parser.add_argument("--solver", choices=SOLVERS, default=None, help="sampler solver of the timed runs and the "
                        "cold command (default: the bundle's)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import torch

    from videodit.pipeline import Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model, compile=args.compile)
    load_s = time.perf_counter() - t0
    pipe.config = dataclasses.replace(pipe.config, sampler=pipe.sampler(
        guidance_interval=args.guidance_interval, steps=args.steps, solver=args.solver))
    cfg = pipe.config
    print(f"bundle: {args.model or 'bundled'}; {cfg.frames} frames at {cfg.size[0]}x{cfg.size[1]}, "
          f"{cfg.sampler.steps} {cfg.sampler.solver} steps, guidance {cfg.sampler.guidance} at "
          f"{cfg.sampler.guidance_interval[0]} <= t <= {cfg.sampler.guidance_interval[1]}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")

    if args.compare_steps:
        compare_steps(pipe, args.compare_steps, args.compare_prompts)

    prompt = "A small red circle moves to the right on a black background."
    times = {"text": [], "sampling": [], "decode": []}
    for run in range(args.runs + 1):
        pipe.text._cache.clear()  # time the text encoder too, as a new prompt would
        a = time.perf_counter()
        pipe.encode_prompts([prompt])
        b = time.perf_counter()
        latents = pipe.generate_latents([prompt], frames=cfg.frames, size=cfg.size,
                                        sampler=pipe.sampler(seed=run))
        c = time.perf_counter()
        pipe.decode_latents(latents)
        d = time.perf_counter()
        if not run:  # run 0 warms up (and compiles, with --compile)
            warm_up_s = d - a
        else:
            times["text"].append(b - a)
            times["sampling"].append(c - b)  # includes a cached text lookup
            times["decode"].append(d - c)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"load {load_s:.2f} s (once, with imports); warm-up run {warm_up_s:.2f} s")
    for k, v in med.items():
        print(f"{k:9s} {v:.3f} s  (median of {args.runs}; min {min(times[k]):.3f}, max {max(times[k]):.3f})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pipe.generate_latents([prompt], frames=cfg.frames, size=cfg.size, sampler=pipe.sampler(seed=0))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    rss = peak_rss_mb()
    print(f"peak RSS {rss:.0f} MB")

    cold = float("nan")
    if args.cold:
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "videodit.cli", "generate", prompt, "-o", str(Path(tmp) / "v.mp4")]
            if args.model:
                cmd += ["--model", args.model]
            if args.compile:
                cmd += ["--compile"]
            for flag, value in (("--steps", args.steps), ("--solver", args.solver)):
                cmd += [flag, str(value)] if value is not None else []
            for _ in range(args.cold):
                a = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                runs.append(time.perf_counter() - a)
        cold = statistics.median(runs)
        print(f"cold `videodit generate`: {cold:.2f} s (median of {args.cold})")
    print(f"load average now {os.getloadavg()[0]:.2f}")
    print(f"SUMMARY sample_decode_s={med['sampling'] + med['decode']:.3f} cold_command_s={cold:.2f} "
          f"peak_rss_mb={rss:.0f}")


def compare_steps(pipe, steps_list: list[int], n: int) -> None:
    """The --compare-steps table (see the module docstring)."""
    from videodit.eval import evaluate
    from videodit.eval.sampling import eval_prompts, summarize

    prompts = eval_prompts(n)
    cfg = pipe.config
    solvers = ["euler"] + (["distilled"] if pipe.distilled is not None else [])
    metrics = ("color", "shape", "count", "motion")
    print(f"| sampler | steps | DiT passes | s / clip | SCORE in | SCORE held-out | {' | '.join(metrics)} |")
    print("|---|---|---|---|---|---|" + "---|" * len(metrics))
    for solver in solvers:
        for steps in steps_list:
            videos, seconds, passes = [], [], [0]
            dit = pipe.model_for(pipe.sampler(solver=solver, steps=steps))[0]
            hook = dit.register_forward_hook(lambda m, a, o: passes.__setitem__(0, passes[0] + o.shape[0]))
            for i, prompt in enumerate(prompts):
                a = time.perf_counter()
                latents = pipe.generate_latents([prompt], frames=cfg.frames, size=cfg.size,
                                                sampler=pipe.sampler(seed=i, steps=steps, solver=solver))
                videos.append(pipe.decode_latents(latents)[0])
                seconds.append(time.perf_counter() - a)
            hook.remove()
            row = summarize(evaluate(videos, prompts, fps=cfg.fps, progress=False))
            name = "full model, Euler" if solver == "euler" else "distilled student"
            print(f"| {name} | {steps} | {passes[0] / n:.0f} | {statistics.median(seconds):.3f} | "
                  f"{row['score_in_dist']:.3f} | {row['score_heldout']:.3f} | "
                  + " | ".join(f"{row[m]:.3f}" for m in metrics) + " |", flush=True)


if __name__ == "__main__":
    main()
