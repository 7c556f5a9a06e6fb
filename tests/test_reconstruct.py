"""Reconstruction through the VAE (videodit/reconstruct.py, `videodit reconstruct`): SSIM against
closed forms, shape fitting, the CLI."""

import numpy as np
import pytest

from conftest import random_vae
from videodit.reconstruct import fit_shape, ssim


def test_ssim_analytic_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    # Constant images: SSIM = (2ab + C1) / (a^2 + b^2 + C1) (the structure term is 1).
    b = np.full((16, 16, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, noisy) < 0.5


def test_fit_shape():
    assert fit_shape(17, 64, 64, 4) == (17, 64, 64)
    assert fit_shape(6, 30, 33, 8) == (9, 32, 40)
    assert fit_shape(1, 8, 8, 8) == (1, 8, 8)


def test_reconstruct_cli_pads_odd_shapes_and_prints_metrics(tmp_path, moving_disc, capsys):
    from videodit.cli import main
    from videodit.video import read_video, write_video

    random_vae().save_pretrained(tmp_path / "vae")
    clip = moving_disc(frames=6, height=30, width=34)
    write_video(tmp_path / "in", clip)  # a PNG folder: lossless
    rc = main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "vae"),
               "--chunk-frames", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "padded 6x30x34" in out and "PSNR" in out and "SSIM" in out and "refine 5" in out
    assert read_video(tmp_path / "out").frames.shape == clip.shape
    rc = main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "o0"), "--model", str(tmp_path / "vae"),
               "--refine", "0"])
    assert rc == 0 and "refine 0" in capsys.readouterr().out
    assert main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "o1"), "--model", str(tmp_path / "vae"),
                 "--refine", "-2"]) == 2
    assert "argument --refine: must be >= 0 (got -2)" in capsys.readouterr().err


def test_reconstruct_cli_missing_model_is_one_line(tmp_path, moving_disc, capsys):
    from videodit.cli import main
    from videodit.video import write_video

    write_video(tmp_path / "in", moving_disc(frames=5, height=32, width=32))
    rc = main(["reconstruct", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])
    assert rc == 2
    assert "argument --model: no such folder" in capsys.readouterr().err
