"""LoRA adapters on the DiT (videodit/lora.py): start as the identity, train only the adapters,
merge / unmerge exactly, save / load as a checked bundle, refuse another DiT."""

from __future__ import annotations

import pytest
import torch

from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError
from videodit.lora import (LoRAConfig, add_lora, adapters, base_state_dict, load_lora, lora_state_dict, merge_lora,
                           save_lora, unmerge_lora)

CFG = DiTConfig.preset("tiny")


def _model(seed=0) -> DiT:
    torch.manual_seed(seed)
    dit = DiT(CFG)
    with torch.no_grad():  # a trained-looking model: zero-initialised outputs would hide the adapters
        for p in dit.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return dit.eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, CFG.in_channels, 2, 4, 4, generator=g)
    t = torch.rand(2, 2, generator=g)
    text = torch.randn(2, 5, CFG.text_dim, generator=g)
    return x, t, text, torch.ones(2, 5, dtype=torch.bool)


def _train_adapters(dit: DiT) -> None:
    with torch.no_grad():
        for m in adapters(dit).values():
            m.lora_b.normal_(std=0.05)


def test_adapters_start_as_identity_and_only_they_train():
    dit = _model()
    before = dit(*_inputs())
    plain_keys = set(dit.state_dict())
    add_lora(dit, LoRAConfig(rank=4))
    assert torch.equal(dit(*_inputs()), before)
    trainable = {n for n, p in dit.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(adapters(dit)) == CFG.depth * 7
    assert set(base_state_dict(dit)) == plain_keys  # the base keys are unchanged


def test_merge_matches_and_unmerge_restores_bit_for_bit():
    dit = add_lora(_model(), LoRAConfig(rank=4, alpha=8))
    _train_adapters(dit)
    base = {k: v.clone() for k, v in base_state_dict(dit).items()}
    adapted = dit(*_inputs())
    assert not torch.allclose(adapted, DiT(CFG).eval()(*_inputs()))
    merge_lora(dit)
    assert torch.allclose(dit(*_inputs()), adapted, atol=1e-5)
    assert all(torch.equal(base[k], v) for k, v in base_state_dict(dit).items())  # merged, base still known
    unmerge_lora(dit)
    assert all(torch.equal(base[k], v) for k, v in dit.state_dict().items() if k in base)
    assert torch.equal(dit(*_inputs()), adapted)


def test_save_load_round_trip_and_scale(tmp_path):
    dit = add_lora(_model(), LoRAConfig(rank=2))
    _train_adapters(dit)
    save_lora(dit, LoRAConfig(rank=2), tmp_path / "lora")
    assert (tmp_path / "lora" / "SHA256SUMS").is_file()
    fresh = _model()
    plain = fresh(*_inputs())
    load_lora(fresh, tmp_path / "lora" / "model.safetensors")  # the file names its folder
    assert torch.equal(fresh(*_inputs()), dit(*_inputs()))
    assert lora_state_dict(fresh).keys() == lora_state_dict(dit).keys()
    off = _model()
    load_lora(off, tmp_path / "lora", scale=0.0)
    assert torch.equal(off(*_inputs()), plain)


def test_adapter_for_another_dit_or_corrupt_file_is_refused(tmp_path):
    dit = add_lora(_model(), LoRAConfig(rank=2))
    save_lora(dit, LoRAConfig(rank=2), tmp_path / "lora")
    other = DiT(DiTConfig.preset("tiny", depth=CFG.depth + 1))
    with pytest.raises(VideoditError, match="trained on another DiT .*depth"):
        load_lora(other, tmp_path / "lora")
    weights = tmp_path / "lora" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(VideoditError, match="checksum mismatch"):
        load_lora(_model(), tmp_path / "lora")
    with pytest.raises(VideoditError, match="rank 0"):
        add_lora(_model(), LoRAConfig(rank=0))
    with pytest.raises(VideoditError, match="not a Linear"):
        add_lora(_model(), LoRAConfig(targets=("norm_cross",)))
