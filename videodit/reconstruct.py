"""`videodit reconstruct IN -o OUT`: encode and decode a video through a VAE and report PSNR / SSIM.

The VAE takes F = 4k + 1 frames whose height and width are multiples of its spatial stride. Other
inputs are padded (the last frame repeated, the right / bottom edge replicated), and the output
is cropped back, so OUT has exactly the input's frames and size; a message says what was padded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from videodit.bundle import BUNDLED
from videodit.config import existing, number

DEFAULT_BUNDLE = BUNDLED / "vae"
AUTO_TILE = 256  # frames larger than this (either side) are processed in tiles of this size
TILE_OVERLAP = 32
CHUNK_FRAMES = 16  # frames per temporal chunk: bounds memory for long videos
REFINE_STEPS = 5   # encode-time refinement steps (VideoVAE.refine; docs/VAE.md, "Encode-time refinement")

_EXAMPLES = """examples:
  videodit reconstruct clip.mp4 -o clip_vae.mp4
  videodit reconstruct frames_dir/ -o out.gif --model runs/vae/bundle --max-frames 33
  videodit reconstruct clip.mp4 -o plain.mp4 --refine 0      # the encoder's latent, no refinement

Prints PSNR (dB) and SSIM of the reconstruction against the input frames (uint8 RGB)."""


def chunk_frames_flag(text: str) -> int:
    """--chunk-frames: 0 or a positive multiple of the VAE's temporal stride, 4."""
    value = number(int, min=0)(text)
    if value % 4:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive multiple of 4 (got {value})")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct",
                       description="Encode and decode a video through a VAE and report PSNR / SSIM against the input.", epilog=_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=existing(), help="video file (mp4, gif, webp, ...), a folder of PNG frames, or an image")
    p.add_argument("-o", "--out", required=True, help="output video (suffix picks the format; no suffix = PNG folder)")
    p.add_argument("--model", default=None, type=existing("dir"), help=f"VAE bundle folder (default: the bundled {DEFAULT_BUNDLE})")
    p.add_argument("--max-frames", type=number(int, min=1), default=None, help="read at most this many frames")
    p.add_argument("--chunk-frames", type=chunk_frames_flag, default=CHUNK_FRAMES,
                   help=f"frames per causal chunk, a multiple of 4; 0 = all at once (default: {CHUNK_FRAMES})")
    p.add_argument("--tile", type=number(int, min=0), default=None,
                   help=f"spatial tile size in pixels; 0 = no tiling (default: tile at {AUTO_TILE} when larger)")
    p.add_argument("--refine", type=number(int, min=0), default=REFINE_STEPS,
                   help="steps of encode-time refinement: Adam on the latent against the reconstruction error, "
                        "the decoder fixed (VideoVAE.refine); each costs a decoder pass forward and backward, and "
                        f"holds the whole clip's decoder activations. 0 = the encoder's latent as is (default: {REFINE_STEPS})")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda (default: auto)")
    p.set_defaults(func=_run)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5  # Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity"
SSIM_K1, SSIM_K2 = 0.01, 0.03


def ssim(a, b) -> float:
    """Mean SSIM of two uint8 arrays (F, H, W, 3) or (H, W, 3): Gaussian 11x11 window, sigma 1.5,
    each RGB channel of each frame, averaged over the valid window positions (as Wang et al.)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from videodit.errors import VideoditError

    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise VideoditError(f"ssim: need two uint8 arrays of one shape; got {a.shape} {a.dtype}, {b.shape} {b.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(a)).double().reshape(-1, *a.shape[-3:])
    y = torch.from_numpy(np.ascontiguousarray(b)).double().reshape(-1, *b.shape[-3:])
    x = x.permute(0, 3, 1, 2).reshape(-1, 1, *a.shape[-3:-1])  # (F*3, 1, H, W)
    y = y.permute(0, 3, 1, 2).reshape(-1, 1, *b.shape[-3:-1])
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise VideoditError(f"ssim: frames {tuple(x.shape[-2:])} are smaller than the {SSIM_WINDOW}px window")
    g = torch.exp(-((torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2) ** 2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean().item()


# ---------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------

def fit_shape(frames: int, height: int, width: int, stride: int) -> tuple[int, int, int]:
    """The smallest VAE-valid (F, H, W) at least as large as the input."""
    def up(n: int, m: int) -> int:
        return -(-n // m) * m

    return up(frames - 1, 4) + 1, up(height, stride), up(width, stride)


def reconstruct_frames(vae, frames, *, chunk_frames: int | None = CHUNK_FRAMES, tile: int | None = None,
                       device="cpu", refine: int = 0, progress: bool = False):
    """uint8 (F, H, W, 3) -> uint8 (F, H, W, 3) through ``vae``; pads to a valid shape and crops
    back; ``refine`` steps of encode-time refinement (VideoVAE.refine) on the latent, with a
    progress bar if ``progress``. Returns (frames, padded (F, H, W), latent shape (c, T, h, w))."""
    import numpy as np
    import torch

    from videodit.video import frames_to_tensor, tensor_to_frames

    Fr, H, W, _ = frames.shape
    Fp, Hp, Wp = fit_shape(Fr, H, W, vae.cfg.spatial_stride)
    padded = np.pad(frames, ((0, Fp - Fr), (0, Hp - H), (0, Wp - W), (0, 0)), mode="edge")
    x = frames_to_tensor(padded).unsqueeze(0).to(device)  # (1, 3, F, H, W)
    if tile is None:
        tile = AUTO_TILE if max(Hp, Wp) > AUTO_TILE else 0
    tile_kw = {}
    if tile:
        s = vae.cfg.spatial_stride
        tile = max(s, tile // s * s)
        tile_kw = {"tile": tile, "tile_overlap": min(TILE_OVERLAP, tile // 2) // s * s}
    with torch.no_grad():
        z = vae.encode(x, chunk_frames=chunk_frames or None, **tile_kw)
        z = vae.refine(x, z, refine, chunk_frames=chunk_frames or None, progress=progress, **tile_kw)
        y = vae.decode(z, chunk_frames=chunk_frames or None, **tile_kw)
    out = tensor_to_frames(y[0].clamp(-1, 1).cpu())
    return out[:Fr, :H, :W], (Fp, Hp, Wp), tuple(z.shape[1:])


def _run(args: argparse.Namespace) -> int:
    import time

    from videodit import use_cpu_threads
    from videodit.device import pick_device
    from videodit.errors import VideoditError
    from videodit.vae import VideoVAE
    from videodit.video import psnr, read_video, write_video

    use_cpu_threads()
    model_path = Path(args.model) if args.model else DEFAULT_BUNDLE
    if not model_path.is_dir():
        raise VideoditError(f"--model {model_path}: VAE bundle folder not found"
                            + (" (the bundled VAE is missing from this install)" if args.model is None else ""))
    device = pick_device(args.device)
    video = read_video(args.input, max_frames=args.max_frames)
    vae = VideoVAE.from_pretrained(model_path, device=device)

    Fr, H, W, _ = video.frames.shape
    t0 = time.perf_counter()
    recon, (Fp, Hp, Wp), zshape = reconstruct_frames(vae, video.frames, chunk_frames=args.chunk_frames,
                                                     tile=args.tile, device=device, refine=args.refine,
                                                     progress=True)
    elapsed = time.perf_counter() - t0
    if (Fp, Hp, Wp) != (Fr, H, W):
        print(f"note: the VAE takes 4k+1 frames and sizes that are multiples of {vae.cfg.spatial_stride}; "
              f"padded {Fr}x{H}x{W} (FxHxW) to {Fp}x{Hp}x{Wp} by repeating the last frame / edge pixels, "
              "and cropped the output back")
    out = write_video(args.out, recon, fps=video.fps)
    print(f"PSNR {psnr(video.frames, recon):.2f} dB  SSIM {ssim(video.frames, recon):.4f}  "
          f"({Fr} frames {W}x{H}, latent {'x'.join(map(str, zshape))}, refine {args.refine}, "
          f"{elapsed:.2f} s on {device.type}) "
          f"-> {out}")
    return 0
