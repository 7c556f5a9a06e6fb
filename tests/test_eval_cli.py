"""`videodit eval` end to end: ground-truth mp4 renders score >= 0.97 on every metric, the table,
JSON and HTML are written, missing / unreadable videos fail with a warning, bad input is one line."""

import json
import re

import pytest

from videodit.cli import main
from videodit.eval.metrics import METRICS
from videodit.video import write_video
from videodit.world import make_sample
from videodit.world.scene import FAMILIES

PER_FAMILY = 12


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Eval-split renders at 64x64 as mp4, with one free-form paraphrase per clip."""
    folder = tmp_path_factory.mktemp("videos")
    prompts = []
    for family in FAMILIES:
        for i in range(PER_FAMILY):
            s = make_sample("eval", i, family=family)
            write_video(folder / f"{len(prompts):05d}.mp4", s.frames)
            prompts.append(s.paraphrases[i % len(s.paraphrases)])
    path = folder.parent / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return folder, path, prompts


def test_ground_truth_scores_at_least_097_on_every_metric(rendered, tmp_path, capsys):
    folder, prompts, texts = rendered
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["eval", "--videos", str(folder), "--prompts", str(prompts),
                 "--json", str(out_json), "--html", str(out_html)]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"SCORE in_dist=[0-9.]+ heldout=[0-9.]+", stdout[-1]), stdout[-1]
    result = json.loads(out_json.read_text())
    assert len(result["videos"]) == len(texts)
    for split in ("in_dist", "heldout"):
        for metric in METRICS:
            row = result["table"][split][metric]
            if row["n"]:
                assert row["accuracy"] >= 0.97, (split, metric, row)
                assert row["low"] <= row["accuracy"] <= row["high"]
    assert all(result["table"]["in_dist"][m]["n"] > 0 for m in METRICS)
    assert any(v["heldout"] for v in result["videos"]) and not all(v["heldout"] for v in result["videos"])
    in_dist = float(stdout[-1].split()[1].split("=")[1])
    assert in_dist == pytest.approx(result["score"]["in_dist"], abs=1e-4)
    page = out_html.read_text()
    assert page.count("data:image/gif;base64,") >= 12 and "data:image/png;base64," in page
    assert not re.search(r"(src|href)=['\"](?!data:)", page)   # self-contained


def test_missing_and_unreadable_videos_fail_with_a_warning(rendered, tmp_path, capsys):
    folder, prompts, texts = rendered
    partial = tmp_path / "partial"
    partial.mkdir()
    for i in range(3):
        (partial / f"{i:05d}.mp4").write_bytes((folder / f"{i:05d}.mp4").read_bytes())
    (partial / "00001.mp4").write_bytes(b"not a video")
    lines = tmp_path / "p.txt"
    lines.write_text("\n".join(texts[:4]) + "\n")
    out_json = tmp_path / "r.json"
    assert main(["eval", "--videos", str(partial), "--prompts", str(lines), "--json", str(out_json)]) == 0
    err = capsys.readouterr().err
    assert "00001" in err and "unreadable" in err and "00003" in err and "missing" in err
    videos = json.loads(out_json.read_text())["videos"]
    for i in (1, 3):
        assert videos[i]["error"] and all(m["passed"] is False for m in videos[i]["metrics"].values())
    assert all(m["passed"] is not False for m in videos[0]["metrics"].values())


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["eval", "--videos", str(tmp_path), "--prompts", str(tmp_path / "p.txt")]) == 2
    assert "argument --prompts: no such file" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a red ball\n\na blue box\n")
    assert main(["eval", "--videos", str(tmp_path / "nope"), "--prompts", str(tmp_path / "p.txt")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["eval", "--videos", str(tmp_path), "--prompts", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 2 is empty" in err and len(err.splitlines()) == 1
