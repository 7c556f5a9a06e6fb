"""`videodit world ...`: render SynthWorld samples to files for inspection or offline data sets."""

from __future__ import annotations

import argparse

from videodit.config import number
from videodit.errors import VideoditError
from videodit.world.scene import FAMILIES, check_canvas, parse_size

_RENDER_EXAMPLES = """examples:
  videodit world render --family single --n 8 --out /tmp/sw
  videodit world render --family all --n 100 --out data/eval --split eval --size 128x96 --frames 33
  videodit world render --family occlusion --n 4 --out /tmp/occ --png   # also a PNG strip per clip

Each sample i (counting from --start) is written as NNNNN.mp4 (the clip), NNNNN.txt (its
canonical caption) and NNNNN.json (the ground-truth record: its fields are
videodit.world.scene.truth_record's; docs/EVAL.md says how the evaluator scores against it).
A sample is a pure function of (split, index, seed, size, frames, family)."""


def canvas_size(text: str) -> tuple[int, int]:
    """--size: 'WxH', a valid SynthWorld canvas (videodit.world.scene.check_canvas)."""
    try:
        width, height = parse_size(text)
        check_canvas(width, height, 1)
    except VideoditError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return width, height


def frame_count(text: str) -> int:
    """--frames: 4k+1 >= 1."""
    frames = number(int, min=1)(text)
    if (frames - 1) % 4:
        raise argparse.ArgumentTypeError(f"must be 4k+1: 1, 5, 9, 17, 33, ... (got {frames})")
    return frames


def register(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", description="SynthWorld: the built-in captioned physics video world.")
    world_sub = world.add_subparsers(dest="world_command", metavar="WORLD_COMMAND", required=True)

    render = world_sub.add_parser(
        "render", help="render SynthWorld clips with captions and ground truth",
        description="Render SynthWorld clips, captions and ground-truth records into a folder.",
        epilog=_RENDER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    render.add_argument("--family", default="all", choices=(*FAMILIES, "all"),
                        help="single, pair, count, relation, collision, occlusion, or all (mixed) (default: all)")
    render.add_argument("--n", type=number(int, min=1), default=8, help="number of clips (default: 8)")
    render.add_argument("--out", required=True, help="output folder (created if missing)")
    render.add_argument("--size", default="64x64", type=canvas_size, help="WxH, each a multiple of 16 in 32..512 (default: 64x64)")
    render.add_argument("--frames", type=frame_count, default=17, help="frames per clip, 4k+1 (default: 17)")
    render.add_argument("--seed", type=number(int, min=0), default=0, help="world seed (default: 0)")
    render.add_argument("--split", default="train", choices=["train", "eval"], help="data split (default: train)")
    render.add_argument("--start", type=number(int, min=0), default=0, help="first sample index (default: 0)")
    render.add_argument("--fps", type=number(float, min=0, min_exclusive=True), default=None,
                        help="playback fps of the written files (default: the world's 8 fps)")
    render.add_argument("--png", action="store_true", help="also write NNNNN.png, a strip of all frames")
    render.set_defaults(func=_render)

    show = world_sub.add_parser(
        "show", help="print one sample's captions and ground truth, optionally save its frames as a PNG strip",
        description="Print one SynthWorld sample's captions, objects and events.",
        epilog="example:\n  videodit world show 12 --family collision --out /tmp/collision.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("index", type=number(int, min=0), help="sample index")
    show.add_argument("--family", default="all", choices=(*FAMILIES, "all"), help="a family name, or all (mixed) (default: all)")
    show.add_argument("--size", default="64x64", type=canvas_size, help="WxH (default: 64x64)")
    show.add_argument("--frames", type=frame_count, default=17, help="frames, 4k+1 (default: 17)")
    show.add_argument("--seed", type=number(int, min=0), default=0, help="world seed (default: 0)")
    show.add_argument("--split", default="train", choices=["train", "eval"], help="data split (default: train)")
    show.add_argument("--out", default=None, help="write the frames, left to right, to this PNG")
    show.set_defaults(func=_show)


def _render(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from videodit.video import write_image, write_video
    from videodit.world import FPS, make_sample
    from videodit.world.scene import check_family

    family = None if args.family == "all" else args.family
    width, height = args.size
    if family is not None:
        check_family(family, width, height, args.frames)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fps = FPS if args.fps is None else args.fps

    for index in tqdm(range(args.start, args.start + args.n), desc=f"world render {args.family}", unit="clip"):
        sample = make_sample(args.split, index, args.seed, width=width, height=height,
                             frames=args.frames, family=family)
        stem = out / f"{index:05d}"
        write_video(stem.with_suffix(".mp4"), sample.frames, fps=fps)
        stem.with_suffix(".txt").write_text(sample.caption + "\n")
        stem.with_suffix(".json").write_text(json.dumps(sample.truth, indent=1) + "\n")
        if args.png:
            strip = np.concatenate(list(sample.frames), axis=1)  # (H, F*W, 3): frames left to right
            write_image(stem.with_suffix(".png"), strip)
    print(f"wrote {args.n} clips to {out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import numpy as np

    from videodit.video import write_image
    from videodit.world import make_sample
    width, height = args.size
    family = None if args.family == "all" else args.family
    sample = make_sample(args.split, args.index, args.seed, width=width, height=height, frames=args.frames,
                         family=family)
    truth = sample.truth
    print(f"{truth['split']} #{truth['index']} seed {truth['seed']}: {truth['family']}, {width}x{height}, "
          f"{truth['frames']} frames, {truth['background']} background" + (", held-out pair" if truth["heldout"] else ""))
    print(f"caption:  {sample.caption}")
    for text in sample.paraphrases:
        print(f"  also:   {text}")
    for text in sample.short:
        print(f"  short:  {text}")
    for i, o in enumerate(truth["objects"]):
        speed = f" {o['speed']}" if o["speed"] else ""
        print(f"object {i}: {o['size']} {o['color']} {o['shape']}, {o['motion']}{speed}, start ({o['x0']:.1f}, "
              f"{o['y0']:.1f}) px, velocity ({o['vx']:.1f}, {o['vy']:.1f}) px/s")
    events = truth["events"]
    print(f"events: bounce frames {events['bounce_frames']}, collision frame {events['collision_frame']}, "
          f"hidden frames {events['hidden_frames']}" + (f", relation {truth['relation']}" if truth["relation"] else ""))
    if args.out:
        write_image(args.out, np.concatenate(list(sample.frames), axis=1))   # (H, F*W, 3)
        print(f"wrote {args.out}")
    return 0
