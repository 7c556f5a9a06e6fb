"""Guidance and step distillation: a student DiT that takes the guidance scale as an input and
jumps in a few large steps where its teacher takes many small guided ones.

    student = make_student(teacher, LoRAConfig(rank=32))   # the teacher + adapters + a guidance input
    x_next = teacher_jump(teacher, x, t0, t1, text_kv, guidance, interval, substeps, free)  # its target
    save(student, lora, info, folder); distilled = load(teacher, folder)  # the bundle's distilled/

What the student learns (``videodit distill``, videodit/train/distill.py): at the timesteps
t_0 = 1 > t_1 > ... > t_K = 0 of the K-step sampling schedule (videodit.flow.sampling_timesteps,
shifted for the latent size as the sampler shifts it), from a point x on the flow path at t_i, the
velocity that lands where the teacher lands after ``substeps`` Euler steps from t_i to t_{i+1},
each with two passes for classifier-free guidance (inside the teacher's guidance interval):

    v*(x, t_i, w) = (teacher_jump(x, t_i, t_{i+1}, w) - x) / (t_{i+1} - t_i)

One student pass then replaces 2 x ``substeps`` teacher passes. This is guidance distillation
with a w-conditioned student (Meng et al. 2023, "On distillation of guided diffusion models") and
a one-stage version of their step distillation, with the teacher's multi-step jump as the target
as in progressive distillation (Salimans & Ho 2022). Conditioning frames (the prompting modes) are
held clean at t = 0 in both teacher and student, as in training.

What is trained and shipped: low-rank adapters on the blocks' linears (videodit/lora.py) plus
full copies of the small time-dependent parts (time and guidance embeddings, the shared time
projection, the per-block modulation offsets, the output head): 3.85 M parameters for the bundled
DiT, 7.7 MB in fp16, next to the teacher's weights in the bundle's ``distilled/`` folder. Loading
merges them into a plain DiT, so a student pass costs what a teacher pass costs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from videodit import bundle
from videodit.config import from_dict, to_dict
from videodit.dit import DiT, DiTConfig, TextKV
from videodit.errors import VideoditError
from videodit.lora import LoRAConfig, add_lora, lora_state_dict, merge_lora

# Parameters the student trains in full (names matched from the start): the small, time-dependent parts.
FULL = re.compile(r"^(guidance_embed\.|time_embed\.|time_proj\.|head\.|head_modulation$|blocks\.\d+\.modulation$)")


@dataclass(frozen=True)
class DistillInfo:
    """How a student was distilled; stored in its folder's config.json."""

    steps: int = field(default=8, metadata={"help": "the student's sampling steps (its training schedule)"})
    substeps: int = field(default=4, metadata={"help": "teacher Euler steps per student step"})
    guidance: float = field(default=4.0, metadata={"help": "the teacher's default guidance scale"})
    guidance_interval: tuple[float, float] = field(default=(0.0, 1.0), metadata={
        "help": "the teacher's guidance interval (videodit.sample.SamplerConfig)"})
    teacher_steps: int = field(default=30, metadata={
        "help": "the teacher's default sampling steps: what a bundle falls back to without the student"})

    def __post_init__(self):
        object.__setattr__(self, "guidance_interval", tuple(float(v) for v in self.guidance_interval))


@dataclass
class Distilled:
    """A distilled student as a bundle holds it: ``dit`` the model to sample with, ``adapter`` the
    tensors its folder stores (adapters + the fully trained parameters)."""

    dit: DiT
    adapter: dict[str, torch.Tensor]
    lora: LoRAConfig
    info: DistillInfo


def student_config(teacher: DiTConfig) -> DiTConfig:
    return replace(teacher, guidance_embed=True)


def make_student(teacher: DiT, lora: LoRAConfig) -> DiT:
    """A student that starts as the teacher's conditional model: the teacher's weights, a
    zero-initialised guidance input, adapters on every block's linears; the adapters and the
    parameters FULL matches train, the rest is frozen."""
    if teacher.config.guidance_embed:
        raise VideoditError("the teacher is already a distilled student (it takes a guidance input)")
    student = DiT(student_config(teacher.config)).to(next(teacher.parameters()).device)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
        raise VideoditError(f"teacher and student differ beyond the guidance input: {missing + unexpected}")
    add_lora(student, lora)
    for name, p in student.named_parameters():
        if FULL.match(name):
            p.requires_grad_(True)
    return student


def adapter_state(student: DiT) -> dict[str, torch.Tensor]:
    """What a distilled folder stores: the adapters and the fully trained parameters."""
    state = student.state_dict()
    return {**lora_state_dict(student), **{k: v for k, v in state.items() if FULL.match(k)}}


def teacher_jump(teacher: DiT, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor, text_kv: TextKV,
                 guidance: torch.Tensor, interval: tuple[float, float], substeps: int,
                 free: torch.Tensor) -> torch.Tensor:
    """Where the guided teacher takes x (B, c, T, h, w) from t0 to t1 (each (B,)) in ``substeps``
    Euler steps. ``text_kv``: the teacher's K/V of the 2B prompts [conditional; empty]; guidance
    (B,) scales, applied at steps whose time lies in ``interval`` (elsewhere the conditional
    velocity alone, as videodit.sample.guided_velocity); free (B, T) 1 for generated frames, 0
    for conditioning frames (clean, at t = 0, never moved). Run it under no_grad."""
    lo, hi = interval
    per_clip = (-1, 1, 1, 1, 1)
    for j in range(substeps):
        s = t0 + (t1 - t0) * (j / substeps)  # (B,)
        s_next = t0 + (t1 - t0) * ((j + 1) / substeps)
        t = s[:, None] * free  # (B, T)
        v_cond, v_uncond = teacher(torch.cat([x, x]), torch.cat([t, t]), text_kv=text_kv).float().chunk(2)
        inside = (s >= lo - 1e-6) & (s <= hi + 1e-6)
        w = torch.where(inside, guidance, torch.ones_like(guidance)).view(per_clip)
        v = v_uncond + w * (v_cond - v_uncond)
        x = x + (s_next - s).view(per_clip) * v * free[:, None, :, None, None]
    return x


def save(student: DiT, lora: LoRAConfig, info: DistillInfo, folder: str | Path) -> Path:
    """A student with adapters (make_student) -> its folder: config.json (the LoRA config, the
    student's DiT config, the DistillInfo) + model.safetensors."""
    return save_adapter(Distilled(student, adapter_state(student), lora, info), folder)


def save_adapter(distilled: Distilled, folder: str | Path) -> Path:
    with bundle.writing(folder) as tmp:
        config = {"lora": to_dict(distilled.lora), "dit": to_dict(distilled.dit.config), "distill": to_dict(distilled.info)}
        (tmp / bundle.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        # fp16 on disk, as the bundled DiT (half the size); loading copies them into fp32 parameters.
        bundle.save_tensors({k: v.detach().to(torch.float16) for k, v in distilled.adapter.items()}, tmp / bundle.WEIGHTS)
    return Path(folder)


def read_info(folder: str | Path) -> DistillInfo:
    data = bundle.read_config(folder, "distilled student", "lora, dit, distill")
    return from_dict(DistillInfo, data.get("distill", {}), str(Path(folder) / bundle.CONFIG))


def load(teacher: DiT, folder: str | Path) -> Distilled:
    """The student in ``folder`` (written by save) for ``teacher``, merged into a plain DiT on the
    teacher's device."""
    folder = Path(folder)
    data = bundle.read_config(folder, "distilled student", "lora, dit, distill")
    source = str(folder / bundle.CONFIG)
    try:
        lora, dit_cfg = from_dict(LoRAConfig, data["lora"], source), from_dict(DiTConfig, data["dit"], source)
        info = from_dict(DistillInfo, data["distill"], source)
    except (KeyError, ValueError, TypeError) as e:
        raise VideoditError(f"{source}: not a distilled student's config ({e})") from None
    if dit_cfg != student_config(teacher.config):
        differ = [k for k, v in to_dict(dit_cfg).items() if to_dict(student_config(teacher.config)).get(k) != v]
        raise VideoditError(f"{folder}: distilled from another DiT (differs in {', '.join(differ)})")
    student = make_student(teacher, lora)
    adapter = bundle.load_tensors(folder / bundle.WEIGHTS)
    expected = adapter_state(student)
    if adapter.keys() != expected.keys():
        raise VideoditError(f"{folder / bundle.WEIGHTS}: holds {len(adapter)} tensors, a student of this DiT "
                            f"has {len(expected)} (another architecture or LoRA rank)")
    student.load_state_dict(adapter, strict=False)
    merge_lora(student)
    plain = DiT(dit_cfg).to(next(teacher.parameters()).device)
    plain.load_state_dict({k: v for k, v in student.state_dict().items() if k not in lora_state_dict(student)})
    return Distilled(plain.eval().requires_grad_(False), adapter, lora, info)
