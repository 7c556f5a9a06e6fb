"""`videodit generate`: text -> video with a model bundle (the bundled one by default)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from videodit.config import existing, number
from videodit.errors import VideoditError
from videodit.modes import DEFAULT_STRENGTH, DIRECTIONS, SOLVERS
from videodit.world.scene import parse_size

_EXAMPLES = """examples:
  videodit generate "A small red circle moves to the right on a black background." -o red.mp4
  videodit generate "blue ball bouncing" -o ball.gif --seed 3 --steps 30 --guidance 5
  videodit generate "A yellow square falls on a white background." --frames 33 --size 80x48 -o wide.mp4
  videodit generate --prompts-file prompts.txt --out-dir videos/     # 00000.mp4, 00001.mp4, ... in order

prompting with images and videos (docs/PROMPTING.md):
  videodit generate "A red ball bounces." --image first.png -o anim.mp4        # the image is frame 0
  videodit generate "A red ball bounces." --last-image end.png -o to_end.mp4   # ends on the image
  videodit generate "A red ball bounces." --image a.png --last-image b.png -o ab.mp4
  videodit generate "A red ball bounces." --video clip.mp4 --extend forward --extend-frames 16 -o more.mp4
  videodit generate "A red ball bounces." --connect a.mp4 b.mp4 -o a_to_b.mp4  # A, transition, B
  videodit generate "A blue square moves right." --loop -o loop.gif
  videodit generate "A green ball bounces." --edit clip.mp4 --strength 0.6 -o green.mp4
  videodit generate "A red ball bounces." --frames 65 -o long.mp4              # sliding windows
  videodit generate "A red ball on a white background." --frames 1 -o still.png

The output format follows the suffix of -o: .mp4 (H.264), .gif, .webp (animated), .png (one frame).
Unset --steps / --guidance / --guidance-interval / --solver take the model bundle's defaults (its
config.json; the bundled model guides only at 0.2 <= t <= 0.85, docs/MODEL.md).
Images and clips of another size are resized and centre-cropped to --size (a note says so)."""


def size_flag(text: str) -> tuple[int, int]:
    """--size: videodit.world.scene.parse_size, its error shown by argparse as a usage error."""
    try:
        return parse_size(text)
    except VideoditError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate",
                       description="Generate a video from a text prompt with a videodit model bundle "
                                   "(the bundled SynthWorld model unless --model is given).",
                       epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the text prompt (\"\" = unconditional)")
    p.add_argument("-o", "--output", help="output file: .mp4, .gif, .webp or .png (default: video.mp4)")
    p.add_argument("--prompts-file", type=existing("file"), help="batch mode: one prompt per line; writes OUT_DIR/00000.mp4, ...")
    p.add_argument("--out-dir", help="batch mode: output folder")
    p.add_argument("--frames", type=number(int, min=1), help="number of frames, 4k+1 (default: the bundle's, 17); "
                   "1 = a still image (with the bundled model, --steps 30 makes better stills: docs/PROMPTING.md)")
    p.add_argument("--size", type=size_flag, help="WIDTHxHEIGHT (default: the bundle's, 64x64)")
    p.add_argument("--steps", type=number(int, min=1), help="sampler steps")
    p.add_argument("--guidance", type=number(float, min=0), help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guidance-interval", type=number(float, min=0, max=1), nargs=2, metavar=("LO", "HI"),
                   help="guide only at timesteps LO <= t <= HI (1 = noise, 0 = clean), the conditional pass alone "
                        "elsewhere; 0 1 = every step (default: the bundle's)")
    p.add_argument("--solver", choices=SOLVERS, help="ODE solver; dpm++2m = DPM-Solver++(2M), second order at "
                   "Euler's cost of one pass a step; distilled = the bundle's few-step student from `videodit distill`, one pass per step (the default of a bundle whose "
                   "sampler names it; --solver euler --steps 30 samples its full model with two-pass guidance)")
    p.add_argument("--seed", type=number(int, min=0), default=0, help="noise seed (same seed, same video; default 0)")
    p.add_argument("--negative", default="", help="negative prompt: what the video should not show")
    p.add_argument("--model", type=existing("dir", words=("bundled",)),
                   help="model bundle folder, or 'bundled' (default: the bundled model)")
    p.add_argument("--lora", type=existing(), metavar="ADAPTER", help="LoRA adapters trained on the model's DiT "
                   "(`videodit train --lora R` writes OUT/lora/; the folder or its model.safetensors)")
    p.add_argument("--lora-scale", type=number(float, min=0), default=1.0,
                   help="scale of the adapters' update: 0 = the base model, 1 = as trained (default 1)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    p.add_argument("--compile", action="store_true", help="run the DiT through torch.compile: its first "
                   "call per shape compiles (~100 s for a default clip on a 2-core CPU, ~30 s once cached on disk), "
                   "later ones run faster (1.12x there); pays on a GPU and for long videos or batches, not for "
                   "one short clip on a CPU")
    p.add_argument("--fps", type=number(float, min=0, min_exclusive=True), help="frame rate of the written file (default: the bundle's, 8)")
    g = p.add_argument_group("prompting with images and videos (one PROMPT; docs/PROMPTING.md)")
    g.add_argument("--image", metavar="IMG", type=existing("file"), help="animate an image: it becomes frame 0 (exactly, in latent space)")
    g.add_argument("--paste-image", action="store_true", help="write the --image itself as frame 0 (default: "
                   "the model's decoding of it, which the next frames continue smoothly)")
    g.add_argument("--last-image", metavar="IMG", type=existing("file"), help="end on an image (with --image: connect two images)")
    g.add_argument("--video", metavar="CLIP", type=existing(), help="a clip to extend (with --extend)")
    g.add_argument("--extend", choices=DIRECTIONS, help="continue --video after its end (forward) or before its "
                   "start (backward); the output is the original clip plus the new frames")
    g.add_argument("--extend-frames", type=number(int, min=1), metavar="N", help="new frames for --extend (default: the window - 1)")
    g.add_argument("--connect", nargs=2, metavar=("A", "B"), type=existing(), help="clip A, a generated transition from A's last "
                   "frame into B's first, then clip B (--frames: the transition window, 4k+1 >= 9)")
    g.add_argument("--loop", action="store_true", help="a video whose last frame leads back to its first "
                   "(--frames >= 9; with --image, starting on the image)")
    g.add_argument("--edit", metavar="CLIP", type=existing(), help="re-generate a clip under the new prompt, keeping its motion "
                   "(SDEdit); the output has the clip's length")
    g.add_argument("--strength", type=number(float, min=0, max=1), help="--edit: how much to change, 0 (keep the clip) .. 1 "
                   f"(ignore it); default {DEFAULT_STRENGTH}")
    g.add_argument("--window", type=number(int, min=1), metavar="FRAMES", help="frames sampled at once (4k+1); longer videos are "
                   "made window by window (default: the bundle's trained length)")
    g.add_argument("--overlap", type=number(int, min=0), metavar="LATENTS", help="latent frames each window is held on from the "
                   "previous one (default: half a window)")
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
    # A single frame is a still image: PNG unless -o says otherwise.
    return [(args.prompt, Path(args.output or ("image.png" if args.frames == 1 else "video.mp4")))]


def _mode(args) -> str | None:
    """The prompting mode the flags ask for (None: text only), after refusing contradictions."""
    given = {flag: value for flag, value in (
        ("--image", args.image), ("--last-image", args.last_image), ("--video", args.video),
        ("--extend", args.extend), ("--extend-frames", args.extend_frames), ("--connect", args.connect),
        ("--loop", args.loop or None), ("--edit", args.edit), ("--strength", args.strength),
        ("--paste-image", args.paste_image or None)) if value is not None}
    if given and args.prompts_file:
        raise VideoditError(f"{', '.join(given)}: prompting with images and videos takes one PROMPT, "
                            "not --prompts-file")
    # Each mode: its flags, and the flags it cannot take.
    allowed = {"edit": {"--edit", "--strength"}, "extend": {"--video", "--extend", "--extend-frames"},
               "connect": {"--connect"}, "loop": {"--loop", "--image", "--paste-image"}}
    for requires, needs in (("--extend", "--video"), ("--video", "--extend"), ("--extend-frames", "--extend"),
                            ("--strength", "--edit"), ("--paste-image", "--image")):
        if requires in given and needs not in given:
            raise VideoditError(f"{requires} needs {needs}")
    for mode, lead in (("edit", "--edit"), ("extend", "--extend"), ("connect", "--connect"), ("loop", "--loop")):
        if lead in given:
            extra = [f for f in given if f not in allowed[mode]]
            if extra:
                raise VideoditError(f"{lead} cannot go with {', '.join(extra)}")
            if mode in ("edit", "connect") and (args.window is not None or args.overlap is not None):
                raise VideoditError(f"{lead} takes no --window / --overlap: it samples one window" +
                                    (" of --frames" if mode == "connect" else " as long as the clip"))
            if mode in ("edit", "extend") and args.frames is not None:
                raise VideoditError(f"{lead} takes no --frames: " + (
                    "the output has the clip's length" if mode == "edit" else "--extend-frames sets the new frames"))
            return mode
    return "animate" if given else None


def _run(args: argparse.Namespace) -> int:
    mode = _mode(args)
    jobs = _prompts(args)
    for _, path in jobs:
        if path.suffix.lower() not in (".mp4", ".gif", ".webp", ".png"):
            raise VideoditError(f"{path}: unsupported output type; use .mp4, .gif, .webp or .png")
    if mode is not None:
        prompt, path = jobs[0]
        if path.suffix.lower() == ".png" and not (mode == "animate" and args.frames == 1):
            raise VideoditError(f"{path}: a .png holds one frame; this {mode} video has more, use .mp4, .gif or .webp")
        return _run_prompting(args, mode, prompt, path)

    from tqdm import tqdm

    from videodit.pipeline import Pipeline
    from videodit.video import write_video

    t0 = time.perf_counter()
    pipe = Pipeline.load(args.model, device=args.device, lora=args.lora, lora_scale=args.lora_scale,
                         compile=args.compile)
    fps = pipe.config.fps if args.fps is None else args.fps
    frames = pipe.config.frames if args.frames is None else args.frames
    window = pipe.config.frames if args.window is None else args.window
    for i, (prompt, path) in enumerate(jobs):
        if path.suffix.lower() == ".png" and frames != 1:
            raise VideoditError(f"{path}: a .png holds one frame; use --frames 1 or a video suffix")
        bar = tqdm(total=args.steps or pipe.config.sampler.steps, leave=False, dynamic_ncols=True,
                   desc=f"[{i + 1}/{len(jobs)}] sampling" if len(jobs) > 1 else "sampling")

        def on_step(done: int, total: int):
            bar.total = total
            bar.update(done - bar.n)

        if frames > window:
            from videodit.prompting import long_video

            bar.set_description("sampling windows")
            video = long_video(pipe, prompt, frames, window=window, overlap=args.overlap, size=args.size,
                               sampler=_sampler(pipe, args), negative=args.negative)
        else:
            video = pipe(prompt, frames=frames, size=args.size, steps=args.steps, guidance=args.guidance,
                         seed=args.seed, negative=args.negative, solver=args.solver,
                         guidance_interval=args.guidance_interval, on_step=on_step)
        bar.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video, fps=fps)
        if len(jobs) == 1:
            print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, "
                  f"{time.perf_counter() - t0:.1f} s)")
    if len(jobs) > 1:
        print(f"wrote {len(jobs)} videos to {args.out_dir} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _sampler(pipe, args):
    return pipe.sampler(seed=args.seed, steps=args.steps, guidance=args.guidance, solver=args.solver,
                        guidance_interval=args.guidance_interval)


def _run_prompting(args: argparse.Namespace, mode: str, prompt: str, path: Path) -> int:
    """One video from a PROMPT plus images / clips (videodit.prompting)."""
    import sys

    from videodit import prompting
    from videodit.pipeline import Pipeline
    from videodit.video import read_image, read_video, write_video

    # Every input is read (and fails with its own message) before the model loads.
    a, b = args.connect or (None, None)
    files = {"image": args.image, "last": args.last_image, "edit": args.edit, "video": args.video, "a": a, "b": b}
    images = ("image", "last")
    inputs = {key: read_image(file)[None] if key in images else read_video(file).frames
              for key, file in files.items() if file}

    t0 = time.perf_counter()
    pipe = Pipeline.load(args.model, device=args.device, lora=args.lora, lora_scale=args.lora_scale,
                         compile=args.compile)
    size = args.size or pipe.config.size
    sampler = _sampler(pipe, args)
    common = dict(size=size, sampler=sampler, negative=args.negative)

    def fitted(key):
        """The input fitted to the output size: (H, W, 3) for an image, (F, H, W, 3) for a clip."""
        if key not in inputs:
            return None
        frames, note = prompting.fit_frames(inputs[key], size, files[key])
        if note:
            print(f"note: {note}", file=sys.stderr)
        return frames[0] if key in images else frames

    if mode == "edit":
        strength = DEFAULT_STRENGTH if args.strength is None else args.strength
        video = prompting.edit(pipe, prompt, fitted("edit"), strength, **common)
    elif mode == "extend":
        video = prompting.extend(pipe, prompt, fitted("video"), args.extend, new_frames=args.extend_frames,
                                 window=args.window, overlap=args.overlap, **common)
    elif mode == "connect":
        video = prompting.connect(pipe, prompt, fitted("a"), fitted("b"), frames=args.frames, **common)
    elif mode == "loop":
        video = prompting.loop(pipe, prompt, frames=args.frames, image=fitted("image"), window=args.window,
                               overlap=args.overlap, paste_image=args.paste_image, **common)
    else:
        first, last = fitted("image"), fitted("last")
        frames = pipe.config.frames if args.frames is None else args.frames
        if last is None and frames > (pipe.config.frames if args.window is None else args.window):
            video = prompting.long_video(pipe, prompt, frames, image=first, window=args.window,
                                         overlap=args.overlap, paste_image=args.paste_image, **common)
        else:
            video = prompting.animate(pipe, prompt, first, last, frames=frames, paste_image=args.paste_image,
                                      **common)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, video, fps=pipe.config.fps if args.fps is None else args.fps)
    print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0
