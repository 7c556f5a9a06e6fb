"""End to end through the CLI on a tiny trained bundle: train -> generate -> eval --model."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_bundle
from videodit.cli import main
from videodit.pipeline import Pipeline
from videodit.video import read_video


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    path = make_tiny_bundle(root, sample_every=2, sample_prompts=2, sample_steps=1)
    assert (root / "run" / "eval.csv").read_text().startswith("step,score_in_dist")
    return path


def test_generate_writes_the_requested_clip(bundle, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "A red ball bounces on a black background.", "-o", str(out), "--model", str(bundle),
                 "--steps", "2", "--frames", "9", "--size", "48x32", "--seed", "3"]) == 0
    video = read_video(out)
    assert video.frames.shape == (9, 32, 48, 3) and video.fps == 8.0
    assert "wrote" in capsys.readouterr().out


def test_same_seed_same_frames_and_unconditional_prompt(bundle):
    pipe = Pipeline.load(bundle)
    a = pipe("a blue square", steps=2, seed=1)
    b = pipe("a blue square", steps=2, seed=1)
    c = pipe("a blue square", steps=2, seed=2)
    assert a.shape == (5, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert pipe("", steps=2).shape == a.shape  # empty prompt = unconditional


def test_batch_mode_writes_in_prompt_order(bundle, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\nA green square moves up on a white background.\nyellow triangle falling\n")
    assert main(["generate", "--prompts-file", str(prompts), "--out-dir", str(tmp_path / "out"),
                 "--model", str(bundle), "--steps", "1"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["00000.mp4", "00001.mp4", "00002.mp4"]
    # Batch item i equals the single-prompt run of the same prompt and seed.
    assert main(["generate", "A green square moves up on a white background.", "-o", str(tmp_path / "one.mp4"),
                 "--model", str(bundle), "--steps", "1"]) == 0
    assert np.array_equal(read_video(tmp_path / "out" / "00001.mp4").frames, read_video(tmp_path / "one.mp4").frames)


@pytest.mark.parametrize("args, message", [
    (["--frames", "16"], "nearest: 17"),
    (["--size", "36x32"], "width 36: must be a multiple of 8"),
    (["-o", "x.avi"], "unsupported output type"),
    (["-o", "x.png"], "one frame"),
    (["--guidance-interval", "0.9", "0.2"], "guidance interval (0.9, 0.2): need 0 <= LO <= HI <= 1"),
])
def test_bad_requests_get_one_line_errors(bundle, tmp_path, capsys, args, message):
    argv = ["generate", "a red ball", "--model", str(bundle), "--steps", "1"] + args
    if "-o" not in args:
        argv += ["-o", str(tmp_path / "v.mp4")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unparsable_size_is_a_usage_error(capsys):
    assert main(["generate", "a red ball", "--size", "big"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_missing_bundle_names_the_path(tmp_path, capsys):
    assert main(["generate", "a red ball", "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_eval_model_generates_then_scores(bundle, tmp_path, capsys):
    assert main(["eval", "--model", str(bundle), "--n", "2", "--steps", "1", "--videos", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("SCORE in_dist=")
    assert (tmp_path / "ev" / "00001.mp4").is_file()
    assert len((tmp_path / "ev" / "prompts.txt").read_text().splitlines()) == 2


def test_eval_model_at_another_size_and_duration(bundle, tmp_path, capsys):
    argv = ["eval", "--model", str(bundle), "--n", "1", "--steps", "1", "--videos", str(tmp_path / "ev"),
            "--size", "48x32", "--frames", "9"]
    assert main(argv) == 0
    assert read_video(tmp_path / "ev" / "00000.mp4").frames.shape == (9, 32, 48, 3)
    capsys.readouterr()
    assert main(["eval", "--videos", str(tmp_path / "ev"), "--prompts", str(tmp_path / "ev" / "prompts.txt"),
                 "--size", "48x32"]) == 2
    assert "--size" in capsys.readouterr().err


def test_request_beyond_free_memory_is_refused_with_the_estimate(bundle, monkeypatch, tmp_path, capsys):
    import videodit.pipeline as pipeline

    monkeypatch.setattr(pipeline, "available_memory", lambda: 1 << 20)  # 1 MiB free
    assert main(["generate", "a red ball", "--model", str(bundle), "--steps", "1", "-o", str(tmp_path / "v.mp4")]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "GiB" in err and "is free" in err


def test_without_a_bundled_model_generate_says_so(capsys, monkeypatch, tmp_path):
    import videodit.pipeline as pipeline

    monkeypatch.setattr(pipeline, "BUNDLED", tmp_path / "bundle")  # as in a release without a DiT
    assert main(["generate", "a red ball", "-o", str(tmp_path / "v.mp4")]) == 2
    assert "ships no trained text-to-video model" in capsys.readouterr().err


def test_model_bundled_names_the_default_model(bundle, monkeypatch, tmp_path):
    """`--model bundled` is the model used without --model, as in `videodit eval` and `train --init`."""
    import videodit.pipeline as pipeline

    monkeypatch.setattr(pipeline, "BUNDLED", bundle)
    clips = []
    for name, extra in (("default.mp4", []), ("named.mp4", ["--model", "bundled"])):
        assert main(["generate", "a red ball", "-o", str(tmp_path / name), "--steps", "1", *extra]) == 0
        clips.append(read_video(tmp_path / name).frames)
    assert np.array_equal(*clips)


def test_guidance_interval_flag_reaches_the_sampler(bundle, tmp_path):
    """--guidance-interval changes the video (guidance skipped at some steps) and 0 1 is plain guidance."""
    def clip(name, *extra):
        out = tmp_path / name
        assert main(["generate", "a red ball", "-o", str(out), "--model", str(bundle), "--steps", "4",
                     "--guidance", "4", *extra]) == 0
        return read_video(out).frames

    plain = clip("plain.mp4")
    assert np.array_equal(plain, clip("full.mp4", "--guidance-interval", "0", "1"))
    assert not np.array_equal(plain, clip("narrow.mp4", "--guidance-interval", "0.3", "0.8"))


def test_bundled_model_generates_the_prompted_background(one_thread):
    """Regression guard for the shipped DiT (docs/MODEL.md: background 0.99 on 300 eval prompts):
    it loads without --model and paints the background the prompt names."""
    from videodit.eval.metrics import score_video
    from videodit.pipeline import Pipeline

    pipe = Pipeline.load()
    for background in ("white", "black"):
        prompt = f"A red circle moves to the right on a {background} background."
        frames = pipe(prompt, seed=0)
        assert frames.shape == (17, 64, 64, 3)
        assert score_video(frames, prompt, fps=pipe.config.fps).metrics["background"].passed, background


def test_eval_decoders_scores_one_set_of_latents_with_each_vae(bundle, tmp_path, monkeypatch, capsys):
    """benchmarks/eval_decoders.py: the DiT samples once; its own VAE (copied) scores exactly what the
    bundle's does, a widened copy of it is accepted, a VAE with another encoder is refused."""
    import dataclasses
    import json
    import runpy
    import shutil
    import sys
    from pathlib import Path

    import torch

    from videodit.errors import VideoditError
    from videodit.vae import VideoVAE, widen

    script = str(Path(__file__).resolve().parent.parent / "benchmarks" / "eval_decoders.py")
    same = shutil.copytree(bundle / "vae", tmp_path / "same")
    vae = VideoVAE.from_pretrained(same)
    wide = VideoVAE(dataclasses.replace(vae.cfg, decoder_base_channels=2 * vae.cfg.base_channels))
    widen(vae.encoder, wide.encoder)
    widen(vae.decoder, wide.decoder)
    wide.save_pretrained(tmp_path / "wide")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["eval_decoders.py", str(same), str(tmp_path / "wide"), "--model", str(bundle),
                                      "--n", "2", "--batch", "2", "--out", str(out)])
    runpy.run_path(script, run_name="__main__")
    reports = {name: json.loads((out / f"{name}.json").read_text()) for name in ("bundle", "same", "wide")}
    assert reports["same"]["videos"] == reports["bundle"]["videos"] and len(reports["bundle"]["videos"]) == 2
    assert (out / "latents.pt").exists()

    torch.manual_seed(1)
    VideoVAE(vae.cfg).save_pretrained(tmp_path / "other")  # a fresh encoder: another latent space
    monkeypatch.setattr(sys, "argv", ["eval_decoders.py", str(tmp_path / "other"), "--model", str(bundle),
                                      "--n", "2", "--batch", "2", "--out", str(out)])
    with pytest.raises(VideoditError, match="not the bundle VAE's latent space"):
        runpy.run_path(script, run_name="__main__")


@pytest.mark.slow
def test_compiled_dit_generates_what_the_eager_one_does(tmp_path):
    """Pipeline.load(compile=True) / generate --compile: torch.compile of the DiT, same clip within
    bf16 tolerance (inductor fuses and reorders the arithmetic)."""
    import numpy as np

    from videodit.pipeline import Pipeline

    eager = Pipeline.load()("A red ball bounces.", steps=3, seed=0)
    compiled = Pipeline.load(compile=True)("A red ball bounces.", steps=3, seed=0)
    assert compiled.shape == eager.shape
    assert np.abs(compiled.astype(int) - eager.astype(int)).mean() < 2.0
