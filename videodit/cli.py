"""The one ``videodit`` command. Each area registers its own subcommands in its ``cli`` module;
those modules import torch and friends lazily, so ``videodit --help`` stays fast."""

from __future__ import annotations

import argparse
import os
import sys

# OpenMP threads that spin while waiting for work make every torch op 5-50x slower as soon as
# another process holds a core (measured: 30 sampling steps took 86 s instead of 1.7 s next to
# a 2-thread training run on this 2-core CPU). Passive waiting must be chosen before torch loads
# its OpenMP runtime; torch is imported lazily by the subcommands, after this line. An explicit
# OMP_WAIT_POLICY from the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from videodit import __version__  # noqa: E402
from videodit.errors import VideoditError  # noqa: E402
from videodit.world import cli as world_cli  # noqa: E402
from videodit.eval import cli as eval_cli
from videodit.train import cli as train_cli
from videodit import generate, reconstruct


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videodit",
        description="videodit: text-to-video with a causal 3D VAE and a flow-matching diffusion transformer.",
    )
    parser.add_argument("--version", action="version", version=f"videodit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    generate.register(sub)
    world_cli.register(sub)
    eval_cli.register(sub)
    train_cli.register_train(sub)
    train_cli.register(sub)
    reconstruct.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (VideoditError, FileNotFoundError) as e:
        # Bad input is reported in one line that names the problem (set VIDEODIT_DEBUG=1 for the
        # traceback); any other exception is a bug and keeps its traceback.
        if os.environ.get("VIDEODIT_DEBUG"):
            raise
        print(f"videodit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
