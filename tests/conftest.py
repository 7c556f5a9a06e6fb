"""Fixtures shared by the test files. Keep this small: a fixture belongs here only once two
test files use it."""

import os

# Passive OpenMP waiting, as the CLI sets it (videodit/cli.py): spinning threads make torch ops on a
# shared machine many times slower. Set before any test module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dataclasses

import numpy as np
import pytest


def _moving_disc(frames=17, height=64, width=64, background=(128, 128, 128), color=(220, 40, 40),
                 radius=8.0, supersample=4):
    """A SynthWorld-like clip without SynthWorld: a flat disc gliding diagonally over a flat
    background, anti-aliased by supersampling. (F, H, W, 3) uint8."""
    s = supersample
    ys, xs = np.mgrid[0 : height * s, 0 : width * s]
    ys, xs = (ys + 0.5) / s, (xs + 0.5) / s  # subpixel centres in pixel units
    bg, fg = np.array(background, np.float32), np.array(color, np.float32)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        progress = f / max(frames - 1, 1)
        cx, cy = width * (0.2 + 0.6 * progress), height * (0.3 + 0.4 * progress)
        inside = ((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2).astype(np.float32)
        coverage = inside.reshape(height, s, width, s).mean(axis=(1, 3))[..., None]  # (H, W, 1)
        clip[f] = np.round((1 - coverage) * bg + coverage * fg).astype(np.uint8)
    return clip


@pytest.fixture
def moving_disc():
    """Factory: ``moving_disc(frames=17, height=64, width=64, background=..., color=...)``."""
    return _moving_disc


@pytest.fixture
def one_thread():
    # Tiny tensors: thread hand-offs cost more than they save, badly so on a shared machine.
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_tiny_bundle(root, frames: int = 5, **changes):
    """A complete model bundle in seconds: a random tiny VAE + a tiny DiT trained 2 steps on
    32x32 SynthWorld clips of ``frames`` frames. Returns the bundle folder."""
    import torch

    from videodit.train.dit import DiTTrainConfig, train_dit
    from videodit.vae import PRESETS, VideoVAE

    torch.manual_seed(0)
    VideoVAE(PRESETS["tiny"]).save_pretrained(root / "vae")
    cfg = DiTTrainConfig(preset="tiny", out=str(root / "run"), vae=str(root / "vae"), steps=2, batch_size=2,
                         sizes=("32x32",), frames=(frames,), sample_every=0, warmup_steps=1, threads=1)
    return train_dit(dataclasses.replace(cfg, **changes))


def random_dit(cfg=None, seed: int = 0):
    """A DiT with every weight random (the zero-init one is the identity and hides bugs)."""
    import torch

    from videodit.dit import DiT, DiTConfig

    torch.manual_seed(seed)
    model = DiT(cfg or DiTConfig.preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def random_vae(cfg=None, seed: int = 0):
    """A tiny (or ``cfg``) VAE in eval mode, fp32, whose zero-initialised residual branches are
    perturbed, so every layer matters."""
    import torch

    from videodit.vae import PRESETS, VideoVAE

    torch.manual_seed(seed)
    vae = VideoVAE(cfg or PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    vae.compute_dtype = torch.float32
    return vae


def random_video(frames: int = 17, size: int = 32, seed: int = 0):
    """(1, 3, frames, size, size), uniform in [-1, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """The folder of a random tiny VAE bundle, one per test module."""
    import torch

    from videodit.vae import PRESETS, VideoVAE

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    VideoVAE(PRESETS["tiny"]).save_pretrained(path)
    return path


def dit_train_cfg(tmp_path, vae, **changes):
    """A DiT training run of seconds under ``tmp_path``/run: tiny preset, 4 steps of two 32x32x5
    clips, a checkpoint every 2 steps, no samples."""
    from videodit.train.dit import DiTTrainConfig

    base = DiTTrainConfig(preset="tiny", out=str(tmp_path / "run"), vae=str(vae), steps=4, batch_size=2,
                          sizes=("32x32",), frames=(5,), sample_every=0, save_every=2, warmup_steps=2,
                          log_every=1, threads=1)
    return dataclasses.replace(base, **changes)
