"""`videodit serve`: the Videos API and the web page (docs/SERVE.md)."""

from __future__ import annotations

import argparse

from videodit.config import add_dataclass_args, check_ranges, dataclass_from_args
from videodit.serve.config import ServeConfig

_EXAMPLES = """examples:
  videodit serve                                   # http://127.0.0.1:8000/, the bundled model
  videodit serve --port 9000 --data /srv/videos --model runs/dit/bundle
  videodit serve --host 0.0.0.0 --api-key "$KEY_A" "$KEY_B" --max-queue 8

then, with the openai package (docs/SERVE.md):
  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
  video = client.videos.create_and_poll(prompt="A red ball bounces on a black background.")
  client.videos.download_content(video.id).write_to_file("red.mp4")"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible Videos API and a web page",
                       description="Serve an OpenAI-compatible Videos API (/v1/videos) and a web page (/) "
                                   "from one process; jobs and videos persist under --data.",
                       epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, ServeConfig)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = dataclass_from_args(ServeConfig(), args)
    check_ranges(cfg)
    from videodit.serve.app import serve

    serve(cfg)
    return 0
