"""Train the text-to-video DiT by flow matching (``videodit train``).

One step, per process:
  SynthWorld clips (one size and duration per batch) --VAE.encode (frozen)--> normalised latents
  captions (some dropped to "" for guidance) --text encoder (frozen, cached)--> tokens + mask
  per example a conditioning mode (none, first frame, last frame, both ends, a leading clip, a
  trailing clip, with ``cond_mix`` odds): those latent frames stay clean at t = 0
  t ~ logit-normal, shifted for the token count; x_t = (1 - t) x0 + t eps; loss = |v - (eps - x0)|^2
  over the frames that are not conditioning frames (videodit.flow).

Exact resume: every random draw of step s (caption dropout, conditioning modes, t, noise) comes
from a generator seeded by (seed, s, rank), and the data stream restarts at
``data_position = s * global batch``, so "N steps straight" and "k steps, stop, resume, N - k
steps" give the same weights. Data-parallel: the same program under torchrun (DDP; gloo on CPU,
NCCL on CUDA), each rank reading its own shard of the stream.

Sequence packing (``--pack N``): a step draws N bucket batches (sizes and durations mixed) and
the DiT runs them as one token sequence with block-diagonal attention (``DiT.forward_packed``);
the loss is the mean over every counted element of the N batches, and the stream position of
step s is s * N batches.

Latent cache (``--latent-cache N``): N training clips are rendered and encoded once, kept in
OUT/latents-rankR.pt (bf16, rebuilt when the VAE or the data settings change), and visited in
shuffled epochs, with their captions' text embeddings (without a cache, the text encoder's LRU
cache serves repeated captions). On a CPU
this saves the VAE encode of every step; on a GPU it removes the SynthWorld rendering bottleneck.

Outputs under ``out``: checkpoint.pt (full state, atomic), log.csv (loss, lr, grad norm, it/s),
eval.csv (evaluator metrics on sample videos), samples/step_NNNNNN/*.mp4, and bundle/ (the EMA
model as a complete model bundle: config.json, vae/, dit/) written with every checkpoint.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from videodit.config import to_dict
from videodit.errors import VideoditError

if TYPE_CHECKING:
    import torch

CHECKPOINT_KIND = "dit"
COND_MODES = ("none", "first", "last", "ends", "lead", "trail")


@dataclass(frozen=True)
class DiTTrainConfig:
    preset: str = field(default="cpu-small", metadata={"help": "DiT size preset (videodit.dit.PRESETS)"})
    out: str = field(default="runs/dit", metadata={"help": "output folder (checkpoint.pt, logs, samples, bundle/)"})
    vae: str = field(default="", metadata={"help": "VAE bundle folder (empty = the bundled VAE)"})
    text_encoder: str = field(default="all-minilm-l6-v2", metadata={
        "help": "text encoder: the bundled 'all-minilm-l6-v2' or a local Hugging Face folder"})
    steps: int = field(default=20000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "clips per step per process"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=500, metadata={"help": "linear warm-up, then cosine decay to lr/10"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the weights in the bundle"})
    caption_dropout: float = field(default=0.1, metadata={
        "help": "fraction of captions replaced by the empty prompt (classifier-free guidance)"})
    cond_mix: tuple[float, ...] = field(default=(0.55, 0.15, 0.05, 0.05, 0.1, 0.1), metadata={
        "help": f"odds of the conditioning modes {', '.join(COND_MODES)}"})
    t_mean: float = field(default=0.0, metadata={"help": "logit-normal timestep mean"})
    t_std: float = field(default=1.0, metadata={"help": "logit-normal timestep std"})
    sizes: tuple[str, ...] = field(default=("64x64",), metadata={"help": "SynthWorld clip sizes WxH, one per batch"})
    frames: tuple[int, ...] = field(default=(17,), metadata={"help": "SynthWorld clip frame counts (4k+1), one per batch"})
    seed: int = field(default=0, metadata={"help": "seed for init, data and every random draw"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:1 ..."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers rendering SynthWorld"})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast for the DiT and the VAE"})
    save_every: int = field(default=1000, metadata={"help": "checkpoint (and bundle) every N steps"})
    save_minutes: float = field(default=5.0, metadata={"help": "also checkpoint when this many minutes passed"})
    log_every: int = field(default=10, metadata={"help": "CSV log every N steps"})
    sample_every: int = field(default=1000, metadata={"help": "sample + evaluate every N steps (0 = never)"})
    sample_prompts: int = field(default=16, metadata={"help": "SynthWorld eval prompts sampled at each evaluation"})
    sample_steps: int = field(default=20, metadata={"help": "sampler steps for the periodic samples"})
    sample_guidance: float = field(default=4.0, metadata={"help": "guidance for the periodic samples and the bundle"})
    sample_guidance_interval: tuple[float, ...] = field(default=(0.0, 1.0), metadata={
        "help": "guidance interval LO HI for the periodic samples and the bundle: guide only at timesteps "
                "LO <= t <= HI (videodit.sample.SamplerConfig.guidance_interval)"})
    resume: bool = field(default=True, metadata={"help": "resume from OUT/checkpoint.pt when it exists"})
    tokens_per_batch: int = field(default=0, metadata={
        "help": "size buckets: give each (size, frames) bucket the batch size that holds about this many "
                "DiT tokens, so images and small clips batch more clips (0 = --batch-size for every bucket)"})
    latent_cache: int = field(default=0, metadata={
        "help": "encode this many training clips once (per process; VAE latents + captions, kept in "
                "OUT/latents-rankR.pt) and train on them in shuffled epochs; 0 = render and encode every batch"})
    max_minutes: float = field(default=0.0, metadata={
        "help": "stop cleanly (checkpoint + bundle) after this much wall time in this run; 0 = no limit"})
    pack: int = field(default=0, metadata={
        "help": "sequence packing: run this many size-bucket batches per step as ONE token sequence "
                "with block-diagonal attention (DiT.forward_packed), so a step mixes sizes and durations "
                "without padding; with --tokens-per-batch each batch gets 1/N of the budget (0 = off)"})
    init: str = field(default="", metadata={
        "help": "start from the DiT weights of this model bundle ('bundled' = the one shipped in the "
                "package) instead of a random init, e.g. to continue the bundled model's training on a "
                "fresh machine; a checkpoint to resume wins"})
    square_crop: bool = field(default=False, metadata={
        "help": "train on the centre square of every clip (side = its shorter side) instead of its native "
                "size: the square-crop baseline of Sora's native-size comparison (docs/SIZES.md)"})

    def check(self) -> None:
        from videodit.dit import PRESETS

        if self.preset not in PRESETS:
            raise VideoditError(f"--preset {self.preset!r}: unknown; choose one of {', '.join(PRESETS)}")
        if len(self.cond_mix) != len(COND_MODES) or min(self.cond_mix) < 0 or sum(self.cond_mix) <= 0:
            raise VideoditError(f"--cond-mix {self.cond_mix}: need {len(COND_MODES)} non-negative odds "
                                f"({', '.join(COND_MODES)}), not all zero")
        if not 0 <= self.caption_dropout < 1:
            raise VideoditError(f"--caption-dropout {self.caption_dropout}: must be in [0, 1)")
        if self.steps < 1 or self.batch_size < 1:
            raise VideoditError("--steps and --batch-size must be >= 1")
        if self.pack < 0 or self.pack == 1:
            raise VideoditError(f"--pack {self.pack}: give 0 (off) or the number of batches per step, >= 2")
        from videodit.sample import check_interval

        check_interval(self.sample_guidance_interval)


# ---------------------------------------------------------------------------------------------
# Pieces of a step (pure functions of their inputs and a generator)
# ---------------------------------------------------------------------------------------------

def conditioning_masks(modes: torch.Tensor, T: int, gen: torch.Generator) -> torch.Tensor:
    """Mode indices (B,) into COND_MODES -> (B, T) bool, True = a clean conditioning frame.
    A mode that would leave no frame to generate (e.g. "ends" with T = 2) gives no conditioning."""
    import torch

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


def lr_at(step: int, cfg: DiTTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def step_generator(cfg: DiTTrainConfig, step: int, rank: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 4096 + rank)


def training_inputs(latents: torch.Tensor, captions: list[str], cfg: DiTTrainConfig, gen: torch.Generator,
                    patch: tuple[int, int, int]):
    """Everything random about one batch, drawn on the CPU from ``gen`` (the same on every
    device). latents (B, c, T, h, w) -> (x_t, t (B, T), v target, loss mask (B, T), captions
    with dropout applied), on the latents' device."""
    import torch

    from videodit import flow

    B, c, T, h, w = latents.shape
    drop = torch.rand(B, generator=gen) < cfg.caption_dropout
    captions = ["" if d else cap for d, cap in zip(drop.tolist(), captions)]
    odds = torch.tensor(cfg.cond_mix, dtype=torch.float)
    modes = torch.multinomial(odds, B, replacement=True, generator=gen)  # (B,)
    cond = conditioning_masks(modes, T, gen)  # (B, T)
    pt, ph, pw = patch
    shift = flow.resolution_shift((T // pt) * (h // ph) * (w // pw))
    t = flow.shift_time(flow.logit_normal((B, 1), cfg.t_mean, cfg.t_std, generator=gen), shift)  # (B, 1)
    t = torch.where(cond, 0.0, t.expand(B, T))  # (B, T): conditioning frames are clean
    if latents.device.type == "cpu":
        noise = torch.randn(latents.shape, generator=gen)
    else:
        # Drawn on the device (host-side randn of millions of values was a GPU run's bottleneck)
        # from a seed drawn from ``gen``: still a pure function of (seed, step, rank) per device type.
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        device_gen = torch.Generator(device=latents.device).manual_seed(seed)
        noise = torch.randn(latents.shape, generator=device_gen, device=latents.device)
    t, cond = t.to(latents.device), cond.to(latents.device)
    x_t, v = flow.interpolate(latents, noise, t)
    return x_t, t, v, ~cond, captions


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def bucket_plan(cfg: DiTTrainConfig, vae_stride: int, patch: tuple[int, int, int]) -> dict[tuple[int, int, int], dict]:
    """(width, height, frames) -> {"tokens": DiT tokens per clip, "batch": clips per batch, "odds"}.
    Buckets are every (size, frames) pair of --sizes x --frames; a value listed twice is drawn
    twice as often. With --pack N a step packs N batches, each holding 1/N of --tokens-per-batch."""
    from videodit.world.scene import parse_size

    pt, ph, pw = patch
    plan = {}
    for size in cfg.sizes:
        native = parse_size(size, name="sizes")
        w, h = (min(native),) * 2 if cfg.square_crop else native  # what the VAE encodes
        for f in cfg.frames:
            T = (f - 1) // 4 + 1
            if w % (vae_stride * pw) or h % (vae_stride * ph) or T % pt:
                raise VideoditError(f"bucket {w}x{h}x{f}: sizes must be multiples of {vae_stride * pw} "
                                    f"(VAE stride x patch) and latent frames of {pt}")
            tokens = (T // pt) * (h // vae_stride // ph) * (w // vae_stride // pw)
            batch = max(1, cfg.tokens_per_batch // (tokens * batches_per_step(cfg))) if cfg.tokens_per_batch else cfg.batch_size
            entry = plan.setdefault(native + (f,), {"tokens": tokens, "batch": batch, "odds": 0.0})
            entry["odds"] += 1.0 / (len(cfg.sizes) * len(cfg.frames))
    return plan


def batches_per_step(cfg: DiTTrainConfig) -> int:
    return max(1, cfg.pack)


def packed_flow_loss(v_preds, v_targets, masks) -> torch.Tensor:
    """flow_loss over several batches as if they were one: the mean over every counted element."""
    from videodit.flow import flow_loss

    counts = [m.sum() * v[0, :, 0].numel() for v, m in zip(v_preds, masks)]  # elements per batch
    total = sum(counts).clamp_min(1)
    return sum(flow_loss(v, vt, m) * (n / total) for v, vt, m, n in zip(v_preds, v_targets, masks, counts))


def describe_plan(plan: dict, budget: int) -> str:
    lines = ["size buckets (width x height x frames: tokens per clip, clips per batch, share of batches):"]
    for (w, h, f), e in sorted(plan.items()):
        over = f"  (one clip exceeds --tokens-per-batch {budget})" if budget and e["tokens"] > budget else ""
        lines.append(f"  {w}x{h}x{f}: {e['tokens']} tokens, batch {e['batch']}, {e['odds']:.0%}{over}")
    return "\n".join(lines)


def _stream(cfg: DiTTrainConfig, plan: dict, start_batch: int):
    """Whole SynthWorld batches, one bucket each, from global batch ``start_batch`` on, this
    rank's shard (videodit.data.synthworld.SynthWorldBatches)."""
    from torch.utils.data import DataLoader

    from videodit.data.synthworld import SynthWorldBatches, SynthWorldConfig

    sizes = {k: e["batch"] for k, e in plan.items()}
    data = SynthWorldConfig(split="train", seed=cfg.seed, sizes=cfg.sizes, frames=cfg.frames,
                            block=max(sizes.values()))
    loader = DataLoader(SynthWorldBatches(data, sizes, start_batch), batch_size=None,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    yield from loader


def centre_square(video: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., S, S), the centred square of side S = min(H, W)."""
    H, W = video.shape[-2:]
    S = min(H, W)
    y0, x0 = (H - S) // 2, (W - S) // 2
    return video[..., y0:y0 + S, x0:x0 + S]


def _encode(vae, video: torch.Tensor, autocast, square: bool = False) -> torch.Tensor:
    """Pixels (B, 3, F, H, W) -> normalised fp32 latents (B, c, T, h, w), as the DiT sees them
    (of the centre square with ``square``)."""
    import torch

    if square:
        video = centre_square(video)
    with torch.no_grad(), autocast:
        return vae.normalize(vae.encode(video)).float()


def streamed_batches(cfg: DiTTrainConfig, plan: dict, vae, device, autocast, step: int, world: int):
    """(latents, captions, bucket, None) for every batch from batch ``step`` on: render and encode
    each; the loop encodes the captions (after dropout) with the text encoder."""
    for batch in _stream(cfg, plan, step * world):
        yield _encode(vae, batch["video"].to(device), autocast, cfg.square_crop), batch["caption"], batch["bucket"], None


def cached_batches(cfg: DiTTrainConfig, plan: dict, vae, text, device, autocast, step: int, rank: int, out: Path):
    """(latents, captions, bucket, (text tokens, text mask)) for every batch from batch ``step``
    on, drawn from about ``cfg.latent_cache`` clips encoded once, their captions' embeddings too
    (bf16; a GPU run spent more time tokenising captions than training): epoch e visits the cached
    batches in a permutation seeded by (seed, e, rank), so the batch of a step does not depend on
    where a run resumed."""
    import torch
    from tqdm import tqdm

    if cfg.latent_cache < max(e["batch"] for e in plan.values()):
        raise VideoditError(f"--latent-cache {cfg.latent_cache}: must hold at least one batch "
                            f"({max(e['batch'] for e in plan.values())} clips)")
    path = out / f"latents-rank{rank}.pt"
    # "square" only when set, so caches written before --square-crop existed stay valid.
    data_key = [cfg.seed, list(cfg.sizes), list(cfg.frames), cfg.batch_size, cfg.tokens_per_batch, cfg.latent_cache]
    key = {"vae": to_dict(vae.cfg), "vae_sum": float(sum(p.double().sum() for p in vae.parameters())),
           "data": data_key + (["square"] if cfg.square_crop else []),
           "text": [cfg.text_encoder, text.config.max_length]}
    cache = torch.load(path, weights_only=True) if path.exists() else None
    if cache is None or cache["key"] != key:
        latents, captions, buckets, tokens, masks = [], [], [], [], []
        stream = _stream(cfg, plan, 0)
        with tqdm(total=cfg.latent_cache, desc="encoding latent cache", disable=rank != 0, dynamic_ncols=True) as bar:
            while bar.n < cfg.latent_cache:
                batch = next(stream)
                latents.append(_encode(vae, batch["video"].to(device), autocast, cfg.square_crop).to("cpu", torch.bfloat16))
                captions.append(batch["caption"])
                buckets.append(batch["bucket"])
                tok, mask = text.encode(batch["caption"])
                tokens.append(tok.to("cpu", torch.bfloat16))
                masks.append(mask.cpu())
                bar.update(len(batch["caption"]))
        cache = {"key": key, "latents": latents, "captions": captions, "buckets": buckets,
                 "tokens": tokens, "masks": masks}
        tmp = path.with_suffix(".tmp")
        torch.save(cache, tmp)
        tmp.replace(path)
    n_batches = len(cache["latents"])
    while True:
        epoch, i = divmod(step, n_batches)
        order = torch.randperm(n_batches, generator=torch.Generator().manual_seed((cfg.seed * 7919 + epoch) * 4096 + rank))
        b = int(order[i])
        embedded = cache["tokens"][b].to(device).float(), cache["masks"][b].to(device)
        yield cache["latents"][b].to(device).float(), cache["captions"][b], cache["buckets"][b], embedded
        step += 1


def cached_text(embedded: list[tuple[torch.Tensor, torch.Tensor]], captions: list[str]):
    """Cached (tokens, mask) of one or more batches -> one (B, L, D) / (B, L) pair padded to the
    longest, with the captions that dropout emptied masked out entirely: the DiT then sees only
    its null token for them, exactly as for the empty prompt from the text encoder."""
    import torch

    length = max(tok.shape[1] for tok, _ in embedded)
    tokens = torch.cat([torch.nn.functional.pad(tok, (0, 0, 0, length - tok.shape[1])) for tok, _ in embedded])
    mask = torch.cat([torch.nn.functional.pad(m, (0, length - m.shape[1])) for _, m in embedded])
    dropped = torch.tensor([c == "" for c in captions], device=mask.device)
    return tokens, mask & ~dropped[:, None]


def _log_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """The first ``n`` canonical captions of the SynthWorld eval split (fixed across runs)."""
    from videodit.world.captions import canonical_caption
    from videodit.world.scene import sample_scene

    return [canonical_caption(sample_scene("eval", i, seed)) for i in range(n)]


def sample_and_evaluate(pipe, prompts: list[str], out_dir: Path, steps: int, guidance: float) -> dict:
    """Generate one clip per prompt (seed = its index), write them as mp4, score them."""
    import dataclasses

    from videodit.eval import evaluate
    from videodit.video import write_video

    out_dir.mkdir(parents=True, exist_ok=True)
    videos = []
    for i, prompt in enumerate(prompts):
        sampler = dataclasses.replace(pipe.config.sampler, steps=steps, guidance=guidance, seed=i)
        frames = pipe.decode_latents(pipe.generate_latents([prompt], frames=pipe.config.frames,
                                                           size=pipe.config.size, sampler=sampler))[0]
        write_video(out_dir / f"{i:05d}.mp4", frames, fps=pipe.config.fps)
        videos.append(frames)
    (out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
    result = evaluate(videos, prompts, fps=pipe.config.fps, progress=False)
    # Accuracy of each metric over all sampled prompts (in-distribution and held-out together).
    summary = {"score_in_dist": result.score["in_dist"], "score_heldout": result.score["heldout"]}
    for name in result.table["in_dist"]:
        outcomes = [v.metrics[name].passed for v in result.videos
                    if name in v.metrics and v.metrics[name].passed is not None]
        summary[name] = sum(outcomes) / len(outcomes) if outcomes else float("nan")
    return summary


def train_dit(cfg: DiTTrainConfig) -> Path:
    """Run (or resume) training; returns the path of the final model bundle."""
    import copy

    import torch
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm

    from videodit.dit import DiT, DiTConfig
    from videodit.flow import flow_loss
    from videodit.pipeline import BUNDLED, BundleConfig, Pipeline
    from videodit.sample import SamplerConfig
    from videodit.text import TextEncoder, TextEncoderConfig
    from videodit.train import cleanup_distributed, ema_update, setup_distributed
    from videodit.train.checkpoint import load_checkpoint, save_checkpoint
    from videodit.vae import VideoVAE

    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = setup_distributed(cfg.device)
    device = dist.device
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    vae_path = Path(cfg.vae) if cfg.vae else BUNDLED / "vae"
    vae = VideoVAE.from_pretrained(vae_path, device=device).requires_grad_(False)
    text = TextEncoder(TextEncoderConfig(model=cfg.text_encoder), device=device)
    torch.manual_seed(cfg.seed)
    model_cfg = DiTConfig.preset(cfg.preset, in_channels=vae.cfg.latent_channels, text_dim=text.dim)
    model = DiT(model_cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    run_config = {"train": to_dict(cfg), "model": to_dict(model_cfg), "vae": to_dict(vae.cfg)}

    step = 0
    ckpt = out / "checkpoint.pt"
    if cfg.resume and ckpt.exists():
        payload = load_checkpoint(ckpt, kind=CHECKPOINT_KIND, model=model, optimizer=optimizer, ema=ema,
                                  model_config=to_dict(model_cfg))
        step = payload["step"]
        if dist.is_main:
            print(f"resumed from {ckpt} at step {step}")
    elif cfg.init:
        init_weights(model, cfg.init, model_cfg)
        ema.load_state_dict(model.state_dict())
        if dist.is_main:
            print(f"initialised from {cfg.init}")
    ddp = DistributedDataParallel(model) if dist.world_size > 1 else model
    global_batch = cfg.batch_size * dist.world_size
    sampler = SamplerConfig(guidance=cfg.sample_guidance, guidance_interval=cfg.sample_guidance_interval)
    bundle_cfg = BundleConfig(text=text.config, sampler=sampler,
                              size=_parse_size(cfg.sizes[0]), frames=cfg.frames[0])
    pipe = Pipeline(vae, ema, text, bundle_cfg)
    prompts = eval_prompts(cfg.sample_prompts) if cfg.sample_every else []

    def save():
        save_checkpoint(ckpt, kind=CHECKPOINT_KIND, step=step, data_position=step * global_batch,
                        config=run_config, model=model, optimizer=optimizer, ema=ema)
        pipe.save(out / "bundle")

    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16)
    plan = bucket_plan(cfg, vae.cfg.spatial_stride, model_cfg.patch)
    if dist.is_main:
        print(describe_plan(plan, cfg.tokens_per_batch))
        if cfg.square_crop:
            print("--square-crop: every clip is cut to its centre square before encoding "
                  "(token counts above are the crops')")
    per_step = batches_per_step(cfg)
    if cfg.latent_cache:
        batches = cached_batches(cfg, plan, vae, text, device, autocast, step * per_step, dist.rank, out)
    else:
        batches = streamed_batches(cfg, plan, vae, device, autocast, step * per_step, dist.world_size)
    seen = dict.fromkeys(("{}x{}x{}".format(*k) for k in sorted(plan)), 0)  # clips per bucket, this run, rank 0
    bar = tqdm(total=cfg.steps, initial=step, desc="train", disable=not dist.is_main, dynamic_ncols=True)
    last_save, last_log, t_log = time.monotonic(), step, time.monotonic()
    deadline = time.monotonic() + 60 * cfg.max_minutes if cfg.max_minutes > 0 else math.inf
    try:
        while step < cfg.steps:
            gen = step_generator(cfg, step, dist.rank)
            # One batch, or with --pack N batches that each keep their own random draws (in order,
            # from one generator) and that the DiT sees as one packed sequence.
            drawn, buckets, embedded = [], [], []
            for _ in range(per_step):
                latents, captions, bucket, emb = next(batches)
                seen[bucket] += len(captions)
                drawn.append(training_inputs(latents, captions, cfg, gen, model_cfg.patch))
                buckets.append(bucket)
                embedded.append(emb)
            x_t, t, v_target, loss_mask, captions = (list(z) for z in zip(*drawn))
            captions, bucket = sum(captions, []), "+".join(buckets)
            if not cfg.pack:
                x_t, t, v_target, loss_mask = x_t[0], t[0], v_target[0], loss_mask[0]
            if embedded[0] is not None:
                tokens, mask = cached_text(embedded, captions)
            else:
                tokens, mask = text.encode(captions)
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                v_pred = ddp(x_t, t, tokens, mask)
            loss = packed_flow_loss(v_pred, v_target, loss_mask) if cfg.pack else flow_loss(v_pred, v_target, loss_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            # EMA warm-up (decay grows from 0.5 toward ema_decay) so short runs still average.
            ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (2 + step)))
            step += 1
            bar.update(1)

            if dist.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                now = time.monotonic()
                rate = (step - last_log) / max(now - t_log, 1e-9)
                last_log, t_log = step, now
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                _log_row(out / "log.csv", {"step": step, "loss": f"{loss.item():.5f}", "lr": f"{lr:.3e}",
                                           "grad_norm": f"{float(grad_norm):.4f}", "it_per_s": f"{rate:.3f}",
                                           "bucket": bucket, "batch": len(captions),
                                           "time": f"{time.time():.0f}"})
            # Every rank stops at the same step: the main rank's clock decides.
            out_of_time = _agree(time.monotonic() > deadline, dist.world_size, device)
            done = step == cfg.steps or out_of_time
            if dist.is_main and (done or step % cfg.save_every == 0
                                 or time.monotonic() - last_save > 60 * cfg.save_minutes):
                save()
                last_save = time.monotonic()
            if dist.is_main and cfg.sample_every and (step % cfg.sample_every == 0 or done):
                summary = sample_and_evaluate(pipe, prompts, out / "samples" / f"step_{step:06d}",
                                              cfg.sample_steps, cfg.sample_guidance)
                _log_row(out / "eval.csv", {"step": step, **{k: f"{v:.4f}" for k, v in summary.items()}})
                tqdm.write(f"step {step} eval: " + " ".join(f"{k}={v:.3f}" for k, v in summary.items()))
            if out_of_time:
                tqdm.write(f"stopping at step {step}: --max-minutes {cfg.max_minutes} reached")
                break
    finally:
        bar.close()
        cleanup_distributed()
    if dist.is_main:
        print("clips per size bucket in this run: " + ", ".join(f"{k} {n}" for k, n in seen.items()))
        empty = [k for k, n in seen.items() if n == 0]
        if empty:
            warnings.warn(f"size bucket(s) {', '.join(empty)} got no training clip in this run "
                          f"(too few steps for their share, or a --latent-cache too small to reach them)")
    return out / "bundle"


def init_weights(model, bundle: str, model_cfg) -> None:
    """Load the DiT of a model bundle (``bundle`` = a folder, or 'bundled') into ``model``; a bundle
    whose DiT has another architecture fails naming the settings that differ."""
    from videodit.dit import DiTConfig
    from videodit.pipeline import BUNDLED
    from videodit.train.checkpoint import load_safetensors_checked, read_bundle_config

    folder = (BUNDLED if bundle == "bundled" else Path(bundle)) / "dit"
    if not folder.is_dir():
        raise VideoditError(f"--init {bundle}: no dit/ folder there (expected a model bundle written by "
                            "`videodit train`, or 'bundled')")
    theirs = to_dict(read_bundle_config(DiTConfig, folder, "DiT"))
    ours = to_dict(model_cfg)
    differ = [f"{k} {theirs[k]} (init) vs {ours[k]} (--preset)" for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise VideoditError(f"--init {bundle}: its DiT differs from the one being trained: " + "; ".join(differ))
    load_safetensors_checked(model, folder / "model.safetensors")


def _agree(flag: bool, world_size: int, device) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if world_size == 1:
        return flag
    import torch

    t = torch.tensor([float(flag)], device=device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def _parse_size(text: str) -> tuple[int, int]:
    from videodit.world.scene import parse_size

    return parse_size(text, name="sizes")
