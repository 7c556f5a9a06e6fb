"""Low-rank adapters (LoRA, Hu et al. 2021) on the DiT's attention and MLP projections.

    add_lora(dit, LoRAConfig(rank=8))     # in place: the chosen Linears become LoRALinear, the rest freezes
    y = W x + (alpha / rank) * B (A x)    # A (rank, in) random, B (out, rank) zero: the model starts unchanged
    save_lora(dit, folder) / load_lora(dit, folder) / merge_lora(dit) / unmerge_lora(dit)

A LoRALinear is an nn.Linear (its frozen ``weight`` keeps its name and state-dict key) with two
more parameters, ``lora_a`` and ``lora_b``; a DiT with adapters therefore loads and saves the base
weights exactly as before, and ``lora_state_dict`` picks out the adapters alone. Merging adds
the low-rank product into ``weight`` and keeps the base weight aside, so unmerging restores it
bit for bit. An adapter folder is a bundle (videodit/bundle.py): config.json (the LoRAConfig and
the DiT config it adapts) + model.safetensors + SHA256SUMS.

Own module rather than peft: the DiT's Linears are plain nn.Linear, so an adapter is one small
subclass; keeping the base keys unchanged lets a LoRA run save, resume and EMA with the same
code as full fine-tuning, and the only dependency stays torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from videodit import bundle
from videodit.config import from_dict, to_dict
from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError

TARGETS = ("self_attn.qkv", "self_attn.out", "cross_attn.q", "cross_attn.kv", "cross_attn.out", "mlp.0", "mlp.2")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = field(default=8, metadata={"help": "adapter rank r"})
    alpha: float = field(default=8.0, metadata={"help": "scale numerator: the update is (alpha / r) B A"})
    targets: tuple[str, ...] = field(default=TARGETS, metadata={
        "help": "the Linears of every block that get adapters (names inside a block)"})

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """nn.Linear + a low-rank update; see the module docstring."""

    def __init__(self, base: nn.Linear, rank: int, scale: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight = base.weight
        self.bias = base.bias
        self.scale = scale
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # nn.Linear's own init, as in the LoRA paper
        self.merged: torch.Tensor | None = None  # the base weight while the update is merged into it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged is not None:
            return y
        return y + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    def delta(self) -> torch.Tensor:
        return self.scale * (self.lora_b @ self.lora_a)  # (out, in)


def adapters(dit: DiT) -> dict[str, LoRALinear]:
    return {name: m for name, m in dit.named_modules() if isinstance(m, LoRALinear)}


def add_lora(dit: DiT, cfg: LoRAConfig) -> DiT:
    """Put adapters on ``cfg.targets`` of every block and freeze everything else, in place."""
    if cfg.rank < 1:
        raise VideoditError(f"LoRA rank {cfg.rank}: must be >= 1")
    if adapters(dit):
        raise VideoditError("this DiT already has LoRA adapters")
    dit.requires_grad_(False)
    for block in dit.blocks:
        for target in cfg.targets:
            parent_name, _, child = target.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            base = getattr(parent, child, None) if not child.isdigit() else parent[int(child)]
            if not isinstance(base, nn.Linear):
                raise VideoditError(f"LoRA target {target!r}: not a Linear of a DiT block; choose from {', '.join(TARGETS)}")
            setattr(parent, child, LoRALinear(base, cfg.rank, cfg.scale))
    return dit


def lora_state_dict(dit: DiT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in dit.state_dict().items() if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}


def base_state_dict(dit: DiT) -> dict[str, torch.Tensor]:
    """The DiT's own weights (unmerged), as a DiT without adapters has them."""
    state = {k: v for k, v in dit.state_dict().items() if k.rsplit(".", 1)[-1] not in ("lora_a", "lora_b")}
    for name, m in adapters(dit).items():
        if m.merged is not None:
            state[f"{name}.weight"] = m.merged
    return state


def merge_lora(dit: DiT) -> None:
    """Fold every update into its weight (inference without the extra matmuls)."""
    with torch.no_grad():
        for m in adapters(dit).values():
            if m.merged is None:
                m.merged = m.weight.detach().clone()
                m.weight.add_(m.delta().to(m.weight.dtype))


def unmerge_lora(dit: DiT) -> None:
    """Restore the base weights exactly."""
    with torch.no_grad():
        for m in adapters(dit).values():
            if m.merged is not None:
                m.weight.copy_(m.merged)
                m.merged = None


def save_lora(dit: DiT, cfg: LoRAConfig, folder: str | Path) -> Path:
    """The adapters alone as a bundle folder (config.json: the LoRAConfig and the DiT config)."""
    with bundle.writing(folder) as tmp:
        (tmp / bundle.CONFIG).write_text(json.dumps({"lora": to_dict(cfg), "dit": to_dict(dit.config)}, indent=2) + "\n")
        bundle.save_tensors(lora_state_dict(dit), tmp / bundle.WEIGHTS)
    return Path(folder)


def read_lora_config(folder: str | Path) -> tuple[LoRAConfig, DiTConfig]:
    data = bundle.read_config(folder, "LoRA adapter", "lora, dit")
    source = str(Path(folder) / bundle.CONFIG)
    try:
        return from_dict(LoRAConfig, data["lora"], source), from_dict(DiTConfig, data["dit"], source)
    except (KeyError, ValueError) as e:
        raise VideoditError(f"{source}: not a LoRA adapter config ({e})") from None


def load_lora(dit: DiT, folder: str | Path, scale: float = 1.0) -> LoRAConfig:
    """Add adapters to ``dit`` and load them from ``folder`` (written by save_lora); ``scale``
    multiplies the trained update (0 = the base model, 1 = as trained)."""
    folder = Path(folder)
    if folder.is_file():  # the adapter's model.safetensors, named directly
        folder = folder.parent
    cfg, dit_cfg = read_lora_config(folder)
    if dit_cfg != dit.config:
        differ = [k for k, v in to_dict(dit_cfg).items() if to_dict(dit.config).get(k) != v]
        raise VideoditError(f"{folder}: the adapter was trained on another DiT (differs in {', '.join(differ)})")
    add_lora(dit, cfg)
    state = bundle.load_tensors(folder / bundle.WEIGHTS)
    expected = lora_state_dict(dit)
    if state.keys() != expected.keys():
        raise VideoditError(f"{folder / bundle.WEIGHTS}: adapter keys do not match the DiT "
                            f"({len(state)} in the file, {len(expected)} expected)")
    dit.load_state_dict(state, strict=False)
    for m in adapters(dit).values():
        m.scale *= scale
    return cfg
