"""Causal 3D video VAE: pixels (B, 3, F, H, W) in [-1, 1] <-> latents (B, c, T, h, w).

Time is causal with stride 4 and the first frame is encoded alone (docs/DESIGN.md, "Conventions"):
F = 4k + 1 frames -> T = k + 1 latent frames, so an image is a 1-frame video. Space has stride
4 or 8 (2 ** (len(channel_mults) - 1)).

Every temporal convolution pads on the left only, replicating the first frame, so output frame t
sees input frames <= t. That makes chunked processing exact: each causal conv keeps the tail of
its input that its next outputs still need (a "cache", one entry per conv, carried between
chunks), so a long video is encoded or decoded a few frames at a time in bounded memory and
gives the one-shot result. There are no normalisation layers: they would carry statistics across
time or space (GroupNorm) and break exact chunking and tiling, and a per-position RMS norm over
channels stalled training (one clip overfit to ~19 dB vs ~28 dB without; docs/VAE.md). The
residual branches start at zero instead, which keeps the plain network stable.

Precision: parameters stay fp32; convolutions run under bf16 autocast (``compute_dtype``).
Set ``vae.compute_dtype = torch.float32`` for exact comparisons.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from videodit import bundle
from videodit.errors import VideoditError, nearest_valid

TEMPORAL_STRIDE = 4
REFINE_LR = 0.05  # Adam's step in VideoVAE.refine, in the normalised latent units a DiT sees
LOGVAR_RANGE = (-30.0, 20.0)  # clamp as in the Stable Diffusion VAE: keeps exp() finite early in training
LOGVAR_INIT = -6.0  # posterior std starts at 0.05: early training is not drowned in sampling noise


@dataclass(frozen=True)
class VAEConfig:
    base_channels: int = field(default=32, metadata={"help": "channels at full resolution"})
    channel_mults: tuple[int, ...] = field(default=(1, 2, 4), metadata={
        "help": "channel multiplier per resolution level; spatial stride = 2 ** (levels - 1) (3 levels -> 4, 4 -> 8)"})
    num_res_blocks: int = field(default=1, metadata={"help": "residual blocks per level (decoder uses one more)"})
    latent_channels: int = field(default=8, metadata={"help": "channels of the latent"})
    decoder_base_channels: int = field(default=0, metadata={
        "help": "the decoder's channels at full resolution (0 = base_channels); a decoder wider than the "
                "encoder spends its capacity where a video generator's samples are drawn"})
    encoder_shortcut: bool = field(default=False, metadata={
        "help": "add PixelShortcut to the encoder: each latent cell's raw pixels, linearly to the moments "
                "(zero at init, so adding it to a trained encoder changes nothing until it learns)"})
    latent_shift: float = field(default=0.0, metadata={
        "help": "normalize(z) = (z - shift) * scale; measured on data after training"})
    latent_scale: float = field(default=1.0, metadata={"help": "see latent_shift"})
    latent_channel_shift: tuple[float, ...] = field(default=(), metadata={
        "help": "per-channel normalisation, one value per latent channel: normalize(z)[c] = (z[c] - "
                "shift[c]) * scale[c]; when set, used instead of latent_shift / latent_scale"})
    latent_channel_scale: tuple[float, ...] = field(default=(), metadata={"help": "see latent_channel_shift"})

    def __post_init__(self):
        if len(self.channel_mults) < 3:
            raise VideoditError(f"VAEConfig.channel_mults={self.channel_mults}: need at least 3 levels "
                                "(the temporal stride 4 uses two downsampling stages)")
        if (self.base_channels < 8 or self.latent_channels < 1 or self.num_res_blocks < 0
                or (self.decoder_base_channels and self.decoder_base_channels < 8)):
            raise VideoditError(f"VAEConfig: invalid sizes base_channels={self.base_channels}, "
                                f"decoder_base_channels={self.decoder_base_channels}, "
                                f"latent_channels={self.latent_channels}, num_res_blocks={self.num_res_blocks}")
        shift, scale = self.latent_channel_shift, self.latent_channel_scale
        if (shift or scale) and not (len(shift) == len(scale) == self.latent_channels and min(scale) > 0):
            raise VideoditError(f"VAEConfig: latent_channel_shift / latent_channel_scale need {self.latent_channels} "
                                f"values each (scales > 0), got {len(shift)} and {len(scale)}")

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def decoder_channels(self) -> int:
        return self.decoder_base_channels or self.base_channels


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------

Cache = dict  # nn.Module -> tensor (the tail of its input) or True (the sequence has started)


class CausalConv3d(nn.Module):
    """3D conv, kernel k in every axis, left-only (causal) padding in time, 'same' padding in space.

    With a cache, the unconsumed tail of the (padded) input is kept for the next chunk; the first
    chunk of a sequence is padded by replicating its first frame, exactly like the one-shot path.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int] = (1, 1)):
        super().__init__()
        self.kernel, self.t_stride = kernel, stride[0]
        self.conv = nn.Conv3d(cin, cout, kernel, stride=(stride[0], stride[1], stride[1]),
                              padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if cache is None or self not in cache:
            x = torch.cat([x[:, :, :1]] * (self.kernel - 1) + [x], dim=2)
        else:
            x = torch.cat([cache[self], x], dim=2)
        if cache is not None:
            # Chunks start on latent-frame boundaries (VideoVAE._encode_moments), so every chunk
            # completes at least one output frame; keep the frames the next outputs still need.
            n_out = (x.shape[2] - self.kernel) // self.t_stride + 1
            cache[self] = x[:, :, n_out * self.t_stride:]
        return self.conv(x)


class ResBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))), the second conv zero-initialised (no normalisation layer)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = CausalConv3d(cin, cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        h = self.conv1(F.silu(x), cache)
        h = self.conv2(F.silu(h), cache)
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve space, and time too when ``temporal``: causal stride-2 conv, so T = (F - 1) / 2 + 1."""

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.conv = CausalConv3d(cin, cout, stride=(2 if temporal else 1, 2))

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        return self.conv(x, cache)


class Upsample(nn.Module):
    """Double space, and time too when ``temporal``: T latent frames -> 2T - 1 (the first frame
    stays single, mirroring Downsample). Time: a causal conv makes two frames per input frame
    (depth-to-time); the very first of the sequence is dropped."""

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.time_conv = CausalConv3d(cin, 2 * cin) if temporal else None
        self.conv = CausalConv3d(cin, cout)

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        if self.time_conv is not None:
            first = cache is None or self not in cache
            if cache is not None:
                cache[self] = True
            B, C, T, H, W = x.shape
            x = self.time_conv(x, cache).view(B, 2, C, T, H, W)
            x = x.permute(0, 2, 3, 1, 4, 5).reshape(B, C, 2 * T, H, W)  # (B, C, 2T, H, W), pairs in time order
            if first:
                x = x[:, :, 1:]
        B, C, T, H, W = x.shape
        x = F.interpolate(x.transpose(1, 2).reshape(B * T, C, H, W), scale_factor=2, mode="nearest")
        x = x.view(B, T, C, 2 * H, 2 * W).transpose(1, 2)  # (B, C, T, 2H, 2W)
        return self.conv(x, cache)


class PixelShortcut(nn.Module):
    """A linear path from raw pixels to the encoder's moments. Each latent cell's pixels (its 4
    frames, or frame 0 repeated 4 times as the causal padding does, by s x s pixels, by 3 colours)
    become the 48 s^2 channels of one cell (space- and time-to-channel), and a conv, 3x3 over
    cells and 1 in time, maps them to the moments. Its weights start at zero, so an encoder
    gains it without changing its output, and its output is scaled by 1 / sqrt(fan-in), so that
    Adam's per-weight steps move the moments by small amounts (the equalised learning rate of
    Karras et al. 2018). Why: the deep path must work out where a small moving object's outline is
    in each of a latent step's 4 frames; those sub-cell details are linear in the pixels. (A
    space-to-channel shortcut around down-sampling stages is how Chen et al. 2024, DC-AE, make
    deep autoencoders easy to optimise; this one goes around the whole encoder.)"""

    def __init__(self, stride: int, cout: int):
        super().__init__()
        self.stride = stride
        cin = 3 * TEMPORAL_STRIDE * stride * stride
        self.proj = nn.Conv3d(cin, cout, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.gain = 1.0 / math.sqrt(cin * 9)

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        if cache is None or self not in cache:  # the sequence's frame 0: a latent frame of its own
            x = torch.cat([x[:, :, :1]] * (TEMPORAL_STRIDE - 1) + [x], dim=2)
        if cache is not None:
            cache[self] = True
        B, C, Fr, H, W = x.shape
        s, t = self.stride, TEMPORAL_STRIDE
        x = x.reshape(B, C, Fr // t, t, H // s, s, W // s, s).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return self.gain * self.proj(x.reshape(B, C * t * s * s, Fr // t, H // s, W // s))


# ---------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------

def _temporal_levels(n_down: int) -> set[int]:
    # The two deepest resampling stages carry the temporal stride 4 (time is cheapest to keep at
    # full rate where the feature maps are small).
    return {n_down - 2, n_down - 1}


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        n_down = len(chans) - 1
        self.conv_in = CausalConv3d(3, chans[0])
        self.blocks = nn.ModuleList()
        cin = chans[0]
        for i, c in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(cin, c))
                cin = c
            if i < n_down:
                self.blocks.append(Downsample(cin, c, temporal=i in _temporal_levels(n_down)))
                cin = c
        self.mid = ResBlock(cin, cin)
        self.conv_out = CausalConv3d(cin, 2 * cfg.latent_channels)
        self.shortcut = PixelShortcut(cfg.spatial_stride, 2 * cfg.latent_channels) if cfg.encoder_shortcut else None

    def forward(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        h = self.conv_in(x, cache)
        for block in self.blocks:
            h = block(h, cache)
        h = self.mid(h, cache)
        out = self.conv_out(F.silu(h), cache)  # (B, 2c, T, h, w): mean, logvar
        if self.shortcut is not None:
            out = out + self.shortcut(x, cache)
        return out


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.decoder_channels * m for m in cfg.channel_mults]
        n_down = len(chans) - 1
        cin = chans[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, cin)
        self.mid = ResBlock(cin, cin)
        self.blocks = nn.ModuleList()
        for i in reversed(range(len(chans))):
            for _ in range(cfg.num_res_blocks + 1):
                self.blocks.append(ResBlock(cin, chans[i]))
                cin = chans[i]
            if i > 0:
                # Channels drop to the next level's inside the upsampler, so the conv at the
                # higher resolution is the narrower one.
                self.blocks.append(Upsample(cin, chans[i - 1], temporal=(i - 1) in _temporal_levels(n_down)))
                cin = chans[i - 1]
        self.conv_out = CausalConv3d(cin, 3)

    def forward(self, z: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        h = self.mid(self.conv_in(z, cache), cache)
        for block in self.blocks:
            h = block(h, cache)
        return self.conv_out(F.silu(h), cache)


@torch.no_grad()
def widen(src: nn.Module, dst: nn.Module) -> None:
    """Copy an encoder or decoder ``src`` into ``dst``, the same part with the same levels and
    blocks but at least as many channels everywhere, so that ``dst`` computes exactly what ``src``
    does (up to float rounding), while its new channels can still learn.

    The old channels keep their indices, and the residual stream's new channels start at zero:
    every conv that writes the stream (conv_in, a block's second conv and skip, a resampler's conv)
    gets zero rows for them. A conv whose input's new channels are live at the start (a block's
    second conv, reading the new hidden units; an upsampler's conv after its time_conv) gets zero
    columns for them too, so nothing new reaches the old outputs. Every other new weight keeps
    ``dst``'s random init: the hidden units that a block's first conv or a time_conv makes are live
    from the first step, and the convs that read the (still zero) new stream channels, conv_out
    included, pass gradients back to the zero rows that write them, so every new channel learns.
    (Net2Net's function-preserving widening, Chen et al. 2016, with zeros in place of copied
    units.)"""
    if getattr(src, "shortcut", None) is not None:
        if getattr(dst, "shortcut", None) is None:
            raise VideoditError("widen: the source encoder has a pixel shortcut and the new one does not")
        dst.shortcut.load_state_dict(src.shortcut.state_dict())  # its size does not depend on the width
    # (a shortcut only dst has keeps its zero init: it adds nothing yet)
    src_convs = {n: m for n, m in src.named_modules() if isinstance(m, nn.Conv3d) and not n.startswith("shortcut.")}
    dst_convs = {n: m for n, m in dst.named_modules() if isinstance(m, nn.Conv3d) and not n.startswith("shortcut.")}
    if src_convs.keys() != dst_convs.keys():
        raise VideoditError(f"widen: the two {type(src).__name__.lower()}s differ in levels or blocks, not only in width")
    for name, old in src_convs.items():
        new = dst_convs[name]
        o, i = old.weight.shape[:2]
        if new.weight.shape[0] < o or new.weight.shape[1] < i:
            raise VideoditError(f"widen: {name} is narrower in the new {type(src).__name__.lower()} "
                                f"({tuple(new.weight.shape[:2])} < {o, i}); a network can only be widened")
        rows = torch.arange(o, device=new.weight.device)
        if "time_conv." in name:  # 2C outputs = two frames of C channels each: (pair, channel) order
            half = new.weight.shape[0] // 2
            rows = torch.cat([rows[:o // 2], half + rows[:o // 2]])
        elif ".conv1." not in name:  # writes the residual stream
            new.weight[o:] = 0
            new.bias[o:] = 0
            after_time_conv = name.endswith(".conv.conv") and name[:-len(".conv.conv")] + ".time_conv.conv" in src_convs
            if name.endswith("conv2.conv") or after_time_conv:
                new.weight[:, i:] = 0  # its input's new channels are live
        new.weight[rows, :i] = old.weight.to(new.weight)
        new.bias[rows] = old.bias.to(new.bias)


# ---------------------------------------------------------------------------------------------
# Spatial tiling
# ---------------------------------------------------------------------------------------------

def _tile_starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(length: int, fade_lo: int, fade_hi: int, device) -> torch.Tensor:
    """Blend weights along one axis of a tile: linear ramps over the overlapped borders."""
    w = torch.ones(length, device=device)
    if fade_lo:
        w[:fade_lo] = torch.arange(1, fade_lo + 1, device=device) / (fade_lo + 1)
    if fade_hi:
        w[length - fade_hi:] = torch.arange(fade_hi, 0, -1, device=device) / (fade_hi + 1)
    return w


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, scale_num: int, scale_den: int) -> torch.Tensor:
    """Apply ``fn`` to overlapping spatial tiles of x (B, C, T, H, W) and blend the outputs.

    ``tile``/``overlap`` are in input pixels; fn maps a tile of size s to one of size
    s * scale_num / scale_den. Output pixels in an overlap are a linear cross-fade of the tiles.
    """
    B, _, _, H, W = x.shape
    ys, xs = _tile_starts(H, tile, tile - overlap), _tile_starts(W, tile, tile - overlap)
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            y = fn(x[:, :, :, y0:y0 + tile, x0:x0 + tile])
            oy0, ox0 = y0 * scale_num // scale_den, x0 * scale_num // scale_den
            if out is None:
                Ho, Wo = H * scale_num // scale_den, W * scale_num // scale_den
                out = y.new_zeros(B, y.shape[1], y.shape[2], Ho, Wo)
                weight = y.new_zeros(Ho, Wo)
            th, tw = y.shape[-2:]
            ov = overlap * scale_num // scale_den
            # Fade only on borders shared with a neighbour tile; image borders keep full weight.
            wy = _ramp(th, ov if y0 > 0 else 0, ov if y0 + tile < H else 0, y.device)
            wx = _ramp(tw, ov if x0 > 0 else 0, ov if x0 + tile < W else 0, y.device)
            w = wy[:, None] * wx[None, :]
            out[..., oy0:oy0 + th, ox0:ox0 + tw] += y * w
            weight[oy0:oy0 + th, ox0:ox0 + tw] += w
    return out / weight


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

class VideoVAE(nn.Module):
    """Causal 3D VAE. Pixels (B, 3, F, H, W) in [-1, 1], F = 4k + 1, H and W multiples of
    ``cfg.spatial_stride``; latents (B, latent_channels, k + 1, H / s, W / s)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.compute_dtype = torch.bfloat16
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                nn.init.zeros_(m.bias)
        # Residual branches start at zero so every block begins as the identity.
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.conv2.conv.weight)
        nn.init.constant_(self.encoder.conv_out.conv.bias[self.cfg.latent_channels:], LOGVAR_INIT)
        if self.encoder.shortcut is not None:
            nn.init.zeros_(self.encoder.shortcut.proj.weight)
            nn.init.zeros_(self.encoder.shortcut.proj.bias)

    # -- shape checks ---------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        s = self.cfg.spatial_stride
        if x.dim() != 5 or x.shape[1] != 3:
            raise VideoditError(f"VAE input must be (B, 3, F, H, W); got {tuple(x.shape)}")
        B, _, Fr, H, W = x.shape
        if (Fr - 1) % TEMPORAL_STRIDE:
            raise VideoditError(f"VAE input has {Fr} frames; need F = 4k + 1 "
                                f"(nearest: {nearest_valid(Fr, 1, TEMPORAL_STRIDE)})")
        if H % s or W % s:
            raise VideoditError(f"VAE input is {H}x{W} (HxW); both must be multiples of the spatial stride {s} "
                                f"(nearest below: {H // s * s}x{W // s * s})")

    def _autocast(self, x: torch.Tensor):
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16)

    # -- core passes ------------------------------------------------------------------------------
    def _encode_moments(self, x: torch.Tensor, chunk_frames: int | None) -> torch.Tensor:
        with self._autocast(x):
            if chunk_frames is None:
                return self.encoder(x, None).float()
            if chunk_frames % TEMPORAL_STRIDE or chunk_frames <= 0:
                raise VideoditError(f"chunk_frames={chunk_frames}: must be a positive multiple of {TEMPORAL_STRIDE}")
            cache: Cache = {}
            # Chunk boundaries sit on latent boundaries: frame 0 alone, then 4 frames per latent frame.
            bounds = [0, 1] + list(range(1 + chunk_frames, x.shape[2], chunk_frames)) + [x.shape[2]]
            bounds = sorted(set(bounds))
            outs = [self.encoder(x[:, :, a:b], cache).float() for a, b in zip(bounds[:-1], bounds[1:])]
            return torch.cat(outs, dim=2)

    def _decode(self, z: torch.Tensor, chunk_latents: int | None) -> torch.Tensor:
        with self._autocast(z):
            if chunk_latents is None:
                return self.decoder(z, None).float()
            if chunk_latents <= 0:
                raise VideoditError(f"chunk_frames must be positive; got {chunk_latents * TEMPORAL_STRIDE}")
            cache: Cache = {}
            outs = [self.decoder(z[:, :, a:a + chunk_latents], cache).float()
                    for a in range(0, z.shape[2], chunk_latents)]
            return torch.cat(outs, dim=2)

    # -- public API -----------------------------------------------------------------------------
    def encode_moments(self, x: torch.Tensor, *, chunk_frames: int | None = None,
                       tile: int | None = None, tile_overlap: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, c, T, h, w). ``chunk_frames`` (a multiple
        of 4) bounds memory in time; ``tile`` (pixels, a multiple of the stride) in space."""
        self.check_input(x)
        if tile is None:
            moments = self._encode_moments(x, chunk_frames)
        else:
            self._check_tile(tile, tile_overlap)
            s = self.cfg.spatial_stride
            moments = _tiled(lambda t: self._encode_moments(t, chunk_frames), x, tile, tile_overlap, 1, s)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(self, x: torch.Tensor, sample: bool = False, *, generator: torch.Generator | None = None,
               chunk_frames: int | None = None, tile: int | None = None, tile_overlap: int = 32,
               refine: int = 0) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> (B, c, T, h, w): the posterior mean, or a sample.
        ``refine`` > 0 improves the mean by that many steps of encode-time refinement (see refine)."""
        mean, logvar = self.encode_moments(x, chunk_frames=chunk_frames, tile=tile, tile_overlap=tile_overlap)
        if refine:
            if sample:
                raise VideoditError("encode: refine improves the posterior mean; it does not go with sample=True")
            return self.refine(x, mean, refine, chunk_frames=chunk_frames, tile=tile, tile_overlap=tile_overlap)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def refine(self, x: torch.Tensor, z: torch.Tensor, steps: int, *, lr: float = REFINE_LR,
               chunk_frames: int | None = None, tile: int | None = None, tile_overlap: int = 32,
               progress: bool = False) -> torch.Tensor:
        """Encode-time refinement: ``steps`` Adam steps on the latent ``z`` of the video ``x``, the
        decoder fixed, against the L1 + MSE reconstruction error that the VAE was trained on.

        The encoder is amortised inference: one pass that must serve every clip, so it lands near,
        not at, the latent its decoder draws best; a few gradient steps on the latent itself close
        much of the gap, as neural image codecs do at encode time (Campos et al. 2019, "Content
        adaptive optimization for neural image compression"; Yang et al. 2020, "Improving inference
        for neural image compression"; for VAEs, Kim et al. 2018, "Semi-amortized variational
        autoencoders"). Adam runs in the normalised units a DiT sees, so ``lr`` is about how far
        each step moves each latent element there. Costs ``steps`` decoder passes forward and
        backward (the chunk / tile arguments are the decoder's); returns a tensor without grad.
        ``progress`` shows a progress bar over the steps."""
        if steps < 0:
            raise VideoditError(f"refine steps={steps}: must be >= 0")
        z = z.detach()
        if steps == 0:
            return z
        from tqdm import tqdm

        # Also under torch.inference_mode (the generation pipeline's): clones made outside it are
        # ordinary tensors that autograd can use.
        with torch.inference_mode(False), torch.enable_grad():
            target = x.detach().float().clone()
            zn = self.normalize(z.float()).clone().requires_grad_(True)
            opt = torch.optim.Adam([zn], lr=lr)
            for _ in tqdm(range(steps), desc="refine", unit="step", disable=not progress, leave=False):
                err = self.decode(self.denormalize(zn), chunk_frames=chunk_frames, tile=tile,
                                  tile_overlap=tile_overlap) - target
                loss = err.abs().mean() + err.pow(2).mean()
                (zn.grad,) = torch.autograd.grad(loss, zn)
                opt.step()
        return self.denormalize(zn.detach()).to(z.dtype)

    def decode(self, z: torch.Tensor, *, chunk_frames: int | None = None, tile: int | None = None,
               tile_overlap: int = 32) -> torch.Tensor:
        """(B, c, T, h, w) -> (B, 3, 4(T-1)+1, H, W), roughly in [-1, 1] (not clamped).
        ``chunk_frames`` and ``tile``/``tile_overlap`` are in output frames and pixels."""
        if z.dim() != 5 or z.shape[1] != self.cfg.latent_channels:
            raise VideoditError(f"VAE latent must be (B, {self.cfg.latent_channels}, T, h, w); got {tuple(z.shape)}")
        chunk_latents = None
        if chunk_frames is not None:
            if chunk_frames % TEMPORAL_STRIDE or chunk_frames <= 0:
                raise VideoditError(f"chunk_frames={chunk_frames}: must be a positive multiple of {TEMPORAL_STRIDE}")
            chunk_latents = chunk_frames // TEMPORAL_STRIDE
        if tile is None:
            return self._decode(z, chunk_latents)
        self._check_tile(tile, tile_overlap)
        s = self.cfg.spatial_stride
        return _tiled(lambda t: self._decode(t, chunk_latents), z, tile // s, tile_overlap // s, s, 1)

    def _check_tile(self, tile: int, overlap: int) -> None:
        s = self.cfg.spatial_stride
        if tile % s or overlap % s or not 0 <= overlap < tile:
            raise VideoditError(f"tile={tile}, tile_overlap={overlap}: both must be multiples of the spatial "
                                f"stride {s} with 0 <= overlap < tile")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                latent_noise: torch.Tensor | None = None):
        """Training pass: returns (reconstruction, mean, logvar) with the latent sampled.
        ``latent_noise`` (B,): per clip, the std of extra Gaussian noise added to the sampled latent
        before decoding, in normalised units (what a DiT sees), so that the decoder learns to
        turn imperfect latents into clean frames."""
        mean, logvar = self.encode_moments(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        if latent_noise is not None:
            _, scale = self._latent_stats(z)
            extra = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = z + latent_noise.to(z.dtype).view(-1, *(1,) * (z.dim() - 1)) * extra / scale
        return self.decode(z), mean, logvar

    # -- latent normalisation (what the DiT sees) ---------------------------------------------
    def _latent_stats(self, z: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """(shift, scale) broadcastable against z (B, C, T, h, w): per channel when the config has them."""
        if not self.cfg.latent_channel_scale:
            return self.cfg.latent_shift, self.cfg.latent_scale
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return (torch.tensor(self.cfg.latent_channel_shift, device=z.device, dtype=z.dtype).view(shape),
                torch.tensor(self.cfg.latent_channel_scale, device=z.device, dtype=z.dtype).view(shape))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self._latent_stats(z)
        return (z - shift) * scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self._latent_stats(z)
        return z / scale + shift

    # -- bundles --------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        return bundle.save_weights_bundle(self, self.cfg, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "VideoVAE":
        model = cls(bundle.read_bundle_config(VAEConfig, path, "VAE"))
        bundle.load_safetensors_checked(model, Path(path) / bundle.WEIGHTS)
        return model.to(device).eval()


def with_latent_stats(cfg: VAEConfig, shift, scale) -> VAEConfig:
    """``cfg`` with measured statistics: floats set the global shift / scale; sequences (one value per
    channel) set the per-channel ones (and clear nothing else)."""
    if isinstance(shift, (int, float)):
        return dataclasses.replace(cfg, latent_shift=float(shift), latent_scale=float(scale),
                                   latent_channel_shift=(), latent_channel_scale=())
    return dataclasses.replace(cfg, latent_channel_shift=tuple(float(v) for v in shift),
                               latent_channel_scale=tuple(float(v) for v in scale))


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, VAEConfig] = {
    "tiny": VAEConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=0, latent_channels=4),
    "s4c8": VAEConfig(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, latent_channels=8),
    "s8c16": VAEConfig(base_channels=16, channel_mults=(1, 2, 4, 4), num_res_blocks=1, latent_channels=16),
    "gpu": VAEConfig(base_channels=128, channel_mults=(1, 2, 4, 4), num_res_blocks=2, latent_channels=16),
}
