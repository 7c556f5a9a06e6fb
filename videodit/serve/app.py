"""The HTTP side of `videodit serve`: OpenAI's Videos API on FastAPI, plus the web page at /.

Paths, fields and shapes follow the ``openai`` package's ``videos`` resource, so its client works
with ``base_url="http://HOST:PORT/v1"``:
    POST   /v1/videos                     prompt, model, seconds, size, input_reference (image: animate)
    GET    /v1/videos                     limit, after, order -> {"object": "list", "data", "has_more", ...}
    GET    /v1/videos/{id}                the video object (status, progress, ...)
    DELETE /v1/videos/{id}                cancels a running job too
    GET    /v1/videos/{id}/content        variant=video | thumbnail | spritesheet
    POST   /v1/videos/{id}/remix          prompt -> videodit.prompting.edit of that video
    POST   /v1/videos/edits               prompt, video (upload or {"id"}) -> prompting.edit
    POST   /v1/videos/extensions          prompt, seconds, video (upload or {"id"}) -> prompting.extend
Bodies are multipart/form-data (what the SDK sends; nested fields as ``video[id]``) or JSON.
videodit's own settings ride along as extra body fields (the SDK's ``extra_body``): seed, steps,
guidance, negative_prompt, loop, frames (4k + 1, instead of seconds), strength (remix / edit).
Every error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Durations: ``seconds`` s is s x fps + 1 frames, which must be 4k + 1 (the VAE's frame rule,
docs/DESIGN.md), so at the bundled model's 8 fps every half second is a valid duration.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from videodit.errors import VideoditError, elide
from videodit.pipeline import Pipeline
from videodit.prompting import loop_lengths
from videodit.serve.config import DEFAULT_MODEL, ServeConfig
from videodit.serve.page import PAGE
from videodit.serve.store import Job, Store, atomic_path, write_bytes_atomic
from videodit.serve.worker import VARIANTS, Worker, parse_size, seconds_text
from videodit.vae import TEMPORAL_STRIDE

POLL_AFTER_MS = 250  # the SDK's create_and_poll waits this long between polls (openai-poll-after-ms)
LIST_LIMIT = 100  # most videos in one page of GET /v1/videos
MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MAX_IMAGE_SIDE = 8192  # an uploaded image is decoded in full before it is fitted to the video size
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp", ".avi")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def _error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                    type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status)


@dataclass
class Server:
    """What the routes share: settings, loaded models (name -> Pipeline), store and worker."""
    config: ServeConfig
    pipes: dict[str, Pipeline]
    store: Store
    worker: Worker

    @property
    def default_model(self) -> str:
        return next(iter(self.pipes))

    def owner(self, request: Request) -> str:
        """Who is asking: the hash of their API key ("" when the server takes no keys)."""
        if not self.config.api_key:
            return ""
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if key not in self.config.api_key:
            raise ApiError(401, "missing or unknown API key: send Authorization: Bearer KEY with a key the "
                                "server was started with (--api-key)", code="invalid_api_key")
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def job(self, video_id: str, owner: str) -> Job:
        job = self.store.get(video_id, owner)
        if job is None:
            raise ApiError(404, f"no video with id {video_id!r}", param="video_id", code="not_found")
        return job

    def completed_source(self, video_id: str, owner: str, what: str) -> Job:
        job = self.job(video_id, owner)
        if job.status != "completed":
            raise ApiError(409, f"video {video_id} is {job.status}; only a completed video can be {what}",
                           param="video_id", code="video_not_ready")
        return job

    def check_queue(self) -> None:
        if self.store.pending() >= self.config.max_queue:
            raise ApiError(429, f"the queue is full ({self.config.max_queue} videos queued or in progress); "
                                "try again when some have finished", code="queue_full")

    def add(self, request: Request, owner: str, **fields) -> Job:
        """Queue a job (no await between the queue check and the insert: one request at a time)."""
        self.check_queue()
        job = self.store.add(owner=owner, idempotency_key=request.headers.get("idempotency-key"), **fields)
        self.worker.notify()
        return job


# ---------------------------------------------------------------------------------------------
# Request bodies and their fields
# ---------------------------------------------------------------------------------------------

async def read_body(request: Request) -> dict:
    """JSON or form fields as a dict; multipart's ``video[id]`` becomes {"video": {"id": ...}}."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            data = await request.json()
        except ValueError:
            raise ApiError(400, "the body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the JSON body must be an object", code="invalid_json")
        return data
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        data: dict = {}
        for key, value in (await request.form()).multi_items():
            m = re.fullmatch(r"(\w+)\[(\w+)\]", key)
            if m:
                data.setdefault(m[1], {})[m[2]] = value
            else:
                data[key] = value
        return data
    if not ctype and not await request.body():
        return {}
    raise ApiError(415, f"content type {ctype!r}: send application/json or multipart/form-data",
                   code="unsupported_media_type")


def _text(data: dict, name: str, limit: int, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None or (value == "" and required):
        if required:
            raise ApiError(400, f"missing required parameter: {name!r}", param=name, code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", param=name, code="invalid_type")
    if len(value) > limit:
        raise ApiError(400, f"{name} is {len(value)} characters; at most {limit} are allowed",
                       param=name, code="string_above_max_length")
    return value


def _number(data: dict, name: str, kind: type, lo: float, hi: float | None = None):
    value = data.get(name)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        parsed = kind(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} {value!r}: expected {'an integer' if kind is int else 'a number'}",
                       param=name, code="invalid_type") from None
    if not (parsed == parsed and parsed >= lo and (hi is None or parsed <= hi)):
        bound = f"from {lo:g} to {hi:g}" if hi is not None else f"at least {lo:g}"
        raise ApiError(400, f"{name} {value!r}: must be {bound}", param=name, code="invalid_value")
    return parsed


def _bool(data: dict, name: str) -> bool:
    value = data.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0", ""):
        return value.lower() in ("true", "1")
    raise ApiError(400, f"{name} {value!r}: expected true or false", param=name, code="invalid_type")


def _model(server: Server, data: dict) -> str:
    name = data.get("model") or server.default_model
    if name not in server.pipes:
        raise ApiError(400, f"model {name!r}: this server serves {', '.join(map(repr, server.pipes))}",
                       param="model", code="invalid_value")
    return name


def _size(server: Server, pipe: Pipeline, value) -> str:
    step = pipe.vae.cfg.spatial_stride * pipe.dit.config.patch[1]
    default = "{}x{}".format(*pipe.config.size)
    if value is None or value == "":
        return default
    allowed = (f"allowed: WIDTHxHEIGHT, each a multiple of {step} from {step} to {server.config.max_side} "
               f"(this model's default: {default})")
    m = re.fullmatch(r"(\d+)x(\d+)", str(value))
    if not m:
        raise ApiError(400, f"size {value!r}: {allowed}", param="size", code="invalid_value")
    width, height = int(m[1]), int(m[2])
    if max(width, height) > server.config.max_side:
        raise ApiError(400, f"size {value!r}: larger than this server's --max-side; {allowed}", param="size",
                       code="invalid_value")
    try:
        pipe.latent_shape(pipe.config.frames, (width, height))
    except VideoditError as e:
        raise ApiError(400, f"size {value!r}: {e}; {allowed}", param="size", code="invalid_value") from None
    return f"{width}x{height}"


def allowed_seconds(pipe: Pipeline, max_seconds: float) -> list[str]:
    """Every duration this model makes up to ``max_seconds``: s with s x fps + 1 = 4k + 1 frames."""
    out, k = [], 1
    while TEMPORAL_STRIDE * k / pipe.config.fps <= max_seconds + 1e-9:
        out.append(seconds_text(TEMPORAL_STRIDE * k + 1, pipe.config.fps))
        k += 1
    return out


def _new_frames(server: Server, pipe: Pipeline, value, name: str = "seconds") -> int:
    """Frames for ``seconds`` (4k of them; the video then has 4k + 1)."""
    allowed = allowed_seconds(pipe, server.config.max_seconds)
    try:
        frames = float(value) * pipe.config.fps
    except (TypeError, ValueError):
        frames = -1.0
    if f"{frames / pipe.config.fps:g}" not in allowed or abs(frames - round(frames)) > 1e-6:
        shown = ", ".join(allowed) if allowed else "none (raise --max-seconds)"
        raise ApiError(400, f"{name} {value!r}: this model makes videos at {pipe.config.fps:g} fps of 4k+1 frames; "
                            f"allowed seconds: {shown}", param=name, code="invalid_value")
    return round(frames)


def _frames(server: Server, pipe: Pipeline, data: dict) -> int:
    """Frames of a new video: from ``frames`` (4k + 1) or ``seconds``, else the model's default."""
    frames = _number(data, "frames", int, 1)
    if frames is not None:
        if data.get("seconds") not in (None, ""):
            raise ApiError(400, "give seconds or frames, not both", param="frames", code="invalid_value")
        if frames < TEMPORAL_STRIDE + 1 or (frames - 1) % TEMPORAL_STRIDE:
            raise ApiError(400, f"frames {frames}: must be 4k+1 and at least {TEMPORAL_STRIDE + 1} (5, 9, 17, 33, ...)",
                           param="frames", code="invalid_value")
        if (frames - 1) / pipe.config.fps > server.config.max_seconds:
            raise ApiError(400, f"frames {frames}: longer than this server's --max-seconds "
                                f"{server.config.max_seconds:g} at {pipe.config.fps:g} fps",
                           param="frames", code="invalid_value")
        return frames
    if data.get("seconds") in (None, ""):
        return pipe.config.frames
    return _new_frames(server, pipe, data["seconds"]) + 1


def _sampling(server: Server, data: dict, strength: bool = False) -> dict:
    """videodit's extra settings (None: the bundle's default)."""
    params = {"seed": _number(data, "seed", int, 0) or 0, "steps": _number(data, "steps", int, 1, MAX_STEPS),
              "guidance": _number(data, "guidance", float, 0, MAX_GUIDANCE),
              "negative_prompt": _text(data, "negative_prompt", server.config.max_prompt_chars) or ""}
    if strength:
        params["strength"] = _number(data, "strength", float, 0, 1)
    return {k: v for k, v in params.items() if v is not None}


def _check_request(pipe: Pipeline, frames: int, size: str, guidance: float | None) -> None:
    """What the model would refuse, refused now: shape and memory of one sampling window."""
    try:
        window = min(frames, pipe.config.frames)
        pipe.check_memory(1, window, parse_size(size), pipe.config.sampler.guidance if guidance is None else guidance)
    except VideoditError as e:
        raise ApiError(400, str(e), code="invalid_value") from None


async def _upload_bytes(server: Server, value, name: str) -> tuple[bytes, str]:
    """(bytes, file name) of an uploaded file or a base64 data URL ({"image_url": "data:..."})."""
    limit = int(server.config.max_upload_mb * 2**20)
    if isinstance(value, UploadFile):
        data = await value.read(limit + 1)
        filename = value.filename or ""
    elif isinstance(value, dict) and isinstance(value.get("image_url"), str):
        url = value["image_url"]
        if not url.startswith("data:") or ";base64," not in url:
            raise ApiError(400, f"{name}.image_url: only base64 data URLs (data:image/png;base64,...) are accepted; "
                                "this server fetches nothing from the network", param=name, code="invalid_value")
        try:
            data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{name}.image_url: not valid base64", param=name, code="invalid_value") from None
        filename = ""
    else:
        raise ApiError(400, f"{name}: upload a file (multipart/form-data) or give {{\"image_url\": \"data:...\"}}",
                       param=name, code="invalid_value")
    if len(data) > limit:
        raise ApiError(413, f"{name} is larger than this server's limit of {server.config.max_upload_mb:g} MB",
                       param=name, code="file_too_large")
    if not data:
        raise ApiError(400, f"{name} is empty", param=name, code="invalid_value")
    return data, filename


def _save_image(server: Server, data: bytes, name: str, video_id: str) -> str:
    """Decode an uploaded image (refusing anything PIL cannot read, whatever its name says) and
    store it as PNG; returns the file name under DIR/inputs."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if max(image.size) > MAX_IMAGE_SIDE:
                    raise ValueError(f"{image.size[0]}x{image.size[1]} is larger than {MAX_IMAGE_SIDE} pixels a side")
                rgb = image.convert("RGB")
                rgb.load()
    except Exception as e:  # PIL raises many types for a broken or foreign file
        raise ApiError(400, f"{name}: not a readable image ({elide(str(e))})", param=name,
                       code="invalid_image") from None
    filename = f"{video_id}.png"
    with atomic_path(server.store.root / "inputs" / filename) as tmp:
        rgb.save(tmp)
    return filename


def _save_clip(server: Server, pipe: Pipeline, data: bytes, filename: str, name: str, video_id: str) -> tuple[str, int]:
    """Store an uploaded clip after reading it through PyAV; returns (file name, frame count)."""
    from videodit.video import read_video

    suffix = Path(filename).suffix.lower()
    stored = f"{video_id}{suffix if suffix in VIDEO_SUFFIXES else '.mp4'}"
    path = write_bytes_atomic(server.store.root / "inputs" / stored, data)
    limit = round(server.config.max_seconds * pipe.config.fps) + 1
    try:
        frames = len(read_video(path, max_frames=limit + 1).frames)
    except (VideoditError, OSError, ValueError) as e:
        path.unlink(missing_ok=True)
        raise ApiError(400, f"{name}: not a readable video ({elide(' '.join(str(e).split()))})", param=name,
                       code="invalid_video") from None
    if frames > limit:
        path.unlink(missing_ok=True)
        raise ApiError(400, f"{name}: longer than this server's --max-seconds {server.config.max_seconds:g} "
                            f"({limit} frames at {pipe.config.fps:g} fps)", param=name, code="invalid_video")
    return stored, frames


# ---------------------------------------------------------------------------------------------
# The video object
# ---------------------------------------------------------------------------------------------

EXTRAS = ("seed", "steps", "guidance", "negative_prompt", "loop", "frames", "strength")


def video_json(job: Job) -> dict:
    return {
        "id": job.id, "object": "video", "model": job.model, "status": job.status, "progress": job.progress,
        "created_at": job.created_at, "completed_at": job.completed_at, "expires_at": None, "size": job.size,
        "seconds": job.seconds, "prompt": job.prompt,
        "remixed_from_video_id": job.source_id if job.mode == "remix" else None, "error": job.error,
        # videodit's extras
        "mode": job.mode, "source_video_id": job.source_id,
        **{k: job.params[k] for k in EXTRAS if k in job.params},
    }


# ---------------------------------------------------------------------------------------------
# The routes
# ---------------------------------------------------------------------------------------------

router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


ServerDep = Annotated[Server, Depends(_server)]


@router.get("/", response_class=HTMLResponse)
def page():
    return PAGE


@router.get("/healthz")
def health(server: ServerDep):
    return {"status": "ok", "models": list(server.pipes), "videos": server.store.counts()}


@router.post("/v1/videos")
async def create(request: Request, server: ServerDep):
    owner = server.owner(request)
    data = await read_body(request)
    name = _model(server, data)
    pipe = server.pipes[name]
    prompt = _text(data, "prompt", server.config.max_prompt_chars, required=True)
    size = _size(server, pipe, data.get("size"))
    frames = _frames(server, pipe, data)
    params = _sampling(server, data) | {"frames": frames}
    if _bool(data, "loop"):
        try:
            loop_lengths(frames, pipe.config.frames)
        except VideoditError as e:
            raise ApiError(400, f"loop: {e}", param="loop", code="invalid_value") from None
        params["loop"] = True
    _check_request(pipe, frames, size, params.get("guidance"))
    video_id, mode = f"video_{uuid.uuid4().hex}", "text"
    if data.get("input_reference") not in (None, ""):
        upload, _ = await _upload_bytes(server, data["input_reference"], "input_reference")
        params["input"] = await run_in_threadpool(_save_image, server, upload, "input_reference", video_id)
        mode = "animate"
    try:
        job = server.add(request, owner, video_id=video_id, model=name, mode=mode, size=size,
                         seconds=seconds_text(frames, pipe.config.fps), prompt=prompt, params=params)
    except ApiError:
        server.store.remove_files(video_id, params.get("input"))
        raise
    if job.id != video_id:  # an idempotent retry: the earlier job stands
        server.store.remove_files(video_id, params.get("input"))
    return video_json(job)


@router.get("/v1/videos")
def list_videos(request: Request, server: ServerDep, limit: int = 20, after: str | None = None,
                order: str = "desc"):
    owner = server.owner(request)
    if not 1 <= limit <= LIST_LIMIT:
        raise ApiError(400, f"limit {limit}: must be from 1 to {LIST_LIMIT}", param="limit", code="invalid_value")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"order {order!r}: must be 'asc' or 'desc'", param="order", code="invalid_value")
    anchor = None
    if after:
        anchor = server.store.get(after, owner)
        if anchor is None:
            raise ApiError(400, f"after {after!r}: no such video", param="after", code="invalid_value")
    jobs, more = server.store.list(owner, limit, anchor, order)
    data = [video_json(j) for j in jobs]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


@router.get("/v1/videos/{video_id}")
def retrieve(request: Request, server: ServerDep, video_id: str):
    job = server.job(video_id, server.owner(request))
    return JSONResponse(video_json(job), headers={"openai-poll-after-ms": str(POLL_AFTER_MS)})


@router.delete("/v1/videos/{video_id}")
def delete(request: Request, server: ServerDep, video_id: str):
    job = server.job(video_id, server.owner(request))
    server.store.delete(job.id)
    server.worker.cancel(job.id)
    return {"id": job.id, "object": "video.deleted", "deleted": True}


@router.get("/v1/videos/{video_id}/content")
def content(request: Request, server: ServerDep, video_id: str, variant: str = "video"):
    job = server.job(video_id, server.owner(request))
    if variant not in VARIANTS:
        raise ApiError(400, f"variant {variant!r}: must be one of {', '.join(VARIANTS)}", param="variant",
                       code="invalid_value")
    if job.status != "completed":
        raise ApiError(409, f"video {video_id} is {job.status}; its content is there once it is completed",
                       param="video_id", code="video_not_ready")
    filename, media_type = VARIANTS[variant]
    path = server.store.video_dir(job.id) / filename
    if not path.is_file():
        raise ApiError(404, f"video {video_id}: its {variant} file is missing from the data folder",
                       code="not_found")
    return FileResponse(path, media_type=media_type, filename=f"{job.id}{path.suffix}")


@router.post("/v1/videos/{video_id}/remix")
async def remix(request: Request, server: ServerDep, video_id: str):
    owner = server.owner(request)
    data = await read_body(request)
    source = server.completed_source(video_id, owner, "remixed")
    prompt = _text(data, "prompt", server.config.max_prompt_chars, required=True)
    params = _sampling(server, data, strength=True)
    job = server.add(request, owner, model=source.model, mode="remix", size=source.size, seconds=source.seconds,
                     prompt=prompt, params=params, source_id=source.id)
    return video_json(job)


async def _source(server: Server, data: dict, owner: str, what: str) -> tuple[str, Pipeline, Job | None, dict]:
    """The clip an edit or extension starts from: ({"id": ...} of a completed video, or an upload).
    Returns (model name, pipeline, the source job or None, params with the upload's file name)."""
    video = data.get("video")
    if video in (None, ""):
        raise ApiError(400, "missing required parameter: 'video' (an upload, or {\"id\": VIDEO_ID})",
                       param="video", code="missing_required_parameter")
    if isinstance(video, dict) and "id" in video:
        source = server.completed_source(str(video["id"]), owner, what)
        return source.model, server.pipes[source.model], source, {}
    name = _model(server, data)
    pipe = server.pipes[name]
    upload, filename = await _upload_bytes(server, video, "video")
    stored, frames = await run_in_threadpool(_save_clip, server, pipe, upload, filename, "video",
                                             f"video_{uuid.uuid4().hex}")
    return name, pipe, None, {"input": stored, "input_frames": frames}


def _source_frames(pipe: Pipeline, source: Job | None, params: dict) -> int:
    return params["input_frames"] if source is None else round(float(source.seconds) * pipe.config.fps) + 1


@router.post("/v1/videos/edits")
async def edit(request: Request, server: ServerDep):
    owner = server.owner(request)
    data = await read_body(request)
    prompt = _text(data, "prompt", server.config.max_prompt_chars, required=True)
    name, pipe, source, params = await _source(server, data, owner, "edited")
    try:
        size = source.size if source else _size(server, pipe, data.get("size"))
        params |= _sampling(server, data, strength=True)
        frames = _source_frames(pipe, source, params)
        job = server.add(request, owner, model=name, mode="edit", size=size,
                         seconds=seconds_text(frames, pipe.config.fps), prompt=prompt, params=params,
                         source_id=source.id if source else None)
    except ApiError:
        server.store.remove_input(params.get("input"))
        raise
    return video_json(job)


@router.post("/v1/videos/extensions")
async def extend(request: Request, server: ServerDep):
    cfg = server.config
    owner = server.owner(request)
    data = await read_body(request)
    prompt = _text(data, "prompt", cfg.max_prompt_chars, required=True)
    name, pipe, source, params = await _source(server, data, owner, "extended")
    try:
        if data.get("seconds") in (None, ""):
            raise ApiError(400, "missing required parameter: 'seconds' (of new video)", param="seconds",
                           code="missing_required_parameter")
        new_frames = _new_frames(server, pipe, data["seconds"])
        size = source.size if source else _size(server, pipe, data.get("size"))
        total = _source_frames(pipe, source, params) + new_frames
        if (total - 1) / pipe.config.fps > cfg.max_seconds:
            raise ApiError(400, f"seconds {data['seconds']!r}: the extended video would be "
                                f"{seconds_text(total, pipe.config.fps)} s, longer than this server's "
                                f"--max-seconds {cfg.max_seconds:g}", param="seconds", code="invalid_value")
        params |= _sampling(server, data) | {"new_frames": new_frames}
        job = server.add(request, owner, model=name, mode="extend", size=size,
                         seconds=seconds_text(total, pipe.config.fps), prompt=prompt, params=params,
                         source_id=source.id if source else None)
    except ApiError:
        server.store.remove_input(params.get("input"))
        raise
    return video_json(job)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------

async def _api_error(request: Request, e: ApiError):
    return _error_response(e.status, e.message, e.param, e.code, e.type)


async def _http_error(request: Request, e: StarletteHTTPException):
    return _error_response(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)


async def _validation_error(request: Request, e: RequestValidationError):
    first = e.errors()[0] if e.errors() else {}
    param = str(first.get("loc", ["", "?"])[-1])
    return _error_response(400, f"{param}: {first.get('msg', 'invalid value')}", param, "invalid_value")


async def _body_limit(request: Request, call_next):
    # Refuse an oversized body before reading it (the upload checks catch bodies sent without a length).
    cfg = request.app.state.server.config
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > cfg.max_upload_mb * 2**20 + 64 * 1024:
        return _error_response(413, f"the request body is {int(length) / 2**20:.1f} MB; this server accepts "
                                    f"at most {cfg.max_upload_mb:g} MB", code="request_too_large")
    return await call_next(request)


def create_app(server: Server) -> FastAPI:
    app = FastAPI(title="videodit", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server  # what _server hands every route
    if server.config.cors_origin:
        app.add_middleware(CORSMiddleware, allow_origins=list(server.config.cors_origin), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.middleware("http")(_body_limit)
    app.include_router(router)
    return app


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------

def load_models(cfg: ServeConfig) -> dict[str, Pipeline]:
    """NAME -> Pipeline for every --model (PATH or NAME=PATH); the bundled model without one."""
    from videodit.device import pick_device

    device = pick_device(cfg.device)
    entries = cfg.model or (f"{DEFAULT_MODEL}=",)
    pipes: dict[str, Pipeline] = {}
    for entry in entries:
        name, _, path = entry.rpartition("=") if "=" in entry else ("", "", entry)
        name = name or Path(path).resolve().name
        if name in pipes:
            raise VideoditError(f"--model: two models named {name!r}; name them NAME=PATH")
        pipes[name] = Pipeline.load(path or None, device=device)
    return pipes


def build(cfg: ServeConfig) -> tuple[FastAPI, Server]:
    pipes = load_models(cfg)
    store = Store(cfg.data)
    server = Server(cfg, pipes, store, Worker(store, pipes, cfg.workers))
    return create_app(server), server


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    app, server = build(cfg)
    requeued = server.worker.start()
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"videodit serve: http://{host}:{cfg.port}/  (API: /v1/videos; models: {', '.join(server.pipes)}; "
          f"data: {cfg.data}" + (f"; {len(requeued)} interrupted job(s) queued again" if requeued else "") + ")",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
    finally:
        server.worker.stop()
        server.store.close()
