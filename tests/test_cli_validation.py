"""The command refuses bad values before doing anything (a one-line error naming the flag, exit
code 2), prints its warnings and errors as single lines of their own, and sets its thread policy
in the library, where API users get it too."""

import os
import re
import subprocess
import sys

import pytest

from videodit.cli import main
from videodit.errors import VideoditError, VideoditWarning

MISSING = "/nonexistent/videodit-test-path"
HERE = __file__  # an input file that exists


def _rows():
    """(command words, flag, bad values): every numeric and path flag of every command, each
    value a string of the words that follow the flag."""
    generate = [
        ("--frames", ["0", "-1", "x", "1.5"]), ("--steps", ["0", "-1", "x"]),
        ("--guidance", ["nan", "inf", "-1", "x"]), ("--guidance-interval", ["nan 1", "0 2", "-1 0.5"]),
        ("--seed", ["-1", "x"]), ("--fps", ["0", "-1", "nan", "inf"]), ("--size", ["big", "0x64"]),
        ("--extend-frames", ["0", "-1"]), ("--strength", ["nan", "-0.1", "1.5"]), ("--window", ["0", "-1"]),
        ("--overlap", ["-1", "x"]), ("--model", [MISSING]), ("--prompts-file", [MISSING]),
        ("--image", [MISSING]), ("--last-image", [MISSING]), ("--video", [MISSING]), ("--edit", [MISSING]),
        ("--connect", [f"{MISSING} {HERE}"]), ("--lora", [MISSING]), ("--lora-scale", ["-1", "nan", "x"]),
    ]
    reconstruct = [
        ("--max-frames", ["0", "-1"]), ("--chunk-frames", ["-4", "3", "x"]), ("--tile", ["-1", "x"]),
        ("--refine", ["-1", "nan"]), ("--model", [MISSING]),
    ]
    render = [
        ("--n", ["0", "-1", "x"]), ("--frames", ["0", "8", "-3"]), ("--seed", ["-1"]), ("--start", ["-1"]),
        ("--fps", ["0", "nan", "inf"]), ("--size", ["10x10", "big"]), ("--family", ["bogus"]),
    ]
    show = [("--frames", ["0", "6"]), ("--seed", ["-1"]), ("--size", ["big"]), ("--family", ["bogus"])]
    evaluate = [
        ("--n", ["0", "-1"]), ("--steps", ["0"]), ("--guidance", ["nan", "-1"]), ("--guidance-interval", ["0 2"]),
        ("--seed", ["-1"]), ("--size", ["big"]), ("--frames", ["0"]), ("--fps", ["0", "inf"]),
        ("--prompts", [MISSING]), ("--model", [MISSING]), ("--still-threshold", ["nan", "x", "-1", "0"]),
        ("--gravity-tolerance", ["-0.1", "inf"]), ("--speed-tolerance", ["-1"]), ("--collision-tolerance", ["-1"]),
        ("--area-drift", ["-0.3"]), ("--relation-margin", ["-0.02"]), ("--max-edge-width", ["0", "-1"]),
        ("--min-presence", ["0", "1.5"]), ("--min-isolation", ["-0.1", "2"]), ("--max-area-ratio", ["0", "nan"]),
        ("--max-roughness", ["0", "-1"]), ("--square-fill", ["1.1"]), ("--triangle-fill", ["-0.5"]),
        ("--triangle-score", ["0.6", "-1"]), ("--triangle-fill-weight", ["-0.3"]),
    ]
    train = [
        ("--steps", ["0", "-1"]), ("--batch-size", ["0"]), ("--lr", ["nan", "-1", "inf", "x"]),
        ("--warmup-steps", ["-1"]), ("--weight-decay", ["-1"]), ("--grad-clip", ["0", "nan"]),
        ("--ema-decay", ["1.5", "-0.1"]), ("--caption-dropout", ["1", "-0.1"]), ("--cond-mix", ["1 -1", "nan"]),
        ("--t-mean", ["nan"]), ("--t-std", ["0"]), ("--frames", ["0"]), ("--seed", ["-1"]), ("--threads", ["-1"]),
        ("--num-workers", ["-1"]), ("--save-every", ["0"]), ("--save-minutes", ["-1"]), ("--log-every", ["0"]),
        ("--sample-every", ["-1"]), ("--sample-prompts", ["0"]), ("--sample-steps", ["0"]),
        ("--sample-guidance", ["nan"]), ("--sample-guidance-interval", ["0 2"]), ("--tokens-per-batch", ["-1"]),
        ("--latent-cache", ["-1"]), ("--max-minutes", ["nan", "-1"]), ("--pack", ["-1"]),
        ("--vae", [MISSING]), ("--init", [MISSING]), ("--data", [MISSING]), ("--lora", ["-1", "x"]),
        ("--lora-alpha", ["-1", "nan"]), ("--dim", ["-1", "x"]),
    ]
    train_vae = [
        ("--steps", ["-1"]), ("--max-minutes", ["-1"]), ("--batch-size", ["0"]), ("--lr", ["nan", "-1"]),
        ("--warmup-steps", ["-1"]), ("--weight-decay", ["-1"]), ("--kl-weight", ["-1"]), ("--mse-weight", ["nan"]),
        ("--edge-weight", ["-1"]), ("--adv-weight", ["inf"]), ("--adv-start", ["-1"]), ("--ema-decay", ["2"]),
        ("--grad-clip", ["0"]), ("--width", ["0"]), ("--height", ["-1"]), ("--frames", ["0"]),
        ("--crop-size", ["-1"]), ("--crop-frames", ["-1"]), ("--seed", ["-1"]), ("--threads", ["-1"]),
        ("--num-workers", ["-1"]), ("--save-every", ["0"]), ("--save-minutes", ["-1"]), ("--log-every", ["0"]),
        ("--init", [MISSING]), ("--decoder-channels", ["-1"]), ("--encoder-channels", ["-1"]),
        ("--stats-batches", ["0"]), ("--finetune", ["both"]), ("--anchor-weight", ["-1"]),
        ("--latent-noise", ["nan"]), ("--preset", ["huge"]),
    ]
    tables = [
        (["generate", "a red ball"], generate), (["reconstruct", HERE, "-o", "x.mp4"], reconstruct),
        (["world", "render", "--out", "unused"], render), (["world", "show", "0"], show), (["eval"], evaluate),
        (["train"], train), (["train-vae"], train_vae),
    ]
    rows = [(words, flag, value) for words, flags in tables for flag, values in flags for value in values]
    # Positional arguments: the input that must exist, a sample index.
    rows += [(["reconstruct", "-o", "x.mp4"], "input", MISSING), (["world", "show"], "index", "-1")]
    return rows


@pytest.fixture
def nothing_heavy_runs(monkeypatch):
    """Validation comes first: loading a model, training, rendering or scoring is a failure."""
    from videodit import world
    from videodit.eval import metrics
    from videodit.pipeline import Pipeline
    from videodit.train import dit, vae
    from videodit.vae import VideoVAE

    def refuse(*args, **kwargs):
        raise AssertionError("ran past validation")

    for owner, name in ((Pipeline, "load"), (VideoVAE, "from_pretrained"), (dit, "train_dit"),
                        (vae, "train_vae"), (world, "make_sample"), (metrics, "score_video")):
        monkeypatch.setattr(owner, name, refuse)


@pytest.mark.parametrize("words, flag, value", _rows(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_values_are_refused_up_front_in_one_line(words, flag, value, nothing_heavy_runs, capsys):
    argv = words + (value.split() if flag in ("input", "index") else [flag, *value.split()])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err


def _python(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**environ, **env})


def test_warnings_are_one_line_without_source_and_others_keep_their_format():
    result = _python("import warnings, videodit\n"
                     "from videodit.errors import VideoditWarning\n"
                     "warnings.warn('first\\n  second', VideoditWarning)\n"
                     "warnings.warn('from another library')\n")
    lines = result.stderr.splitlines()
    assert lines[0] == "videodit: warning: first second"
    assert lines[1] == "<string>:4: UserWarning: from another library"  # Python's own format, untouched


def test_a_warning_during_a_progress_bar_gets_its_own_line():
    result = _python("import warnings, videodit, tqdm\n"
                     "from videodit.errors import VideoditWarning\n"
                     "bar = tqdm.tqdm(total=10)\n"
                     "bar.update(3)\n"
                     "warnings.warn('mid-bar', VideoditWarning)\n"
                     "bar.close()\n")
    assert "videodit: warning: mid-bar" in re.split(r"[\r\n]", result.stderr), result.stderr


def test_an_error_after_a_progress_bar_starts_on_its_own_line(monkeypatch, capsys):
    from tqdm import tqdm

    from videodit.world import cli as world_cli

    def fail(args):
        bar = tqdm(total=10, file=sys.stderr)
        bar.update(3)
        raise VideoditError("broken\nin two lines")

    monkeypatch.setattr(world_cli, "_render", fail)
    assert main(["world", "render", "--out", "unused"]) == 2
    assert "videodit world: error: broken in two lines" in re.split(r"[\r\n]", capsys.readouterr().err)


def test_truncation_warning_shows_the_start_of_a_long_prompt():
    from videodit.text import TextEncoder, TextEncoderConfig

    encoder = TextEncoder(TextEncoderConfig(max_length=16))
    prompt = "a red ball bounces " * 250  # ~5,000 characters
    with pytest.warns(VideoditWarning, match="truncated") as record:
        encoder.encode([prompt])
    message = str(record[0].message)
    assert "a red ball bounces" in message and "…" in message and len(message) < 200


def test_importing_videodit_sets_passive_openmp_waiting():
    shown = _python("import videodit, os; print(os.environ['OMP_WAIT_POLICY'])").stdout.strip()
    assert shown == "PASSIVE"
    kept = _python("import videodit, os; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE")
    assert kept.stdout.strip() == "ACTIVE"  # the user's choice wins


def test_torch_imported_first_is_warned_about_once():
    code = ("import torch, videodit\n"
            "videodit.use_cpu_threads(); videodit.use_cpu_threads()\n"
            "print(torch.get_num_threads() <= videodit.cpu_count())\n")
    result = _python(code)
    assert result.stdout.strip() == "True"
    assert result.stderr.count("videodit: warning: torch was imported before videodit") == 1, result.stderr


def test_nearest_valid_sizes_name_one_value_when_there_is_one():
    from videodit.errors import nearest_valid

    assert nearest_valid(5, 8, 8) == "8"  # below the smallest valid width: not "8 or 8"
    assert nearest_valid(12, 8, 8) == "8 or 16"  # halfway
    assert nearest_valid(15, 8, 8) == "16"
    assert nearest_valid(0, 1, 4) == "1"  # frames below 1
    assert nearest_valid(8, 1, 4) == "9"


def test_latent_shape_error_names_one_nearest_width():
    import dataclasses

    from videodit.dit import DiT, DiTConfig
    from videodit.pipeline import Pipeline
    from videodit.text import TextEncoder, TextEncoderConfig
    from videodit.vae import PRESETS, VideoVAE

    vae = VideoVAE(PRESETS["tiny"])
    text = TextEncoder(TextEncoderConfig(max_length=16))
    dit = DiT(dataclasses.replace(DiTConfig.preset("tiny"), in_channels=vae.cfg.latent_channels, text_dim=text.dim))
    pipe = Pipeline(vae, dit, text)
    step = vae.cfg.spatial_stride * dit.config.patch[2]
    with pytest.raises(VideoditError, match=rf"width 3: must be a multiple of {step} .*; nearest: {step}$"):
        pipe.latent_shape(5, (3, 2 * step))


def test_help_lists_every_command_without_importing_them():
    code = ("import sys, videodit.cli\n"
            "videodit.cli.build_parser().format_help()\n"
            "print(sorted(m for m in sys.modules if m in ('torch', 'numpy') or m.startswith('videodit.')))\n")
    assert _python(code).stdout.strip() == "['videodit.cli', 'videodit.errors']"
    help_text = subprocess.run([sys.executable, "-m", "videodit.cli", "--help"], capture_output=True, text=True,
                               timeout=120).stdout
    for command in ("generate", "world", "eval", "train", "train-vae", "reconstruct"):
        assert re.search(rf"^    {re.escape(command)}\s+\S", help_text, re.M), help_text


def test_world_render_help_points_to_files_that_exist():
    from pathlib import Path

    from videodit.world import cli as world_cli

    root = Path(__file__).resolve().parents[1]
    for path in re.findall(r"[\w./]+\.md\b", world_cli._RENDER_EXAMPLES):
        assert (root / path).is_file(), path
