"""Prompting with images and videos (videodit.prompting, `videodit generate --image ...`) on a
tiny bundle trained for 2 steps on 9-frame 32x32 clips: shapes, exactness of the held frames,
stitching, and every bad-input message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_bundle
from videodit import prompting
from videodit.cli import main
from videodit.errors import VideoditError
from videodit.pipeline import Pipeline
from videodit.video import read_image, read_video, write_image, write_video

PROMPT = "A red ball moves to the right on a black background."


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle"), frames=9)


@pytest.fixture(scope="module")
def pipe(bundle):
    return Pipeline.load(bundle)


@pytest.fixture(scope="module")
def clip():
    """A red 8x8 square moving right 2 px a frame on black: (7, 32, 32, 3) uint8."""
    frames = np.zeros((7, 32, 32, 3), np.uint8)
    for f in range(7):
        frames[f, 12:20, 4 + 2 * f : 12 + 2 * f] = (220, 40, 40)
    return frames


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip):
    root = tmp_path_factory.mktemp("inputs")
    paths = {"image": root / "first.png", "big": root / "big.png", "clip": root / "clip.mp4", "b": root / "b.gif"}
    write_image(paths["image"], clip[0])
    write_image(paths["big"], np.repeat(np.repeat(clip[3], 3, axis=0), 2, axis=1)[:90])  # 90x64 -> 32x32
    write_video(paths["clip"], clip)
    write_video(paths["b"], clip[::-1])
    (root / "broken.png").write_bytes(b"not an image at all")
    (root / "broken.mp4").write_bytes(b"not a video at all")
    paths["broken_image"], paths["broken_clip"] = root / "broken.png", root / "broken.mp4"
    return paths


def test_every_mode_returns_its_frames_at_the_size(pipe, clip):
    s = pipe.sampler(steps=1)
    runs = {
        "animate": (prompting.animate(pipe, PROMPT, clip[0], sampler=s), 9),
        "last image": (prompting.animate(pipe, PROMPT, None, clip[-1], sampler=s), 9),
        "two images": (prompting.animate(pipe, PROMPT, clip[0], clip[-1], frames=13, sampler=s), 13),
        "forward": (prompting.extend(pipe, PROMPT, clip, "forward", new_frames=10, sampler=s), 17),
        "backward": (prompting.extend(pipe, PROMPT, clip, "backward", new_frames=10, sampler=s), 17),
        # A + (window - 5) new frames + B; B may be a single image.
        "connect": (prompting.connect(pipe, PROMPT, clip, clip[:1], sampler=s), 7 + 4 + 1),
        "loop": (prompting.loop(pipe, PROMPT, frames=13, sampler=s), 13),
        "edit": (prompting.edit(pipe, PROMPT, clip, 0.5, sampler=s), 7),
        "still": (prompting.long_video(pipe, PROMPT, 1, sampler=s), 1),
    }
    for name, (video, frames) in runs.items():
        assert video.shape == (frames, 32, 32, 3) and video.dtype == np.uint8, name


def test_image_is_held_exactly_in_latent_space_and_pixels(pipe, clip):
    s = pipe.sampler(steps=2, seed=4)
    image_latent = prompting.encode_frames(pipe, clip[:1])  # (1, c, 1, h, w)
    shape = pipe.latent_shape(9, (32, 32))
    cond = prompting.condition(shape, lead=image_latent)
    latents = pipe.generate_latents([PROMPT], frames=9, size=(32, 32), sampler=s, cond=cond)
    assert torch.equal(latents[:, :, :1], image_latent)
    assert not torch.equal(latents[:, :, 1:2], prompting.encode_frames(pipe, clip[:5])[:, :, 1:])
    # animate is this condition and nothing else; paste_image writes the image over frame 0.
    assert np.array_equal(prompting.animate(pipe, PROMPT, clip[0], sampler=s), pipe.decode_latents(latents)[0])
    pasted = prompting.animate(pipe, PROMPT, clip[0], sampler=s, paste_image=True)
    assert np.array_equal(pasted[0], clip[0]) and np.array_equal(pasted[1:], pipe.decode_latents(latents)[0][1:])


def test_leading_latents_are_exact_because_the_vae_is_causal(pipe, clip):
    pipe.vae.compute_dtype = torch.float32  # bf16 convs of different lengths round differently
    try:
        lead, covered = prompting.lead_latents(pipe, clip[:5], 2)
        assert covered == 5
        whole = prompting.encode_frames(pipe, np.concatenate([clip[:5], clip[::-1][:4]]))
        torch.testing.assert_close(lead, whole[:, :, :2], atol=1e-5, rtol=0)
        # A trailing chunk depends on what precedes it: a still prefix stands in for the unknown frames.
        trail = prompting.trail_latents(pipe, clip[:4], 9)
        assert trail.shape[2] == 1
        torch.testing.assert_close(trail, prompting.encode_frames(pipe, np.concatenate(
            [np.repeat(clip[:1], 5, axis=0), clip[:4]]))[:, :, -1:])
    finally:
        pipe.vae.compute_dtype = torch.bfloat16


def test_extensions_keep_the_clip_and_connect_keeps_both(pipe, clip):
    s = pipe.sampler(steps=1)
    fwd = prompting.extend(pipe, PROMPT, clip, "forward", new_frames=4, sampler=s)
    bwd = prompting.extend(pipe, PROMPT, clip, "backward", new_frames=4, sampler=s)
    assert np.array_equal(fwd[:7], clip) and np.array_equal(bwd[4:], clip)
    joined = prompting.connect(pipe, PROMPT, clip, clip[::-1], frames=13, sampler=s)
    assert len(joined) == 7 + 8 + 7 and np.array_equal(joined[:7], clip) and np.array_equal(joined[-7:], clip[::-1])
    span = prompting.bridge(pipe, PROMPT, clip, clip[::-1], frames=13, sampler=s)  # A[-1] .. B[0], as decoded
    assert len(span) == 10 and np.array_equal(joined[7:15], span[1:-1])


def test_long_video_is_its_first_window_then_stitched_windows(pipe):
    s = pipe.sampler(steps=1, seed=2)
    long = prompting.long_video(pipe, PROMPT, 25, sampler=s)
    assert long.shape == (25, 32, 32, 3)
    assert np.array_equal(long[:9], pipe(PROMPT, frames=9, steps=1, seed=2))
    # Window 2 is held on frame 8 alone (overlap 1 of 3 latent frames) and adds 8 frames: a prefix
    # of the same video made in more windows is the same video.
    assert np.array_equal(prompting.long_video(pipe, PROMPT, 17, sampler=s), long[:17])
    assert not np.array_equal(prompting.long_video(pipe, PROMPT, 25, overlap=2, sampler=s), long)
    assert prompting.window_seams(25, 9) == [9, 17] and prompting.window_seams(25, 9, overlap=2) == [9, 13, 17, 21]


def test_loop_is_a_first_pass_then_a_bridge_back_to_its_start(pipe, clip):
    s = pipe.sampler(steps=1, seed=3)
    assert prompting.loop_lengths(13, 9) == (9, 9) and prompting.loop_lengths(33, 17) == (21, 17)
    looped = prompting.loop(pipe, PROMPT, frames=13, image=clip[0], sampler=s)
    first = prompting.animate(pipe, PROMPT, clip[0], sampler=s)  # the first pass animates the image
    assert np.array_equal(looped[:9], first)
    # The closing bridge runs from the pass's last frame into its first 4, seeded past the first pass.
    closing = prompting.bridge(pipe, PROMPT, first, first, frames=9, sampler=pipe.sampler(steps=1, seed=3 + 9))
    assert np.array_equal(looped[9:], closing[1:-1])
    with pytest.raises(VideoditError, match="frames=1: the image would be the whole video"):
        prompting.animate(pipe, PROMPT, clip[0], frames=1, sampler=s)


def test_edit_at_strength_zero_returns_the_clip_through_the_vae(pipe, clip):
    s = pipe.sampler(steps=4)
    through_vae = pipe.decode_latents(prompting.encode_frames(pipe, np.concatenate([clip, clip[-1:] .repeat(2, 0)])))
    assert np.array_equal(prompting.edit(pipe, PROMPT, clip, 0.0, sampler=s), through_vae[0][:7])
    near = prompting.edit(pipe, PROMPT, clip, 0.02, sampler=s).astype(int)
    far = prompting.edit(pipe, PROMPT, clip, 0.9, sampler=s).astype(int)
    base = through_vae[0][:7].astype(int)
    assert np.abs(near - base).mean() < 1.0 < np.abs(far - base).mean()


def test_api_resizes_with_a_warning(pipe, clip):
    wide = np.concatenate([clip[0], clip[0]], axis=1)  # 64x32
    with pytest.warns(UserWarning, match="image is 64x32; resized and centre-cropped to 32x32"):
        video = prompting.animate(pipe, PROMPT, wide, sampler=pipe.sampler(steps=1))
    assert video.shape == (9, 32, 32, 3)
    # Scale 1 covers 32x32 already: only the centre crop remains, pixel for pixel.
    assert np.array_equal(prompting.fit_frames(wide[None], (32, 32))[0][0], wide[:, 16:48])
    same, note = prompting.fit_frames(clip, (32, 32))
    assert same is clip and note is None


@pytest.mark.parametrize("flags, frames", [
    (["--image", "{image}"], 9),
    (["--last-image", "{image}", "--frames", "13"], 13),
    (["--image", "{image}", "--last-image", "{image}"], 9),
    (["--video", "{clip}", "--extend", "forward", "--extend-frames", "6"], 13),
    (["--video", "{clip}", "--extend", "backward"], 15),
    (["--connect", "{clip}", "{b}"], 18),
    (["--loop", "--frames", "17"], 17),
    (["--edit", "{clip}", "--strength", "0.4"], 7),
    (["--frames", "25"], 25),
    (["--image", "{image}", "--frames", "17", "--paste-image"], 17),
])
def test_cli_modes(bundle, files, tmp_path, flags, frames):
    out = tmp_path / "out.mp4"
    argv = ["generate", PROMPT, "--model", str(bundle), "--steps", "1", "-o", str(out)]
    assert main(argv + [f.format(**files) for f in flags]) == 0
    video = read_video(out)
    assert video.frames.shape == (frames, 32, 32, 3)
    if "--paste-image" in flags:
        assert np.abs(video.frames[0].astype(int) - read_image(files["image"])).mean() < 3  # through H.264


def test_cli_still_image_is_a_png_and_resize_note(bundle, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", PROMPT, "--model", str(bundle), "--steps", "1", "--frames", "1"]) == 0
    assert read_image(tmp_path / "image.png").shape == (32, 32, 3)
    assert main(["generate", PROMPT, "--model", str(bundle), "--steps", "1", "--image", str(files["big"]),
                 "-o", "a.gif"]) == 0
    assert f"note: {files['big']} is 64x90; resized and centre-cropped to 32x32" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--image", "{broken_image}"], "broken.png: cannot read as an image"),
    (["--image", "{missing}"], "argument --image: no such file"),
    (["--edit", "{broken_clip}"], "broken.mp4"),
    (["--image", "{image}", "--edit", "{clip}"], "--edit cannot go with --image"),
    (["--extend", "forward"], "--extend needs --video"),
    (["--video", "{clip}"], "--video needs --extend"),
    (["--strength", "0.5"], "--strength needs --edit"),
    (["--paste-image"], "--paste-image needs --image"),
    (["--loop", "--last-image", "{image}"], "--loop cannot go with --last-image"),
    (["--connect", "{clip}", "{b}", "--video", "{clip}", "--extend", "forward"], "cannot go with"),
    (["--edit", "{clip}", "--strength", "1.5"], "argument --strength: must be in [0, 1] (got 1.5)"),
    (["--edit", "{clip}", "--frames", "9"], "--edit takes no --frames"),
    (["--connect", "{clip}", "{b}", "--window", "9"], "--connect takes no --window"),
    (["--loop", "--frames", "5"], "loop frames=5: must be 4k+1 and at least 9"),
    (["--video", "{image}", "--extend", "backward"], "needs at least 4"),
    (["--image", "{image}", "-o", "{png}"], "a .png holds one frame"),
    (["--frames", "24"], "nearest: 25"),
    (["--image", "{image}", "--frames", "1", "-o", "{png}"], "frames=1: the image would be the whole video"),
])
def test_bad_input_gets_a_one_line_error(bundle, files, tmp_path, capsys, flags, message):
    names = dict(files, missing=tmp_path / "missing.png", png=tmp_path / "x.png")
    argv = ["generate", PROMPT, "--model", str(bundle), "--steps", "1"] + [f.format(**names) for f in flags]
    if "-o" not in flags:
        argv += ["-o", str(tmp_path / "v.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_prompting_flags_refuse_batch_mode(bundle, files, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red ball\n")
    assert main(["generate", "--prompts-file", str(prompts), "--out-dir", str(tmp_path / "o"),
                 "--image", str(files["image"])]) == 2
    assert "takes one PROMPT, not --prompts-file" in capsys.readouterr().err
