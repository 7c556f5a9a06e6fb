"""Does a learning rate tuned on a narrow DiT carry over to a wide one? muP against one learning rate.

    PYTHONPATH=. python benchmarks/mup_transfer.py --widths 64 128 256 --threads 1 --params standard &
    PYTHONPATH=. python benchmarks/mup_transfer.py --widths 128 256 --threads 1 --params mup   # side by side
    PYTHONPATH=. python benchmarks/mup_transfer.py --widths 64 128 256              # then: the table
    PYTHONPATH=. python benchmarks/mup_transfer.py --quick                          # a smoke test, ~1 min

Every cell trains the speedrun protocol's default recipe (benchmarks/speedrun.py "masked-batch-4":
cpu-small's depth 8 and head width 64, batch 4 SynthWorld clips of 64x64x17 through the bundled
VAE, half of the tokens masked in the first 90 % of the steps) from scratch at ``--dim`` W for
``--steps`` steps (the same seed, clips, noise and schedule in every cell: 5 % warm-up, cosine to
lr/10), at each peak learning rate of ``--lrs``, in two parametrisations:
  - standard: one learning rate for every weight (``videodit train``'s default);
  - mup: ``--mup-base-dim BASE``, the weight matrices that read the width at lr x BASE / W, the
    input layers, biases, gains and modulation tables at lr (at W = BASE the same run as standard).
The EMA decay is 0.99 (not 0.999) so that the weights measured are the last few hundred steps', at
this short horizon. Each cell's measure is speedrun's val loss (128 eval-split clips, 8 fixed
timesteps, fixed noise) in ROOT/w<W>-<param>-lr<lr>/result.json (-s<SEED> for a ``--seed``
replicate); finished cells are not trained again, so two processes with different ``--widths`` /
``--params`` split the grid between the cores, and a last call prints the table. The latent
caches are speedrun's (ROOT's parent folder).

The table: val loss per width, parametrisation and lr, the best lr of each row, and what carrying
the narrowest width's best lr to each wider one costs against that width's own best on the grid
(its val loss minus the row's minimum: 0 = the lr transferred). Last line:
    SUMMARY base_lr=<best at the narrowest width> standard_lr=<best, widest> mup_lr=<best, widest>
    standard_cost=<transfer cost, widest> mup_cost=<...> text_base_lr=<largest text gap, narrowest>
    text_standard_lr=<largest text gap, widest> text_mup_lr=<...>
A second table gives each cell's text gap (speedrun's val loss with empty captions minus with the
captions): how much the prediction uses the text. The lowest val losses can come with no text gap
at all, and such an lr trained over a full run ignores the prompt (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speedrun  # noqa: E402

RECIPE = "masked-batch-4"
PARAMS = ("standard", "mup")


def cell_dir(root: Path, width: int, param: str, lr: float, seed: int = 0) -> Path:
    return root / (f"w{width}-{param}-lr{lr:g}" + (f"-s{seed}" if seed else ""))


def train_cell(args, width: int, param: str, lr: float) -> dict:
    """One (width, parametrisation, lr) cell: train, then measure the EMA model's val loss."""
    from videodit.device import pick_device
    from videodit.pipeline import Pipeline
    from videodit.train.dit import train_dit
    from videodit.train.loop import MAX_ROLLBACKS, TrainingDiverged
    root, out = Path(args.root), cell_dir(Path(args.root), width, param, lr, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    cfg = speedrun.recipe_config(RECIPE, args.budget, out, seed=args.seed, threads=args.threads, device=args.device)
    cfg = dataclasses.replace(cfg, dim=width, lr=lr, mup_base_dim=args.base if param == "mup" else 0,
                              steps=args.steps, warmup_steps=args.steps // 20, ema_decay=0.99, log_every=100)
    print(f"cell width {width}, {param}, lr {lr:g}: {args.steps} steps", flush=True)
    speedrun.link_cache(cfg, root.parent, keep=False)
    result = {"width": width, "param": param, "lr": lr, "seed": args.seed, "base": args.base, "steps": args.steps,
              "recipe": RECIPE, "budget": args.budget}
    t0 = time.time()
    try:
        train_dit(cfg)
    except TrainingDiverged as e:  # the guard gave up: this lr is too high at this width
        result |= {"val_loss": math.inf, "diverged": str(e), "rollbacks": MAX_ROLLBACKS + 1}
    train_s = time.time() - t0
    if "diverged" not in result:
        speedrun.link_cache(cfg, root.parent, keep=True)
        pipe = Pipeline.load(out / "bundle", device=str(pick_device(args.device)))
        guard = torch.load(out / "checkpoint.pt", weights_only=True, map_location="cpu")["extra"]["guard"]
        result |= {"depth": pipe.dit.config.depth, "head_dim": pipe.dit.config.head_dim,
                   "rollbacks": guard["rollbacks"], **speedrun.val_losses(pipe, speedrun.val_cache(pipe, root.parent))}
    result["train_s"] = round(train_s, 1)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"RESULT width {width} {param} lr {lr:g}: val loss {result['val_loss']:.4f} ({train_s:.0f} s)", flush=True)
    return result


def cell(args, width: int, param: str, lr: float) -> dict:
    """The cell's result: read when done (at the base width, mup is the standard run), else trained."""
    if param == "mup" and width == args.base:
        param = "standard"
    done = cell_dir(Path(args.root), width, param, lr, args.seed) / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result["steps"] != args.steps or result["budget"] != args.budget:
            raise SystemExit(f"{done}: trained for {result['steps']} steps ({result['budget']}), not "
                             f"{args.steps} ({args.budget}): give another --root")
        return result
    return train_cell(args, width, param, lr)


def shown(loss: float, best: bool, rollbacks: int) -> str:
    """A table cell: the val loss (bold for the row's best), the guard's rollbacks, or 'diverged'."""
    if math.isinf(loss):
        return "diverged"
    cell = f"**{loss:.4f}**" if best else f"{loss:.4f}"
    return cell + (f" ({rollbacks})" if rollbacks else "")


def table(args, losses: dict, rollbacks: dict, shape: dict, gaps: dict) -> None:
    """Markdown tables of val losses (each row's best lr, the transfer cost) and of text gaps, and
    the SUMMARY line."""
    narrow, wide = min(args.widths), max(args.widths)
    best = {row: min(args.lrs, key=lambda lr: vals[lr]) for row, vals in losses.items()}
    base_lr = best[(narrow, "standard")]
    print(f"\nval loss after {args.steps} steps, seed {args.seed} ({RECIPE}, depth {shape['depth']}, "
          f"head width {shape['head_dim']}; muP base width {args.base})\n")
    print("| width | learning rates | " + " | ".join(f"{lr:g}" for lr in args.lrs) + " | best lr | cost of "
          f"lr {base_lr:g} |\n|---|---|" + "---|" * (len(args.lrs) + 2))
    cost = {}
    for (width, param), vals in losses.items():
        cost[(width, param)] = vals[base_lr] - vals[best[(width, param)]]
        row = rollbacks[(width, param)]
        cells = " | ".join(shown(v, lr == best[(width, param)], row[lr]) for lr, v in vals.items())
        print(f"| {width} | {param} | {cells} | {best[(width, param)]:g} | {cost[(width, param)]:+.4f} |")
    if any(n for row in rollbacks.values() for n in row.values()):
        print("\n(n): the divergence guard rolled back n times, each halving the lr; diverged: it gave up")
    text = gap_table(args, gaps)
    print(f"\nSUMMARY base_lr={base_lr:g} standard_lr={best[(wide, 'standard')]:g} mup_lr={best[(wide, 'mup')]:g} "
          f"standard_cost={cost[(wide, 'standard')]:.4f} mup_cost={cost[(wide, 'mup')]:.4f} "
          f"text_base_lr={text[(narrow, 'standard')]:g} text_standard_lr={text[(wide, 'standard')]:g} "
          f"text_mup_lr={text[(wide, 'mup')]:g}")


def gap_table(args, gaps: dict) -> dict:
    """Markdown table of the text gaps (val loss with empty captions minus with the captions: how
    much the prediction uses the text), each row's lr of the largest; returns those lrs."""
    most = {row: max(args.lrs, key=lambda lr: -math.inf if math.isnan(vals[lr]) else vals[lr])
            for row, vals in gaps.items()}
    print(f"\ntext gap after {args.steps} steps (the val loss's lowest lrs can fit the clips without the text)\n")
    print("| width | learning rates | " + " | ".join(f"{lr:g}" for lr in args.lrs) + " | lr of the largest |\n"
          "|---|---|" + "---|" * (len(args.lrs) + 1))
    for (width, param), vals in gaps.items():
        cells = " | ".join("-" if math.isnan(g) else (f"**{g:.4f}**" if lr == most[(width, param)] else f"{g:.4f}")
                           for lr, g in vals.items())
        print(f"| {width} | {param} | {cells} | {most[(width, param)]:g} |")
    return most


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256], help="DiT widths (multiples of 64); the "
                    "narrowest is where the lr is tuned")
    ap.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
                    help="peak learning rates of the sweep (the default brackets every optimum measured)")
    ap.add_argument("--params", nargs="+", choices=PARAMS, default=list(PARAMS),
                    help="parametrisations to train (the table needs both)")
    ap.add_argument("--base", type=int, default=64, help="muP's base width (--mup-base-dim)")
    ap.add_argument("--steps", type=int, default=1500, help="training steps of every cell")
    ap.add_argument("--seed", type=int, default=0, help="a replicate: another init, clip order, noise and "
                    "training clips in every cell (cells go to ...-s<SEED>)")
    ap.add_argument("--root", default="runs/speedrun/mup-transfer", help="cells go to ROOT/w<W>-<param>-lr<lr>")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    ap.add_argument("--quick", action="store_true", help="smoke test: the tiny preset's head width (32) at "
                    "widths 32 and 64, 2 lrs, 4 steps, 16 cached clips")
    args = ap.parse_args()
    args.budget = "quick" if args.quick else "cpu"
    if args.quick:
        args.widths, args.lrs, args.base, args.steps = [32, 64], [1e-3, 4e-3], 32, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    if set(args.params) == set(PARAMS) and args.base != min(args.widths):
        raise SystemExit(f"--base {args.base}: must be the narrowest of --widths {args.widths}: the width the lr "
                         "is tuned at, where muP and standard are the same run")
    losses, rollbacks, shape, gaps = {}, {}, {}, {}
    for width in sorted(args.widths):
        for param in PARAMS:
            if param in args.params or (param == "mup" and width == args.base):
                results = [cell(args, width, param, lr) for lr in args.lrs]
                losses[(width, param)] = {r["lr"]: r["val_loss"] for r in results}
                rollbacks[(width, param)] = {r["lr"]: r.get("rollbacks", 0) for r in results}
                gaps[(width, param)] = {r["lr"]: r.get("val_loss_empty", math.nan) - r["val_loss"] for r in results}
                shape = next((r for r in results if "depth" in r), shape)
    if set(args.params) == set(PARAMS):
        table(args, losses, rollbacks, shape, gaps)


if __name__ == "__main__":
    main()
