"""How well a VAE reconstructs held-out SynthWorld clips: PSNR / SSIM, and whether the
evaluator still reads the colours, shapes and counts it reads in the originals (``train-vae``'s
measure of a VAE; ``benchmarks/vae.py --quality``)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from videodit.eval.metrics import score_video
from videodit.reconstruct import ssim
from videodit.vae import VideoVAE
from videodit.video import frames_to_tensor, psnr, tensor_to_frames
from videodit.world import make_sample

EVAL_METRICS = ("color", "shape", "count")  # evaluator metrics a reconstruction must keep


def evaluate_reconstruction(vae: VideoVAE, n: int = 64, *, seed: int = 0, width: int = 64, height: int = 64,
                            frames: int = 17, batch_size: int = 8, progress: bool = False,
                            latent_noise: float = 0.0, refine: int = 0) -> dict:
    """Reconstruct ``n`` eval-split clips and return mean PSNR (dB) / SSIM, and the evaluator's
    colour / shape / count accuracy on the reconstructions and on the originals (for reference).
    ``latent_noise`` > 0 adds Gaussian noise of that std (normalised latent units, fixed seed) to
    the latents before decoding: how well the decoder copes with a DiT's imperfect latents.
    ``refine`` > 0: that many steps of encode-time refinement (VideoVAE.refine) after encoding."""
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
