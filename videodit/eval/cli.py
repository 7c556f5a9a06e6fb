"""`videodit eval`: score a folder of videos against a file of prompts (docs/EVAL.md)."""

from __future__ import annotations

import argparse

from videodit.config import add_dataclass_args, existing, number
from videodit.modes import SOLVERS

_EXAMPLES = """examples:
  videodit world render --split eval --n 60 --out /tmp/ev && cat /tmp/ev/*.txt > /tmp/prompts.txt
  videodit eval --videos /tmp/ev --prompts /tmp/prompts.txt --json /tmp/ev.json --html /tmp/ev.html

PROMPTS has one prompt per line; video i is VIDEOS/NNNNN.mp4 (i written with 5 digits; .gif,
.webp or a folder of PNG frames NNNNN/ also work). A missing or unreadable video fails every
metric its prompt asks for. The last line printed is
  SCORE in_dist=<mean metric accuracy> heldout=<same>     ("nan" for an empty split)."""

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".webp")


def size_flag(text: str) -> tuple[int, int]:
    """--size WxH -> (width, height); a usage error when malformed."""
    from videodit.errors import VideoditError
    from videodit.world.scene import parse_size

    try:
        return parse_size(text, name="size")
    except VideoditError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    from videodit.eval.config import EvalConfig

    p = sub.add_parser(
        "eval",
        description="Score videos against prompts: colour, shape, count, background, relation, "
                    "motion, speed, gravity, collision, consistency, occlusion, sharpness.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", help="folder holding 00000.mp4, 00001.mp4, ... (with --model: where the "
                                    "generated videos are written, default eval_videos/)")
    p.add_argument("--prompts", type=existing("file"), help="text file, one prompt per line, in video order (with --model: "
                                     "default the first N SynthWorld eval-split captions)")
    gen = p.add_argument_group("generate, then score (a model bundle instead of a folder of videos)")
    gen.add_argument("--model", type=existing("dir", words=("bundled",)), help="model bundle folder, or 'bundled': generate one video per prompt first")
    gen.add_argument("--lora", type=existing(), default=None, help="with --model: LoRA adapters trained on its DiT "
                     "(`videodit train --lora R` writes OUT/lora/)")
    gen.add_argument("--n", type=number(int, min=1), default=None, help="with --model: how many SynthWorld eval prompts (default 100)")
    gen.add_argument("--steps", type=number(int, min=1), default=None, help="with --model: sampler steps (default: the bundle's)")
    gen.add_argument("--guidance", type=number(float, min=0), default=None, help="with --model: guidance (default: the bundle's)")
    gen.add_argument("--solver", choices=SOLVERS, default=None,
                     help="with --model: sampler solver (default: the bundle's; distilled = its few-step student)")
    gen.add_argument("--guidance-interval", type=number(float, min=0, max=1), nargs=2, metavar=("LO", "HI"), default=None,
                     help="with --model: guide only at timesteps LO <= t <= HI (default: the bundle's)")
    gen.add_argument("--seed", type=number(int, min=0), default=0, help="with --model: seed of video i is SEED + i (default 0)")
    gen.add_argument("--size", default=None, type=size_flag, help="with --model: video size WxH, e.g. 80x48 (default: the bundle's)")
    gen.add_argument("--frames", type=number(int, min=1), default=None, help="with --model: frames, 4k+1 (default: the bundle's)")
    p.add_argument("--json", default=None, help="write per-video results and the table here")
    p.add_argument("--html", default=None, help="write a self-contained HTML report here")
    p.add_argument("--fps", type=number(float, min=0, min_exclusive=True), default=None,
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


def generate_for_eval(args: argparse.Namespace) -> None:
    """--model: write VIDEOS/00000.mp4 ... and VIDEOS/prompts.txt, then score them as usual."""
    from pathlib import Path

    from tqdm import tqdm

    from videodit.errors import VideoditError
    from videodit.pipeline import Pipeline
    from videodit.eval.sampling import eval_prompts
    from videodit.video import write_video

    if args.prompts is not None and args.n is not None:
        raise VideoditError("give --prompts FILE or --n N with --model, not both")
    n = 100 if args.n is None else args.n
    if n < 1:
        raise VideoditError(f"--n {n}: need at least one prompt")
    prompts = read_prompts(args.prompts) if args.prompts else eval_prompts(n)
    folder = Path(args.videos or "eval_videos")
    folder.mkdir(parents=True, exist_ok=True)
    size = args.size
    pipe = Pipeline.load(args.model, lora=args.lora)
    for i, prompt in enumerate(tqdm(prompts, desc="generate", unit="video")):
        video = pipe(prompt, steps=args.steps, guidance=args.guidance, seed=args.seed + i, size=size,
                     frames=args.frames, guidance_interval=args.guidance_interval, solver=args.solver)
        write_video(folder / f"{i:05d}.mp4", video, fps=pipe.config.fps)
    (folder / "prompts.txt").write_text("\n".join(prompts) + "\n")
    args.videos, args.prompts = str(folder), str(folder / "prompts.txt")
    print(f"generated {len(prompts)} videos in {folder}")


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

    from videodit.errors import VideoditError

    # The flags are checked before the metrics (numpy, scipy) and any model load.
    if not args.model:
        if args.videos is None or args.prompts is None:
            raise VideoditError("give --videos DIR --prompts FILE, or --model PATH [--n N] to generate them first")
        if args.n is not None or args.size is not None or args.frames is not None or args.lora is not None:
            raise VideoditError("--n, --size, --frames and --lora go with --model")
        if not Path(args.videos).is_dir():
            raise VideoditError(f"--videos {args.videos}: no such folder")

    from tqdm import tqdm

    from videodit.config import dataclass_from_args
    from videodit.eval.config import EvalConfig
    from videodit.eval.metrics import score_video
    from videodit.eval.parse import parse_prompt
    from videodit.eval.report import format_table, summarize, write_html
    from videodit.video import read_video

    cfg = dataclass_from_args(EvalConfig(), args)
    if args.model:
        generate_for_eval(args)
    folder = Path(args.videos)
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
