"""`videodit generate`: text -> video with a model bundle (the bundled one by default)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from videodit.errors import VideoditError

_EXAMPLES = """examples:
  videodit generate "A small red circle moves to the right on a black background." -o red.mp4
  videodit generate "blue ball bouncing" -o ball.gif --seed 3 --steps 30 --guidance 5
  videodit generate "A yellow square falls on a white background." --frames 33 --size 80x48 -o wide.mp4
  videodit generate --prompts-file prompts.txt --out-dir videos/     # 00000.mp4, 00001.mp4, ... in order

The output format follows the suffix of -o: .mp4 (H.264), .gif, .webp (animated), .png (one frame).
Unset --steps / --guidance / --solver take the model bundle's defaults (see its config.json)."""


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 64x64 or 80x48") from None
    return w, h


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a text prompt",
                       description="Generate a video from a text prompt with a videodit model bundle "
                                   "(the bundled SynthWorld model unless --model is given).",
                       epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the text prompt (\"\" = unconditional)")
    p.add_argument("-o", "--output", help="output file: .mp4, .gif, .webp or .png (default: video.mp4)")
    p.add_argument("--prompts-file", help="batch mode: one prompt per line; writes OUT_DIR/00000.mp4, ...")
    p.add_argument("--out-dir", help="batch mode: output folder")
    p.add_argument("--frames", type=int, help="number of frames, 4k+1 (default: the bundle's, 17)")
    p.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT (default: the bundle's, 64x64)")
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--solver", choices=("euler", "heun"), help="ODE solver")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same video; default 0)")
    p.add_argument("--negative", default="", help="negative prompt: what the video should not show")
    p.add_argument("--model", help="model bundle folder (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--fps", type=float, help="frame rate of the written file (default: the bundle's, 8)")
    p.set_defaults(func=_run)


def _prompts(args) -> list[tuple[str, Path]]:
    """(prompt, output path) pairs from either the single-prompt or the batch form."""
    if args.prompts_file:
        if args.prompt is not None or args.output:
            raise VideoditError("give either PROMPT [-o OUT] or --prompts-file FILE --out-dir DIR, not both")
        if not args.out_dir:
            raise VideoditError("--prompts-file needs --out-dir")
        path = Path(args.prompts_file)
        if not path.is_file():
            raise VideoditError(f"{path}: prompts file not found")
        lines = path.read_text().splitlines()
        if not lines:
            raise VideoditError(f"{path}: no prompts (one per line)")
        out = Path(args.out_dir)
        return [(line.strip(), out / f"{i:05d}.mp4") for i, line in enumerate(lines)]
    if args.prompt is None:
        raise VideoditError("give a PROMPT (or --prompts-file FILE --out-dir DIR); see --help")
    if args.out_dir:
        raise VideoditError("--out-dir goes with --prompts-file; for one prompt use -o OUT")
    return [(args.prompt, Path(args.output or "video.mp4"))]


def _run(args: argparse.Namespace) -> int:
    jobs = _prompts(args)
    for _, path in jobs:
        if path.suffix.lower() not in (".mp4", ".gif", ".webp", ".png"):
            raise VideoditError(f"{path}: unsupported output type; use .mp4, .gif, .webp or .png")

    from tqdm import tqdm

    from videodit.pipeline import Pipeline
    from videodit.video import write_video

    t0 = time.perf_counter()
    pipe = Pipeline.load(args.model, device=args.device)
    fps = args.fps or pipe.config.fps
    frames = args.frames or pipe.config.frames
    for i, (prompt, path) in enumerate(jobs):
        if path.suffix.lower() == ".png" and frames != 1:
            raise VideoditError(f"{path}: a .png holds one frame; use --frames 1 or a video suffix")
        bar = tqdm(total=None, desc=f"[{i + 1}/{len(jobs)}] sampling" if len(jobs) > 1 else "sampling",
                   leave=False, dynamic_ncols=True)

        def on_step(done: int, total: int):
            bar.total = total
            bar.update(done - bar.n)

        video = pipe(prompt, frames=frames, size=args.size, steps=args.steps, guidance=args.guidance,
                     seed=args.seed, negative=args.negative, solver=args.solver, on_step=on_step)
        bar.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video, fps=fps)
        if len(jobs) == 1:
            print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, "
                  f"{time.perf_counter() - t0:.1f} s)")
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} videos to {args.out_dir} ({time.perf_counter() - t0:.1f} s)")
    return 0
