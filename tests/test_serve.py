"""`videodit serve` through the real ``openai`` client on a tiny random model: every endpoint and
mode, the error shapes, limits, API keys, and a kill -9 in the middle of a job."""

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from videodit.serve.config import ServeConfig  # noqa: E402

# The SDK marks the Videos API deprecated (its hosted service is scheduled to close); ours stays.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FPS, WINDOW = 8.0, 9  # the tiny bundle: 9 frames (1 s) at 8 fps, 32x32
TIMEOUT_S = 60


def make_bundle(path: Path) -> Path:
    """A random tiny model bundle (untrained: its videos are noise, but real videos)."""
    import torch

    from videodit.dit import DiT, DiTConfig
    from videodit.pipeline import BundleConfig, Pipeline
    from videodit.sample import SamplerConfig
    from videodit.text import TextEncoder, TextEncoderConfig
    from videodit.vae import PRESETS, VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(PRESETS["tiny"])
    text = TextEncoder(TextEncoderConfig())
    dit = DiT(DiTConfig.preset("tiny", in_channels=vae.cfg.latent_channels, text_dim=text.dim))
    config = BundleConfig(sampler=SamplerConfig(steps=2), size=(32, 32), frames=WINDOW, fps=FPS)
    return Pipeline(vae, dit, text, config).save(path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("serve") / "tiny")


@contextmanager
def running(cfg: ServeConfig, start_worker: bool = True):
    """The app on 127.0.0.1 in a thread of this process; yields (base url, Server)."""
    import uvicorn

    from videodit.serve.app import build

    app, server = build(cfg)
    if start_worker:
        server.worker.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + TIMEOUT_S
    while not uv.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        uv.should_exit = True
        thread.join(10)
        server.worker.stop()
        server.store.close()
        sock.close()


def client(base: str, key: str = "unused") -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def served(bundle, tmp_path_factory):
    cfg = ServeConfig(data=str(tmp_path_factory.mktemp("data")), model=(f"tiny={bundle}",))
    with running(cfg) as (base, server):
        yield base, server


def png(width=40, height=30, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes):
    """(F, H, W, 3) frames of an mp4, decoded by PyAV."""
    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_models_are_named_by_folder_or_name_and_bundled_is_the_shipped_one(bundle, tmp_path, monkeypatch):
    import videodit.pipeline as pipeline
    from videodit.errors import VideoditError
    from videodit.serve.app import load_models

    monkeypatch.setattr(pipeline, "BUNDLED", bundle)  # the tiny bundle stands in for the shipped one
    pipes = load_models(ServeConfig(data=str(tmp_path), model=("bundled", f"mine={bundle}")))
    assert list(pipes) == ["bundled", "mine"]
    assert list(load_models(ServeConfig(data=str(tmp_path)))) == ["videodit"]
    with pytest.raises(VideoditError, match="two models named 'mine'"):
        load_models(ServeConfig(data=str(tmp_path), model=(f"mine={bundle}", f"mine={bundle}")))


def test_create_poll_download_list_remix_delete(served):
    base, _ = served
    c = client(base)
    video = c.videos.create_and_poll(prompt="A red ball bounces.", seconds="1", size="32x32",
                                     extra_body={"seed": 3, "steps": 2})
    assert (video.status, video.progress, video.object, video.model) == ("completed", 100, "video", "tiny")
    assert (video.seconds, video.size, video.error) == ("1", "32x32", None)
    assert video.completed_at >= video.created_at and video.seed == 3
    frames = decode(c.videos.download_content(video.id).content)
    assert frames.shape == (9, 32, 32, 3) and frames.std() > 0
    from PIL import Image

    for variant, fmt in (("thumbnail", "WEBP"), ("spritesheet", "JPEG")):
        data = c.videos.download_content(video.id, variant=variant).content
        assert Image.open(io.BytesIO(data)).format == fmt

    remix = c.videos.remix(video.id, prompt="A blue ball bounces.")
    assert remix.status in ("queued", "in_progress") and remix.remixed_from_video_id == video.id
    remix = c.videos.poll(remix.id, poll_interval_ms=50)
    assert remix.status == "completed" and remix.seconds == "1"
    assert decode(c.videos.download_content(remix.id).content).shape == (9, 32, 32, 3)

    listed = [v.id for v in c.videos.list(limit=100)]
    assert listed.index(remix.id) < listed.index(video.id)  # newest first
    assert [v.id for v in c.videos.list(order="asc", limit=100)] == listed[::-1]
    page = c.videos.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    assert [v.id for v in page] == listed  # the SDK follows after= from page to page

    deleted = c.videos.delete(video.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (video.id, True, "video.deleted")
    with pytest.raises(openai.NotFoundError):
        c.videos.retrieve(video.id)
    with pytest.raises(openai.NotFoundError):
        c.videos.download_content(video.id)
    assert video.id not in [v.id for v in c.videos.list(limit=100)]


def test_every_mode(served, tmp_path):
    base, _ = served
    c = client(base)
    # animate: the image is fitted to the size and becomes frame 0
    animated = c.videos.create_and_poll(prompt="A red square.", input_reference=("red.png", png(), "image/png"),
                                        poll_interval_ms=50)
    assert (animated.status, animated.mode, animated.seconds) == ("completed", "animate", "1")
    # longer than the model's window: sliding windows
    long = c.videos.create_and_poll(prompt="A long one.", seconds="2", poll_interval_ms=50)
    assert long.status == "completed"
    assert len(decode(c.videos.download_content(long.id).content)) == 17
    # loop, and frames given instead of seconds
    looped = c.videos.create_and_poll(prompt="Round and round.", extra_body={"loop": True, "frames": 9},
                                      poll_interval_ms=50)
    assert (looped.status, looped.loop, looped.seconds) == ("completed", True, "1")
    # edit and extend an upload
    clip = c.videos.download_content(animated.id).content
    edited = c.videos.poll(c.videos.edit(prompt="Now green.", video=("clip.mp4", clip, "video/mp4")).id,
                           poll_interval_ms=50)
    assert (edited.status, edited.mode, edited.seconds) == ("completed", "edit", "1")
    extended = c.videos.poll(c.videos.extend(prompt="And on.", seconds="1", video=("clip.mp4", clip, "video/mp4")).id,
                             poll_interval_ms=50)
    assert (extended.status, extended.seconds) == ("completed", "2")
    assert len(decode(c.videos.download_content(extended.id).content)) == 17
    # ... and of a video on the server, by id (sent as JSON: this SDK's multipart encoder
    # refuses the {"id": ...} reference its own types allow)
    by_id = c.post("/videos/extensions", cast_to=openai.types.Video,
                   body={"prompt": "More.", "seconds": "0.5", "video": {"id": long.id}})
    by_id = c.videos.poll(by_id.id, poll_interval_ms=50)
    assert (by_id.status, by_id.seconds, by_id.source_video_id) == ("completed", "2.5", long.id)
    edit_id = c.post("/videos/edits", cast_to=openai.types.Video,
                     body={"prompt": "Other.", "video": {"id": long.id}, "strength": 0.3})
    edit_id = c.videos.poll(edit_id.id, poll_interval_ms=50)
    assert (edit_id.status, edit_id.seconds, edit_id.strength) == ("completed", "2", 0.3)
    # JSON body with a data-URL image
    import base64

    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    r = httpx.post(f"{base}/v1/videos", json={"prompt": "From JSON.", "input_reference": {"image_url": url}})
    assert r.status_code == 200 and r.json()["mode"] == "animate"
    assert c.videos.poll(r.json()["id"], poll_interval_ms=50).status == "completed"


@pytest.mark.parametrize("kwargs, status, param, words", [
    (dict(prompt="x", size="33x32"), 400, "size", "multiple of 8"),
    (dict(prompt="x", size="1024x1024"), 400, "size", "--max-side"),
    (dict(prompt="x", seconds="0.3"), 400, "seconds", "allowed seconds: 0.5, 1, 1.5"),
    (dict(prompt="x", seconds="30"), 400, "seconds", "allowed seconds"),
    (dict(prompt="x", model="sora-2"), 400, "model", "'tiny'"),
    (dict(prompt="x" * 1001), 400, "prompt", "at most 1000"),
    (dict(prompt="x", input_reference=("fake.png", b"not an image at all", "image/png")), 400, "input_reference",
     "not a readable image"),
    (dict(prompt="x", extra_body={"frames": 8}), 400, "frames", "4k+1"),
    (dict(prompt="x", extra_body={"steps": "many"}), 400, "steps", "integer"),
    (dict(prompt="x", extra_body={"loop": True, "frames": 5}), 400, "loop", "at least 9"),
])
def test_bad_requests_get_400_in_the_api_error_shape(served, kwargs, status, param, words):
    base, _ = served
    with pytest.raises(openai.APIStatusError) as info:
        client(base).videos.create(**kwargs)
    err = info.value
    assert err.status_code == status and err.body["param"] == param and err.body["type"] == "invalid_request_error"
    assert words in err.body["message"]


def test_missing_prompt_bad_upload_and_unknown_ids(served):
    base, _ = served
    r = httpx.post(f"{base}/v1/videos", data={"seconds": "1"}, files={"x": ("a", b"b")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{base}/v1/videos", json={"size": "32x32"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_required_parameter"
    c = client(base)
    with pytest.raises(openai.BadRequestError, match="not a readable video"):
        c.videos.edit(prompt="x", video=("clip.mp4", b"\x00 not a video" * 64, "video/mp4"))
    with pytest.raises(openai.NotFoundError):
        c.videos.remix("video_nope", prompt="x")
    r = httpx.get(f"{base}/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_queue_full_upload_too_large_and_not_ready(bundle, tmp_path):
    cfg = ServeConfig(data=str(tmp_path), model=(str(bundle),), max_queue=2, max_upload_mb=0.01)
    with running(cfg, start_worker=False) as (base, _):  # no worker: jobs stay queued
        c = client(base)
        first = c.videos.create(prompt="one")
        c.videos.create(prompt="two")
        with pytest.raises(openai.RateLimitError, match="queue is full"):
            c.videos.create(prompt="three")
        with pytest.raises(openai.ConflictError, match="queued"):
            c.videos.download_content(first.id)
        c.videos.delete(first.id)  # room for one more
        c.videos.create(prompt="three")
        with pytest.raises(openai.APIStatusError) as info:
            c.videos.create(prompt="big", input_reference=("big.png", os.urandom(20_000), "image/png"))
        assert info.value.status_code == 413


def test_an_idempotency_key_makes_one_job(served):
    base, _ = served
    c = client(base)
    a = c.videos.create(prompt="once", extra_headers={"Idempotency-Key": "k1"})
    b = c.videos.create(prompt="once", extra_headers={"Idempotency-Key": "k1"})
    assert a.id == b.id
    c.videos.poll(a.id, poll_interval_ms=50)


def test_api_keys_see_only_their_own_videos(bundle, tmp_path):
    cfg = ServeConfig(data=str(tmp_path), model=(str(bundle),), api_key=("key-a", "key-b"), cors_origin=("*",))
    with running(cfg) as (base, _):
        a, b = client(base, "key-a"), client(base, "key-b")
        with pytest.raises(openai.AuthenticationError):
            client(base, "wrong").videos.list()
        assert httpx.get(f"{base}/v1/videos").status_code == 401
        video = a.videos.create_and_poll(prompt="mine", poll_interval_ms=50)
        assert [v.id for v in a.videos.list()] == [video.id]
        assert list(b.videos.list()) == []
        for call in (lambda: b.videos.retrieve(video.id), lambda: b.videos.delete(video.id),
                     lambda: b.videos.download_content(video.id), lambda: b.videos.remix(video.id, prompt="x")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert a.videos.retrieve(video.id).status == "completed"
        r = httpx.options(f"{base}/v1/videos", headers={"Origin": "https://example.com",
                                                        "Access-Control-Request-Method": "POST"})
        assert r.headers.get("access-control-allow-origin") in ("*", "https://example.com")


def test_delete_cancels_a_running_job(bundle, tmp_path):
    cfg = ServeConfig(data=str(tmp_path), model=(str(bundle),))
    with running(cfg) as (base, server):
        c = client(base)
        video = c.videos.create(prompt="slow", extra_body={"steps": 500})
        deadline = time.time() + TIMEOUT_S
        while c.videos.retrieve(video.id).status != "in_progress" and time.time() < deadline:
            time.sleep(0.02)
        c.videos.delete(video.id)
        deadline = time.time() + TIMEOUT_S
        while server.worker._running and time.time() < deadline:
            time.sleep(0.02)
        assert not server.worker._running  # the run stopped before its 500 steps
        assert not server.store.video_dir(video.id).exists()
        after = c.videos.create_and_poll(prompt="next", poll_interval_ms=50)  # the worker lives on
        assert after.status == "completed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(bundle: Path, data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "videodit.cli", "serve", "--port", str(port), "--data", str(data),
                             "--model", f"tiny={bundle}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_up(base: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("server did not start")


def test_kill_9_mid_job_loses_nothing_and_duplicates_nothing(bundle, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _spawn(bundle, tmp_path, port)
    try:
        _wait_up(base, proc)
        c = client(base)
        done = c.videos.create_and_poll(prompt="finished before the crash", poll_interval_ms=50)
        mp4 = c.videos.download_content(done.id).content
        slow = c.videos.create(prompt="interrupted", seconds="4", extra_body={"steps": 500})  # seconds of work
        queued = c.videos.create(prompt="still queued")
        deadline = time.time() + TIMEOUT_S
        while c.videos.retrieve(slow.id).progress < 1 and time.time() < deadline:
            time.sleep(0.02)
        assert c.videos.retrieve(slow.id).status == "in_progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        proc = _spawn(bundle, tmp_path, port)
        _wait_up(base, proc)
        assert c.videos.download_content(done.id).content == mp4
        assert c.videos.retrieve(slow.id).status in ("queued", "in_progress")
        slow, queued = (c.videos.poll(v.id, poll_interval_ms=50) for v in (slow, queued))
        assert (slow.status, queued.status) == ("completed", "completed")
        assert len(decode(c.videos.download_content(slow.id).content)) == 33
        ids = [v.id for v in c.videos.list(limit=100)]
        assert sorted(ids) == sorted({done.id, slow.id, queued.id})  # each once, none new
    finally:
        proc.kill()
        proc.wait(10)


def test_an_interrupted_job_completes_after_restart(bundle, tmp_path):
    """The in-process half of the crash test: a job left in_progress by a dead server."""
    from videodit.serve.store import Store

    store = Store(tmp_path)
    job = store.add(owner="", model="tiny", mode="text", size="32x32", seconds="1", prompt="again",
                    params={"frames": 9})
    assert store.claim().id == job.id  # the dead server had taken it
    store.close()
    with running(ServeConfig(data=str(tmp_path), model=(f"tiny={bundle}",))) as (base, _):
        video = client(base).videos.poll(job.id, poll_interval_ms=50)
        assert video.status == "completed" and video.id == job.id
        assert [v.id for v in client(base).videos.list()] == [job.id]
