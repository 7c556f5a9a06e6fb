"""`videodit serve`'s settings: one frozen dataclass, whose fields are the command's flags
(videodit.config.add_dataclass_args). Importing this module loads neither torch nor FastAPI."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_MODEL = "videodit"  # the name of the bundled model when no --model is given


def _f(default, help: str, group: str = "server", **meta):
    return field(default=default, metadata={"help": help, "group": group, **meta})


@dataclass(frozen=True)
class ServeConfig:
    host: str = _f("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = _f(8000, "TCP port", min=0, max=65535)
    data: str = _f("videodit-data", "folder of the job database and the videos (made if missing)")
    model: tuple[str, ...] = _f((), "model bundles to serve, each PATH or NAME=PATH (a bare PATH is named after "
                                    "its folder); the first one serves requests that name no model (default: "
                                    f"the bundled model, named {DEFAULT_MODEL!r})", "models")
    device: str = _f("cpu", "cpu, cuda, cuda:1 or auto", "models")
    workers: int = _f(1, "videos generated at once (one worker thread each, sharing the loaded models)",
                      "models", min=1, max=64)
    api_key: tuple[str, ...] = _f((), "accepted Bearer API keys; each key sees only its own videos (default: no "
                                      "keys, open to anyone who reaches the port)", "access")
    cors_origin: tuple[str, ...] = _f((), "origins allowed to call the API from a browser page elsewhere "
                                          "(e.g. https://example.com, or * for any)", "access")
    max_queue: int = _f(32, "videos queued or in progress at once; more are refused with 429", "limits",
                        min=1)
    max_upload_mb: float = _f(16.0, "largest request body (an uploaded image or clip), MB; larger: 413", "limits",
                              min=0, min_exclusive=True)
    max_prompt_chars: int = _f(1000, "longest prompt or negative prompt, characters", "limits", min=1)
    max_seconds: float = _f(12.0, "longest video a request may ask for, seconds", "limits", min=0,
                            min_exclusive=True)
    max_side: int = _f(512, "largest width or height a request may ask for, pixels", "limits", min=8)
