"""How close each ODE solver gets, per step count, to the bundled model's own converged sample.

    python benchmarks/solvers.py                                   # euler / dpm++2m / heun, 4-30 steps
    python benchmarks/solvers.py --solvers euler dpm++2m --steps 6 8 10 12 --prompts 8 --reference 200

Every row samples the same --prompts SynthWorld eval prompts (seed of clip i = i) at the bundle's
guidance and guidance interval, and compares the latents with a reference sampled by the same
model with --reference Euler steps (the ODE's solution, up to its own small error): per clip, the
relative RMS error of the latents and the PSNR of the decoded clip against the decoded reference,
medians over the clips (a clip whose trajectory tips into another mode, its background flipping
from one colour to another between step counts, differs everywhere; the median ignores the few
that do, the mean would not). A solver that
converges reaches a small error in fewer DiT passes; the evaluator's metrics (`videodit eval
--solver S --steps N`) then say what that error costs in prompt following. Passes counts DiT
forward passes per clip (a guided step is two). Its last line:
    SUMMARY solver=S steps=N passes=P rel_err=E psnr_db=D   (one per row)
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import torch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model bundle (default: the bundled model)")
    ap.add_argument("--solvers", nargs="+", default=["euler", "dpm++2m", "heun"])
    ap.add_argument("--steps", nargs="+", type=int, default=[4, 6, 8, 10, 12, 16, 30])
    ap.add_argument("--prompts", type=int, default=8, help="SynthWorld eval prompts, sampled as one batch")
    ap.add_argument("--reference", type=int, default=200, help="Euler steps of the reference sample")
    ap.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="guide only at LO <= t <= HI (default: the bundle's)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    from videodit.eval.sampling import eval_prompts
    from videodit.pipeline import Pipeline

    torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model)
    prompts = eval_prompts(args.prompts)
    frames, size = pipe.config.frames, pipe.config.size
    rows_run = [0]  # DiT rows run (a guided pass runs two per clip), counted as it happens
    pipe.dit.register_forward_hook(lambda m, a, o: rows_run.__setitem__(0, rows_run[0] + o.shape[0]))

    def sample(solver, steps):
        # one batch, seed 0: the noise of clip i differs from clip j's, which is all a comparison needs
        return pipe.generate_latents(prompts, frames=frames, size=size,
                                     sampler=pipe.sampler(seed=0, steps=steps, solver=solver,
                                                          guidance_interval=args.guidance_interval))

    reference = sample("euler", args.reference)
    ref_frames = pipe.decode_latents(reference).astype(np.float64)
    print("| solver | steps | DiT passes per clip | latent rel. RMS error (median) | PSNR vs reference, dB (median) |")
    print("|---|---|---|---|---|")
    rows = []
    for solver in args.solvers:
        for steps in args.steps:
            rows_run[0] = 0
            latents = sample(solver, steps)
            n = rows_run[0] // len(prompts)
            rel = statistics.median(((a - b).norm() / b.norm()).item() for a, b in zip(latents, reference))
            mse = ((pipe.decode_latents(latents).astype(np.float64) - ref_frames) ** 2).mean(axis=(1, 2, 3, 4))
            psnr = statistics.median(10 * math.log10(255.0 ** 2 / max(m, 1e-12)) for m in mse)
            print(f"| {solver} | {steps} | {n} | {rel:.4f} | {psnr:.1f} |", flush=True)
            rows.append(f"SUMMARY solver={solver} steps={steps} passes={n} rel_err={rel:.4f} psnr_db={psnr:.2f}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
