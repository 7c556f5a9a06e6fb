"""Train the causal video VAE (``videodit train-vae``).

Loss: L1 + mse_weight * MSE reconstruction (means over pixels, in [-1, 1] units) + kl_weight *
KL (mean over latent elements) against N(0, 1). L1 keeps flat colours and edges sharp; MSE is what
PSNR measures and weighs the large errors on small objects (a few % of the pixels) more. Nothing
perceptual or adversarial: SynthWorld is flat colours.

Exact resume: everything random in a step (the crop, the posterior noise) is drawn from a
generator seeded by (seed, step), and the data stream restarts at ``data_position``, so
"N steps straight" and "k steps, stop, resume, N - k steps" give identical weights.

Outputs under ``out``: checkpoint.pt (full training state, every ``save_every`` steps / minutes),
log.csv, and bundle/ (EMA weights + config.json with measured latent normalisation) at the end.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    import torch

    from videodit.train import DistInfo
    from videodit.vae import VAEConfig, VideoVAE

from videodit.config import to_dict
from videodit.errors import VideoditError

# This module's top level stays free of torch so that `videodit --help` (which builds the
# train-vae flags from VAETrainConfig) is fast; the functions below import it where they run.

CHECKPOINT_KIND = "vae"
PRESET_NAMES = ("tiny", "s4c8", "s8c16", "gpu")  # keys of videodit.vae.PRESETS (checked in check())


@dataclass(frozen=True)
class VAETrainConfig:
    preset: str = field(default="s4c8", metadata={"help": f"VAE size preset: {', '.join(PRESET_NAMES)}"})
    out: str = field(default="runs/vae", metadata={"help": "output folder (checkpoint.pt, log.csv, bundle/)"})
    steps: int = field(default=4000, metadata={"help": "optimizer steps"})
    max_minutes: float = field(default=0.0, metadata={
        "help": "also stop after this many minutes of training (0 = no limit); the lr schedule then "
                "follows whichever of steps / time runs out first, so the run is not bit-reproducible"})
    batch_size: int = field(default=8, metadata={"help": "clips per step (per process)"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warmup, then cosine decay to lr/10"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    kl_weight: float = field(default=1e-5, metadata={"help": "weight of the KL term (mean over latent elements)"})
    mse_weight: float = field(default=1.0, metadata={
        "help": "weight of an MSE term beside L1: it weighs the large errors on small objects more"})
    edge_weight: float = field(default=0.0, metadata={
        "help": "extra weight of the pixels at edges and where the video moves (a 3x3-dilated mask of "
                "pixels that differ from their left, upper or previous-frame neighbour): each counts "
                "1 + W times in L1 and MSE (normalised by the mean weight); 0 = plain means"})
    adv_weight: float = field(default=0.0, metadata={
        "help": "add an adversarial loss from a 3D patch discriminator (videodit/train/discriminator.py) "
                "against blurred, rounded edges: its gradient at the decoder's last layer is scaled to this "
                "fraction of the reconstruction loss's there (adaptive weight). 0 = off"})
    adv_start: int = field(default=200, metadata={
        "help": "with --adv-weight: steps in which only the discriminator learns before its loss reaches "
                "the decoder (a decoder from --init is already good; the discriminator must catch up first)"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the weights saved in the bundle"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm"})
    width: int = field(default=64, metadata={"help": "SynthWorld clip width"})
    height: int = field(default=64, metadata={"help": "SynthWorld clip height"})
    frames: int = field(default=17, metadata={"help": "SynthWorld clip frames (4k+1)"})
    crop_size: int = field(default=0, metadata={
        "help": "train on random square crops of this size (0 = whole frames); the VAE is convolutional"})
    crop_frames: int = field(default=0, metadata={"help": "train on random 4k+1-frame windows (0 = whole clips)"})
    crop_focus: bool = field(default=False, metadata={
        "help": "with --crop-size: give each clip its own crop window, drawn in proportion to how many outline "
                "and moving pixels it holds (the edge mask of --edge-weight) and aligned to the spatial stride, "
                "so that small crops land on the objects instead of the empty background"})
    seed: int = field(default=0, metadata={"help": "seed for init, crops, posterior noise and data"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:1 ..."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers rendering SynthWorld"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps"})
    save_minutes: float = field(default=5.0, metadata={"help": "also checkpoint when this many minutes passed"})
    log_every: int = field(default=10, metadata={"help": "CSV log every N steps"})
    resume: bool = field(default=True, metadata={"help": "resume from OUT/checkpoint.pt when it exists"})
    init: str = field(default="", metadata={
        "help": "start from this VAE bundle's weights (model and EMA; e.g. the bundled VAE, to continue its "
                "training on a fresh machine) instead of a random init; a checkpoint to resume wins"})
    decoder_channels: int = field(default=0, metadata={
        "help": "the decoder's channels at full resolution (0 = the preset's, or --init's); with --init, a "
                "wider decoder starts as an exact copy of --init's (widen in videodit/vae.py: new channels "
                "start silent), so that with --decoder-only the latents stay --init's and a DiT trained on "
                "them stays valid while the decoder gains capacity"})
    encoder_channels: int = field(default=0, metadata={
        "help": "the encoder's channels at full resolution (0 = the preset's, or --init's); with --init, a "
                "wider encoder starts as an exact copy of --init's, like --decoder-channels. Training it "
                "changes the latents: a DiT must then be trained on the new ones"})
    stats_batches: int = field(default=8, metadata={"help": "batches used to measure the latent scale/shift"})
    decoder_only: bool = field(default=False, metadata={
        "help": "train only the decoder, from --init: the encoder, hence the latent space and its "
                "shift/scale, stay exactly as --init has them, so a DiT trained on those latents stays valid"})
    encoder_only: bool = field(default=False, metadata={
        "help": "train only the encoder, from --init, against --init's frozen decoder (the converse of "
                "--decoder-only): the encoder learns to find the latents that decoder draws best, which are "
                "near the ones it gives now. The decoder, hence everything a DiT's samples decode to, and the "
                "latent statistics stay --init's; only encoded inputs (image-to-video, extend, edit) change"})
    encoder_shortcut: bool = field(default=False, metadata={
        "help": "give the encoder a pixel shortcut (PixelShortcut in videodit/vae.py: each latent cell's raw "
                "pixels, linearly to the latents), zero at the start, so that with --init the VAE starts as "
                "--init's exactly; kept when --init's VAE already has one"})
    anchor_weight: float = field(default=0.0, metadata={
        "help": "fine-tune encoder and decoder from --init while this weight times the mean squared drift "
                "of the posterior means from --init's (in the normalised units a DiT sees) holds the latent "
                "space in place, so a DiT trained on --init's latents stays usable; keeps --init's latent "
                "statistics. 0 = off"})
    latent_noise: float = field(default=0.0, metadata={
        "help": "with --decoder-only: add Gaussian noise of std U(0, S) per clip, in the normalised latent "
                "units a DiT sees, before decoding, so the decoder learns to turn a DiT's imperfect latents "
                "into clean frames (the target stays the clean clip). 0 = off"})
    per_channel_latents: bool = field(default=False, metadata={
        "help": "measure the latent shift/scale per channel (each channel to mean 0, std 1) instead of one "
                "for all channels; with --init BUNDLE --steps 0 only the statistics are measured; on by itself when --init's VAE "
                "has per-channel statistics. A DiT must be trained on the latents of the VAE it is used with"})

    def check(self) -> None:
        from videodit.vae import PRESETS

        if self.preset not in PRESETS:
            raise VideoditError(f"--preset {self.preset!r}: unknown; choose one of {', '.join(PRESETS)}")
        s = PRESETS[self.preset].spatial_stride
        if (self.frames - 1) % 4:
            raise VideoditError(f"--frames {self.frames}: must be 4k+1 (e.g. {(self.frames - 1) // 4 * 4 + 1})")
        if self.crop_frames and ((self.crop_frames - 1) % 4 or self.crop_frames > self.frames):
            raise VideoditError(f"--crop-frames {self.crop_frames}: must be 4k+1 and <= --frames {self.frames}")
        if self.crop_size and (self.crop_size % s or self.crop_size > min(self.width, self.height)):
            raise VideoditError(f"--crop-size {self.crop_size}: must be a multiple of {s} and fit the frame")
        if self.width % s or self.height % s:
            raise VideoditError(f"--width/--height {self.width}x{self.height}: must be multiples of {s}")
        if self.crop_focus and not self.crop_size:
            raise VideoditError("--crop-focus places --crop-size windows: give --crop-size too")
        if self.edge_weight < 0:
            raise VideoditError(f"--edge-weight {self.edge_weight}: must be >= 0")
        if self.steps < 0 or self.batch_size < 1 or (self.steps == 0 and not self.init):
            raise VideoditError("--steps must be >= 1 (or 0 with --init: only measure the latent statistics) "
                                "and --batch-size >= 1")
        if self.per_channel_latents and self.decoder_only:
            raise VideoditError("--per-channel-latents changes the latents a DiT sees; --decoder-only keeps "
                                "--init's statistics (measure them with --init BUNDLE --steps 0 --per-channel-latents)")
        if self.anchor_weight < 0:
            raise VideoditError(f"--anchor-weight {self.anchor_weight}: must be >= 0")
        if self.encoder_only:
            if not self.init:
                raise VideoditError("--encoder-only needs --init BUNDLE: the decoder it keeps must come from somewhere")
            for flag, bad in (("--decoder-only", self.decoder_only), ("--decoder-channels", self.decoder_channels),
                              ("--per-channel-latents", self.per_channel_latents),
                              ("--adv-weight", self.adv_weight), ("--latent-noise", self.latent_noise)):
                if bad:
                    raise VideoditError(f"--encoder-only freezes --init's decoder and keeps its latent statistics: "
                                        f"{flag} does not go with it")
        if self.anchor_weight and (not self.init or self.decoder_only or self.per_channel_latents):
            raise VideoditError("--anchor-weight holds the encoder near --init's latents: it needs --init and "
                                "goes with neither --decoder-only (the encoder is frozen anyway) nor "
                                "--per-channel-latents (the statistics stay --init's)")
        if self.adv_weight < 0 or self.adv_start < 0:
            raise VideoditError(f"--adv-weight {self.adv_weight} / --adv-start {self.adv_start}: must be >= 0")
        if self.latent_noise < 0 or (self.latent_noise and not self.decoder_only):
            raise VideoditError(f"--latent-noise {self.latent_noise}: must be >= 0, and goes with --decoder-only "
                                "(the noise is in --init's normalised latent units, which only a frozen encoder keeps)")
        for flag, value in (("--decoder-channels", self.decoder_channels), ("--encoder-channels", self.encoder_channels)):
            if value and value < 8:
                raise VideoditError(f"{flag} {value}: must be >= 8 (or 0: unchanged)")
        if (self.encoder_channels or self.encoder_shortcut) and self.decoder_only:
            raise VideoditError("--encoder-channels / --encoder-shortcut change the encoder, which "
                                "--decoder-only freezes: drop one of them")
        if self.decoder_only and not self.init:
            raise VideoditError("--decoder-only needs --init BUNDLE: the encoder it keeps must come from somewhere")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

StreamFactory = Callable[[int], Iterable[dict]]  # start index -> stream of {"video": (3, F, H, W)}


def synthworld_stream(cfg: VAETrainConfig, split: str = "train") -> StreamFactory:
    from videodit.data.synthworld import SynthWorldConfig, SynthWorldStream

    def make(start: int):
        return SynthWorldStream(SynthWorldConfig(split=split, seed=cfg.seed, sizes=(f"{cfg.width}x{cfg.height}",),
                                                 frames=(cfg.frames,), start=start))
    return make


def _batches(make_stream: StreamFactory, start: int, cfg: VAETrainConfig):
    from torch.utils.data import DataLoader

    loader = DataLoader(make_stream(start), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        persistent_workers=False, drop_last=True)
    for batch in loader:
        yield batch["video"]


def _crop(x: torch.Tensor, cfg: VAETrainConfig, gen: torch.Generator, stride: int = 1) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 3, crop_frames, crop, crop): one random window per batch, or with
    ``cfg.crop_focus`` one window per clip where its edges and motion are (see focus_windows)."""
    import torch

    _, _, Fr, H, W = x.shape
    if cfg.crop_frames and cfg.crop_frames < Fr:
        t0 = int(torch.randint(0, Fr - cfg.crop_frames + 1, (1,), generator=gen))
        x = x[:, :, t0:t0 + cfg.crop_frames]
    if cfg.crop_size and (cfg.crop_size < H or cfg.crop_size < W):
        if cfg.crop_focus:
            c = cfg.crop_size
            corners = focus_windows(x, c, stride, gen)
            return torch.stack([clip[..., y0:y0 + c, x0:x0 + c] for clip, (y0, x0) in zip(x, corners)])
        y0 = int(torch.randint(0, H - cfg.crop_size + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, W - cfg.crop_size + 1, (1,), generator=gen))
        x = x[..., y0:y0 + cfg.crop_size, x0:x0 + cfg.crop_size]
    return x


# ---------------------------------------------------------------------------------------------
# Loss, schedule, metrics
# ---------------------------------------------------------------------------------------------

EDGE_THRESHOLD = 0.1  # a neighbour differing by more than this (in [-1, 1] units, any channel) marks an edge


def edge_mask(x: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 1, F, H, W) float mask, 1 where a pixel differs from its left, upper
    or previous-frame neighbour (on either side of the step), dilated by 3x3 in space: the
    outlines and moving parts, which hold a few % of SynthWorld's pixels and all of its shapes."""
    import torch
    import torch.nn.functional as F

    d = torch.zeros_like(x[:, :1])
    for dim in (2, 3, 4):
        if x.shape[dim] < 2:
            continue
        n = x.shape[dim] - 1
        hit = ((x.narrow(dim, 1, n) - x.narrow(dim, 0, n)).abs().amax(1, keepdim=True) > threshold).to(x.dtype)
        zero = torch.zeros_like(hit.narrow(dim, 0, 1))
        # a step between pixels i and i + 1 marks both of them
        d = torch.maximum(d, torch.maximum(torch.cat([hit, zero], dim), torch.cat([zero, hit], dim)))
    return F.max_pool3d(d, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def focus_windows(x: torch.Tensor, size: int, stride: int, gen: torch.Generator) -> list[tuple[int, int]]:
    """For each clip of (B, 3, F, H, W), the top-left corner (y0, x0) of a size x size window,
    on the ``stride`` grid, drawn with probability proportional to the number of edge-mask pixels
    (outlines and motion, over all frames) inside it, plus one pixel's worth so that windows on
    plain background stay possible. A window on the stride grid encodes to exactly the latents
    of the whole frame away from its border."""
    import torch
    import torch.nn.functional as F

    mass = edge_mask(x).sum(2)  # (B, 1, H, W): how many frames each pixel is an edge or moves
    window = F.avg_pool2d(mass, kernel_size=size, stride=stride) * size * size  # (B, 1, ny, nx)
    nx = window.shape[-1]
    weights = (window + 1.0).flatten(1).float().cpu()  # gen is a CPU generator
    pick = torch.multinomial(weights, 1, generator=gen).squeeze(1)
    return [(int(k) // nx * stride, int(k) % nx * stride) for k in pick]


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float, mse_weight: float, edge_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    import torch.nn.functional as F

    err = recon - x
    w = 1.0
    if edge_weight:
        w = 1.0 + edge_weight * edge_mask(x.detach())
        w = w / w.mean()
    l1 = (w * err.abs()).mean()
    mse = (w * err.pow(2)).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    psnr = 10 * math.log10(4.0 / max(F.mse_loss(recon.detach().clamp(-1, 1), x).item(), 1e-12))  # peak-to-peak 2
    return l1 + mse_weight * mse + kl_weight * kl, {"l1": l1.item(), "kl": kl.item(), "psnr": psnr}


def lr_at(step: int, cfg: VAETrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warmup, then cosine from lr to lr/10 over the steps (or the time budget, if that
    is further along)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_fraction)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def latent_stats(vae: VideoVAE, batches: Iterable[torch.Tensor], per_channel: bool = False):
    """Shift and scale so that normalize(z) has mean 0 and std 1 over the given clips: two floats,
    or with ``per_channel`` two tuples with one value per latent channel."""
    import torch

    with torch.no_grad():
        zs = [vae.encode(x).transpose(0, 1).flatten(1) for x in batches]  # (C, B * T * h * w) each
    z = torch.cat(zs, dim=1)
    if per_channel:
        return tuple(z.mean(1).tolist()), tuple((1.0 / z.std(1)).tolist())
    return z.mean().item(), 1.0 / z.std().item()


# ---------------------------------------------------------------------------------------------
# Divergence guard
# ---------------------------------------------------------------------------------------------

GUARD_SMOOTHING = 0.98      # EMA of the loss that the guard watches (about 50 steps)
GUARD_FACTOR = 3.0          # smoothed loss at this multiple of its best so far = diverged
GUARD_HEALTHY = 1.5         # snapshots are taken only while the smoothed loss is under this multiple
GUARD_SNAPSHOT_EVERY = 200  # steps between in-memory snapshots


class DivergenceGuard:
    """Rolls back to the last healthy in-memory snapshot (model, EMA, optimizer) and halves the
    learning rate when the smoothed loss blows up. Without normalisation layers a too-high lr can
    kill the network for good: on a GPU, lr 1e-3 at batch 16 diverged at step ~600 and the
    posterior collapsed (KL -> 0) for the remaining 3300 steps."""

    def __init__(self, warmup_steps: int, state: dict | None = None):
        state = state or {}
        self.warmup_steps = warmup_steps
        self.lr_scale: float = state.get("lr_scale", 1.0)
        self.smoothed: float | None = state.get("smoothed")
        self.best: float | None = state.get("best")
        self.snapshot: dict | None = None

    def state(self) -> dict:
        return {"lr_scale": self.lr_scale, "smoothed": self.smoothed, "best": self.best}

    def observe(self, step: int, loss: float, modules: dict) -> str | None:
        """Call after each optimizer step with the step count and the (rank-averaged) loss;
        ``modules`` maps names to the modules / optimizer to snapshot. Returns a message when it
        rolled back."""
        self.smoothed = loss if self.smoothed is None else (
            GUARD_SMOOTHING * self.smoothed + (1 - GUARD_SMOOTHING) * loss)
        if step < self.warmup_steps:
            return None
        self.best = self.smoothed if self.best is None else min(self.best, self.smoothed)
        if self.smoothed > GUARD_FACTOR * self.best and self.snapshot is not None:
            for name, m in modules.items():
                m.load_state_dict(copy.deepcopy(self.snapshot["states"][name]))
            self.lr_scale *= 0.5
            message = (f"loss diverged at step {step} (smoothed {self.smoothed:.4f}, best {self.best:.4f}): "
                       f"restored the weights of step {self.snapshot['step']}, lr x{self.lr_scale:g}")
            self.smoothed = self.snapshot["smoothed"]
            return message
        if step % GUARD_SNAPSHOT_EVERY == 0 and self.smoothed < GUARD_HEALTHY * self.best:
            self.snapshot = {"step": step, "smoothed": self.smoothed,
                             "states": {name: copy.deepcopy(m.state_dict()) for name, m in modules.items()}}
        return None


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------

def train_vae(cfg: VAETrainConfig, make_stream: StreamFactory | None = None,
              vae_cfg: VAEConfig | None = None, progress: bool = True) -> Path:
    """Train (or resume) and return the path of the saved bundle. ``make_stream`` defaults to
    SynthWorld; ``vae_cfg`` overrides the preset (tests use tiny ones)."""
    from videodit.train import cleanup_distributed, setup_distributed
    from videodit.vae import PRESETS

    cfg.check()
    dist = setup_distributed(cfg.device)
    try:
        return _train(cfg, make_stream or synthworld_stream(cfg), vae_cfg or PRESETS[cfg.preset], dist, progress)
    finally:
        cleanup_distributed()


def _train(cfg: VAETrainConfig, make_stream: StreamFactory, vae_cfg: VAEConfig, dist: DistInfo,
           progress: bool) -> Path:
    import torch
    from tqdm import tqdm

    from videodit.train import ema_update
    from videodit.train.checkpoint import load_checkpoint, save_checkpoint
    from videodit.train.discriminator import adaptive_weight, d_hinge_loss, g_loss
    from videodit.vae import VideoVAE, with_latent_stats

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed clip shapes: let cuDNN pick the fastest conv3d
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    device = dist.device

    if cfg.init:  # --init's latent statistics: --latent-noise is measured in them, and
        # --decoder-only / --encoder-only / --anchor-weight keep them (otherwise they are measured again at the end)
        from videodit.train.checkpoint import read_bundle_config
        from videodit.vae import VAEConfig

        init_cfg = read_bundle_config(VAEConfig, cfg.init, "VAE")
        vae_cfg = dataclasses.replace(
            vae_cfg, latent_shift=init_cfg.latent_shift, latent_scale=init_cfg.latent_scale,
            latent_channel_shift=init_cfg.latent_channel_shift, latent_channel_scale=init_cfg.latent_channel_scale,
            base_channels=init_cfg.base_channels, decoder_base_channels=init_cfg.decoder_channels,
            encoder_shortcut=init_cfg.encoder_shortcut)
        for flag, value, have, part in (("--decoder-channels", cfg.decoder_channels, init_cfg.decoder_channels, "decoder"),
                                        ("--encoder-channels", cfg.encoder_channels, init_cfg.base_channels, "encoder")):
            if value and value < have:
                raise VideoditError(f"{flag} {value}: --init's {part} already has {have}; "
                                    f"a {part} can be widened, not narrowed")
    if cfg.encoder_channels:  # without --init the decoder follows unless --decoder-channels is given
        vae_cfg = dataclasses.replace(vae_cfg, base_channels=cfg.encoder_channels)
    if cfg.decoder_channels:
        vae_cfg = dataclasses.replace(vae_cfg, decoder_base_channels=cfg.decoder_channels)
    if cfg.encoder_shortcut:
        vae_cfg = dataclasses.replace(vae_cfg, encoder_shortcut=True)
    torch.manual_seed(cfg.seed)
    model = VideoVAE(vae_cfg).to(device)
    if cfg.decoder_only:
        model.encoder.requires_grad_(False)  # no gradient, no optimizer state: its weights never move
    if cfg.encoder_only:
        model.decoder.requires_grad_(False)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.99),
                            weight_decay=cfg.weight_decay)
    run_config = {"train": to_dict(cfg), "model": to_dict(vae_cfg)}
    disc = disc_opt = None
    if cfg.adv_weight:
        from videodit.train.discriminator import PatchDiscriminator3D

        disc = PatchDiscriminator3D().to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=0.0)

    step, data_position = 0, 0
    guard = DivergenceGuard(cfg.warmup_steps)
    if cfg.resume and ckpt_path.exists():
        payload = load_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, model=model, optimizer=opt, ema=ema,
                                  model_config=to_dict(vae_cfg))
        step, data_position = payload["step"], payload["data_position"]
        guard = DivergenceGuard(cfg.warmup_steps, payload["extra"].get("guard"))
        if disc is not None and "disc" in payload["extra"]:
            disc.load_state_dict(payload["extra"]["disc"])
            disc_opt.load_state_dict(payload["extra"]["disc_opt"])
        if dist.is_main:
            print(f"resumed from {ckpt_path} at step {step}")
    elif cfg.init:
        from videodit.train.checkpoint import load_safetensors_checked
        from videodit.vae import widen

        src = VideoVAE(dataclasses.replace(vae_cfg, base_channels=init_cfg.base_channels,
                                           decoder_base_channels=init_cfg.decoder_base_channels,
                                           encoder_shortcut=init_cfg.encoder_shortcut))
        load_safetensors_checked(src, Path(cfg.init) / "model.safetensors")
        widen(src.encoder, model.encoder)  # plain copies where the widths agree
        widen(src.decoder, model.decoder)
        ema.load_state_dict(model.state_dict())
        if dist.is_main:
            wider = "".join(f", {part} widened {a} -> {b} channels" for part, a, b in (
                ("encoder", init_cfg.base_channels, vae_cfg.base_channels),
                ("decoder", init_cfg.decoder_channels, vae_cfg.decoder_channels)) if a != b)
            if vae_cfg.encoder_shortcut and not init_cfg.encoder_shortcut:
                wider += ", encoder given a pixel shortcut (zero at the start)"
            print(f"initialised from {cfg.init}{wider}")

    anchor = None
    if cfg.anchor_weight:  # the frozen --init VAE whose latents the encoder must keep
        anchor = VideoVAE.from_pretrained(cfg.init, device=device).eval().requires_grad_(False)

    train_model = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        train_disc = None if disc is None else DistributedDataParallel(
            disc, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_disc = disc

    log_file = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        new_log = not (out / "log.csv").exists() or step == 0
        log_file = open(out / "log.csv", "w" if new_log else "a", newline="")
        log = csv.writer(log_file)
        if new_log:
            log.writerow(["step", "loss", "l1", "kl", "psnr", "lr", "it_per_s", "elapsed_s", "d_loss", "adv_scale"])

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and dist.is_main), desc="train-vae",
               dynamic_ncols=True)
    t_start = t_last_save = time.time()
    t_log, step_log = t_start, step
    batches = _batches(make_stream, data_position, cfg)
    samples_per_step = cfg.batch_size * dist.world_size

    def checkpoint():
        extra = {"guard": guard.state()}
        if disc is not None:
            extra.update(disc=disc.state_dict(), disc_opt=disc_opt.state_dict())
        save_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, step=step, data_position=data_position,
                        config=run_config, model=model, optimizer=opt, ema=ema, extra=extra)

    guarded = {"model": model, "ema": ema, "optimizer": opt}
    if disc is not None:
        guarded.update(disc=disc, disc_optimizer=disc_opt)

    def time_fraction() -> float:
        return (time.time() - t_start) / (60 * cfg.max_minutes) if cfg.max_minutes else 0.0

    while step < cfg.steps and time_fraction() < 1.0:
        x = next(batches).to(device, non_blocking=True)
        gen_cpu = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        x = _crop(x, cfg, gen_cpu, vae_cfg.spatial_stride)
        gen = torch.Generator(device).manual_seed(cfg.seed * 1_000_003 + step + dist.rank * 7919)
        lr = lr_at(step, cfg, time_fraction()) * guard.lr_scale
        for group in opt.param_groups + (disc_opt.param_groups if disc_opt is not None else []):
            group["lr"] = lr

        sigma = None
        if cfg.latent_noise:
            sigma = cfg.latent_noise * torch.rand(x.shape[0], generator=gen, device=device)
        recon, mean, logvar = train_model(x, gen, sigma)
        loss, parts = vae_loss(x, recon, mean, logvar, cfg.kl_weight, cfg.mse_weight, cfg.edge_weight)
        if anchor is not None:
            with torch.no_grad():
                old_mean = anchor.normalize(anchor.encode_moments(x)[0])
            drift = (anchor.normalize(mean.float()) - old_mean.float()).pow(2).mean()
            loss = loss + cfg.anchor_weight * drift
            parts["drift"] = drift.item()
        rec_loss = loss.detach()
        if disc is not None:
            recon32 = recon.float()
            # real and reconstructed clips in one forward: DistributedDataParallel wants one per backward
            real_logits, fake_logits = train_disc(torch.cat([x, recon32.detach()])).chunk(2)
            d_loss = d_hinge_loss(real_logits, fake_logits)
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
            disc_opt.step()
            parts["d_loss"] = d_loss.item()
            if step >= cfg.adv_start:
                disc.requires_grad_(False)  # the decoder's step must not touch the discriminator
                adv = g_loss(disc(recon32))
                scale = cfg.adv_weight * adaptive_weight(loss, adv, model.decoder.conv_out.conv.weight)
                loss = loss + scale * adv
                disc.requires_grad_(True)
                parts["adv_scale"] = scale.item()
        if not math.isfinite(parts["l1"]):
            raise VideoditError(f"train-vae: the loss became {parts['l1']} at step {step}; "
                                f"resume from {ckpt_path} with a lower --lr (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        # EMA warms up (decay ramps toward ema_decay) so early bundles are not dominated by init.
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        step += 1
        data_position += samples_per_step
        loss_value = rec_loss  # the guard watches the reconstruction loss (the adversarial part may go negative)
        if dist.world_size > 1:  # every rank must take the same rollback decision
            torch.distributed.all_reduce(loss_value)
            loss_value /= dist.world_size
        message = guard.observe(step, loss_value.item(), guarded)
        if message and dist.is_main:
            bar.write(message)

        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{parts['psnr']:.1f}",
                        **({"drift": f"{parts['drift']:.4f}"} if "drift" in parts else {}))
        if dist.is_main and (step % cfg.log_every == 0 or step == cfg.steps or time_fraction() >= 1.0):
            now = time.time()
            log.writerow([step, f"{loss.item():.6f}", f"{parts['l1']:.6f}", f"{parts['kl']:.4f}",
                          f"{parts['psnr']:.3f}", f"{lr:.3e}", f"{(step - step_log) / (now - t_log):.3f}",
                          f"{now - t_start:.1f}", f"{parts['d_loss']:.4f}" if "d_loss" in parts else "",
                          f"{parts['adv_scale']:.4g}" if "adv_scale" in parts else ""])
            log_file.flush()
            t_log, step_log = now, step
        if dist.is_main and (step % cfg.save_every == 0 or time.time() - t_last_save > 60 * cfg.save_minutes):
            checkpoint()
            t_last_save = time.time()
    bar.close()

    bundle = out / "bundle"
    if dist.is_main:
        checkpoint()
        log_file.close()
        stats_batches = (b.to(device) for _, b in zip(range(cfg.stats_batches), _batches(make_stream, 0, cfg)))
        if cfg.decoder_only or cfg.encoder_only or cfg.anchor_weight:  # --init's latent space and statistics
            final_cfg = vae_cfg
        else:
            # per channel when asked, or when --init's VAE already measures them per channel
            per_channel = cfg.per_channel_latents or bool(vae_cfg.latent_channel_scale)
            final_cfg = with_latent_stats(vae_cfg, *latent_stats(ema, stats_batches, per_channel=per_channel))
        final = VideoVAE(final_cfg)
        final.load_state_dict(ema.state_dict())
        final.save_pretrained(bundle)
    return bundle


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out SynthWorld clips
# ---------------------------------------------------------------------------------------------

EVAL_METRICS = ("color", "shape", "count")  # evaluator metrics a reconstruction must keep


def evaluate_reconstruction(vae: VideoVAE, n: int = 64, *, seed: int = 0, width: int = 64, height: int = 64,
                            frames: int = 17, batch_size: int = 8, progress: bool = False,
                            latent_noise: float = 0.0, refine: int = 0) -> dict:
    """Reconstruct ``n`` eval-split clips and return mean PSNR (dB) / SSIM, and the evaluator's
    colour / shape / count accuracy on the reconstructions and on the originals (for reference).
    ``latent_noise`` > 0 adds Gaussian noise of that std (normalised latent units, fixed seed) to
    the latents before decoding: how well the decoder copes with a DiT's imperfect latents.
    ``refine`` > 0: that many steps of encode-time refinement (VideoVAE.refine) after encoding."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from videodit.eval.metrics import score_video
    from videodit.reconstruct import ssim
    from videodit.video import frames_to_tensor, psnr, tensor_to_frames
    from videodit.world import make_sample

    device = next(vae.parameters()).device
    psnrs, ssims = [], []
    passed = {f"{w}_{m}": [] for w in ("recon", "truth") for m in EVAL_METRICS}
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress):
        samples = [make_sample("eval", i, seed, width=width, height=height, frames=frames)
                   for i in range(start, min(n, start + batch_size))]
        clips = np.stack([s.frames for s in samples])  # (B, F, H, W, 3)
        with torch.no_grad():
            z = vae.encode(frames_to_tensor(clips).to(device), refine=refine)
            if latent_noise:
                g = torch.Generator().manual_seed(seed * 1_000_003 + start)
                z = vae.denormalize(vae.normalize(z) + latent_noise * torch.randn(z.shape, generator=g).to(z))
            recon = vae.decode(z)
        recon = tensor_to_frames(recon.clamp(-1, 1).cpu())
        for s, clip, out in zip(samples, clips, recon):
            psnrs.append(psnr(clip, out))
            ssims.append(ssim(clip, out))
            for which, video in (("recon", out), ("truth", clip)):
                result = score_video(video, s.caption, fps=s.truth["fps"])
                for m in EVAL_METRICS:
                    if m in result.metrics and result.metrics[m].passed is not None:
                        passed[f"{which}_{m}"].append(bool(result.metrics[m].passed))
    report = {"clips": n, "psnr": float(np.mean(psnrs)), "psnr_min": float(np.min(psnrs)),
              "ssim": float(np.mean(ssims)), "ssim_min": float(np.min(ssims))}
    report.update({k: float(np.mean(v)) if v else None for k, v in passed.items()})
    return report
