"""The evaluator's own validation: ground-truth renders pass, shuffled prompts and noise fail,
and each injected fault is caught by the metric meant for it."""

from collections import defaultdict

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from videodit.eval import evaluate
from videodit.eval.config import EvalConfig
from videodit.eval.metrics import METRICS, classify_shape, fit_gravity, score_video
from videodit.eval.report import bootstrap_interval
from videodit.video import read_video, write_video
from videodit.world import make_sample
from videodit.world.palette import BACKGROUNDS, COLORS
from videodit.world.scene import FAMILIES


def _pass_rates(pairs) -> dict[str, tuple[int, int]]:
    """{metric: (passed, applicable)} over (frames, prompt) pairs."""
    counts = defaultdict(lambda: [0, 0])
    for frames, prompt in pairs:
        for name, r in score_video(frames, prompt).metrics.items():
            if r.passed is not None:
                counts[name][0] += int(r.passed)
                counts[name][1] += 1
    return {k: tuple(v) for k, v in counts.items()}


def _assert_ground_truth(rates, floor=0.97):
    assert set(rates) == set(METRICS), sorted(rates)
    low = {k: v for k, v in rates.items() if v[0] / v[1] < floor}
    assert not low, low


def _mp4(frames, tmp_path):
    path = write_video(tmp_path / "clip.mp4", frames)
    return read_video(path).frames


def test_ground_truth_after_mp4_at_non_square_sizes_and_33_frames(tmp_path):
    pairs = []
    for family in FAMILIES:
        for i in range(4):
            for width, height, frames in ((80, 48, 17), (48, 80, 17), (64, 64, 33)):
                if (width, height, family) == (48, 80, "occlusion"):
                    continue   # a 48 px wide canvas has no room for a wall to pass behind
                s = make_sample("eval", i, family=family, width=width, height=height, frames=frames)
                pairs.append((_mp4(s.frames, tmp_path), s.paraphrases[i % len(s.paraphrases)]))
    _assert_ground_truth(_pass_rates(pairs))


def test_shuffled_prompts_and_noise_score_near_chance():
    samples = [make_sample("eval", i, family=f) for f in FAMILIES for i in range(5)]
    videos = [s.frames for s in samples]
    shuffled = [samples[(i + 7) % len(samples)].caption for i in range(len(samples))]
    truth = evaluate(videos, [s.caption for s in samples])
    wrong = evaluate(videos, shuffled)
    rng = np.random.default_rng(0)
    noise = evaluate([rng.integers(0, 256, v.shape, dtype=np.uint8) for v in videos],
                     [s.caption for s in samples])
    assert truth.score["in_dist"] == 1.0 and truth.score["heldout"] == 1.0
    assert wrong.score["in_dist"] < 0.35
    assert wrong.table["in_dist"]["color"]["accuracy"] < 0.3
    assert noise.score["in_dist"] < 0.05


# --- injected faults -------------------------------------------------------------------------

def _coverage(frames, background, color):
    """Per-pixel coverage of ``color`` over ``background`` (0 where the pixel is neither)."""
    x = frames.astype(np.float32)
    bg = np.array(BACKGROUNDS[background], np.float32)
    axis = np.array(COLORS[color], np.float32) - bg
    t = ((x - bg) @ axis) / (axis @ axis)
    residual = np.linalg.norm((x - bg) - t[..., None] * axis, axis=-1)
    return np.where((residual < 30) & (t > 0.05), np.clip(t, 0, 1), 0.0)


def _recolor(s):
    o = s.truth["objects"][0]
    names = list(COLORS)
    other = names[(names.index(o["color"]) + 3) % len(names)]
    a = _coverage(s.frames, s.truth["background"], o["color"])[..., None]
    shift = np.array(COLORS[other], np.float32) - np.array(COLORS[o["color"]], np.float32)
    return np.clip(np.round(s.frames + a * shift), 0, 255).astype(np.uint8)


def _drop_last_object(s):
    out = s.frames.copy()
    mask = _coverage(s.frames, s.truth["background"], s.truth["objects"][-1]["color"]) > 0
    out[mask] = BACKGROUNDS[s.truth["background"]]
    return out


def _faster(s):
    # Speed x1.5: keep every 1.5th frame (nearest earlier one).
    idx = np.floor(np.arange(0, len(s.frames) - 1e-9, 1.5)).astype(int)
    return s.frames[idx]


def _moving(s, motions):
    return s.truth["family"] != "relation" and any(o["motion"] in motions for o in s.truth["objects"])


LINEAR = ("left", "right", "up", "down")
FAULTS = {
    # name: (metric meant to catch it, fault, which samples it applies to)
    "wrong colour": ("color", _recolor, lambda s: True),
    "time flip": ("motion", lambda s: s.frames[::-1],
                  lambda s: s.truth["family"] not in ("collision",) and _moving(s, LINEAR + ("falls", "bounces", "thrown_left", "thrown_right"))),
    "mirror x": ("motion", lambda s: s.frames[:, :, ::-1],
                 lambda s: s.truth["family"] != "collision" and _moving(s, ("left", "right", "thrown_left", "thrown_right"))),
    "mirror y": ("motion", lambda s: s.frames[:, ::-1], lambda s: _moving(s, ("up", "down", "falls", "bounces"))),
    "speed x1.5": ("speed", _faster, lambda s: _moving(s, LINEAR + ("thrown_left", "thrown_right"))),
    "speed x1.5 (gravity)": ("gravity", _faster, lambda s: _moving(s, ("falls", "bounces", "thrown_left", "thrown_right"))),
    "dropped object": ("count", _drop_last_object, lambda s: len(s.truth["objects"]) == 2),
    "frozen": ("motion", lambda s: np.repeat(s.frames[:1], len(s.frames), 0),
               lambda s: _moving(s, LINEAR + ("falls", "bounces", "thrown_left", "thrown_right"))),
    "blur": ("sharpness", lambda s: gaussian_filter(s.frames.astype(np.float32), (0, 2, 2, 0)).round().astype(np.uint8),
             lambda s: True),
}


@pytest.fixture(scope="module")
def fault_samples():
    return [make_sample("eval", i, family=f) for f in FAMILIES for i in range(6)]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_is_caught_by_its_metric(fault, fault_samples):
    metric, inject, applies = FAULTS[fault]
    chosen = [s for s in fault_samples if applies(s)]
    assert len(chosen) >= 5
    caught = [score_video(inject(s), s.caption).metrics[metric].passed is False for s in chosen]
    assert np.mean(caught) >= 0.9, (fault, metric, np.mean(caught))
    # And the clean clips pass that metric (the fault, not the scene, is what fails).
    assert all(score_video(s.frames, s.caption).metrics[metric].passed for s in chosen[:5])


# --- pieces ----------------------------------------------------------------------------------

def test_fit_gravity_on_analytic_bounce():
    """A drop with one floor bounce, sampled at 8 fps: the shared-g fit recovers g exactly."""
    g, floor, t = 2.0, 0.9, np.arange(17) / 8
    t_hit = np.sqrt(2 * (floor - 0.2) / g)
    v_out = 0.8 * g * t_hit
    s = t - t_hit
    y = np.where(t < t_hit, 0.2 + 0.5 * g * t ** 2, floor - v_out * s + 0.5 * g * s ** 2)
    y = np.minimum(y, floor)
    fitted, used = fit_gravity(t, y, floor_tol=0.5 / 64)
    assert fitted == pytest.approx(g, rel=1e-6)
    assert used >= 8
    assert fit_gravity(t, np.full_like(t, 0.5), floor_tol=0.01)[0] is None   # never airborne
    # Three airborne frames (the last frame is the lowest, a contact) fix a parabola whatever g
    # they imply: nothing is measured; a fourth checks it.
    assert fit_gravity(t[:4], y[:4], floor_tol=0.5 / 64)[0] is None
    assert fit_gravity(t[:5], y[:5], floor_tol=0.5 / 64)[0] == pytest.approx(g, rel=1e-6)


def test_shape_classes_and_na_semantics():
    cfg = EvalConfig()
    assert classify_shape(1.0, 0.0, cfg) == "square"
    assert classify_shape(np.pi / 4, 0.0, cfg) == "circle"
    assert classify_shape(0.5, 1 / 6, cfg) == "triangle"
    assert classify_shape(0.78, 0.1, cfg) == "triangle"      # a blurred small triangle
    s = make_sample("eval", 0, family="relation")
    r = score_video(s.frames, s.caption)
    assert "gravity" not in r.metrics and "relation" in r.metrics
    missing = score_video(None, s.caption)
    assert missing.metrics.keys() == r.metrics.keys()
    assert all(m.passed is False for m in missing.metrics.values())


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    outcomes = np.array([1.0] * 45 + [0.0] * 5)
    a = bootstrap_interval(outcomes, np.random.default_rng(0))
    b = bootstrap_interval(outcomes, np.random.default_rng(0))
    assert a == b and a[0] < 0.9 < a[1] and a[1] <= 1.0


def test_empty_split_scores_nan():
    s = make_sample("eval", 0, family="single")
    result = evaluate([s.frames], ["A red circle stays still on a black background."])
    assert np.isnan(result.score["heldout"])
    assert result.score_line().endswith("heldout=nan")


@pytest.mark.slow
def test_ground_truth_sweep_40_per_family_mp4(tmp_path):
    pairs = []
    for family in FAMILIES:
        for i in range(40):
            s = make_sample("eval", 100 + i, family=family)
            frames = _mp4(s.frames, tmp_path)
            pairs += [(frames, s.caption), (frames, s.paraphrases[i % len(s.paraphrases)]),
                      (frames, s.short[i % len(s.short)])]
    _assert_ground_truth(_pass_rates(pairs))


def test_framing_stats_see_objects_at_the_border_their_spread_and_travel():
    from videodit.eval.framing import framing_stats
    from videodit.world.palette import COLORS

    def clip(x0s, width=80, height=48, side=8):
        frames = np.zeros((len(x0s), height, width, 3), np.uint8)
        for f, x0 in enumerate(x0s):
            frames[f, 20:20 + side, x0:x0 + side] = COLORS["red"]
        return frames

    inside = framing_stats([clip([30] * 4)])
    assert inside["edge_frames"] == 0 and inside["travel"] == 0 and inside["spread"] == 0
    moving = framing_stats([clip([8, 24, 40, 56])])  # 48 px to the right over the clip
    assert moving["edge_frames"] == 0 and moving["travel"] == pytest.approx(48 / 80, abs=0.01)
    assert moving["spread"] == pytest.approx(48 / 80, abs=0.01)
    cut = framing_stats([clip([0, 30, 30, 72])])  # at the left border, then at the right one
    assert cut["edge_frames"] == pytest.approx(0.5)
    both = framing_stats([clip([30] * 4), clip([0, 30, 30, 72])], per_video=True)
    assert both["per_video"]["edge_frames"] == [0.0, 0.5] and both["edge_frames"] == pytest.approx(0.25)
    tall = framing_stats([clip([30] * 2, width=48, height=80)])  # vertical frames measure along y
    assert tall["edge_frames"] == 0 and tall["videos"] == 1
    noise = gaussian_filter(np.random.default_rng(0).normal(size=(4, 48, 80, 3)), (0, 3, 3, 0))
    noise = np.clip(128 + 90 * noise / noise.std(), 0, 255).astype(np.uint8)
    blobs = framing_stats([noise])   # blobs of noise near palette colours are not objects
    assert blobs["edge_frames"] == 0 and blobs["spread"] == 0 and np.isnan(blobs["travel"])
