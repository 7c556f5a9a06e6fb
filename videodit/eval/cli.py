"""`videodit eval`: score a folder of videos against a file of prompts (docs/EVAL.md)."""

from __future__ import annotations

import argparse

from videodit.config import add_dataclass_args

_EXAMPLES = """examples:
  videodit world render --split eval --n 60 --out /tmp/ev && cat /tmp/ev/*.txt > /tmp/prompts.txt
  videodit eval --videos /tmp/ev --prompts /tmp/prompts.txt --json /tmp/ev.json --html /tmp/ev.html

PROMPTS has one prompt per line; video i is VIDEOS/NNNNN.mp4 (i written with 5 digits; .gif,
.webp or a folder of PNG frames NNNNN/ also work). A missing or unreadable video fails every
metric its prompt asks for. The last line printed is
  SCORE in_dist=<mean metric accuracy> heldout=<same>     ("nan" for an empty split)."""

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp")


def register(sub: argparse._SubParsersAction) -> None:
    from videodit.eval.config import EvalConfig

    p = sub.add_parser(
        "eval", help="score videos against their prompts on SynthWorld's ground-truth metrics",
        description="Score videos against prompts: colour, shape, count, background, relation, "
                    "motion, speed, gravity, collision, consistency, occlusion, sharpness.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", required=True, help="folder holding 00000.mp4, 00001.mp4, ...")
    p.add_argument("--prompts", required=True, help="text file, one prompt per line, in video order")
    p.add_argument("--json", default=None, help="write per-video results and the table here")
    p.add_argument("--html", default=None, help="write a self-contained HTML report here")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate for the physics metrics (default: each file's own rate)")
    add_dataclass_args(p, EvalConfig)
    p.set_defaults(func=_run)


def read_prompts(path) -> list[str]:
    from pathlib import Path

    from videodit.errors import VideoditError

    path = Path(path)
    if not path.is_file():
        raise VideoditError(f"--prompts {path}: no such file")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            raise VideoditError(f"--prompts {path}: line {i + 1} is empty (one prompt per line; "
                                f"line i goes with video {i:05d})")
    if not lines:
        raise VideoditError(f"--prompts {path}: no prompts in the file")
    return [line.strip() for line in lines]


def find_video(folder, index: int):
    """VIDEOS/NNNNN.<video suffix> or a PNG-frame folder VIDEOS/NNNNN/; None when absent."""
    stem = f"{index:05d}"
    for suffix in VIDEO_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    candidate = folder / stem
    return candidate if candidate.is_dir() else None


def _run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from videodit.config import dataclass_from_args
    from videodit.errors import VideoditError
    from videodit.eval.config import EvalConfig
    from videodit.eval.metrics import score_video
    from videodit.eval.parse import parse_prompt
    from videodit.eval.report import format_table, summarize, write_html
    from videodit.video import read_video

    cfg = dataclass_from_args(EvalConfig(), args)
    folder = Path(args.videos)
    if not folder.is_dir():
        raise VideoditError(f"--videos {folder}: no such folder")
    if args.fps is not None and args.fps <= 0:
        raise VideoditError(f"--fps: must be positive, got {args.fps}")
    prompts = read_prompts(args.prompts)

    def warn(message: str) -> None:
        tqdm.write(f"videodit eval: warning: {message}", file=sys.stderr)

    results, clips, rates = [], [], []
    for i, prompt in enumerate(tqdm(prompts, desc="eval", unit="video", file=sys.stderr)):
        parsed = parse_prompt(prompt)
        if parsed.unparsed:
            warn(f"prompt {i} (line {i + 1}): {parsed.describe_unparsed()}")
        if not parsed.objects:
            warn(f"prompt {i} (line {i + 1}) names no object; only its background can be checked")
        path = find_video(folder, i)
        frames, fps, error = None, args.fps or 8.0, None
        if path is None:
            error = f"{folder / f'{i:05d}.mp4'}: missing"
        else:
            try:
                video = read_video(path)
                frames, fps = video.frames, args.fps or video.fps
            except VideoditError as e:
                error = f"unreadable: {e}"
        if error is not None:
            warn(f"video {i:05d}: {error}; counted as a failure on every metric its prompt asks for")
        results.append(score_video(frames, parsed, fps, cfg, index=i, error=error))
        clips.append(frames if args.html else None)   # only the HTML report needs them
        rates.append(fps)
    extra = find_video(folder, len(prompts))
    if extra is not None:
        warn(f"{extra} and later videos have no prompt line and are ignored")

    result = summarize(results, cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=1) + "\n")
    if args.html:
        write_html(result, clips, args.html, fps=rates[0] if rates else 8.0)
    print(format_table(result))
    if args.json:
        print(f"wrote {args.json}")
    if args.html:
        print(f"wrote {args.html}")
    print(result.score_line())
    return 0
