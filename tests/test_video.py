import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from videodit.errors import VideoditError
from videodit.video import (
    Video,
    frames_to_tensor,
    psnr,
    read_image,
    read_video,
    tensor_to_frames,
    write_image,
    write_video,
)
from videodit.video import _rgb_to_yuv420p

# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "background, color, floor",
    [
        # SynthWorld's hardest pair (yellow on gray) measures 37.8 dB; 35 dB is the contract and
        # 37 guards the chroma siting of _rgb_to_yuv420p (swscale's conversion gave 36.2 dB).
        ((128, 128, 128), (240, 210, 40), 37.0),
        ((0, 0, 0), (40, 80, 230), 35.0),
        ((255, 255, 255), (250, 130, 200), 35.0),
        ((0, 0, 0), (255, 255, 0), 35.0),
    ],
)
def test_mp4_round_trip_keeps_psnr_above_35db(tmp_path, moving_disc, background, color, floor):
    clip = moving_disc(background=background, color=color)
    path = write_video(tmp_path / "clip.mp4", clip, fps=8.0)
    video = read_video(path)
    assert isinstance(video, Video)
    assert video.frames.shape == clip.shape and video.frames.dtype == np.uint8
    assert video.fps == 8.0
    assert psnr(clip, video.frames) > floor


def test_mp4_bytes_are_deterministic(tmp_path, moving_disc):
    # crf's MB-tree rate control made x264 output vary between runs; constant QP does not.
    clip = moving_disc(frames=9, color=(40, 180, 70))
    payloads = set()
    for i in range(4):
        payloads.add(write_video(tmp_path / f"run{i}.mp4", clip).read_bytes())
        read_video(tmp_path / f"run{i}.mp4")
    assert len(payloads) == 1


def test_rgb_to_yuv420p_flat_colours_match_bt709_limited_range():
    def planes(rgb):
        yuv = _rgb_to_yuv420p(np.full((4, 6, 3), rgb, np.uint8))  # (H * 3/2, W) = (6, 6)
        return yuv[:4].ravel(), yuv[4:].ravel()[:6], yuv[4:].ravel()[6:]  # Y (4x6), Cb, Cr (2x3)

    for rgb, (y, cb, cr) in [((0, 0, 0), (16, 128, 128)), ((255, 255, 255), (235, 128, 128)),
                             ((255, 0, 0), (63, 102, 240)), ((0, 0, 255), (32, 240, 118))]:
        y_plane, cb_plane, cr_plane = planes(rgb)
        assert set(y_plane) == {y} and set(cb_plane) == {cb} and set(cr_plane) == {cr}, rgb


@pytest.mark.parametrize("suffix", [".gif", ".webp"])
@pytest.mark.parametrize("fps", [8.0, 24.0, 7.5])
def test_gif_and_webp_round_trip_exactly_with_fps(tmp_path, moving_disc, suffix, fps):
    # Few colours, so the GIF palette and lossless WebP both keep every pixel; the rate survives
    # whole-centisecond (GIF) and whole-millisecond (WebP) frame delays.
    clip = moving_disc(frames=9)
    video = read_video(write_video(tmp_path / f"clip{suffix}", clip, fps=fps))
    np.testing.assert_array_equal(video.frames, clip)
    assert video.fps == fps


def test_gif_keeps_a_colour_seen_in_one_frame_and_approximates_many_colours(tmp_path, moving_disc):
    clip = moving_disc(frames=17)
    clip[15, :4, :4] = (10, 250, 10)  # only in frame 15, which a 16-frame palette sample skips
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "a.gif", clip)).frames, clip)

    # 64 * 64 * 5 distinct colours: the median-cut palette, each pixel its nearest entry.
    ramp = np.arange(64 * 64 * 5, dtype=np.int64).reshape(5, 64, 64)  # (F, H, W)
    smooth = np.stack([ramp % 256, (ramp // 256) * 3 % 256, ramp // 64 % 256], axis=-1).astype(np.uint8)
    assert 25.0 < psnr(smooth, read_video(write_video(tmp_path / "b.gif", smooth)).frames) < math.inf


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".mp4"])
def test_repeated_frames_survive(tmp_path, suffix):
    # A still SynthWorld scene repeats one frame; libwebp stores each run of equal frames once.
    clip = np.zeros((9, 16, 16, 3), np.uint8)
    clip[:, 4:8, 4:8] = 200
    clip[5:, 0, 0] = 50  # two runs: frames 0-4 and 5-8
    for frames in (clip, clip[:1].repeat(9, axis=0)):
        video = read_video(write_video(tmp_path / f"clip{suffix}", frames, fps=30000 / 1001))
        assert video.frames.shape == frames.shape
        # Centisecond GIF delays cannot tell 29.97 fps from 30 over 9 frames; the simpler wins.
        assert video.fps == (30.0 if suffix == ".gif" else pytest.approx(30000 / 1001, rel=1e-9))
        assert read_video(tmp_path / f"clip{suffix}", max_frames=6).frames.shape[0] == 6
        if suffix != ".mp4":
            np.testing.assert_array_equal(video.frames, frames)


@pytest.mark.parametrize("suffix", [".mov", ".mkv"])
def test_other_h264_containers_keep_ntsc_rate(tmp_path, moving_disc, suffix):
    clip = moving_disc(frames=5)
    video = read_video(write_video(tmp_path / f"clip{suffix}", clip, fps=30000 / 1001))
    assert video.fps == pytest.approx(30000 / 1001, rel=1e-9)
    assert psnr(clip, video.frames) > 35.0


def test_png_folder_round_trip_and_stale_frames_removed(tmp_path, moving_disc):
    clip = moving_disc(frames=5)
    folder = tmp_path / "frames"  # no suffix: a folder
    write_video(folder, moving_disc(frames=9), fps=8.0)
    assert write_video(folder, clip, fps=12.5) == folder  # an existing folder, fewer frames
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.png" for i in range(5)]
    video = read_video(folder)
    np.testing.assert_array_equal(video.frames, clip)
    assert video.fps == 12.5


def test_png_folder_sorts_numbers_naturally_and_defaults_fps(tmp_path, moving_disc):
    clip = moving_disc(frames=11)
    for i, frame in enumerate(clip):
        write_image(tmp_path / f"frame{i}.png", frame)  # frame10 must come after frame9
    video = read_video(tmp_path, max_frames=None)
    np.testing.assert_array_equal(video.frames, clip)
    assert video.fps == 8.0  # plain PNGs carry no rate


def test_one_frame_png_is_a_still_image(tmp_path, moving_disc):
    frame = moving_disc(frames=1)
    path = write_video(tmp_path / "still.png", frame, fps=8.0)
    np.testing.assert_array_equal(read_image(path), frame[0])
    video = read_video(path)
    np.testing.assert_array_equal(video.frames, frame)


def test_jpeg_reads_as_one_frame_video(tmp_path, moving_disc):
    frame = moving_disc(frames=1)[0]
    video = read_video(write_image(tmp_path / "photo.jpg", frame))
    assert video.frames.shape == (1, 64, 64, 3)
    assert video.fps == 8.0
    assert psnr(frame, video.frames[0]) > 30.0


def _write_with_pyav(path, clip, codec, pix_fmt, fps):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], pix_fmt
        for rgb in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)))
        container.mux(stream.encode())


@pytest.mark.parametrize(
    "name, codec, pix_fmt, fps, min_psnr",
    [("ffv1.mkv", "ffv1", "bgr0", 10, math.inf), ("png.mov", "png", "rgb24", 25, math.inf),
     ("mpeg4.avi", "mpeg4", "yuv420p", 12, 25.0), ("mjpeg.avi", "mjpeg", "yuvj420p", 15, 30.0)],
)
def test_reads_other_containers_and_codecs(tmp_path, moving_disc, name, codec, pix_fmt, fps, min_psnr):
    clip = moving_disc(frames=5)
    _write_with_pyav(tmp_path / name, clip, codec, pix_fmt, fps)
    video = read_video(tmp_path / name)
    assert video.frames.shape == clip.shape
    assert video.fps == fps
    assert psnr(clip, video.frames) >= min_psnr


def test_max_frames_reads_a_prefix(tmp_path, moving_disc):
    clip = moving_disc(frames=9)
    for target in (tmp_path / "clip.gif", tmp_path / "clip.webp", tmp_path / "clip"):
        video = read_video(write_video(target, clip), max_frames=3)
        np.testing.assert_array_equal(video.frames, clip[:3])
    assert read_video(tmp_path / "clip.gif", max_frames=100).frames.shape[0] == 9
    with pytest.raises(VideoditError, match="max_frames"):
        read_video(tmp_path / "clip.gif", max_frames=0)


def test_odd_size_mp4_is_padded_with_a_warning(tmp_path, moving_disc):
    clip = moving_disc(frames=5)[:, :63, :61]
    with pytest.warns(UserWarning, match="61x63 padded to 62x64"):
        write_video(tmp_path / "odd.mp4", clip)
    frames = read_video(tmp_path / "odd.mp4").frames
    assert frames.shape == (5, 64, 62, 3)
    assert psnr(clip, frames[:, :63, :61]) > 35.0


# -- damaged and wrong input ---------------------------------------------------------------------


@pytest.fixture
def long_mp4_bytes(tmp_path, moving_disc):
    clip = np.concatenate([moving_disc(frames=17)] * 3)  # 51 frames: several GOP-sized chunks
    return clip, write_video(tmp_path / "long.mp4", clip).read_bytes()


def test_truncated_mp4_returns_the_decodable_prefix_with_a_warning(tmp_path, long_mp4_bytes):
    clip, data = long_mp4_bytes
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.warns(UserWarning, match=r"cut\.mp4.*declares 51 frames but only \d+ decode"):
        video = read_video(path)
    assert 1 <= len(video.frames) < 51
    full = read_video(tmp_path / "long.mp4").frames
    np.testing.assert_array_equal(video.frames, full[: len(video.frames)])


def test_mp4_cut_before_any_frame_data_is_an_error(tmp_path, long_mp4_bytes):
    _, data = long_mp4_bytes
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: data.find(b"mdat") + 64])  # the index survives, the frames do not
    with pytest.raises(VideoditError, match=r"cut\.mp4: no decodable video frames"):
        read_video(path)


def test_mp4_cut_inside_its_header_is_an_error(tmp_path, long_mp4_bytes):
    _, data = long_mp4_bytes
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[:300])
    with pytest.raises(VideoditError, match=r"cut\.mp4"):
        read_video(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "notes.mp4").write_text("hello, I am not a video\n") and d / "notes.mp4",
         r"notes\.mp4: cannot open as a video"),
        (lambda d: (d / "empty.mp4").write_bytes(b"") or d / "empty.mp4", r"empty\.mp4: empty file"),
        (lambda d: (d / "nothing").mkdir() or d / "nothing", r"nothing: directory holds no \.png frames"),
        (lambda d: d / "missing.mp4", r"missing\.mp4: no such file"),
        (lambda d: (d / "notes.png").write_text("not a png") and d / "notes.png", r"notes\.png: cannot read"),
    ],
    ids=["text-as-mp4", "empty", "empty-dir", "missing", "text-as-png"],
)
def test_bad_files_raise_videodit_error_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(VideoditError, match=message):
        read_video(path)


def test_audio_only_file_is_an_error(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoditError, match=r"tone\.wav: no video stream \(streams found: audio\)"):
        read_video(path)


def test_folder_with_mixed_frame_sizes_is_an_error(tmp_path, moving_disc):
    write_image(tmp_path / "00000.png", moving_disc(frames=1)[0])
    write_image(tmp_path / "00001.png", moving_disc(frames=1, width=32)[0])
    with pytest.raises(VideoditError, match=r"00001\.png: frame size 32x64 differs"):
        read_video(tmp_path)


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "must be uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"shape \(F, H, W, 3\).*frames\[None\]"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"shape \(F, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "at least one frame"),
        ([[0]], "numpy uint8 array"),
    ],
)
def test_write_video_rejects_bad_frames(tmp_path, frames, message):
    with pytest.raises(VideoditError, match=message):
        write_video(tmp_path / "x.mp4", frames)
    assert not (tmp_path / "x.mp4").exists()


def test_write_video_rejects_bad_paths_and_rates(tmp_path):
    clip = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(VideoditError, match=r"x\.avi: cannot write '\.avi'.*\.mp4"):
        write_video(tmp_path / "x.avi", clip)
    with pytest.raises(VideoditError, match=r"\.png holds one frame, got 2"):
        write_video(tmp_path / "x.png", clip)
    with pytest.raises(VideoditError, match="parent directory"):
        write_video(tmp_path / "no" / "such" / "x.mp4", clip)
    for fps in (0, -8.0, math.nan, math.inf):
        with pytest.raises(VideoditError, match="fps must be"):
            write_video(tmp_path / "x.gif", clip, fps=fps)


# -- tensors and PSNR ----------------------------------------------------------------------------


def test_every_uint8_value_survives_the_tensor_round_trip():
    values = np.arange(256, dtype=np.uint8)
    frames = np.broadcast_to(values[None, None, :, None], (2, 1, 256, 3)).copy()  # (F, H, W, 3)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 2, 1, 256) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(tensor_to_frames(x), frames)
    np.testing.assert_array_equal(tensor_to_frames(x.to(torch.bfloat16)), frames)  # bf16 is exact enough


def test_tensor_helpers_batched_layout_rounding_and_clamping():
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 6, 3), dtype=np.uint8)  # (B, F, H, W, 3)
    x = frames_to_tensor(torch.from_numpy(frames))
    assert x.shape == (2, 3, 5, 4, 6)
    assert x[1, 2, 3, 1, 4].item() == pytest.approx(frames[1, 3, 1, 4, 2] / 127.5 - 1)  # channel moved ahead of time
    np.testing.assert_array_equal(tensor_to_frames(x), frames)

    # 0.4 / 127.5 above a level rounds down, 0.6 / 127.5 rounds up; out of range clamps.
    x = torch.tensor([-3.0, -1.0 + 0.4 / 127.5, -1.0 + 0.6 / 127.5, 0.0, 1.0, 7.0]).view(1, 1, 1, 6, 1)
    x = x.expand(1, 3, 1, 6, 1).permute(0, 1, 2, 4, 3)  # (B, 3, F, H, W) = (1, 3, 1, 1, 6)
    assert tensor_to_frames(x)[0, 0, 0, :, 0].tolist() == [0, 0, 1, 128, 255, 255]


def test_tensor_helpers_reject_bad_input():
    with pytest.raises(VideoditError, match="uint8"):
        frames_to_tensor(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(VideoditError, match=r"\(F, H, W, 3\)"):
        frames_to_tensor(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(VideoditError, match=r"\(3, F, H, W\)"):
        tensor_to_frames(torch.zeros(4, 1, 4, 4))
    with pytest.raises(VideoditError, match="NaN"):
        tensor_to_frames(torch.full((3, 1, 2, 2), math.nan))


def test_psnr_values_and_errors():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert psnr(a, a + 16) == pytest.approx(20 * math.log10(255 / 16))
    with pytest.raises(VideoditError, match="shapes differ"):
        psnr(a, a[:1])
    with pytest.raises(VideoditError, match="uint8"):
        psnr(a, a.astype(np.float32))
