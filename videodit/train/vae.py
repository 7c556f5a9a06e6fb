"""Train the causal video VAE (``videodit train-vae``): the VAE's step, plugged into the one
training loop (videodit/train/loop.py: resume, AdamW, schedule, EMA, guard, logs, checkpoints).

Loss: L1 + mse_weight * MSE reconstruction (means over pixels, in [-1, 1] units) + kl_weight *
KL (mean over latent elements) against N(0, 1). L1 keeps flat colours and edges sharp; MSE is what
PSNR measures and weighs the large errors on small objects (a few % of the pixels) more. Optional:
edge weighting, an adversarial term (videodit/train/discriminator.py), an anchor that holds the
latents near --init's. Fine-tuning (``--finetune decoder|encoder``) freezes the other half.

Every random draw of a step (the crop, the posterior noise) comes from the loop's generator for
(seed, step), and the data stream restarts at the step's sample, so a resumed run is exact.
Under torchrun --batch-size is the global batch (a multiple of the number of processes), each
rank reading its slice; every rank draws the crop, the --crop-focus windows, the posterior noise
and --latent-noise for all rows of the global batch and keeps its own (TrainingVAE), so W
processes train on the same pixels with the same draws as one process (docs/SCALING.md).

Outputs under ``out``: checkpoint.pt (+ checkpoint.prev.pt, each with a .sha256), log.csv, and
bundle/ (EMA weights + config.json with the measured latent normalisation) at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from videodit.bundle import load_safetensors_checked, read_bundle_config
from videodit.config import check_ranges, to_dict
from videodit.data.synthworld import SynthWorldConfig, SynthWorldStream
from videodit.errors import VideoditError
from videodit.train import distributed, loop
from videodit.train.discriminator import PatchDiscriminator3D, adaptive_weight, d_hinge_loss, g_loss
from videodit.vae import PRESETS, VAEConfig, VideoVAE, widen, with_latent_stats

CHECKPOINT_KIND = "vae"
PRESET_NAMES = ("tiny", "s4c8", "s8c16", "gpu")  # keys of videodit.vae.PRESETS (checked in check())


FINETUNE = ("full", "decoder", "encoder")  # --finetune: which half of the VAE learns


@dataclass(frozen=True)
class VAETrainConfig:
    preset: str = field(default="s4c8", metadata={
        "help": "VAE size preset", "choices": PRESET_NAMES, "group": "run"})
    out: str = field(default="runs/vae", metadata={
        "help": "output folder (checkpoint.pt, log.csv, bundle/)", "group": "output/checkpoints"})
    steps: int = field(default=4000, metadata={
        "help": "optimizer steps (0 with --init: only measure the latent statistics)", "min": 0, "group": "run"})
    max_minutes: float = field(default=0.0, metadata={
        "help": "also stop after this many minutes of training (0 = no limit); the lr schedule then "
                "follows whichever of steps / time runs out first, so the run is not bit-reproducible",
        "min": 0, "group": "run"})
    batch_size: int = field(default=8, metadata={
        "help": "clips per step, in total over all processes (a multiple of their number; each reads its slice)",
        "min": 1, "group": "optimisation"})
    lr: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate", "min": 0, "group": "optimisation"})
    warmup_steps: int = field(default=100, metadata={
        "help": "linear warmup, then cosine decay to lr/10", "min": 0, "group": "optimisation"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0, "group": "optimisation"})
    kl_weight: float = field(default=1e-5, metadata={
        "help": "weight of the KL term (mean over latent elements)", "min": 0, "group": "loss"})
    mse_weight: float = field(default=1.0, metadata={
        "help": "weight of an MSE term beside L1: it weighs the large errors on small objects more",
        "min": 0, "group": "loss"})
    edge_weight: float = field(default=0.0, metadata={
        "help": "extra weight of the pixels at edges and where the video moves (a 3x3-dilated mask of "
                "pixels that differ from their left, upper or previous-frame neighbour): each counts "
                "1 + W times in L1 and MSE (normalised by the mean weight); 0 = plain means",
        "min": 0, "group": "loss"})
    adv_weight: float = field(default=0.0, metadata={
        "help": "add an adversarial loss from a 3D patch discriminator (videodit/train/discriminator.py) "
                "against blurred, rounded edges: its gradient at the decoder's last layer is scaled to this "
                "fraction of the reconstruction loss's there (adaptive weight). 0 = off",
        "min": 0, "group": "loss"})
    adv_start: int = field(default=200, metadata={
        "help": "with --adv-weight: steps in which only the discriminator learns before its loss reaches "
                "the decoder (a decoder from --init is already good; the discriminator must catch up first)",
        "min": 0, "group": "loss"})
    ema_decay: float = field(default=0.999, metadata={
        "help": "EMA decay of the weights saved in the bundle", "min": 0, "max": 1, "group": "optimisation"})
    grad_clip: float = field(default=1.0, metadata={
        "help": "max gradient norm", "min": 0, "min_exclusive": True, "group": "optimisation"})
    width: int = field(default=64, metadata={"help": "SynthWorld clip width", "min": 1, "group": "data"})
    height: int = field(default=64, metadata={"help": "SynthWorld clip height", "min": 1, "group": "data"})
    frames: int = field(default=17, metadata={"help": "SynthWorld clip frames (4k+1)", "min": 1, "group": "data"})
    crop_size: int = field(default=0, metadata={
        "help": "train on random square crops of this size (0 = whole frames); the VAE is convolutional",
        "min": 0, "group": "data"})
    crop_frames: int = field(default=0, metadata={
        "help": "train on random 4k+1-frame windows (0 = whole clips)", "min": 0, "group": "data"})
    crop_focus: bool = field(default=False, metadata={
        "help": "with --crop-size: give each clip its own crop window, drawn in proportion to how many outline "
                "and moving pixels it holds (the edge mask of --edge-weight) and aligned to the spatial stride, "
                "so that small crops land on the objects instead of the empty background", "group": "data"})
    seed: int = field(default=0, metadata={
        "help": "seed for init, crops, posterior noise and data", "min": 0, "group": "run"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda, cuda:1 ...", "group": "run"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)", "min": 0, "group": "run"})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader workers rendering SynthWorld", "min": 0, "group": "run"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps", "min": 1, "group": "output/checkpoints"})
    save_minutes: float = field(default=5.0, metadata={
        "help": "also checkpoint when this many minutes passed", "min": 0, "group": "output/checkpoints"})
    log_every: int = field(default=10, metadata={"help": "CSV log every N steps", "min": 1, "group": "output/checkpoints"})
    resume: bool = field(default=True, metadata={
        "help": "resume from OUT/checkpoint.pt when it exists", "group": "output/checkpoints"})
    init: str = field(default="", metadata={
        "help": "start from this VAE bundle's weights (model and EMA; e.g. the bundled VAE, to continue its "
                "training on a fresh machine) instead of a random init; a checkpoint to resume wins",
        "path": "dir", "group": "fine-tuning"})
    decoder_channels: int = field(default=0, metadata={
        "help": "the decoder's channels at full resolution (0 = the preset's, or --init's); with --init, a "
                "wider decoder starts as an exact copy of --init's (widen in videodit/vae.py: new channels "
                "start silent), so that with --finetune decoder the latents stay --init's and a DiT trained "
                "on them stays valid while the decoder gains capacity", "min": 0, "group": "fine-tuning"})
    encoder_channels: int = field(default=0, metadata={
        "help": "the encoder's channels at full resolution (0 = the preset's, or --init's); with --init, a "
                "wider encoder starts as an exact copy of --init's, like --decoder-channels. Training it "
                "changes the latents: a DiT must then be trained on the new ones", "min": 0, "group": "fine-tuning"})
    stats_batches: int = field(default=8, metadata={
        "help": "batches used to measure the latent scale/shift", "min": 1, "group": "output/checkpoints"})
    finetune: str = field(default="full", metadata={
        "help": "which part learns: full (encoder and decoder); decoder (from --init: the encoder, hence "
                "the latent space and its shift/scale, stay exactly as --init has them, so a DiT trained "
                "on those latents stays valid); encoder (from --init, against --init's frozen decoder: the "
                "encoder learns to find the latents that decoder draws best, which are near the ones it "
                "gives now; the decoder, hence everything a DiT's samples decode to, and the latent "
                "statistics stay --init's; only encoded inputs (image-to-video, extend, edit) change)",
        "choices": FINETUNE, "group": "fine-tuning"})
    encoder_shortcut: bool = field(default=False, metadata={
        "help": "give the encoder a pixel shortcut (PixelShortcut in videodit/vae.py: each latent cell's raw "
                "pixels, linearly to the latents), zero at the start, so that with --init the VAE starts as "
                "--init's exactly; kept when --init's VAE already has one", "group": "fine-tuning"})
    anchor_weight: float = field(default=0.0, metadata={
        "help": "fine-tune encoder and decoder from --init while this weight times the mean squared drift "
                "of the posterior means from --init's (in the normalised units a DiT sees) holds the latent "
                "space in place, so a DiT trained on --init's latents stays usable; keeps --init's latent "
                "statistics. 0 = off", "min": 0, "group": "fine-tuning"})
    latent_noise: float = field(default=0.0, metadata={
        "help": "with --finetune decoder: add Gaussian noise of std U(0, S) per clip, in the normalised latent "
                "units a DiT sees, before decoding, so the decoder learns to turn a DiT's imperfect latents "
                "into clean frames (the target stays the clean clip). 0 = off", "min": 0, "group": "fine-tuning"})
    per_channel_latents: bool = field(default=False, metadata={
        "help": "measure the latent shift/scale per channel (each channel to mean 0, std 1) instead of one "
                "for all channels; with --init BUNDLE --steps 0 only the statistics are measured; on by itself when --init's VAE "
                "has per-channel statistics. A DiT must be trained on the latents of the VAE it is used with",
        "group": "output/checkpoints"})

    parallel: str = field(default="ddp", metadata={
        "help": "under torchrun: ddp (a full copy of the model per process) or fsdp (FSDP2: encoder, decoder "
                "and root sharded); one process trains the plain model either way",
        "choices": distributed.PARALLEL, "group": "scale-out"})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute the encoder's and decoder's activations in the backward pass (less memory)",
        "group": "scale-out"})
    dist_timeout: float = field(default=10.0, metadata={
        "help": "minutes a collective may wait for another process (one died or hangs) before the job fails "
                "(rerun the command to resume)", "min": 0, "min_exclusive": True, "group": "scale-out"})

    @property
    def bf16(self) -> bool:  # the loop's mixed-precision policy: the VAE trains with fp32 weights
        return False

    def check(self) -> None:
        check_ranges(self)
        if self.parallel == "fsdp" and self.adv_weight:
            raise VideoditError("--adv-weight reads the decoder's last weight for its adaptive scale: use "
                                "--parallel ddp")
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
        if self.steps == 0 and not self.init:
            raise VideoditError("--steps 0 only measures the latent statistics of --init BUNDLE: give --init "
                                "or --steps >= 1")
        for flag, value in (("--decoder-channels", self.decoder_channels), ("--encoder-channels", self.encoder_channels)):
            if value and value < 8:
                raise VideoditError(f"{flag} {value}: must be >= 8 (or 0: unchanged)")
        if self.finetune != "full" and not self.init:
            kept = "encoder" if self.finetune == "decoder" else "decoder"
            raise VideoditError(f"--finetune {self.finetune} needs --init BUNDLE: the {kept} it keeps must come "
                                "from somewhere")
        # What each --finetune keeps as --init has it, and the flags that would change it.
        keeps = {"decoder": "freezes the encoder and keeps --init's latent space and statistics",
                 "encoder": "freezes --init's decoder and keeps its latent statistics"}
        clashes = {
            "decoder": (("--encoder-channels", self.encoder_channels), ("--encoder-shortcut", self.encoder_shortcut),
                        ("--per-channel-latents", self.per_channel_latents), ("--anchor-weight", self.anchor_weight)),
            "encoder": (("--decoder-channels", self.decoder_channels), ("--per-channel-latents", self.per_channel_latents),
                        ("--adv-weight", self.adv_weight), ("--latent-noise", self.latent_noise)),
        }
        for flag, given in clashes.get(self.finetune, ()):
            if given:
                raise VideoditError(f"--finetune {self.finetune} {keeps[self.finetune]}: {flag} does not go with it")
        if self.latent_noise and self.finetune != "decoder":
            raise VideoditError("--latent-noise goes with --finetune decoder: the noise is in --init's normalised "
                                "latent units, which only a frozen encoder keeps")
        if self.anchor_weight and (not self.init or self.per_channel_latents):
            raise VideoditError("--anchor-weight holds the encoder near --init's latents: it needs --init and "
                                "does not go with --per-channel-latents (the statistics stay --init's)")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

# (start index, part) -> stream of {"video": (3, F, H, W)}; with part = (rank, ranks) the stream
# holds this rank's slice of every global batch of --batch-size samples (SynthWorldStream's part).
StreamFactory = Callable[[int, tuple[int, int] | None], Iterable[dict]]


def synthworld_stream(cfg: VAETrainConfig, split: str = "train") -> StreamFactory:
    def make(start: int, part: tuple[int, int] | None = None):
        config = SynthWorldConfig(split=split, seed=cfg.seed, sizes=(f"{cfg.width}x{cfg.height}",),
                                  frames=(cfg.frames,), start=start)
        return SynthWorldStream(config, None if part is None else (*part, cfg.batch_size))
    return make


def _batches(make_stream: StreamFactory, start: int, cfg: VAETrainConfig, part: tuple[int, int] | None = None):
    """Batches of this rank's slice (``part``) of the global batches from sample ``start`` on."""
    size = cfg.batch_size if part is None else cfg.batch_size // part[1]
    loader = DataLoader(make_stream(start, part), batch_size=size, num_workers=cfg.num_workers,
                        persistent_workers=False, drop_last=True)
    for batch in loader:
        yield batch["video"]


def _crop(x: torch.Tensor, cfg: VAETrainConfig, gen: torch.Generator, stride: int = 1,
          rows: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 3, crop_frames, crop, crop): one random window per batch, or with
    ``cfg.crop_focus`` one window per clip where its edges and motion are (see focus_windows;
    ``rows`` as there)."""
    _, _, Fr, H, W = x.shape
    if cfg.crop_frames and cfg.crop_frames < Fr:
        t0 = int(torch.randint(0, Fr - cfg.crop_frames + 1, (1,), generator=gen))
        x = x[:, :, t0:t0 + cfg.crop_frames]
    if cfg.crop_size and (cfg.crop_size < H or cfg.crop_size < W):
        if cfg.crop_focus:
            c = cfg.crop_size
            corners = focus_windows(x, c, stride, gen, rows)
            return torch.stack([clip[..., y0:y0 + c, x0:x0 + c] for clip, (y0, x0) in zip(x, corners)])
        y0 = int(torch.randint(0, H - cfg.crop_size + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, W - cfg.crop_size + 1, (1,), generator=gen))
        x = x[..., y0:y0 + cfg.crop_size, x0:x0 + cfg.crop_size]
    return x


# ---------------------------------------------------------------------------------------------
# Loss and latent statistics
# ---------------------------------------------------------------------------------------------

EDGE_THRESHOLD = 0.1  # a neighbour differing by more than this (in [-1, 1] units, any channel) marks an edge


def edge_mask(x: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """(B, 3, F, H, W) -> (B, 1, F, H, W) float mask, 1 where a pixel differs from its left, upper
    or previous-frame neighbour (on either side of the step), dilated by 3x3 in space: the
    outlines and moving parts, which hold a few % of SynthWorld's pixels and all of its shapes."""
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


def focus_windows(x: torch.Tensor, size: int, stride: int, gen: torch.Generator,
                  rows: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """For each clip of (B, 3, F, H, W), the top-left corner (y0, x0) of a size x size window,
    on the ``stride`` grid, drawn with probability proportional to the number of edge-mask pixels
    (outlines and motion, over all frames) inside it, plus one pixel's worth so that windows on
    plain background stay possible. A window on the stride grid encodes to exactly the latents
    of the whole frame away from its border. ``rows`` = (first, n): the clips are rows first ..
    first + B of a global batch of n, and the draw is one uniform per row of the global batch
    (inverse CDF), so a clip's window does not depend on how the batch is split over processes."""
    B = x.shape[0]
    first, n = rows or (0, B)
    mass = edge_mask(x).sum(2)  # (B, 1, H, W): how many frames each pixel is an edge or moves
    window = F.avg_pool2d(mass, kernel_size=size, stride=stride) * size * size  # (B, 1, ny, nx)
    nx = window.shape[-1]
    cdf = (window + 1.0).flatten(1).double().cpu().cumsum(1)  # (B, ny * nx); gen is a CPU generator
    u = torch.rand(n, 1, generator=gen, dtype=torch.float64)[first:first + B]  # (B, 1)
    pick = torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(1).clamp_max(cdf.shape[1] - 1)  # (B,)
    return [(int(k) // nx * stride, int(k) % nx * stride) for k in pick]


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float, mse_weight: float, edge_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
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


def latent_stats(vae: VideoVAE, batches: Iterable[torch.Tensor], per_channel: bool = False):
    """Shift and scale so that normalize(z) has mean 0 and std 1 over the given clips: two floats,
    or with ``per_channel`` two tuples with one value per latent channel."""
    with torch.no_grad():
        zs = [vae.encode(x).transpose(0, 1).flatten(1) for x in batches]  # (C, B * T * h * w) each
    z = torch.cat(zs, dim=1)
    if per_channel:
        return tuple(z.mean(1).tolist()), tuple((1.0 / z.std(1)).tolist())
    return z.mean().item(), 1.0 / z.std().item()


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------

def rank_mean_logs(logs: dict[str, float], dist: loop.DistInfo) -> dict[str, float]:
    """The log values of the global batch: means over the (equal) slices of the ranks; PSNR from
    the mean of its MSE."""
    if dist.world_size == 1:
        return logs
    keys = sorted(logs)
    values = [10 ** (-logs[k] / 10) if k == "psnr" else logs[k] for k in keys]  # psnr -> mse / 4
    mean = loop.rank_mean(torch.tensor(values, dtype=torch.float64, device=dist.device), dist).tolist()
    return {k: -10 * math.log10(v) if k == "psnr" else v for k, v in zip(keys, mean)}


def resolve_vae_config(cfg: VAETrainConfig, vae_cfg: VAEConfig) -> tuple[VAEConfig, VAEConfig | None]:
    """The VAE to train: the preset (or ``vae_cfg``), with --init's widths and latent statistics
    (--latent-noise is measured in them; --finetune decoder|encoder and --anchor-weight keep them),
    widened by --encoder-channels / --decoder-channels. Returns it and --init's config."""
    init_cfg = None
    if cfg.init:
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
    return vae_cfg, init_cfg


class TrainingVAE(VideoVAE):
    """The VAE as the trainer runs it (same parameters, state dict and bundles as VideoVAE): its
    training pass draws the posterior noise, and with ``latent_noise`` the extra noise, for every
    row of a global batch of ``rows`` = (first, n) and keeps rows first .. first + B, so that the
    draws do not depend on how the batch is split over processes (VideoVAE.forward draws B rows)."""

    def forward(self, x: torch.Tensor, generator: torch.Generator, rows: tuple[int, int],
                latent_noise: torch.Tensor | None = None):
        first, n = rows
        mean, logvar = self.encode_moments(x)  # (B, c, T, h, w) each
        mine = slice(first, first + x.shape[0])

        def draw() -> torch.Tensor:  # (n, c, T, h, w) -> this rank's (B, c, T, h, w)
            return torch.randn((n, *mean.shape[1:]), generator=generator, device=mean.device, dtype=mean.dtype)[mine]

        z = mean + torch.exp(0.5 * logvar) * draw()
        if latent_noise is not None:  # (B,) stds in normalised units (see --latent-noise)
            _, scale = self._latent_stats(z)
            z = z + latent_noise.to(z.dtype).view(-1, *(1,) * (z.dim() - 1)) * draw() / scale
        # mean is a chunk of the encoder's output: FSDP2 warns about view outputs (in-place ops on
        # them would skip its backward hook), so return a copy.
        return self.decode(z), mean.clone(), logvar


class VAETask:
    """The VAE's part of a training run (videodit.train.loop.Task)."""

    kind = CHECKPOINT_KIND
    ema_warmup = 10  # EMA decay (1 + s) / (10 + s): early bundles are not dominated by the init
    compile_shapes = 0  # eager: --compile is the DiT's (videodit/train/dit.py)
    log_fields = ("l1", "kl", "psnr", "d_loss", "adv_scale", "drift")
    csv_logs = ()

    def __init__(self, cfg: VAETrainConfig, make_stream: StreamFactory, vae_cfg: VAEConfig, dist: loop.DistInfo):
        self.cfg, self.make_stream, self.dist, self.out = cfg, make_stream, dist, Path(cfg.out)
        device = dist.device
        if cfg.batch_size % dist.dp_size:
            raise VideoditError(f"--batch-size {cfg.batch_size}: the global batch must be a multiple of the "
                                f"{dist.dp_size} processes (each reads an equal slice)")
        self.vae_cfg, self.init_cfg = resolve_vae_config(cfg, vae_cfg)
        torch.manual_seed(cfg.seed)
        self.model = TrainingVAE(self.vae_cfg).to(device)
        if cfg.finetune == "decoder":
            self.model.encoder.requires_grad_(False)  # no gradient, no optimizer state: its weights never move
        if cfg.finetune == "encoder":
            self.model.decoder.requires_grad_(False)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.run_config = {"train": to_dict(cfg), "model": to_dict(self.vae_cfg)}
        self.disc = self.disc_opt = self.train_disc = None
        if cfg.adv_weight:
            self.disc = self.train_disc = PatchDiscriminator3D().to(device)
            self.disc_opt = torch.optim.AdamW(self.disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=0.0)
            if dist.world_size > 1:
                self.train_disc = torch.nn.parallel.DistributedDataParallel(
                    self.disc, device_ids=[device.index] if device.type == "cuda" else None)
        self.anchor = None
        if cfg.anchor_weight:  # the frozen --init VAE whose latents the encoder must keep
            self.anchor = VideoVAE.from_pretrained(cfg.init, device=device).eval().requires_grad_(False)

    def lr_groups(self) -> list[dict]:
        return loop.one_lr_group(self.model)

    def extra_modules(self) -> dict:
        return {} if self.disc is None else {"disc": self.disc, "disc_opt": self.disc_opt}

    def init(self) -> None:
        if not self.cfg.init:
            return
        init_cfg = self.init_cfg
        src = VideoVAE(dataclasses.replace(self.vae_cfg, base_channels=init_cfg.base_channels,
                                           decoder_base_channels=init_cfg.decoder_base_channels,
                                           encoder_shortcut=init_cfg.encoder_shortcut))
        load_safetensors_checked(src, Path(self.cfg.init) / "model.safetensors")
        widen(src.encoder, self.model.encoder)  # plain copies where the widths agree
        widen(src.decoder, self.model.decoder)
        self.ema.load_state_dict(self.model.state_dict())
        if self.dist.is_main:
            wider = "".join(f", {part} widened {a} -> {b} channels" for part, a, b in (
                ("encoder", init_cfg.base_channels, self.vae_cfg.base_channels),
                ("decoder", init_cfg.decoder_channels, self.vae_cfg.decoder_channels)) if a != b)
            if self.vae_cfg.encoder_shortcut and not init_cfg.encoder_shortcut:
                wider += ", encoder given a pixel shortcut (zero at the start)"
            print(f"initialised from {self.cfg.init}{wider}")

    def batches(self, step: int):
        part = (self.dist.dp_rank, self.dist.dp_size) if self.dist.world_size > 1 else None
        return _batches(self.make_stream, step * self.cfg.batch_size, self.cfg, part)

    def fsdp_units(self, module) -> list:
        return [module.encoder, module.decoder]

    def wants_ema(self, step: int, done: bool) -> bool:
        return False

    def step(self, net, x: torch.Tensor, step: int, gen: torch.Generator, lr: float) -> loop.StepResult:
        cfg, device = self.cfg, self.dist.device
        # This rank's clips are rows first .. first + B of the global batch (equal slices); every
        # draw is made for the global batch from generators that are the same on every rank.
        rows = (self.dist.dp_rank * x.shape[0], cfg.batch_size)
        x = _crop(x.to(device, non_blocking=True), cfg, gen, self.vae_cfg.spatial_stride, rows)
        # The posterior noise is drawn on the device, from a seed drawn from the step's generator.
        noise_gen = torch.Generator(device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        sigma = None
        if cfg.latent_noise:
            sigma = cfg.latent_noise * torch.rand(cfg.batch_size, generator=noise_gen, device=device)[
                rows[0]:rows[0] + x.shape[0]]
        recon, mean, logvar = net(x, noise_gen, rows, sigma)
        loss, logs = vae_loss(x, recon, mean, logvar, cfg.kl_weight, cfg.mse_weight, cfg.edge_weight)
        if self.anchor is not None:
            with torch.no_grad():
                old_mean = self.anchor.normalize(self.anchor.encode_moments(x)[0])
            drift = (self.anchor.normalize(mean.float()) - old_mean.float()).pow(2).mean()
            loss = loss + cfg.anchor_weight * drift
            logs["drift"] = drift.item()
        monitor = loss.detach()  # the guard watches the reconstruction loss (the adversarial part may go negative)
        if self.disc is not None:
            loss = loss + self.adversarial(x, recon.float(), loss, step, lr, logs)
        return loop.StepResult(loss, monitor, rank_mean_logs(logs, self.dist))

    def adversarial(self, x, recon, rec_loss, step: int, lr: float, logs: dict) -> torch.Tensor:
        """One discriminator step on real vs reconstructed clips, then (after --adv-start) the
        decoder's adversarial loss, scaled to --adv-weight of the reconstruction gradient."""
        for group in self.disc_opt.param_groups:
            group["lr"] = lr
        # real and reconstructed clips in one forward: DistributedDataParallel wants one per backward
        real_logits, fake_logits = self.train_disc(torch.cat([x, recon.detach()])).chunk(2)
        d_loss = d_hinge_loss(real_logits, fake_logits)
        self.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.cfg.grad_clip)
        self.disc_opt.step()
        logs["d_loss"] = d_loss.item()
        if step < self.cfg.adv_start:
            return torch.zeros((), device=x.device)
        self.disc.requires_grad_(False)  # the decoder's step must not touch the discriminator
        adv = g_loss(self.disc(recon))
        scale = self.cfg.adv_weight * adaptive_weight(rec_loss, adv, self.model.decoder.conv_out.conv.weight)
        self.disc.requires_grad_(True)
        logs["adv_scale"] = scale.item()
        return scale * adv

    def on_save(self) -> None:
        pass

    def after_step(self, step: int, done: bool) -> None:
        pass

    def finish(self) -> Path:
        """The EMA weights as a bundle, with latent statistics measured now, or --init's kept."""
        cfg, device = self.cfg, self.dist.device
        final_cfg = self.vae_cfg
        if cfg.finetune == "full" and not cfg.anchor_weight:
            stats = (b.to(device) for _, b in zip(range(cfg.stats_batches), _batches(self.make_stream, 0, cfg)))
            # per channel when asked, or when --init's VAE already measures them per channel
            per_channel = cfg.per_channel_latents or bool(self.vae_cfg.latent_channel_scale)
            final_cfg = with_latent_stats(self.vae_cfg, *latent_stats(self.ema, stats, per_channel=per_channel))
        final = VideoVAE(final_cfg)
        final.load_state_dict(self.ema.state_dict())
        return final.save_pretrained(self.out / "bundle")


def train_vae(cfg: VAETrainConfig, make_stream: StreamFactory | None = None,
              vae_cfg: VAEConfig | None = None, progress: bool = True) -> Path:
    """Train (or resume) and return the path of the saved bundle. ``make_stream`` defaults to
    SynthWorld; ``vae_cfg`` overrides the preset (tests use tiny ones)."""
    cfg.check()
    return loop.train(cfg, lambda dist: VAETask(cfg, make_stream or synthworld_stream(cfg),
                                                vae_cfg or PRESETS[cfg.preset], dist), progress=progress)
