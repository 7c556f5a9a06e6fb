"""Aggregate per-video results: accuracy table with bootstrap intervals, JSON, and an HTML report.

Splits: "in_dist" and "heldout" (the prompt names a held-out (colour, shape) pair, see
videodit.world.scene.HELDOUT_PAIRS). A metric's accuracy is the fraction of videos where it is
applicable that pass it; the split's score is the mean accuracy over the metrics that apply to at
least one of its videos (nan when the split is empty).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from videodit.eval.config import EvalConfig
from videodit.eval.metrics import METRICS, Track, VideoResult, full_frames
from videodit.world.physics import G, RESTITUTION, SPEEDS

SPLITS = ("in_dist", "heldout")
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


@dataclass
class EvalResult:
    videos: list[VideoResult]
    table: dict[str, dict[str, dict]]   # split -> metric -> {accuracy, low, high, n}
    score: dict[str, float]             # split -> mean metric accuracy (nan when empty)
    config: EvalConfig

    def score_line(self) -> str:
        return "SCORE " + " ".join(f"{s}={_fmt(self.score[s])}" for s in SPLITS)

    def to_json(self) -> dict:
        return {
            "score": {s: _json_float(v) for s, v in self.score.items()},
            "table": {s: {m: {k: _json_float(v) for k, v in row.items()} for m, row in t.items()}
                      for s, t in self.table.items()},
            "config": asdict(self.config),
            "videos": [video_json(v) for v in self.videos],
        }


def _fmt(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4f}"


def _json_float(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def video_json(v: VideoResult) -> dict:
    return {
        "index": v.index, "prompt": v.prompt, "heldout": v.heldout, "family": v.parsed.family,
        "canonical": v.parsed.canonical() if v.parsed.objects else None,
        "unparsed": list(v.parsed.unparsed), "error": v.error,
        "metrics": {k: {"passed": r.passed, **r.values} for k, r in v.metrics.items()},
    }


def bootstrap_interval(outcomes: np.ndarray, rng: np.random.Generator,
                       n: int = N_BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile interval of the mean of 0/1 outcomes."""
    idx = rng.integers(0, len(outcomes), size=(n, len(outcomes)))    # (n, N) resampled videos
    means = outcomes[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(videos: list[VideoResult], cfg: EvalConfig = EvalConfig()) -> EvalResult:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    table: dict[str, dict[str, dict]] = {}
    score: dict[str, float] = {}
    for split in SPLITS:
        chosen = [v for v in videos if v.heldout == (split == "heldout")]
        rows = {}
        for m in METRICS:
            outcomes = np.array([v.metrics[m].passed for v in chosen
                                 if m in v.metrics and v.metrics[m].passed is not None], dtype=float)
            if len(outcomes) == 0:
                rows[m] = {"accuracy": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
                continue
            low, high = bootstrap_interval(outcomes, rng)
            rows[m] = {"accuracy": float(outcomes.mean()), "low": low, "high": high,
                       "n": int(len(outcomes))}
        table[split] = rows
        accs = [r["accuracy"] for r in rows.values() if r["n"] > 0]
        score[split] = float(np.mean(accs)) if accs else float("nan")
    return EvalResult(videos, table, score, cfg)


def format_table(result: EvalResult) -> str:
    head = f"{'metric':<12} " + " ".join(f"{name:>27}" for name in ("in-distribution", "held-out"))
    lines = [head, "-" * len(head)]
    for m in METRICS:
        cells = []
        for split in SPLITS:
            r = result.table[split][m]
            cells.append(f"{'n/a':>27}" if r["n"] == 0 else
                         f"{r['accuracy']:6.3f} [{r['low']:.3f}, {r['high']:.3f}] n={r['n']:<4d}")
        lines.append(f"{m:<12} " + " ".join(f"{c:>27}" for c in cells))
    lines.append(f"{'mean':<12} " + " ".join(f"{_fmt(result.score[s]):>27}" for s in SPLITS))
    return "\n".join(lines)


# --- HTML --------------------------------------------------------------------------------------

MAX_HTML_VIDEOS = 24
MAX_HTML_PLOTS = 12
MIN_PLOT_RANGE = 0.2   # H
DISPLAY_HEIGHT = 128   # px; small clips are scaled up (nearest) so a 64x64 render is legible


def _gif_base64(frames: np.ndarray, fps: float) -> str:
    from PIL import Image

    F, H, W, _ = frames.shape
    scale = max(1, DISPLAY_HEIGHT // H)
    images = [Image.fromarray(f).resize((W * scale, H * scale), Image.NEAREST) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _ballistic(y0: float, vy0: float, floor: float, restitution: float, t: np.ndarray) -> np.ndarray:
    """y(t) (H, down +) under G from (y0, vy0), bouncing on ``floor`` with ``restitution``."""
    y = np.full_like(t, floor)
    t0, ys, v = 0.0, min(y0, floor), vy0
    for _ in range(64):
        dt = (v + math.sqrt(max(v * v + 2 * G * (floor - ys), 0.0))) / G   # time to the floor
        sel = (t >= t0) & (t < t0 + dt)
        s = t[sel] - t0
        y[sel] = ys + v * s + 0.5 * G * s * s
        t0, ys, v = t0 + dt, floor, -restitution * (v + G * dt)
        if abs(v) < 1e-3 or t0 > t[-1]:
            break
    return y


def ideal_path(tr: Track, fps: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The path the prompt implies, started from the measured first position (H units)."""
    ok = np.flatnonzero(~np.isnan(tr.x))
    if len(ok) < 2:
        return None
    t = tr.t - tr.t[ok[0]]
    x0, y0 = tr.x[ok[0]], tr.y[ok[0]]
    motion, v = tr.spec.motion, SPEEDS[tr.spec.speed or "normal"]
    x, y = np.full_like(t, x0), np.full_like(t, y0)
    if motion in ("left", "right"):
        x = x0 + (v if motion == "right" else -v) * t
    elif motion in ("up", "down"):
        y = y0 + (v if motion == "down" else -v) * t
    elif motion in ("falls", "bounces"):
        y = _ballistic(y0, 0.0, float(np.nanmax(tr.y)), RESTITUTION if motion == "bounces" else 0.0, t)
    elif motion in ("thrown_left", "thrown_right"):
        x = x0 + (v if motion == "thrown_right" else -v) * t
        early = ok[1:4]
        vy0 = float(np.mean((tr.y[early] - y0 - 0.5 * G * t[early] ** 2) / t[early]))
        y = _ballistic(y0, vy0, float(np.nanmax(tr.y)), RESTITUTION, t)
    elif motion != "still":
        return None
    return x, y


def _plot_base64(v: VideoResult, fps: float) -> str | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks = [tr for tr in v.tracks if tr.missing is None]   # noise has no path to plot
    if not tracks:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.4), dpi=90)
    for i, tr in enumerate(tracks):
        color = f"C{i}"
        ideal = ideal_path(tr, fps)
        full = full_frames(tr)
        for ax, measured, k in ((axes[0], tr.x, 0), (axes[1], tr.y, 1)):
            ax.plot(tr.t[full], measured[full], "o", ms=3, color=color, label=f"{tr.label} measured")
            # Partly hidden or cut frames: their centroid is biased towards the visible part.
            ax.plot(tr.t[~full], measured[~full], "o", ms=3, mfc="none", color=color)
            if ideal is not None:
                ax.plot(tr.t, ideal[k], "-", lw=1, color=color, alpha=0.7, label=f"{tr.label} ideal")
    axes[0].set_ylabel("x (H)")
    axes[1].set_ylabel("y (H, down)")
    for ax in axes:
        ax.set_xlabel("t (s)")
        ax.grid(alpha=0.3)
        # A still coordinate would otherwise be autoscaled until sub-pixel noise fills the plot.
        lo, hi = sorted(ax.get_ylim())
        if hi - lo < MIN_PLOT_RANGE:
            mid = 0.5 * (lo + hi)
            ax.set_ylim(mid - MIN_PLOT_RANGE / 2, mid + MIN_PLOT_RANGE / 2)
    axes[1].invert_yaxis()
    axes[1].legend(fontsize=6, loc="best")
    fig.suptitle(v.prompt[:90], fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { width: 200px; font-size: 0.75em; }
.card img { image-rendering: pixelated; max-width: 200px; }
.fail { color: #b00; } .pass { color: #070; } .na { color: #999; }
.plots img { margin: 0.3em; border: 1px solid #eee; }
"""


def write_html(result: EvalResult, videos: list[np.ndarray | None], path, fps: float = 8.0) -> None:
    """One self-contained HTML file: table, a grid of videos (worst first), trajectory plots."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>videodit eval</title>"
             f"<style>{_CSS}</style></head><body><h1>videodit eval</h1>",
             f"<p><b>{esc(result.score_line())}</b> ({len(result.videos)} videos)</p>",
             "<table><tr><th>metric</th><th>in-distribution</th><th>n</th><th>held-out</th><th>n</th></tr>"]
    for m in METRICS:
        cells = []
        for split in SPLITS:
            r = result.table[split][m]
            cells.append("<td class='na'>n/a</td><td>0</td>" if r["n"] == 0 else
                         f"<td>{r['accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}]</td><td>{r['n']}</td>")
        parts.append(f"<tr><td>{m}</td>{''.join(cells)}</tr>")
    parts.append("</table>")

    order = sorted(range(len(result.videos)), key=lambda i: (-result.videos[i].n_failed, i))
    parts.append("<h2>Videos, worst first</h2><div class='grid'>")
    for i in order[:MAX_HTML_VIDEOS]:
        v = result.videos[i]
        verdicts = " ".join(
            f"<span class='{'na' if r.passed is None else ('pass' if r.passed else 'fail')}'>{k}</span>"
            for k, r in v.metrics.items())
        media = (f"<img src='data:image/gif;base64,{_gif_base64(videos[i], fps)}'>"
                 if videos[i] is not None else f"<p class='fail'>{esc(v.error or 'missing')}</p>")
        parts.append(f"<div class='card'>{media}<div>#{v.index:05d} {'(held-out) ' if v.heldout else ''}"
                     f"{esc(v.prompt)}</div><div>{verdicts}</div></div>")
    parts.append("</div><h2>Measured trajectories against the prompt's physics</h2><div class='plots'>")
    plotted = 0
    for i in order:
        v = result.videos[i]
        if plotted >= MAX_HTML_PLOTS:
            break
        if not v.tracks or not any(tr.spec.motion not in (None, "still") for tr in v.tracks):
            continue
        png = _plot_base64(v, fps)
        if png is not None:
            parts.append(f"<img src='data:image/png;base64,{png}'>")
            plotted += 1
    parts.append("</div></body></html>")
    Path(path).write_text("\n".join(parts))
