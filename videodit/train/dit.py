"""Train the text-to-video DiT by flow matching (``videodit train``): the DiT's step, plugged
into the one training loop (videodit/train/loop.py: resume, AdamW, schedule, EMA, guard, logs,
checkpoints).

One step, per process:
  SynthWorld clips (one size and duration per batch, videodit/data/buckets.py) --VAE.encode
  (frozen)--> normalised latents; captions (some dropped to "" for guidance) --text encoder
  (frozen)--> tokens + mask; per example a conditioning mode (none, first frame, last frame, both
  ends, a leading clip, a trailing clip, with ``cond_mix`` odds): those latent frames stay clean
  at t = 0; t ~ logit-normal, shifted for the token count; x_t = (1 - t) x0 + t eps;
  loss = |v - (eps - x0)|^2 over the frames that are not conditioning frames (videodit.flow).

Every random draw of step s comes from the loop's generator for (seed, s), and the data stream
restarts at batch s x batches per step, so a resumed run is exact. Data-parallel: the same
program under torchrun (DDP or FSDP2; gloo on CPU, NCCL on CUDA): --batch-size is the global
batch, every rank draws the random numbers of the whole batch and keeps its slice's rows, and the
loss is scaled so that the average over ranks is the mean over the global batch's counted
elements: W processes reproduce one process's loss curve (videodit/train/distributed.py).
Sequence parallelism (--sp N): N ranks share each clip's tokens (videodit.dit.SequenceParallel).

Sequence packing (``--pack N``): a step draws N bucket batches (sizes and durations mixed) and
the DiT runs them as one token sequence with block-diagonal attention (``DiT.forward_packed``);
the loss is the mean over every counted element of the N batches.

Latent cache (``--latent-cache N``): videodit/data/latent_cache.py, kept in OUT/latents-rankR.pt.

Outputs under ``out``: checkpoint.pt (+ checkpoint.prev.pt, each with a .sha256), log.csv,
eval.csv (evaluator metrics on sample videos), samples/step_NNNNNN/*.mp4, and bundle/ (the EMA
model as a complete model bundle: config.json, vae/, dit/) written with every checkpoint.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from videodit import flow
from videodit.config import check_ranges, to_dict
from videodit.data import latent_cache
from videodit.data.buckets import Bucket, centre_square, describe_plan, plan_buckets
from videodit.data.synthworld import SynthWorldBatches, SynthWorldConfig
from videodit.dit import (PRESETS, DiT, DiTConfig, Route, SequenceParallel, enable_sequence_parallel, kept_positions,
                          random_route)
from videodit.errors import VideoditError, VideoditWarning
from videodit.data.prepared import PreparedData
from videodit.eval.sampling import eval_prompts, sample_and_evaluate
from videodit.lora import LoRAConfig, add_lora, save_lora
from videodit.pipeline import BUNDLED, BundleConfig, Pipeline
from videodit.sample import SamplerConfig, check_interval
from videodit.text import TextEncoder, TextEncoderConfig
from videodit.train import distributed, loop
from videodit.bundle import WEIGHTS, file_sha256, load_safetensors_checked, read_bundle_config
from videodit.vae import VideoVAE
from videodit.world.scene import parse_size

CHECKPOINT_KIND = "dit"
COND_MODES = ("none", "first", "last", "ends", "lead", "trail")
DEFAULT_PRESET = "cpu-small"
# The DiT's Linears that read its inputs (fan-in fixed by the data, not the width): muP's input layers.
INPUT_LINEARS = ("patch_embed", "text_embed.0", "time_embed.0", "guidance_embed.0")


@dataclass(frozen=True)
class DiTTrainConfig:
    preset: str = field(default="", metadata={
        "help": "DiT size preset (videodit.dit.PRESETS); empty = --init's architecture, or cpu-small without "
                "--init", "group": "run"})
    dim: int = field(default=0, metadata={
        "help": "the DiT's width instead of the preset's, with the preset's depth and head width (heads = DIM / "
                "head width): tune a recipe on a narrow DiT, e.g. with --mup-base-dim, then train the preset. "
                "0 = the preset's width", "min": 0, "group": "run"})
    out: str = field(default="runs/dit", metadata={
        "help": "output folder (checkpoint.pt, logs, samples, bundle/)", "group": "output/checkpoints"})
    vae: str = field(default="", metadata={
        "help": "VAE bundle folder (empty = the bundled VAE)", "path": "dir", "group": "model"})
    text_encoder: str = field(default="all-minilm-l6-v2", metadata={
        "help": "text encoder: the bundled 'all-minilm-l6-v2' or a local Hugging Face folder", "group": "model"})
    steps: int = field(default=80000, metadata={"help": "optimizer steps", "min": 1, "group": "run"})
    batch_size: int = field(default=4, metadata={
        "help": "clips per step, in total over all processes (the global batch; each process reads its slice). "
                "4 learned the most from the same FLOPs in benchmarks/speedrun.py (twice the steps of batch 8, "
                "two seeds); a GPU wants more clips a step to stay busy (--batch-size or --tokens-per-batch)",
        "min": 1, "group": "optimisation"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate", "min": 0, "group": "optimisation"})
    mup_base_dim: int = field(default=0, metadata={
        "help": "muP-style learning rates for Adam (Yang et al. 2022): the weight matrices that read the width "
                "(attention, MLP, conditioning and output layers) train at lr x BASE / dim, the input embeddings, "
                "biases, gains and modulation tables at lr, so an lr tuned on a DiT of width BASE carries over to a "
                "wider one. 0 = one learning rate for every weight; a run resumes only with the same setting",
        "min": 0, "group": "optimisation"})
    text_lr_scale: float = field(default=1.0, metadata={
        "help": "the text embedding's (text_embed: the MLP from the text encoder's tokens into the DiT) "
                "learning rate is lr x this, on top of --mup-base-dim's scale; a run resumes with the learning "
                "rates it started with", "min": 0, "min_exclusive": True, "group": "optimisation"})
    warmup_steps: int = field(default=500, metadata={
        "help": "linear warm-up, then cosine decay to lr/10", "min": 0, "group": "optimisation"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0, "group": "optimisation"})
    grad_clip: float = field(default=1.0, metadata={
        "help": "max gradient norm", "min": 0, "min_exclusive": True, "group": "optimisation"})
    ema_decay: float = field(default=0.999, metadata={
        "help": "EMA decay of the weights in the bundle", "min": 0, "max": 1, "group": "optimisation"})
    caption_dropout: float = field(default=0.1, metadata={
        "help": "fraction of captions replaced by the empty prompt (classifier-free guidance)",
        "min": 0, "max": 1, "max_exclusive": True, "group": "optimisation"})
    cond_mix: tuple[float, ...] = field(default=(0.55, 0.15, 0.05, 0.05, 0.1, 0.1), metadata={
        "help": f"odds of the conditioning modes {', '.join(COND_MODES)}", "min": 0, "group": "optimisation"})
    t_mean: float = field(default=0.0, metadata={"help": "logit-normal timestep mean", "group": "optimisation"})
    t_std: float = field(default=1.0, metadata={
        "help": "logit-normal timestep std", "min": 0, "min_exclusive": True, "group": "optimisation"})
    loss_weight: str = field(default="none", metadata={
        "help": "timestep weighting of the velocity loss on top of the logit-normal timesteps: 'none', or "
                "'min-snr' (Min-SNR-gamma, Hang et al. 2023: x0-loss weight min(SNR, --snr-gamma))",
        "choices": ("none", "min-snr"), "group": "optimisation"})
    snr_gamma: float = field(default=5.0, metadata={
        "help": "gamma of --loss-weight min-snr", "min": 0, "min_exclusive": True, "group": "optimisation"})
    route: float | None = field(default=None, metadata={
        "help": "token routing: this fraction of each frame's tokens, drawn at random every step, skips the blocks "
                "of --route-blocks and rejoins unchanged after them; sampling never routes. Unset: 0.5 for a DiT "
                "of 6 or more blocks trained from scratch without --pack or --sp, else 0 (0 = off; --init, and "
                "so --lora, continues unmasked: masking the bundled DiT, trained without it, made it worse). "
                "With the defaults of the route flags this is token-masked training (MaskDiT, Zheng et al. 2023: "
                "the routed tokens meet no block and no loss), the winner of benchmarks/speedrun.py; TREAD "
                "(Krause et al. 2025) is --route-blocks 2 DEPTH-2 --route-loss all --route-until 1",
        "min": 0, "max": 1, "max_exclusive": True, "group": "optimisation"})
    route_blocks: tuple[int, ...] = field(default=(), metadata={
        "help": "START END: the blocks START .. END-1 that --route skips (default: every block, 0 .. depth-1)",
        "min": 0, "group": "optimisation"})
    route_loss: str = field(default="kept", metadata={
        "help": "with --route: 'kept' counts only the tokens that went through the routed blocks in the loss "
                "(token masking); 'all' counts every token (TREAD)", "choices": ("all", "kept"),
        "group": "optimisation"})
    route_until: float = field(default=0.9, metadata={
        "help": "with --route: route in this fraction of the steps, then train every token through every block "
                "(MaskDiT's unmasked tuning at the end)", "min": 0, "max": 1, "group": "optimisation"})
    sizes: tuple[str, ...] = field(default=("64x64",), metadata={
        "help": "SynthWorld clip sizes WxH, one per batch", "group": "data"})
    frames: tuple[int, ...] = field(default=(17,), metadata={
        "help": "SynthWorld clip frame counts (4k+1), one per batch", "min": 1, "group": "data"})
    seed: int = field(default=0, metadata={
        "help": "seed for init, data and every random draw", "min": 0, "group": "run"})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda if available), cpu, cuda, cuda:1 ...", "group": "run"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = torch default)", "min": 0, "group": "run"})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader workers rendering SynthWorld", "min": 0, "group": "run"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast for the DiT and the VAE", "group": "run"})
    compile: bool | None = field(default=None, metadata={
        "help": "torch.compile the DiT's training forward and backward: one static graph per size bucket, "
                "compiled on the bucket's first step (minutes each on a CPU, docs/TRAINING.md); not with --pack. "
                "Unset: on with CUDA, off on a CPU", "group": "run"})
    save_every: int = field(default=1000, metadata={
        "help": "checkpoint (and bundle) every N steps", "min": 1, "group": "output/checkpoints"})
    save_minutes: float = field(default=5.0, metadata={
        "help": "also checkpoint when this many minutes passed", "min": 0, "group": "output/checkpoints"})
    log_every: int = field(default=10, metadata={
        "help": "CSV log every N steps", "min": 1, "group": "output/checkpoints"})
    sample_every: int = field(default=1000, metadata={
        "help": "sample + evaluate every N steps (0 = never)", "min": 0, "group": "periodic samples"})
    sample_prompts: int = field(default=16, metadata={
        "help": "SynthWorld eval prompts sampled at each evaluation", "min": 1, "group": "periodic samples"})
    sample_steps: int = field(default=20, metadata={
        "help": "sampler steps for the periodic samples", "min": 1, "group": "periodic samples"})
    sample_guidance: float = field(default=4.0, metadata={
        "help": "guidance for the periodic samples and the bundle", "min": 0, "group": "periodic samples"})
    sample_guidance_interval: tuple[float, ...] = field(default=(0.0, 1.0), metadata={
        "help": "guidance interval LO HI for the periodic samples and the bundle: guide only at timesteps "
                "LO <= t <= HI (videodit.sample.SamplerConfig.guidance_interval)",
        "min": 0, "max": 1, "group": "periodic samples"})
    resume: bool = field(default=True, metadata={
        "help": "resume from OUT/checkpoint.pt when it exists", "group": "output/checkpoints"})
    tokens_per_batch: int = field(default=0, metadata={
        "help": "size buckets: give each (size, frames) bucket the batch size that holds about this many "
                "DiT tokens, so images and small clips batch more clips (0 = --batch-size for every bucket)",
        "min": 0, "group": "data"})
    latent_cache: int = field(default=0, metadata={
        "help": "encode this many training clips once (in total; VAE latents + captions, each process keeping "
                "its slice in OUT/latents-rankR.pt) and train on them in shuffled epochs; 0 = render and encode "
                "every batch",
        "min": 0, "group": "data"})
    max_minutes: float = field(default=0.0, metadata={
        "help": "stop cleanly (checkpoint + bundle) after this much wall time in this run; 0 = no limit",
        "min": 0, "group": "run"})
    pack: int = field(default=0, metadata={
        "help": "sequence packing: run this many size-bucket batches per step as ONE token sequence "
                "with block-diagonal attention (DiT.forward_packed), so a step mixes sizes and durations "
                "without padding; with --tokens-per-batch each batch gets 1/N of the budget (0 = off)",
        "min": 0, "group": "data"})
    init: str = field(default="", metadata={
        "help": "start from the DiT weights of this model bundle ('bundled' = the one shipped in the "
                "package) instead of a random init, e.g. to continue the bundled model's training on a "
                "fresh machine; a checkpoint to resume wins", "path": "dir", "or": ("bundled",), "group": "model"})
    pooled_text: bool = field(default=False, metadata={
        "help": "give the DiT pooled text conditioning (DiTConfig.pooled_text: the prompt's mean text token added "
                "to the time embedding that modulates every block, next to cross-attention); with --init, a bundle "
                "without it gains the new layer at zero, so training continues from the same model",
        "group": "model"})
    square_crop: bool = field(default=False, metadata={
        "help": "train on the centre square of every clip (side = its shorter side) instead of its native "
                "size: the square-crop baseline of Sora's native-size comparison (docs/SIZES.md)", "group": "data"})
    data: str = field(default="", metadata={
        "help": "train on your own clips instead of SynthWorld: a cache made by `videodit prepare` "
                "(docs/OWN_DATA.md); its sizes and durations replace --sizes / --frames", "path": "dir",
        "group": "data"})
    lora: int = field(default=0, metadata={
        "help": "fine-tune low-rank adapters of this rank on the attention and MLP projections of --init's "
                "DiT (videodit/lora.py) instead of every weight; OUT/lora/ then holds the adapters "
                "(`videodit generate --lora OUT/lora`). 0 = full training", "min": 0, "group": "fine-tuning"})
    lora_alpha: float = field(default=0.0, metadata={
        "help": "LoRA scale numerator: updates are (alpha / rank) B A; 0 = the rank (scale 1)", "min": 0,
        "group": "fine-tuning"})
    parallel: str = field(default="ddp", metadata={
        "help": "under torchrun: ddp (a full copy of the model per process) or fsdp (FSDP2: weights, gradients "
                "and optimizer state sharded per transformer block; bf16 weights in the blocks with --bf16, fp32 "
                "gradient reduction); one process trains the plain model either way",
        "choices": distributed.PARALLEL, "group": "scale-out"})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each transformer block's activations in the backward pass (less memory, ~1/3 more "
                "compute)", "group": "scale-out"})
    sp: int = field(default=1, metadata={
        "help": "sequence parallelism: this many consecutive processes share each clip, each holding 1/N of "
                "every frame's tokens (Ulysses all-to-all over heads in self-attention); must divide the "
                "processes, the heads and every bucket's tokens per frame", "min": 1, "group": "scale-out"})
    dist_timeout: float = field(default=10.0, metadata={
        "help": "minutes a collective may wait for another process (one died or hangs) before the job fails "
                "(rerun the command to resume)", "min": 0, "min_exclusive": True, "group": "scale-out"})

    def check(self) -> None:
        check_ranges(self)
        if self.lora and not self.init:
            raise VideoditError("--lora adapts an existing DiT: give --init bundled or --init BUNDLE")
        if self.data:
            base = DiTTrainConfig()
            for flag, name in (("--sizes", "sizes"), ("--frames", "frames"), ("--square-crop", "square_crop"),
                               ("--latent-cache", "latent_cache"), ("--tokens-per-batch", "tokens_per_batch"),
                               ("--num-workers", "num_workers")):
                if getattr(self, name) != getattr(base, name):
                    raise VideoditError(f"--data trains on the clips `videodit prepare` made (their sizes and "
                                        f"durations, already encoded): {flag} does not go with it")
        if self.preset and self.preset not in PRESETS:
            raise VideoditError(f"--preset {self.preset!r}: unknown; choose one of {', '.join(PRESETS)}")
        if self.dim and self.init and not self.preset:
            raise VideoditError(f"--dim {self.dim} changes the architecture --init {self.init} loads: give --preset "
                                "too (a DiT trained from scratch), or leave --dim out")
        if self.dim:
            with_width(PRESETS[self.preset or DEFAULT_PRESET], self.dim)  # a whole number of heads
        if len(self.cond_mix) != len(COND_MODES) or sum(self.cond_mix) <= 0:
            raise VideoditError(f"--cond-mix {self.cond_mix}: need {len(COND_MODES)} non-negative odds "
                                f"({', '.join(COND_MODES)}), not all zero")
        for size in self.sizes:
            parse_size(size, name="--sizes")
        for frames in self.frames:
            if (frames - 1) % 4:
                raise VideoditError(f"--frames {frames}: must be 4k+1 (1, 5, 9, 17, 33, ...)")
        if self.sp > 1 and self.pack:
            raise VideoditError("--sp splits one clip's tokens; --pack (block-diagonal packed sequences) does not "
                                "go with it")
        if self.mup_base_dim and self.lora:
            raise VideoditError("--mup-base-dim scales the learning rates of a whole DiT's weights: it does not go "
                                "with --lora (or distillation's adapters)")
        if self.lora and self.pooled_text:
            raise VideoditError("--pooled-text adds a layer that --lora would keep frozen at zero: train it in full "
                                "first (without --lora)")
        if self.lora and self.parallel == "fsdp":
            raise VideoditError("--lora trains a few adapter weights: use --parallel ddp")
        if self.compile and self.pack:
            raise VideoditError("--compile compiles one graph per size bucket; --pack's mixed sequences would "
                                "compile one per combination of buckets: give one of them")
        if self.pack == 1:
            raise VideoditError(f"--pack {self.pack}: give 0 (off) or the number of batches per step, >= 2")
        check_interval(self.sample_guidance_interval)
        if self.route_blocks and len(self.route_blocks) != 2:
            raise VideoditError(f"--route-blocks {self.route_blocks}: give two numbers, START END")
        if self.route and (self.pack or self.sp > 1):
            raise VideoditError("--route drops tokens from whole clips: it does not go with --pack or --sp")


# ---------------------------------------------------------------------------------------------
# Pieces of a step (pure functions of their inputs and a generator)
# ---------------------------------------------------------------------------------------------

def conditioning_masks(modes: torch.Tensor, T: int, gen: torch.Generator) -> torch.Tensor:
    """Mode indices (B,) into COND_MODES -> (B, T) bool, True = a clean conditioning frame.
    A mode that would leave no frame to generate (e.g. "ends" with T = 2) gives no conditioning."""
    B = modes.shape[0]
    frame = torch.arange(T)[None, :]  # (1, T)
    # lead / trail: a clip of k in [1, T - 1] latent frames.
    k = torch.randint(1, max(T, 2), (B, 1), generator=gen)  # (B, 1)
    masks = {
        "none": torch.zeros(B, T, dtype=torch.bool),
        "first": (frame == 0).expand(B, T),
        "last": (frame == T - 1).expand(B, T),
        "ends": ((frame == 0) | (frame == T - 1)).expand(B, T),
        "lead": frame < k,
        "trail": frame >= T - k,
    }
    out = torch.stack([masks[m] for m in COND_MODES], dim=1)  # (B, modes, T)
    out = out[torch.arange(B), modes]  # (B, T)
    return out & ~out.all(dim=1, keepdim=True)


def training_inputs(latents: torch.Tensor, captions: list[str], cfg: DiTTrainConfig, gen: torch.Generator,
                    patch: tuple[int, int, int], rows: tuple[int, int] | None = None):
    """Everything random about one batch, drawn on the CPU from ``gen`` (the same on every
    device). latents (B, c, T, h, w) -> (x_t, t (B, T), v target, loss mask (B, T), captions
    with dropout applied), on the latents' device. ``rows`` = (first, n): the latents are rows
    first .. first + B of a global batch of n; the draws are made for all n and sliced, so they
    do not depend on how the global batch is split over processes."""
    B, c, T, h, w = latents.shape
    first, n = rows or (0, B)
    mine = slice(first, first + B)
    drop = (torch.rand(n, generator=gen) < cfg.caption_dropout)[mine]
    captions = ["" if d else cap for d, cap in zip(drop.tolist(), captions)]
    odds = torch.tensor(cfg.cond_mix, dtype=torch.float)
    modes = torch.multinomial(odds, n, replacement=True, generator=gen)  # (n,)
    cond = conditioning_masks(modes, T, gen)[mine]  # (B, T)
    shift = flow.shift_for(latents.shape, patch)
    t = flow.shift_time(flow.logit_normal((n, 1), cfg.t_mean, cfg.t_std, generator=gen), shift)[mine]  # (B, 1)
    t = torch.where(cond, 0.0, t.expand(B, T))  # (B, T): conditioning frames are clean
    shape = (n, c, T, h, w)
    if latents.device.type == "cpu":
        noise = torch.randn(shape, generator=gen)[mine]
    else:
        # Drawn on the device (host-side randn of millions of values was a GPU run's bottleneck)
        # from a seed drawn from ``gen``: still a pure function of (seed, step) per device type.
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        device_gen = torch.Generator(device=latents.device).manual_seed(seed)
        noise = torch.randn(shape, generator=device_gen, device=latents.device)[mine]
    t, cond = t.to(latents.device), cond.to(latents.device)
    x_t, v = flow.interpolate(latents, noise, t)
    return x_t, t, v, ~cond, captions


def pad_text(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, L, D), mask (B, L) -> zero-padded to at least ``length`` tokens, the padding
    masked out: attention gives those keys weight exactly 0, so the DiT's output is the same up to
    the order of the softmax's sums."""
    extra = max(0, length - tokens.shape[1])
    return F.pad(tokens, (0, 0, 0, extra)), F.pad(mask, (0, extra))


def counted(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How many elements of v (B, c, T, h, w) flow_loss counts under ``mask``: (B, T) frames or
    (B, 1, T, h, w) latent positions."""
    return mask.sum() * (v[0, :, 0].numel() if mask.dim() == 2 else v.shape[1])


AUTO_ROUTE, AUTO_ROUTE_DEPTH = 0.5, 6  # --route's default, and the fewest blocks it applies to


def route_plan(cfg: DiTTrainConfig, depth: int) -> tuple[float, tuple[int, int]]:
    """--route's share of tokens and the blocks START, END they skip, for a DiT of ``depth`` blocks.
    Unset, --route is AUTO_ROUTE (it won the fixed-budget speedrun, benchmarks/RESULTS.md) where it
    applies: a DiT of the size it was measured at (tiny test DiTs train plain), clips whole on one
    process (no --pack, --sp) and training from scratch (no --init: continuing the bundled DiT,
    trained unmasked, with masking lost 0.16 on the evaluator). Blocks: --route-blocks, or all."""
    if cfg.route is not None:
        share = cfg.route
    else:
        applies = depth >= AUTO_ROUTE_DEPTH and not (cfg.pack or cfg.sp > 1 or cfg.init)
        share = AUTO_ROUTE if applies else 0.0
    span = tuple(cfg.route_blocks) or (0, depth)
    if share and not 0 <= span[0] < span[1] <= depth:
        raise VideoditError(f"--route-blocks {cfg.route_blocks}: need 0 <= START < END <= {depth} (the DiT's blocks)")
    return share, span


def min_snr_scaled(v, t, gamma: float):
    """v (B, c, T, h, w) times sqrt(w(t)) per frame, w = flow.min_snr_weight (lists of v and t with
    --pack): applied to prediction and target, it turns every form of the flow loss (its masks,
    packing, the global mean over ranks) into the w-weighted mean squared error."""
    if isinstance(v, list):
        return [min_snr_scaled(vi, ti, gamma) for vi, ti in zip(v, t)]
    w = flow.min_snr_weight(t, gamma).sqrt()  # (B, T)
    return v * w[:, None, :, None, None].to(v.dtype)


def packed_flow_loss(v_preds, v_targets, masks) -> torch.Tensor:
    """flow_loss over several batches as if they were one: the mean over every counted element."""
    counts = [counted(v, m) for v, m in zip(v_preds, masks)]  # elements per batch
    total = sum(counts).clamp_min(1)
    return sum(flow.flow_loss(v, vt, m) * (n / total) for v, vt, m, n in zip(v_preds, v_targets, masks, counts))


def bucket_plan(cfg: DiTTrainConfig, vae_stride: int, patch: tuple[int, int, int]) -> dict[tuple[int, int, int], Bucket]:
    """The size buckets of --sizes x --frames (videodit/data/buckets.py)."""
    return plan_buckets(cfg.sizes, cfg.frames, batch_size=cfg.batch_size, tokens_per_batch=cfg.tokens_per_batch,
                        batches_per_step=max(1, cfg.pack), square=cfg.square_crop, vae_stride=vae_stride,
                        patch=patch)


def prepared_plan(data: PreparedData, batch_size: int, vae_stride: int,
                  patch: tuple[int, int, int]) -> dict[tuple[int, int, int], Bucket]:
    """The buckets of a prepared cache: each holds its clips' share of the batches, and a bucket
    with fewer clips than --batch-size trains in smaller batches."""
    total = sum(data.buckets.values())
    plan = {}
    for name, count in data.buckets.items():
        w, h, f = (int(v) for v in name.split("x"))
        (entry,) = plan_buckets((f"{w}x{h}",), (f,), batch_size=min(batch_size, count), tokens_per_batch=0,
                                batches_per_step=1, square=False, vae_stride=vae_stride, patch=patch).values()
        entry.odds = count / total
        plan[(w, h, f)] = entry
    return plan


def check_prepared(data: PreparedData, vae_dir: Path, text: TextEncoder, source: str) -> None:
    """A cache holds latents of one VAE and embeddings of one text encoder: train with those."""
    if data.vae_hash != file_sha256(vae_dir / WEIGHTS):
        raise VideoditError(f"--data {source}: prepared with another VAE than {vae_dir} (prepare it again "
                            "with `videodit prepare --vae` set to train's --vae)")
    if data.text_encoder["name"] != text.config.model or data.text_encoder["max_length"] != text.config.max_length:
        raise VideoditError(f"--data {source}: prepared with the text encoder {data.text_encoder['name']!r} "
                            f"(max_length {data.text_encoder['max_length']}), training uses {text.config.model!r} "
                            f"(max_length {text.config.max_length})")


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

class DiTTask:
    """The DiT's part of a training run (videodit.train.loop.Task): frozen VAE and text encoder,
    the DiT and its EMA, the data, the flow-matching step, samples and bundles."""

    kind = CHECKPOINT_KIND
    ema_warmup = 2  # EMA decay (1 + s) / (2 + s): short runs still average
    compile_shapes = 0  # set in __init__ (the loop's Task.compile_shapes)
    log_fields = ("bucket", "batch", "time")
    csv_logs = ("eval.csv",)

    def __init__(self, cfg: DiTTrainConfig, dist: loop.DistInfo):
        cfg.check()
        self.cfg, self.dist, self.out = cfg, dist, Path(cfg.out)
        device = dist.device
        vae_dir = Path(cfg.vae) if cfg.vae else BUNDLED / "vae"
        self.vae = VideoVAE.from_pretrained(vae_dir, device=device)
        self.vae.requires_grad_(False)
        self.text = TextEncoder(TextEncoderConfig(model=cfg.text_encoder), device=device)
        torch.manual_seed(cfg.seed)
        self.model = self.make_model().to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        if dist.sp > 1:  # the training model only: samples and bundles use the EMA on one process
            enable_sequence_parallel(self.model, SequenceParallel(dist.sp_group, dist.sp_rank, dist.sp))
        self.run_config = {"train": to_dict(cfg), "model": to_dict(self.model_cfg), "vae": to_dict(self.vae.cfg)}
        self.autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16)
        self.prepared = None
        if cfg.data:
            self.prepared = PreparedData(cfg.data)
            check_prepared(self.prepared, vae_dir, self.text, cfg.data)
            self.plan = prepared_plan(self.prepared, cfg.batch_size, self.vae.cfg.spatial_stride, self.model_cfg.patch)
        else:
            self.plan = bucket_plan(cfg, self.vae.cfg.spatial_stride, self.model_cfg.patch)
        self.per_step = max(1, cfg.pack)
        self.route_share, self.route_span = route_plan(cfg, self.model_cfg.depth)
        self.check_layout()
        if (device.type == "cuda" if cfg.compile is None else cfg.compile) and not cfg.pack:
            routed_and_plain = self.route_share and cfg.route_until < 1
            self.compile_shapes = len(self.plan) * (2 if routed_and_plain else 1)
        sampler = SamplerConfig(guidance=cfg.sample_guidance, guidance_interval=cfg.sample_guidance_interval)
        width, height, frames = max(self.plan, key=lambda k: self.plan[k].odds)  # the commonest bucket
        self.pipe = Pipeline(self.vae, self.ema, self.text, BundleConfig(
            text=self.text.config, sampler=sampler, size=(width, height), frames=frames))
        self.prompts = eval_prompts(cfg.sample_prompts) if cfg.sample_every else []
        self.seen = dict.fromkeys(("{}x{}x{}".format(*k) for k in sorted(self.plan)), 0)  # clips per bucket, this run
        if dist.is_main:
            print(describe_plan(self.plan, cfg.tokens_per_batch))
            if cfg.square_crop:
                print("--square-crop: every clip is cut to its centre square before encoding "
                      "(token counts above are the crops')")
            if self.route_share:
                loss = " and the loss" if cfg.route_loss == "kept" else ""
                print(f"token routing: {self.route_share:g} of each frame's tokens skip blocks {self.route_span[0]} "
                      f".. {self.route_span[1] - 1}{loss} in the first {cfg.route_until:.0%} of the steps "
                      "(--route 0 trains every token)")

    def make_model(self) -> DiT:
        """The DiT to train, on the CPU; sets ``model_cfg`` (its config) and ``lora_cfg`` (None for
        full training). With --lora, --init's weights are loaded first and stay frozen."""
        cfg = self.cfg
        self.model_cfg = model_config(cfg, self.vae.cfg.latent_channels, self.text.dim)
        model = DiT(self.model_cfg)
        self.lora_cfg = None
        if cfg.lora:
            init_weights(model, cfg.init, self.model_cfg)
            self.lora_cfg = LoRAConfig(rank=cfg.lora, alpha=cfg.lora_alpha or float(cfg.lora))
            add_lora(model, self.lora_cfg)
        return model

    def check_layout(self) -> None:
        """Every global batch has a clip for each data-parallel process; --sp divides the heads and
        every bucket's tokens per frame."""
        dist, cfg = self.dist, self.cfg
        for (w, h, f), entry in self.plan.items():
            if self.prepared is None:
                distributed.batch_slice(entry.batch, 0, dist.dp_size)
            if dist.sp > 1:
                s = self.vae.cfg.spatial_stride
                tokens = (h // s // self.model_cfg.patch[1]) * (w // s // self.model_cfg.patch[2])
                if tokens % dist.sp or self.model_cfg.heads % dist.sp:
                    raise VideoditError(f"--sp {dist.sp}: must divide the DiT's {self.model_cfg.heads} heads and the "
                                        f"{tokens} tokens per frame of {w}x{h} clips")

    def fsdp_units(self, module) -> list:
        return list(module.blocks)

    def wants_ema(self, step: int, done: bool) -> bool:
        return bool(self.cfg.sample_every) and (step % self.cfg.sample_every == 0 or done)

    def lr_groups(self) -> list[dict]:
        """AdamW's parameter groups (loop.Task.lr_groups): one at lr, or with --mup-base-dim B the
        hidden and output matrices at lr x B / dim (muP for Adam, Yang et al. 2022, Table 3): every
        Linear's weight but those of the layers that read the inputs (patches, text and timestep
        features, whose fan-in does not grow with the width). --text-lr-scale S multiplies the text
        embedding's on top. One group per scale, in the order the parameters first meet it."""
        if not self.cfg.mup_base_dim and self.cfg.text_lr_scale == 1:
            return loop.one_lr_group(self.model)
        hidden = {f"{name}.weight" for name, m in self.model.named_modules()
                  if isinstance(m, torch.nn.Linear) and name not in INPUT_LINEARS}
        mup = self.cfg.mup_base_dim / self.model_cfg.dim if self.cfg.mup_base_dim else 1.0
        groups: dict[float, list] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                scale = mup if name in hidden else 1.0
                scale *= self.cfg.text_lr_scale if name.startswith("text_embed.") else 1.0
                groups.setdefault(scale, []).append(p)
        return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]

    def extra_modules(self) -> dict:
        return {}

    def init(self) -> None:
        if self.cfg.init and not self.cfg.lora:  # (with --lora, loaded before the adapters were added)
            init_weights(self.model, self.cfg.init, self.model_cfg)
            self.ema.load_state_dict(self.model.state_dict())
            if self.dist.is_main:
                print(f"initialised from {self.cfg.init}")

    # -- data ---------------------------------------------------------------------------------
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, F, H, W) -> normalised fp32 latents (B, c, T, h, w), as the DiT sees them
        (of the centre square with --square-crop)."""
        video = video.to(self.dist.device)
        if self.cfg.square_crop:
            video = centre_square(video)
        with torch.no_grad(), self.autocast:
            return self.vae.normalize(self.vae.encode(video)).float()

    def stream(self, start_batch: int) -> Iterator[dict]:
        """SynthWorld batches, one bucket each, from global batch ``start_batch`` on, this rank's
        slice of each (videodit.data.synthworld.SynthWorldBatches)."""
        sizes = {k: e.batch for k, e in self.plan.items()}
        data = SynthWorldConfig(split="train", seed=self.cfg.seed, sizes=self.cfg.sizes, frames=self.cfg.frames,
                                block=max(sizes.values()))
        # (under torchrun always a slice: ranks of a sequence-parallel group read the same clips)
        part = (self.dist.dp_rank, self.dist.dp_size) if self.dist.world_size > 1 else None
        yield from DataLoader(SynthWorldBatches(data, sizes, start_batch, part), batch_size=None,
                              num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def batches(self, step: int) -> Iterator[list[tuple]]:
        """Per step, ``per_step`` tuples (latents, captions, bucket, cached (tokens, mask) or None)."""
        first = step * self.per_step
        if self.prepared is not None:
            single = self.prepared.batches(first, self.cfg.batch_size, self.cfg.seed, self.dist.dp_rank,
                                           self.dist.dp_size, self.dist.device)
        elif self.cfg.latent_cache:
            # rank 0's order on every rank: the ranks cache slices of the same global batches
            single = latent_cache.epoch_batches(self.load_cache(), first, self.cfg.seed, 0, self.dist.device)
        else:
            single = ((self.encode(b["video"]), b["caption"], b["bucket"], None) for b in self.stream(first))
        while True:
            yield [next(single) for _ in range(self.per_step)]

    def load_cache(self) -> dict:
        cfg = self.cfg
        largest = max(e.batch for e in self.plan.values())
        if cfg.latent_cache < largest:
            raise VideoditError(f"--latent-cache {cfg.latent_cache}: must hold at least one batch ({largest} clips)")
        # "square" only when set, so caches written before --square-crop existed stay valid.
        data_key = [cfg.seed, list(cfg.sizes), list(cfg.frames), cfg.batch_size, cfg.tokens_per_batch, cfg.latent_cache]
        key = {"vae": to_dict(self.vae.cfg), "vae_sum": float(sum(p.double().sum() for p in self.vae.parameters())),
               "data": data_key + (["square"] if cfg.square_crop else [])
               + ([["slice", self.dist.dp_rank, self.dist.dp_size]] if self.dist.dp_size > 1 else []),
               "text": [cfg.text_encoder, self.text.config.max_length]}
        return latent_cache.load_or_build(self.out / f"latents-rank{self.dist.rank}.pt", key, self.stream(0),
                                          cfg.latent_cache, self.encode, self.text.encode, progress=self.dist.is_main)

    # -- the step -----------------------------------------------------------------------------
    def step(self, net, batches: list[tuple], step: int, gen: torch.Generator, lr: float) -> loop.StepResult:
        # One batch, or with --pack N batches that each keep their own random draws (in order,
        # from one generator) and that the DiT sees as one packed sequence.
        drawn, buckets, embedded = [], [], []
        for latents, captions, bucket, emb in batches:
            rows = self.rows(len(captions))
            self.seen[bucket] += rows[1] if rows else len(captions)
            drawn.append(training_inputs(latents, captions, self.cfg, gen, self.model_cfg.patch, rows))
            buckets.append(bucket)
            embedded.append(emb)
        x_t, t, v_target, loss_mask, captions = (list(z) for z in zip(*drawn))
        captions = sum(captions, [])
        if not self.cfg.pack:
            x_t, t, v_target, loss_mask = x_t[0], t[0], v_target[0], loss_mask[0]
        if embedded[0] is not None:
            tokens, mask = latent_cache.cached_text(embedded, captions)
        else:
            tokens, mask = self.text.encode(captions)
        if self.compile_shapes:  # static shapes: the text always as long as the encoder's longest
            tokens, mask = pad_text(tokens, mask, self.text.config.max_length)
        route = self.route(x_t, step, gen)
        with self.autocast:
            v_pred = net(x_t, t, tokens, mask, **({"route": route} if route is not None else {}))
        if route is not None and self.cfg.route_loss == "kept":
            loss_mask = loss_mask[:, None, :, None, None] & kept_positions(route, x_t.shape, self.model_cfg.patch)
        if self.cfg.loss_weight == "min-snr":
            v_pred, v_target = (min_snr_scaled(v, t, self.cfg.snr_gamma) for v in (v_pred, v_target))
        if self.cfg.pack:
            loss = packed_flow_loss(v_pred, v_target, loss_mask)
        else:
            loss = flow.flow_loss(v_pred, v_target, loss_mask)
        batch = len(captions)
        if self.dist.world_size > 1:
            loss, batch = self.global_mean(loss, v_target, loss_mask)
        return loop.StepResult(loss, loss.detach(), {"bucket": "+".join(buckets), "batch": batch,
                                                     "time": f"{time.time():.0f}"})

    def route(self, x_t: torch.Tensor, step: int, gen: torch.Generator) -> Route | None:
        """This step's token route (--route), drawn from the step's generator; None when the step
        does not route."""
        if not self.route_share or step >= self.cfg.route_until * self.cfg.steps:
            return None
        pt, ph, pw = self.model_cfg.patch
        B, _, T, h, w = x_t.shape
        return random_route(B, (T // pt, h // ph, w // pw), self.route_share, self.route_span, gen)

    def rows(self, local: int) -> tuple[int, int] | None:
        """(first row, global batch size) of this rank's ``local`` clips (None for one process).
        Ranks of a sequence-parallel group hold the same rows."""
        if self.dist.dp_size == 1:
            return None
        sizes = torch.zeros(self.dist.world_size, dtype=torch.long, device=self.dist.device)
        sizes[self.dist.rank] = local
        torch.distributed.all_reduce(sizes)
        per_dp = sizes[::self.dist.sp].tolist()  # one entry per data-parallel rank
        return sum(per_dp[:self.dist.dp_rank]), sum(per_dp)

    def global_mean(self, loss, v_target, loss_mask) -> tuple[torch.Tensor, int]:
        """This rank's share of the global batch's loss, scaled so that averaging over ranks (DDP,
        FSDP, rank_mean) gives the mean over every counted element of the global batch; and the
        global clip count."""
        targets = v_target if isinstance(v_target, list) else [v_target]
        masks = loss_mask if isinstance(loss_mask, list) else [loss_mask]
        counts = torch.stack([counted(v, m) for v, m in zip(targets, masks)]).sum().float()
        clips = torch.tensor(float(sum(m.shape[0] for m in masks)), device=counts.device)
        totals = torch.stack([counts, clips])
        torch.distributed.all_reduce(totals)
        totals = totals / self.dist.sp  # the ranks of a sequence-parallel group hold the same clips
        return loss * (counts / totals[0] * self.dist.dp_size), int(totals[1].round())

    # -- outputs ------------------------------------------------------------------------------
    @property
    def result(self) -> Path:
        """What a run makes: the adapters with --lora, else a complete model bundle (the EMA)."""
        return self.out / ("lora" if self.lora_cfg else "bundle")

    def on_save(self) -> None:
        if self.lora_cfg:
            save_lora(self.ema, self.lora_cfg, self.result)
        else:
            self.pipe.save(self.result)

    def after_step(self, step: int, done: bool) -> None:
        cfg = self.cfg
        if not cfg.sample_every or not (step % cfg.sample_every == 0 or done):
            return
        summary = sample_and_evaluate(self.pipe, self.prompts, self.out / "samples" / f"step_{step:06d}",
                                      cfg.sample_steps, cfg.sample_guidance)
        loop.CsvLog(self.out / "eval.csv", ("step", *summary)).write(
            {"step": step, **{k: f"{v:.4f}" for k, v in summary.items()}})
        tqdm.write(f"step {step} eval: " + " ".join(f"{k}={v:.3f}" for k, v in summary.items()))

    def finish(self) -> Path:
        print("clips per size bucket in this run: " + ", ".join(f"{k} {n}" for k, n in self.seen.items()))
        empty = [k for k, n in self.seen.items() if n == 0]
        if empty:
            warnings.warn(f"size bucket(s) {', '.join(empty)} got no training clip in this run "
                          f"(too few steps for their share, or a --latent-cache too small to reach them)", VideoditWarning)
        return self.result


def train_dit(cfg: DiTTrainConfig) -> Path:
    """Run (or resume) training; returns the path of the final model bundle."""
    cfg.check()
    return loop.train(cfg, lambda dist: DiTTask(cfg, dist), sp=cfg.sp)


def model_config(cfg: DiTTrainConfig, latent_channels: int, text_dim: int) -> DiTConfig:
    """--preset's DiT for this VAE and text encoder; without --preset, --init's, or cpu-small."""
    if cfg.preset or not cfg.init:
        base = DiTConfig.preset(cfg.preset or DEFAULT_PRESET, in_channels=latent_channels, text_dim=text_dim,
                                pooled_text=cfg.pooled_text)
        return with_width(base, cfg.dim) if cfg.dim else base
    init = read_bundle_config(DiTConfig, init_folder(cfg.init), "DiT")
    return replace(init, pooled_text=True) if cfg.pooled_text else init


def with_width(base: DiTConfig, dim: int) -> DiTConfig:
    """``base`` at width ``dim``: its depth and head width kept, the heads dim / head width."""
    if dim % base.head_dim:
        raise VideoditError(f"--dim {dim}: must be a multiple of the preset's head width {base.head_dim} "
                            f"(its dim {base.dim} / {base.heads} heads)")
    return replace(base, dim=dim, heads=dim // base.head_dim)


def init_folder(bundle: str) -> Path:
    folder = (BUNDLED if bundle == "bundled" else Path(bundle)) / "dit"
    if not folder.is_dir():
        raise VideoditError(f"--init {bundle}: no dit/ folder there (expected a model bundle written by "
                            "`videodit train`, or 'bundled')")
    return folder


def init_weights(model: DiT, bundle: str, model_cfg: DiTConfig) -> None:
    """Load the DiT of a model bundle (``bundle`` = a folder, or 'bundled') into ``model``; a bundle
    whose DiT has another architecture fails naming the settings that differ. A bundle without
    pooled text loads into a model with it (--pooled-text), whose new layer keeps its zero init."""
    folder = init_folder(bundle)
    theirs = to_dict(read_bundle_config(DiTConfig, folder, "DiT"))
    ours = to_dict(model_cfg)
    added = model_cfg.pooled_text and not theirs.get("pooled_text")
    differ = [f"{k} {theirs.get(k)} (init) vs {ours[k]} (--preset)" for k in ours
              if theirs.get(k) != ours[k] and not (added and k == "pooled_text")]
    if differ:
        raise VideoditError(f"--init {bundle}: its DiT differs from the one being trained: " + "; ".join(differ))
    if not added:
        load_safetensors_checked(model, folder / "model.safetensors")
        return
    source = DiT(replace(model_cfg, pooled_text=False))
    load_safetensors_checked(source, folder / "model.safetensors")
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    if unexpected or any(not k.startswith("text_pool.") for k in missing):
        raise VideoditError(f"--init {bundle}: adding pooled text left {missing + unexpected} unmatched")
