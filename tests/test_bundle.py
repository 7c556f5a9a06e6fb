"""Bundles on disk (videodit.bundle): checksums written and verified, finite tensors, atomic
writes, and the shipped bundle's own SHA256SUMS."""

import subprocess

import pytest
import torch
from safetensors.torch import save_file

from videodit import bundle
from videodit.bundle import BUNDLED, CHECKSUMS
from videodit.errors import VideoditError
from videodit.vae import PRESETS, VideoVAE


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    vae = VideoVAE(PRESETS["tiny"])
    return vae, vae.save_pretrained(tmp_path / "vae")


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_saved_bundle_lists_its_files_in_sha256sum_format(tiny):
    vae, folder = tiny
    lines = (folder / CHECKSUMS).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["config.json", "model.safetensors"]
    assert lines[1].split("  ")[0] == bundle.file_sha256(folder / "model.safetensors")
    assert _same_weights(VideoVAE.from_pretrained(folder), vae)
    assert subprocess.run(["sha256sum", "-c", CHECKSUMS], cwd=folder, capture_output=True).returncode == 0


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_modified_file_is_named_in_one_line(tiny, name):
    _, folder = tiny
    data = bytearray((folder / name).read_bytes())
    data[-2] ^= 1  # one bit, inside the tensor data / the JSON's last value
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(VideoditError) as e:
        VideoVAE.from_pretrained(folder)
    assert str(e.value) == f"{folder / name}: checksum mismatch (corrupt or modified since it was saved)"


def test_missing_files_and_checksums(tiny):
    _, folder = tiny
    (folder / "model.safetensors").unlink()
    with pytest.raises(VideoditError, match=r"vae/model\.safetensors: missing \(listed in SHA256SUMS\)"):
        VideoVAE.from_pretrained(folder)
    (folder / CHECKSUMS).write_text("not a checksum line\n")
    with pytest.raises(VideoditError, match=r"SHA256SUMS:1: not a sha256sum line"):
        VideoVAE.from_pretrained(folder)


def test_a_folder_without_checksums_says_how_to_trust_it(tiny, capsys):
    vae, folder = tiny
    (folder / CHECKSUMS).unlink()
    with pytest.raises(VideoditError) as e:
        VideoVAE.from_pretrained(folder)
    message = str(e.value)
    assert message.startswith(f"{folder}: no SHA256SUMS") and "\n" not in message
    assert f"python -m videodit.bundle {folder}" in message
    assert bundle.main([str(folder)]) == 0 and "wrote checksums" in capsys.readouterr().out
    assert _same_weights(VideoVAE.from_pretrained(folder), vae)
    assert bundle.main([]) == 2 and "usage" in capsys.readouterr().err
    assert bundle.main([str(folder / "nope")]) == 2 and "not a folder" in capsys.readouterr().err


def test_an_unlisted_file_is_not_trusted(tiny):
    _, folder = tiny
    (folder / CHECKSUMS).write_text((folder / CHECKSUMS).read_text().splitlines()[0] + "\n")
    with pytest.raises(VideoditError, match=r"model\.safetensors: not listed in .*SHA256SUMS"):
        VideoVAE.from_pretrained(folder)


def test_non_finite_weights_are_neither_saved_nor_loaded(tiny, tmp_path):
    vae, folder = tiny
    name = next(k for k, v in vae.state_dict().items() if v.is_floating_point())
    with torch.no_grad():
        vae.state_dict()[name].view(-1)[0] = float("nan")
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(VideoditError) as e:
        vae.save_pretrained(folder)
    assert str(e.value) == f"{folder}: not saved: tensor {name} holds NaN or inf values"
    assert (folder / "model.safetensors").read_bytes() == before  # the bundle there is untouched
    # A NaN file made some other way, with matching checksums, still fails to load.
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "model.safetensors"))
    bundle.write_checksums(folder)
    with pytest.raises(VideoditError) as e:
        VideoVAE.from_pretrained(folder)
    assert str(e.value) == f"{folder / 'model.safetensors'}: tensor {name} holds NaN or inf values"


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_writes_are_atomic(tiny, monkeypatch, exchange):
    vae, folder = tiny
    if not exchange:
        monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)
    with pytest.raises(RuntimeError, match="crash"):
        with bundle.writing(folder) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash")  # half-way through a new bundle
    assert _same_weights(VideoVAE.from_pretrained(folder), vae)  # the old one is intact
    torch.manual_seed(1)
    other = VideoVAE(PRESETS["tiny"])
    other.save_pretrained(folder)  # replaces it
    assert _same_weights(VideoVAE.from_pretrained(folder), other)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["vae"]  # no temporary siblings left


def test_writing_never_replaces_a_folder_that_is_not_a_bundle(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    with pytest.raises(VideoditError, match="exists and is not a bundle"):
        VideoVAE(PRESETS["tiny"]).save_pretrained(tmp_path / "work")
    assert (tmp_path / "work" / "notes.txt").read_text() == "mine"


def test_shipped_bundle_verifies_and_saves_whole(tmp_path):
    from videodit.pipeline import Pipeline

    for folder in (BUNDLED, BUNDLED / "vae", BUNDLED / "dit"):
        names = [line.split("  ")[1] for line in (folder / CHECKSUMS).read_text().splitlines()]
        assert names == sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
        for name in names:
            bundle.verify_file(folder / name)
    pipe = Pipeline.load()
    out = pipe.save(tmp_path / "copy")
    for sub in ("", "vae", "dit"):
        assert subprocess.run(["sha256sum", "-c", CHECKSUMS], cwd=out / sub, capture_output=True).returncode == 0
    copy = Pipeline.load(out)
    assert copy.config == pipe.config and copy.vae.cfg == pipe.vae.cfg and copy.dit.config == pipe.dit.config
    assert _same_weights(copy.vae, pipe.vae) and _same_weights(copy.dit, pipe.dit)
    (out / "config.json").write_text((out / "config.json").read_text().replace("17", "21"))
    with pytest.raises(VideoditError, match=r"copy/config\.json: checksum mismatch"):
        Pipeline.load(out)


def test_dit_loads_without_a_random_init_and_exactly(tmp_path):
    # load_dit builds the DiT on the meta device and assigns the stored tensors: every parameter
    # must come back real, fp32, trainable and equal to what was saved (fp16 storage rounds once).
    from videodit.dit import DiT, DiTConfig
    from videodit.pipeline import load_dit, save_dit

    torch.manual_seed(0)
    dit = DiT(DiTConfig(dim=32, depth=2, heads=2, in_channels=4, text_dim=16, freq_dim=32))
    for p in dit.parameters():  # zero-initialised parts too, so that nothing can match by chance
        torch.nn.init.normal_(p, std=0.1)
    save_dit(dit, tmp_path / "dit")
    loaded = load_dit(tmp_path / "dit")
    saved = bundle.load_tensors(tmp_path / "dit" / bundle.WEIGHTS)
    for name, p in loaded.named_parameters():
        assert p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad
        assert torch.equal(p, saved[name].float()), name
    assert set(saved) == set(loaded.state_dict())
