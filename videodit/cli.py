"""The one ``videodit`` command. Each area registers its own subcommands in its ``cli`` module;
only the module of the command being run (or whose --help is asked for) is imported, so
``videodit --help`` loads neither torch nor numpy.

Importing videodit sets passive OpenMP waiting and the one-line warning format
(videodit/__init__.py) for the command and library users alike.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

from videodit import __version__
from videodit.errors import VideoditError


@dataclass(frozen=True)
class Command:
    name: str
    help: str  # the one line `videodit --help` lists
    module: str  # whose ``register`` adds the command's full parser
    register: str = "register"


COMMANDS = (
    Command("generate", "generate a video from a text prompt", "videodit.generate"),
    Command("world", "SynthWorld: the built-in captioned physics video world", "videodit.world.cli"),
    Command("eval", "score videos against their prompts on SynthWorld's ground-truth metrics", "videodit.eval.cli"),
    Command("train", "train the text-to-video DiT on SynthWorld (flow matching)", "videodit.train.cli",
            "register_train"),
    Command("train-vae", "train the causal video VAE on SynthWorld", "videodit.train.cli"),
    Command("distill", "distil a model's DiT into a few-step student with guidance built in", "videodit.train.cli",
            "register_distill"),
    Command("reconstruct", "encode + decode a video through the VAE; print PSNR / SSIM", "videodit.reconstruct"),
    Command("prepare", "prepare your own captioned videos for training: clips -> VAE latents + text cache",
            "videodit.prepare"),
    Command("serve", "serve an OpenAI-compatible Videos API and a web page", "videodit.serve.cli"),
)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming the flag, what it accepts and what it got; the usage
    block argparse would print first is what --help shows."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's name and one-line help; the full parser of ``command`` alone (importing
    its module)."""
    parser = Parser(
        prog="videodit",
        description="videodit: text-to-video with a causal 3D VAE and a flow-matching diffusion transformer.",
    )
    parser.add_argument("--version", action="version", version=f"videodit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        if c.name == command:
            getattr(importlib.import_module(c.module), c.register)(sub)
        else:
            sub.add_parser(c.name, help=c.help, add_help=False)
    return parser


def _close_progress_bars() -> None:
    """Close the tqdm bars a failed command left open, so that what is printed next starts on a
    line of its own instead of being glued onto a bar."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(tqdm.tqdm, "_instances", ())) if tqdm else ():
        bar.close()


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit code (2: bad input, named in one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level parser takes no option with a value, so the first word is the command.
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
    except SystemExit as e:  # a usage error (2), or --help / --version (0)
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except (VideoditError, FileNotFoundError) as e:
        # Bad input is reported in one line that names the problem (set VIDEODIT_DEBUG=1 for the
        # traceback); any other exception is a bug and keeps its traceback.
        _close_progress_bars()
        if os.environ.get("VIDEODIT_DEBUG"):
            raise
        print(f"videodit {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException:
        _close_progress_bars()
        raise


if __name__ == "__main__":
    sys.exit(main())
