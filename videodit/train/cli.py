"""`videodit train-vae`: flags come from VAETrainConfig (videodit/train/vae.py)."""

from __future__ import annotations

import argparse
import os

_EXAMPLES = """examples:
  # CPU, one thread, 32x32x9 crops of 64x64x17 SynthWorld clips
  videodit train-vae --out runs/vae --steps 20000 --threads 1 --crop-size 32 --crop-frames 9
  # one GPU (device auto-detected), SynthWorld rendered by 8 DataLoader workers
  videodit train-vae --out runs/vae_gpu --steps 6000 --batch-size 32 --num-workers 8
  # many GPUs: the same program under torchrun (DDP; the data stream shards by rank)
  torchrun --nproc-per-node 8 -m videodit train-vae --out runs/vae_ddp
  # fine-tune only the bundled decoder (the latents a DiT was trained on stay), on object-centred crops
  videodit train-vae --init videodit/assets/bundle/vae --finetune decoder --batch-size 16 --crop-size 32 \\
      --crop-focus --lr 1e-4 --max-minutes 30 --steps 100000 --out runs/vae_dec
  # a wider decoder, starting as an exact copy of the bundled one (how the bundled decoder was made)
  videodit train-vae --init videodit/assets/bundle/vae --finetune decoder --decoder-channels 48 \\
      --batch-size 32 --lr 2e-4 --max-minutes 8 --steps 1000000 --num-workers 14 --out runs/vae_dec48
  # the converse: only the encoder learns, against the bundled decoder (samples decode as before)
  videodit train-vae --init videodit/assets/bundle/vae --finetune encoder --batch-size 16 --crop-size 32 \\
      --crop-focus --edge-weight 4 --lr 2e-4 --max-minutes 80 --steps 100000 --out runs/vae_enc

Resumes from OUT/checkpoint.pt when it exists (--no-resume starts over). At the end OUT/bundle/
holds the EMA weights and config.json (with the measured latent scale/shift), loadable with
VideoVAE.from_pretrained or `videodit reconstruct --model OUT/bundle`."""


def register(sub: argparse._SubParsersAction) -> None:
    from videodit.config import add_dataclass_args
    from videodit.train.vae import VAETrainConfig

    p = sub.add_parser("train-vae",
                       description="Train the causal 3D video VAE (L1 + MSE + KL, optionally edge-weighted or adversarial, "
                                   "on whole clips or focused crops; bf16 autocast, EMA, exact resume).",
                       epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, VAETrainConfig)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from videodit import use_cpu_threads
    from videodit.config import dataclass_from_args
    from videodit.train.vae import VAETrainConfig, train_vae

    use_cpu_threads()  # --threads, when given, wins
    cfg = dataclass_from_args(VAETrainConfig(), args)
    bundle = train_vae(cfg)
    if _is_main_process():
        print(f"saved VAE bundle to {bundle}")
    return 0


def _is_main_process() -> bool:
    """Under torchrun only rank 0 writes the bundle, so only it says so."""
    return os.environ.get("RANK", "0") == "0"


_TRAIN_EXAMPLES = """examples:
  # a quick CPU run of the small preset through the bundled VAE
  videodit train --preset cpu-small --out runs/dit --steps 8000 --threads 2
  # one GPU, SynthWorld rendered by 12 DataLoader workers, several sizes and durations
  videodit train --out runs/dit_gpu --batch-size 64 --num-workers 12 --sizes 64x64 --frames 17
  # data-parallel on CPU (gloo) or many GPUs (NCCL): the same program under torchrun
  torchrun --nproc-per-node 2 -m videodit train --out runs/dit_ddp --device cpu

Resumes from OUT/checkpoint.pt when it exists (--no-resume starts over). OUT/bundle/ always holds
the latest EMA model as a complete bundle: `videodit generate --model OUT/bundle "a prompt"`.
Every --sample-every steps it samples the first --sample-prompts SynthWorld eval prompts, writes
them under OUT/samples/ and logs the evaluator's metrics to OUT/eval.csv."""


def register_train(sub: argparse._SubParsersAction) -> None:
    from videodit.config import add_dataclass_args
    from videodit.train.dit import DiTTrainConfig

    p = sub.add_parser("train",
                       description="Train the diffusion transformer by flow matching on SynthWorld latents "
                                   "(bf16 autocast, AdamW, EMA, caption dropout, conditioning-frame mixture, "
                                   "exact resume, torchrun data parallel).",
                       epilog=_TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, DiTTrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from videodit import use_cpu_threads
    from videodit.config import dataclass_from_args
    from videodit.train.dit import DiTTrainConfig, train_dit

    use_cpu_threads()  # --threads, when given, wins
    bundle = train_dit(dataclass_from_args(DiTTrainConfig(), args))
    if _is_main_process():
        print(f"saved {'LoRA adapters' if bundle.name == 'lora' else 'model bundle'} to {bundle}")
    return 0


_DISTILL_EXAMPLES = """examples:
  # the bundled model -> an 8-step student with the guidance built in, on 2 CPU threads
  videodit distill --out runs/distill --threads 2 --max-minutes 60
  # then sample it (solver 'distilled' is its bundle's default), or its teacher
  videodit generate --model runs/distill/bundle "A red circle moves to the right on a black background."
  videodit generate --model runs/distill/bundle --solver euler --steps 30 "..."
  # your own bundle, a 4-step student, on a GPU
  videodit distill --init runs/dit/bundle --student-steps 4 --teacher-substeps 8 --batch-size 64 --tokens-per-batch 0

Resumes from OUT/checkpoint.pt when it exists (--no-resume starts over). OUT/bundle/ is --init's
bundle with the student in OUT/bundle/distilled/ and its sampler set to it; copy distilled/ into
a bundle of the same DiT (and set its config.json sampler: "solver": "distilled", "steps": K) to
give that bundle the student. docs/DISTILL.md says what is learnt and what it measured."""


def register_distill(sub: argparse._SubParsersAction) -> None:
    from videodit.config import add_dataclass_args
    from videodit.train.distill import DistillTrainConfig

    p = sub.add_parser("distill",
                       description="Distil a model bundle's DiT into a few-step student with classifier-free guidance "
                                   "built in: one pass per step, K steps, instead of two passes for most of 30 "
                                   "(guidance + step distillation, videodit/distill.py).",
                       epilog=_DISTILL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, DistillTrainConfig)
    p.set_defaults(func=_run_distill)


def _run_distill(args: argparse.Namespace) -> int:
    from videodit import use_cpu_threads
    from videodit.config import dataclass_from_args
    from videodit.train.distill import DistillTrainConfig, train_distill

    use_cpu_threads()
    bundle = train_distill(dataclass_from_args(DistillTrainConfig(), args))
    if _is_main_process():
        print(f"saved the model bundle with its distilled student to {bundle}")
    return 0
