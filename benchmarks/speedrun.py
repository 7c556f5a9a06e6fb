"""A fixed-budget training protocol for the DiT: which recipe learns more from the same compute.

    PYTHONPATH=. python benchmarks/speedrun.py run baseline --budget cpu --threads 1 &   # ~1 hour, 1 core
    PYTHONPATH=. python benchmarks/speedrun.py run medium --budget cpu --threads 1       # side by side
    PYTHONPATH=. python benchmarks/speedrun.py table runs/speedrun/cpu-baseline runs/speedrun/cpu-medium
    PYTHONPATH=. python benchmarks/speedrun.py run tread --budget cpu --threads 1 --seed 1   # a replicate
    PYTHONPATH=. python benchmarks/speedrun.py pooled runs/speedrun/cpu-baseline,runs/speedrun/cpu-tread \
        runs/speedrun/cpu-baseline-s1,runs/speedrun/cpu-tread-s1                # per seed and pooled
    PYTHONPATH=. python benchmarks/speedrun.py measure bundled --flops 3.5e16 --steps 3496   # the shipped
    PYTHONPATH=. python benchmarks/speedrun.py revalue runs/speedrun/cpu-masked   # val losses again
    PYTHONPATH=. python benchmarks/speedrun.py list                             # the recipes
    PYTHONPATH=. python benchmarks/speedrun.py run baseline --budget quick      # a smoke test, ~1 min

A run trains one recipe from scratch (seed 0, or ``--seed`` for a replicate: another init, data
order, noise and cache of training clips; SynthWorld 64x64x17 training clips through the
bundled VAE, batch 8) for a fixed number of FLOPs: the forward + backward FLOPs of one step are
counted by torch.utils.flop_counter on the recipe's own model and step (so a recipe that computes
less per step gets more steps), and ``--steps`` = budget / that. The learning-rate schedule is
sized to those steps (5 % warm-up, cosine to lr/10), so the result does not depend on the machine
or on its load, and a killed run resumes where it stopped (``videodit train``'s exact resume).

Then two measures of the EMA model in OUT/bundle:
  - val loss: the flow-matching loss on 128 SynthWorld eval-split clips (indices 1000-1127, their
    canonical captions) at 8 fixed timesteps t = (2i + 1) / 16 with fixed noise, every frame
    generated: a low-noise measure of the fit (in the recipe's latent space: recipes with other
    latent statistics are not comparable on it); the same with empty captions, and their
    difference, the "text gap": how much the prediction uses the text (a model can lower the val
    loss by fitting the unconditional distribution better while its guided samples ignore the
    prompt); and the conditioned modes, the same clips and noise with the first latent frame given
    clean ("animate": image-to-video) and with the first half given ("extend"), the loss on the
    frames left to generate: what a change to the share of plain text-to-video costs the others;
  - the evaluator on ``--prompts`` (200) SynthWorld eval prompts, sampled as the bundled model is
    (16 Euler steps, guidance 4 at 0.2 <= t <= 0.85), batches of 25 sharing the seed of their first
    prompt, so two runs see the same prompts with the same noise and compare paired.
OUT/speedrun.json holds the recipe, the budget, the FLOPs, both measures and the wall times.

``table`` prints, for the runs given, each metric with a bootstrap 95 % interval and, for every run
after the first, its paired difference from the first (1000 resamples of the prompts), the val
loss, and the SCORE (mean of the metrics' accuracies, in-distribution / held-out). A recipe change
is adopted only when its paired interval on SCORE (or on the metrics it targets) lies above zero.
``pooled`` prints a recipe's paired differences from its baseline for each seed and pooled over
every (seed, prompt) pair: the check that a win is not one seed's luck.

Budgets (FLOPs of the training steps alone; rendering, the VAE encode and the evaluation are not
counted): quick 2e11 (tests; the tiny preset), cpu 3e14 (cpu-small: 2,187 steps, cpu-medium: 966;
~50 minutes of training at one thread, two recipes side by side on the 2-core machine), gpu 8.7e15 (a quarter of the shipped DiT's 3.5e16: the issue's
target is its scores from this budget; cpu-medium at batch 256, ~880 steps, a few minutes of one
H100; ``--device cuda``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The shipped DiT's training: 287 M tokens x 1.21e8 FLOPs a token (cpu-medium) = 3.5e16 FLOPs.
BUDGETS = {"quick": 2e11, "cpu": 3e14, "gpu": 8.7e15}
EVAL_STEPS, EVAL_GUIDANCE, EVAL_INTERVAL, EVAL_BATCH = 16, 4.0, (0.2, 0.85), 25
VAL_CLIPS, VAL_FIRST, VAL_TIMES = 128, 1000, 8
# The protocol's fixed settings; a recipe overrides any of them (and any DiTTrainConfig field).
# Token routing is off in the protocol, whatever videodit train's default: the "tread" recipe adds it.
PROTOCOL = dict(preset="cpu-small", batch_size=8, sizes=("64x64",), frames=(17,), seed=0, sample_every=0,
                sample_guidance_interval=EVAL_INTERVAL, latent_cache=8000, log_every=25, save_minutes=5.0,
                route=0.0)
# Recipes: DiTTrainConfig overrides, plus "latents": "global" (the bundled VAE's one latent shift
# and scale for all channels instead of its per-channel statistics).
RECIPES: dict[str, dict] = {
    "baseline": {},
    "medium": {"preset": "cpu-medium"},
    "global-latents": {"latents": "global"},
    # TREAD: half of each frame's tokens skip blocks 2 .. depth-3, the loss on every token
    "tread": {"route": 0.5, "route_blocks": "middle", "route_loss": "all", "route_until": 1.0},
    # MaskDiT-style: half of each frame's tokens dropped from every block and from the loss, the last
    # 10 % of the steps unmasked (videodit train's default for DiTs of 6 or more blocks)
    "masked": {"route": 0.5, "route_blocks": "all", "route_loss": "kept", "route_until": 0.9},
    "lr-1e-3": {"lr": 1e-3},
    "min-snr": {"loss_weight": "min-snr"},  # Min-SNR-5 timestep weights on the velocity loss
    # plain text-to-video in 80 % of the clips instead of 55 %; every conditioning mode still trains
    "t2v-heavy": {"cond_mix": (0.8, 0.06, 0.02, 0.02, 0.05, 0.05)},
}
# The same changes on top of token masking (videodit train's default), to compare against "masked".
MASKED = RECIPES["masked"]
BATCH_4 = {**MASKED, "batch_size": 4}  # half the batch: twice the steps for the same FLOPs (its own 8,000 clips)
RECIPES |= {
    "masked-lr-1e-3": {**MASKED, "lr": 1e-3},
    "masked-t2v-heavy": {**MASKED, **RECIPES["t2v-heavy"]},
    "masked-75": {**MASKED, "route": 0.75},  # three quarters of the tokens out, not half
    "masked-batch-4": BATCH_4,
    "masked-batch-2": {**MASKED, "batch_size": 2},  # four times the steps of batch 8
    "masked-batch-4-lr-1e-3": {**BATCH_4, "lr": 1e-3},  # the two winners together
    "masked-75-batch-4": {**BATCH_4, "route": 0.75},
    "masked-batch-4-t2v-heavy": {**BATCH_4, **RECIPES["t2v-heavy"]},  # 80 % plain text-to-video at batch 4
    # a quarter of the steps train still images (a 64x64x1 bucket), each batch as many DiT tokens as
    # 4 clips of 64x64x17: 20 images (videodit train's bundled mix has a sixth of its batches images)
    "masked-batch-4-images": {**BATCH_4, "frames": (17, 17, 17, 1), "tokens_per_batch": 1280},
    # muP-style learning rates (--mup-base-dim 64): the width-reading matrices at 1.2e-3 x 64 / 256 =
    # 3e-4 as before, the input layers, biases, gains and modulation tables at 1.2e-3 (four times)
    "masked-batch-4-mup": {**BATCH_4, "mup_base_dim": 64, "lr": 1.2e-3},
    # the learning rate a 1,500-step sweep at width 64 found best and muP carries to width 256
    # (benchmarks/mup_transfer.py): 8e-3 for the input layers, biases and gains, 2e-3 for the rest
    "masked-batch-4-mup-8e-3": {**BATCH_4, "mup_base_dim": 64, "lr": 8e-3},
    # the same with the text embedding at 1e-3 (its first layer at 1e-3, its second at 2.5e-4): the
    # text gap's best learning rate in the sweep, where 8e-3 let the text embedding grow and the
    # prompt go unused
    "masked-batch-4-mup-8e-3-text-1e-3": {**BATCH_4, "mup_base_dim": 64, "lr": 8e-3, "text_lr_scale": 0.125},
    # the prompt's mean text token added to the time embedding of every block's modulation (SD3's
    # pooled text vector in adaLN), next to cross-attention
    "masked-batch-4-pooled": {**BATCH_4, "pooled_text": True},
    "masked-batch-128": {**MASKED, "batch_size": 128},  # the gpu budget's batch 256 halved
}
# Per budget, changes to the protocol: quick, a tiny model and cache; gpu, the shipped model's size
# and batch (cpu-medium, 81,920 tokens a step) with its 80,000-clip cache rendered by 14 workers.
BUDGET_PROTOCOL = {"quick": dict(preset="tiny", latent_cache=16, batch_size=4),
                   "gpu": dict(preset="cpu-medium", batch_size=256, latent_cache=80000, num_workers=14, log_every=50)}


def recipe_overrides(name: str, budget: str) -> dict:
    if name not in RECIPES:
        raise SystemExit(f"recipe {name!r}: unknown; choose one of {', '.join(RECIPES)}")
    changes = {k: v for k, v in BUDGET_PROTOCOL.get(budget, {}).items() if k not in RECIPES[name]}
    return {**PROTOCOL, **changes, **RECIPES[name]}


def global_vae(folder: Path) -> Path:
    """A copy of the bundled VAE that normalises with its global latent shift and scale."""
    from videodit.bundle import BUNDLED, write_checksums
    if not (folder / "config.json").exists():
        shutil.copytree(BUNDLED / "vae", folder, dirs_exist_ok=True)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["latent_channel_shift"] = cfg["latent_channel_scale"] = None
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        write_checksums(folder)
    return folder


def step_flops(cfg) -> float:
    """Forward + backward FLOPs of one training step of ``cfg``'s DiT, counted through the
    trainer's own step on random latents and text: per size bucket on its batch, averaged over the
    buckets' shares of the steps."""
    from torch.utils.flop_counter import FlopCounterMode

    from videodit.train.dit import DiTTask
    from videodit.train.loop import DistInfo
    task = DiTTask(dataclasses.replace(cfg, latent_cache=0, num_workers=0), DistInfo(0, 1, 0, torch.device("cpu")))
    s, c, L = task.vae.cfg.spatial_stride, task.vae.cfg.latent_channels, task.text.config.max_length
    total = 0.0
    for (w, h, f), entry in task.plan.items():
        B = entry.batch
        latents = torch.randn(B, c, (f - 1) // 4 + 1, h // s, w // s)
        text = (torch.randn(B, L, task.text.dim), torch.ones(B, L, dtype=torch.bool))
        batch = [(latents, ["a red circle"] * B, f"{w}x{h}x{f}", text)]
        with FlopCounterMode(display=False) as counter:
            task.step(task.model, batch, 0, torch.Generator().manual_seed(0), cfg.lr).loss.backward()
        total += entry.odds * counter.get_total_flops()
    return total


def recipe_config(name: str, budget: str, out: Path, seed: int = 0, **run_settings):
    """The recipe's DiTTrainConfig under the budget's protocol, at one step (``train_config`` sets
    the steps)."""
    from videodit.dit import PRESETS
    from videodit.train.dit import DiTTrainConfig
    over = {**recipe_overrides(name, budget), "seed": seed}
    if over.pop("latents", "channel") == "global":
        over["vae"] = str(global_vae(out / "vae-global"))
    depth = PRESETS[over["preset"]].depth
    start = min(2, depth - 1)
    spans = {"all": (0, depth), "middle": (start, max(start + 1, depth - 2))}  # middle: 2 .. depth-3
    over["route_blocks"] = spans.get(over.get("route_blocks"), over.get("route_blocks", ()))
    return DiTTrainConfig(out=str(out), steps=1, **over, **run_settings)


def train_config(name: str, budget: str, out: Path, seed: int = 0, **run_settings):
    """The recipe's DiTTrainConfig with the steps its budget buys, and its mean FLOPs a step."""
    cfg = recipe_config(name, budget, out, seed, **run_settings)
    flops = step_flops(cfg)
    if cfg.route and cfg.route_until < 1:  # routed steps first, then plain ones
        flops = cfg.route_until * flops + (1 - cfg.route_until) * step_flops(dataclasses.replace(cfg, route=0.0))
    steps = max(1, int(BUDGETS[budget] // flops))
    return dataclasses.replace(cfg, steps=steps, warmup_steps=steps // 20), flops


def link_cache(cfg, root: Path, keep: bool) -> None:
    """Recipes with the protocol's data settings share one latent cache, hard-linked between
    ROOT and OUT: into OUT before training, back to ROOT (``keep``) after it when ROOT had none
    (the trainer checks the key and rebuilds the cache when a recipe's data differ)."""
    seed = f"-s{cfg.seed}" if cfg.seed else ""
    mix = "" if tuple(cfg.frames) == PROTOCOL["frames"] else "-f" + "-".join(map(str, cfg.frames))
    mix += f"-t{cfg.tokens_per_batch}" if cfg.tokens_per_batch else ""
    shared = root / f"latents-{cfg.latent_cache}-b{cfg.batch_size}{mix}{seed}.pt"
    mine = Path(cfg.out) / "latents-rank0.pt"
    src, dst = (mine, shared) if keep else (shared, mine)
    if src.exists() and not dst.exists() and not cfg.vae:
        os.link(src, dst)


def val_losses(pipe, cache: Path) -> dict:
    """The EMA model's flow-matching loss on the fixed validation clips with their captions
    (``val_loss``) and with empty captions (``val_loss_empty``), the same noise for both (see the
    module doc). Their difference is how much the model's prediction uses the text. Then the
    conditioned modes, with the captions and the same noise: ``val_loss_animate``, the first
    latent frame given (animate an image); ``val_loss_extend``, the first half given (extend a clip)."""
    from videodit.video import frames_to_tensor
    from videodit.world import make_sample
    w, h = pipe.config.size
    if not cache.exists():
        samples = [make_sample("eval", VAL_FIRST + i, 0, width=w, height=h, frames=pipe.config.frames)
                   for i in range(VAL_CLIPS)]
        with torch.no_grad(), torch.autocast(pipe.device.type, torch.bfloat16):
            latents = torch.cat([pipe.vae.encode(frames_to_tensor(np.stack([s.frames for s in samples[i:i + 16]]))
                                                 .to(pipe.device)) for i in range(0, VAL_CLIPS, 16)]).float().cpu()
        torch.save({"latents": latents, "captions": [s.caption for s in samples]}, cache)
    data = torch.load(cache, weights_only=True)
    x0 = pipe.vae.normalize(data["latents"].to(pipe.device))
    captions, T = data["captions"], x0.shape[2]
    frame = torch.arange(T)[None, :].expand(VAL_CLIPS, T)
    return {"val_loss": _fixed_noise_loss(pipe, x0, captions),
            "val_loss_empty": _fixed_noise_loss(pipe, x0, [""] * len(captions)),
            "val_loss_animate": _fixed_noise_loss(pipe, x0, captions, given=frame == 0),
            "val_loss_extend": _fixed_noise_loss(pipe, x0, captions, given=frame < (T + 1) // 2)}


def _fixed_noise_loss(pipe, x0: torch.Tensor, captions: list[str], given: torch.Tensor | None = None) -> float:
    """The mean loss over VAL_TIMES timesteps with fixed noise; ``given`` (B, T) bool: latent frames
    given clean (t = 0) as conditioning, left out of the loss, as the trainer's conditioning modes do."""
    from videodit import flow
    gen = torch.Generator().manual_seed(0)
    losses = []
    with torch.no_grad(), torch.autocast(pipe.device.type, torch.bfloat16):
        tokens, mask = pipe.text.encode(captions)
        for i in range(VAL_TIMES):
            t = torch.full((VAL_CLIPS,), (2 * i + 1) / (2 * VAL_TIMES))
            if given is not None:  # per latent frame
                t = torch.where(given, 0.0, t[:, None])
            x_t, v = flow.interpolate(x0, torch.randn(x0.shape, generator=gen).to(x0.device), t.to(x0.device))
            for lo in range(0, VAL_CLIPS, 32):
                part = slice(lo, lo + 32)
                pred = pipe.dit(x_t[part], t[part].to(x0.device), tokens[part], mask[part])
                counts = None if given is None else ~given[part].to(x0.device)
                losses.append(float(flow.flow_loss(pred, v[part], counts)))
    return float(np.mean(losses))


def val_cache(pipe, root: Path) -> Path:
    """The validation clips' raw latents depend on the VAE's weights and the size only (not on its
    latent statistics): one file per (size, weights) next to the runs."""
    total = float(sum(p.detach().double().sum() for p in pipe.vae.parameters()))
    return root / "val-{}x{}x{}-{:.10e}.pt".format(*pipe.config.size, pipe.config.frames, total)


def evaluate_bundle(bundle: Path, prompts: int, out: Path, device: str) -> dict:
    """The evaluator on the first ``prompts`` eval prompts (see the module doc) -> out/eval.json."""
    from videodit.eval import evaluate
    from videodit.eval.sampling import eval_prompts
    from videodit.pipeline import Pipeline
    pipe = Pipeline.load(bundle, device=device)
    texts = eval_prompts(prompts)
    videos = []
    for start in range(0, len(texts), EVAL_BATCH):
        videos += list(pipe(texts[start:start + EVAL_BATCH], steps=EVAL_STEPS, guidance=EVAL_GUIDANCE,
                            guidance_interval=EVAL_INTERVAL, seed=start))
    result = evaluate(videos, texts, fps=pipe.config.fps, progress=False)
    (out / "eval.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return {"score": result.score, **val_losses(pipe, val_cache(pipe, out.parent))}


def run_bundle(d: Path, info: dict) -> Path:
    """The bundle a run folder measured: its own, or the one ``measure`` was given."""
    from videodit.bundle import BUNDLED
    if "bundle" not in info:
        return d / "bundle"
    return BUNDLED if info["bundle"] == "bundled" else Path(info["bundle"])


def revalue(args) -> None:
    """Recompute finished runs' val losses (captions, empty captions, animate, extend) into their
    speedrun.json, for runs measured before every one of them was part of the protocol."""
    from videodit.device import pick_device
    from videodit.pipeline import Pipeline
    for d in map(Path, args.runs):
        info = json.loads((d / "speedrun.json").read_text())
        pipe = Pipeline.load(run_bundle(d, info), device=str(pick_device(args.device)))
        info.update(val_losses(pipe, val_cache(pipe, d.parent)))
        (d / "speedrun.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"{d.name}: val loss {info['val_loss']:.4f}, empty captions {info['val_loss_empty']:.4f}, "
              f"animate {info['val_loss_animate']:.4f}, extend {info['val_loss_extend']:.4f}", flush=True)


def run(args) -> None:
    from videodit.device import pick_device
    from videodit.train.dit import train_dit
    root = Path(args.root)
    out = root / (f"{args.budget}-{args.recipe}" + (f"-s{args.seed}" if args.seed else ""))
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(threads=args.threads, device=args.device)
    if args.text_encoder:
        settings["text_encoder"] = args.text_encoder
    cfg, flops = train_config(args.recipe, args.budget, out, seed=args.seed, **settings)
    print(f"speedrun {args.recipe} ({args.budget}, seed {args.seed}): {flops / 1e9:.1f} GFLOP a step, "
          f"{cfg.steps} steps, {cfg.steps * flops / 1e12:.1f} TFLOP", flush=True)
    link_cache(cfg, root, keep=False)
    t0 = time.time()
    train_dit(cfg)
    train_s = time.time() - t0
    link_cache(cfg, root, keep=True)
    t0 = time.time()
    device = str(pick_device(args.device))
    measured = evaluate_bundle(out / "bundle", args.prompts, out, device)
    report = {"recipe": args.recipe, "seed": args.seed, "overrides": dict(RECIPES[args.recipe]),
              "budget": args.budget, "budget_flops": BUDGETS[args.budget], "step_flops": round(flops),
              "steps": cfg.steps, "prompts": args.prompts, "train_s_this_call": round(train_s, 1),
              "eval_s": round(time.time() - t0, 1), **measured}
    write_report(out, report)


def measure(args) -> None:
    """An existing bundle under the protocol's measures, as a reference column for ``table``."""
    from videodit.device import pick_device
    out = Path(args.root) / args.name
    out.mkdir(parents=True, exist_ok=True)
    bundle = run_bundle(out, {"bundle": args.bundle})
    t0 = time.time()
    measured = evaluate_bundle(bundle, args.prompts, out, str(pick_device(args.device)))
    report = {"recipe": args.name, "bundle": args.bundle if args.bundle == "bundled" else str(bundle.resolve()),
              "budget_flops": args.flops, "steps": args.steps, "step_flops": round(args.flops / args.steps),
              "prompts": args.prompts, "eval_s": round(time.time() - t0, 1), **measured}
    write_report(out, report)


def write_report(out: Path, report: dict) -> None:
    """OUT/speedrun.json, and the RESULT line."""
    (out / "speedrun.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"RESULT {report['recipe']} val_loss={report['val_loss']:.4f} "
          f"score={report['score']['in_dist']:.3f}/{report['score']['heldout']:.3f}", flush=True)


def table(args) -> None:
    """Paired table of runs against the first (eval_sizes' metrics and intervals)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from eval_sizes import METRICS, interval, outcomes
    runs = []
    for d in map(Path, args.runs):
        info = json.loads((d / "speedrun.json").read_text())
        prompts, per_metric = outcomes(d / "eval.json")
        runs.append((d.name, info, prompts, per_metric))
    base_name, base_info, base_prompts, base = runs[0]
    if any(p != base_prompts for _, _, p, _ in runs[1:]):
        raise SystemExit("runs evaluated on different prompts: they compare only paired")
    rows = [("steps", lambda i, _: f"{i['steps']}"), ("FLOPs", lambda i, _: f"{i['steps'] * i['step_flops']:.3g}"),
            ("val loss", lambda i, _: f"{i['val_loss']:.4f}"),
            ("text gap", lambda i, _: f"{i['val_loss_empty'] - i['val_loss']:.4f}" if "val_loss_empty" in i else "-"),
            ("val loss, animate / extend", lambda i, _: f"{i['val_loss_animate']:.4f} / {i['val_loss_extend']:.4f}"
             if "val_loss_animate" in i else "-"),
            ("SCORE in / held-out", lambda i, _: f"{i['score']['in_dist']:.3f} / {i['score']['heldout']:.3f}")]
    print("| | " + " | ".join(name for name, *_ in runs) + " |\n|---" * 1 + "|---" * len(runs) + "|")
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(info, table_) for _, info, _, table_ in runs) + " |")
    for m in METRICS + ("mean",):
        cells = []
        for name, _, _, tab in runs:
            v = metric_values(tab, m)
            lo, hi = interval(v, np.random.default_rng(0))
            cell = f"{np.nanmean(v):.3f} [{lo:.2f}, {hi:.2f}]"
            if name != base_name:
                d = v - metric_values(base, m)
                dlo, dhi = interval(d, np.random.default_rng(0))
                cell += f", {np.nanmean(d):+.3f} [{dlo:+.2f}, {dhi:+.2f}]"
            cells.append(cell)
        print(f"| {m} | " + " | ".join(cells) + " |")


def pooled(args) -> None:
    """A recipe against its baseline over several seeds: per seed, the val losses and each metric's
    paired difference; pooled, the difference over every (seed, prompt) pair; bootstrap 95 % intervals."""
    sys.path.insert(0, str(Path(__file__).parent))
    from eval_sizes import METRICS, interval, outcomes
    pairs = [pair.split(",") for pair in args.pairs]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit("give each pair as BASELINE_RUN,RECIPE_RUN (two run folders joined by a comma)")
    deltas: dict[str, list[np.ndarray]] = {m: [] for m in METRICS + ("mean",)}
    names, losses = [], []
    for base_dir, run_dir in map(lambda pair: map(Path, pair), pairs):
        (base_prompts, base), (prompts, tab) = outcomes(base_dir / "eval.json"), outcomes(run_dir / "eval.json")
        if prompts != base_prompts:
            raise SystemExit(f"{run_dir} and {base_dir}: evaluated on different prompts: they compare only paired")
        for m in deltas:
            deltas[m].append(metric_values(tab, m) - metric_values(base, m))
        names.append(f"{run_dir.name} - {base_dir.name}")
        losses.append(" vs ".join(f"{json.loads((d / 'speedrun.json').read_text())['val_loss']:.4f}"
                                  for d in (run_dir, base_dir)))

    def cell(v: np.ndarray) -> str:
        lo, hi = interval(v, np.random.default_rng(0))
        return f"{np.nanmean(v):+.3f} [{lo:+.2f}, {hi:+.2f}]"
    print("| | " + " | ".join(names) + " | pooled |\n|---" + "|---" * (len(names) + 1) + "|")
    print("| val loss | " + " | ".join(losses) + " | |")
    for m, per_seed in deltas.items():
        print(f"| {m} | " + " | ".join(map(cell, per_seed)) + f" | {cell(np.concatenate(per_seed))} |")


def metric_values(tab: dict, m: str) -> np.ndarray:
    """Per prompt: the outcome of metric ``m`` (NaN where not asked), or with "mean" the mean of
    the outcomes the prompt has (a per-prompt score, so that differences pair by prompt)."""
    if m != "mean":
        return tab[m]
    return np.nanmean(np.stack(list(tab.values())), axis=0)


def machine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0 = torch's default)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda: trains and "
                        "measures there")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train one recipe for the budget, then measure it")
    r.add_argument("recipe", help="a recipe name (`list` shows them)")
    r.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    r.add_argument("--root", default="runs/speedrun", help="runs go to ROOT/BUDGET-RECIPE (-sSEED for seed > 0)")
    r.add_argument("--seed", type=int, default=0, help="a replicate's seed: init, data order, noise and the "
                   "training clips (the eval prompts and their noise stay fixed)")
    machine(r)
    r.add_argument("--text-encoder", default="", help="a local copy of the text encoder (a machine without the "
                   "bundled one's package, e.g. scripts/text_encoder_copy.py's on a device machine)")
    r.add_argument("--prompts", type=int, default=200, help="eval prompts for the evaluator")
    t = sub.add_parser("table", help="paired table of finished runs against the first")
    t.add_argument("runs", nargs="+", help="run folders (ROOT/BUDGET-RECIPE)")
    po = sub.add_parser("pooled", help="a recipe's paired differences from its baseline over several seeds, pooled")
    po.add_argument("pairs", nargs="+", help="BASELINE_RUN,RECIPE_RUN per seed, e.g. runs/speedrun/cpu-baseline,"
                    "runs/speedrun/cpu-tread runs/speedrun/cpu-baseline-s1,runs/speedrun/cpu-tread-s1")
    m = sub.add_parser("measure", help="an existing bundle under the same measures (a reference column)")
    m.add_argument("bundle", help="a bundle folder, or 'bundled' for the model shipped in the package")
    m.add_argument("--name", default="shipped", help="its folder under --root")
    m.add_argument("--flops", type=float, required=True, help="the DiT's training FLOPs (the table's FLOPs row)")
    m.add_argument("--steps", type=int, required=True, help="its training steps (the table's steps row)")
    m.add_argument("--root", default="runs/speedrun")
    machine(m)
    m.add_argument("--prompts", type=int, default=200, help="eval prompts for the evaluator")
    rv = sub.add_parser("revalue", help="recompute finished runs' val losses (with and without captions, animate, extend)")
    rv.add_argument("runs", nargs="+", help="run folders (ROOT/BUDGET-RECIPE, or measure's)")
    machine(rv)
    sub.add_parser("list", help="the recipes and what each changes")
    args = ap.parse_args()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    if args.cmd == "run":
        run(args)
    elif args.cmd == "table":
        table(args)
    elif args.cmd == "pooled":
        pooled(args)
    elif args.cmd == "measure":
        measure(args)
    elif args.cmd == "revalue":
        revalue(args)
    else:
        width = max(map(len, RECIPES))
        for name, over in RECIPES.items():
            print(f"{name:{width}s} {over or 'the protocol alone: videodit train without token routing'}")


if __name__ == "__main__":
    main()
