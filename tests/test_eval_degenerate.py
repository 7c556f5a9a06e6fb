"""The evaluator never rewards what is not there: noise, blank canvases and scrambled clips score
(near) zero on every metric that measures an object, against prompts of every family."""

from collections import defaultdict

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from videodit.eval.metrics import METRICS, score_video
from videodit.world import make_sample
from videodit.world.palette import BACKGROUNDS
from videodit.world.scene import FAMILIES

# Metrics that read the order of the frames; the others (background, color, shape, count,
# relation, consistency, sharpness) look at each frame on its own, or at the set of frames.
PATH_METRICS = ("motion", "speed", "gravity", "collision", "occlusion")


@pytest.fixture(scope="module")
def samples():
    # Three per family: relation, collision and occlusion prompts, and gravity motions among the
    # single, pair and count ones (indices chosen so that falls, bounces and throws occur).
    return [make_sample("eval", i, family=f) for f in FAMILIES for i in range(3)]


def _rates(clips, prompts) -> dict[str, tuple[int, int]]:
    """{metric: (passed, applicable)}."""
    counts = defaultdict(lambda: [0, 0])
    for frames, prompt in zip(clips, prompts):
        for name, r in score_video(frames, prompt).metrics.items():
            if r.passed is not None:
                counts[name][0] += int(r.passed)
                counts[name][1] += 1
    return {k: tuple(v) for k, v in counts.items()}


def _passing(rates, metrics=METRICS) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in rates.items() if k in metrics and v[0] > 0}


def coloured_noise(rng: np.random.Generator, shape: tuple[int, ...], blob: float) -> np.ndarray:
    """Smooth random blobs (``blob`` px) in random colours, drifting in time: what an untrained
    model's decoder makes of its latent noise (blobs of 2-4 px at 64x64)."""
    x = gaussian_filter(rng.normal(size=shape), (1.5, blob, blob, 0))              # (F, H, W, 3)
    return np.clip(128 + 90 * x / x.std(), 0, 255).astype(np.uint8)


def test_noise_fails_every_metric(samples):
    rng = np.random.default_rng(0)
    prompts = [s.caption for s in samples] * 3
    clips = ([rng.integers(0, 256, s.frames.shape, dtype=np.uint8) for s in samples]
             + [coloured_noise(rng, s.frames.shape, blob) for blob in (1.0, 3.0) for s in samples])
    rates = _rates(clips, prompts)
    assert {"relation", "gravity", "collision", "occlusion", "sharpness"} <= set(rates)
    assert not _passing(rates), _passing(rates)


def test_blank_clips_fail_every_metric(samples):
    # The prompt's own background with nothing on it is still not the scene it asks for.
    clips = [np.zeros_like(s.frames) for s in samples] + [
        np.broadcast_to(np.uint8(BACKGROUNDS[s.truth["background"]]), s.frames.shape).copy()
        for s in samples]
    rates = _rates(clips, [s.caption for s in samples] * 2)
    assert rates["background"][1] > 0
    assert not _passing(rates), _passing(rates)


def test_pixel_shuffled_clips_fail_every_metric(samples):
    rng = np.random.default_rng(0)
    clips = []
    for s in samples:
        F, H, W, _ = s.frames.shape
        order = rng.permutation(H * W)
        clips.append(s.frames.reshape(F, H * W, 3)[:, order].reshape(F, H, W, 3))
    rates = _rates(clips, [s.caption for s in samples])
    assert not _passing(rates), _passing(rates)


def test_frame_shuffled_clips_fail_every_path_metric():
    # Clips where every object moves (shuffling a still object's frames changes nothing).
    moving = [s for f in FAMILIES for i in range(8)
              for s in [make_sample("eval", i, family=f)]
              if all(o["motion"] != "still" for o in s.truth["objects"])]
    rng = np.random.default_rng(0)
    clips = [s.frames[rng.permutation(len(s.frames))] for s in moving]
    rates = _rates(clips, [s.caption for s in moving])
    assert {"gravity", "collision", "occlusion"} <= set(rates)
    for name in PATH_METRICS:
        passed, n = rates[name]
        assert passed <= 0.05 * n, (name, rates[name])
    # Appearance metrics may pass: every frame still shows the right objects, sharp, on the
    # right background, in the right places relative to each other.
    assert rates["color"][0] >= 0.9 * rates["color"][1]
    assert rates["shape"][0] >= 0.9 * rates["shape"][1]
