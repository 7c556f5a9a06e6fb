"""Distil a model bundle's DiT into a few-step student with the guidance built in (``videodit
distill``; the method: videodit/distill.py). A DiT task plugged into the one training loop
(videodit/train/loop.py: resume, AdamW, schedule, EMA, guard, logs, checkpoints), on the same data
as ``videodit train`` (SynthWorld buckets or a ``videodit prepare`` cache).

One step, per process: a batch of clean latents and captions; per clip a conditioning mode (as in
training), a student step i of the K-step schedule and a guidance scale w (the bundle's with odds
--default-guidance-share, else uniform in --guidance-range); x at t_i on the flow path; the frozen
teacher's guided jump from t_i to t_{i+1} (--teacher-substeps Euler steps, two passes each) gives
the target velocity; loss = |student(x, t_i, w) - v*|^2 over the generated frames.

Outputs under ``out``: checkpoint.pt (+ .prev), log.csv, and bundle/: the teacher's bundle with
the student in bundle/distilled/ and the sampler defaulting to it (solver 'distilled', K steps).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from videodit import distill, flow
from videodit.data import latent_cache
from videodit.errors import VideoditError
from videodit.lora import LoRAConfig
from videodit.pipeline import Pipeline, load_bundle_config, load_dit
from videodit.train import loop
from videodit.train.dit import DiTTask, DiTTrainConfig, conditioning_masks, init_folder

# The bundled model's training mix of sizes and durations (docs/MODEL.md).
BUNDLE_SIZES = ("64x64", "64x64", "80x48", "48x80")
BUNDLE_FRAMES = (17, 17, 17, 9, 1, 33)


@dataclass(frozen=True)
class DistillTrainConfig(DiTTrainConfig):
    # Defaults that differ from `videodit train`'s (help texts where the meaning changes).
    out: str = field(default="runs/distill", metadata={
        "help": "output folder (checkpoint.pt, logs, bundle/ with the student in bundle/distilled/)",
        "group": "output/checkpoints"})
    init: str = field(default="bundled", metadata={
        "help": "the model bundle to distil ('bundled' = the one shipped in the package): its DiT is the teacher, "
                "its sampler settings (guidance, interval, steps) the teacher's", "path": "dir", "or": ("bundled",),
        "group": "model"})
    steps: int = field(default=400, metadata={"help": "optimizer steps", "min": 1, "group": "run"})
    batch_size: int = field(default=8, metadata={
        "help": "clips per step, in total over all processes", "min": 1, "group": "optimisation"})
    lr: float = field(default=2e-4, metadata={"help": "peak AdamW learning rate", "min": 0, "group": "optimisation"})
    warmup_steps: int = field(default=20, metadata={
        "help": "linear warm-up, then cosine decay to lr/10", "min": 0, "group": "optimisation"})
    ema_decay: float = field(default=0.99, metadata={
        "help": "EMA decay of the student's trained weights", "min": 0, "max": 1, "group": "optimisation"})
    caption_dropout: float = field(default=0.0, metadata={
        "help": "fraction of captions replaced by the empty prompt", "min": 0, "max": 1, "max_exclusive": True,
        "group": "optimisation"})
    sizes: tuple[str, ...] = field(default=BUNDLE_SIZES, metadata={
        "help": "SynthWorld clip sizes WxH, one per batch", "group": "data"})
    frames: tuple[int, ...] = field(default=BUNDLE_FRAMES, metadata={
        "help": "SynthWorld clip frame counts (4k+1), one per batch", "min": 1, "group": "data"})
    tokens_per_batch: int = field(default=2560, metadata={
        "help": "give each size bucket the batch that holds about this many DiT tokens (0 = --batch-size)",
        "min": 0, "group": "data"})
    save_every: int = field(default=50, metadata={
        "help": "checkpoint (and bundle) every N steps", "min": 1, "group": "output/checkpoints"})
    log_every: int = field(default=5, metadata={"help": "CSV log every N steps", "min": 1, "group": "output/checkpoints"})
    sample_steps: int = field(default=8, metadata={
        "help": "sampler steps for the periodic samples (the student's --student-steps is what it learnt)", "min": 1,
        "group": "periodic samples"})
    sample_every: int = field(default=0, metadata={
        "help": "sample the student on eval prompts and evaluate every N steps (0 = never)", "min": 0,
        "group": "periodic samples"})
    lora: int = field(default=32, metadata={
        "help": "rank of the student's adapters on the blocks' linears", "min": 1, "group": "student"})
    # What is distilled.
    student_steps: int = field(default=8, metadata={
        "help": "the student's sampling steps K: it learns the jumps of the K-step schedule", "min": 1,
        "group": "student"})
    teacher_substeps: int = field(default=4, metadata={
        "help": "teacher Euler steps (each two passes inside the guidance interval) per student step", "min": 1,
        "group": "student"})
    guidance_range: tuple[float, ...] = field(default=(1.0, 6.0), metadata={
        "help": "LO HI: guidance scales the student learns, uniform in [LO, HI]", "min": 1, "group": "student"})
    default_guidance_share: float = field(default=0.5, metadata={
        "help": "share of clips trained at the bundle's own guidance scale (its default)", "min": 0, "max": 1,
        "group": "student"})

    def check(self) -> None:
        super().check()
        if len(self.guidance_range) != 2 or self.guidance_range[0] > self.guidance_range[1]:
            raise VideoditError(f"--guidance-range {self.guidance_range}: give LO HI with 1 <= LO <= HI")
        for flag, bad in (("--pack", self.pack), ("--sp", self.sp > 1), ("--preset", self.preset)):
            if bad:
                raise VideoditError(f"{flag} does not go with `videodit distill` (the student is --init's DiT)")


def distill_inputs(latents: torch.Tensor, captions: list[str], cfg: DistillTrainConfig, gen: torch.Generator,
                   schedule: torch.Tensor, default_guidance: float, rows: tuple[int, int] | None = None):
    """Everything random about one batch, drawn on the CPU from ``gen`` for the whole global batch
    and sliced to ``rows`` (as videodit.train.dit.training_inputs). latents (B, c, T, h, w) ->
    (x at t0, t0 (B,), t1 (B,), guidance (B,), free (B, T) float, captions), on the latents' device."""
    B, c, T, h, w = latents.shape
    first, n = rows or (0, B)
    mine = slice(first, first + B)
    drop = (torch.rand(n, generator=gen) < cfg.caption_dropout)[mine]
    captions = ["" if d else cap for d, cap in zip(drop.tolist(), captions)]
    modes = torch.multinomial(torch.tensor(cfg.cond_mix, dtype=torch.float), n, replacement=True, generator=gen)
    free = (~conditioning_masks(modes, T, gen)).float()[mine]  # (B, T)
    i = torch.randint(0, len(schedule) - 1, (n,), generator=gen)[mine]
    lo, hi = cfg.guidance_range
    spread = lo + (hi - lo) * torch.rand(n, generator=gen)
    guidance = torch.where(torch.rand(n, generator=gen) < cfg.default_guidance_share, default_guidance, spread)[mine]
    noise = torch.randn((n, c, T, h, w), generator=gen)[mine]
    t0, t1 = schedule[i], schedule[i + 1]
    device = latents.device
    free, t0, t1, guidance = free.to(device), t0.to(device), t1.to(device), guidance.to(device)
    x, _ = flow.interpolate(latents, noise.to(device), t0[:, None] * free)
    return x, t0, t1, guidance, free, captions


class DistillTask(DiTTask):
    """The student's part of a run: DiTTask's data, VAE and text encoder; a frozen teacher; the
    student (adapters + guidance input) as the trained model."""

    kind = "distill"

    def make_model(self):
        cfg = self.cfg
        folder = init_folder(cfg.init)
        self.teacher = load_dit(folder, self.dist.device).requires_grad_(False)
        teacher_bundle = load_bundle_config(folder.parent)
        sampler = teacher_bundle.sampler
        self.info = distill.DistillInfo(steps=cfg.student_steps, substeps=cfg.teacher_substeps,
                                        guidance=sampler.guidance, guidance_interval=sampler.guidance_interval,
                                        teacher_steps=sampler.steps if sampler.solver != "distilled" else
                                        distill.read_info(folder.parent / "distilled").teacher_steps)
        self.bundle_config = dataclasses.replace(teacher_bundle, sampler=dataclasses.replace(
            sampler, solver="distilled", steps=cfg.student_steps))
        self.lora_cfg = LoRAConfig(rank=cfg.lora, alpha=cfg.lora_alpha or float(cfg.lora))
        student = distill.make_student(self.teacher, self.lora_cfg)
        self.model_cfg = student.config
        return student

    def init(self) -> None:  # the student starts from the teacher (make_model)
        pass

    def step(self, net, batches, step: int, gen: torch.Generator, lr: float) -> loop.StepResult:
        ((latents, captions, bucket, embedded),) = batches
        rows = self.rows(len(captions))
        self.seen[bucket] += rows[1] if rows else len(captions)
        schedule = flow.sampling_timesteps(self.cfg.student_steps, flow.shift_for(latents.shape, self.model_cfg.patch))
        x, t0, t1, w, free, captions = distill_inputs(latents, captions, self.cfg, gen, schedule, self.info.guidance,
                                                      rows)
        if embedded is not None:
            tokens, mask = latent_cache.cached_text([embedded], captions)
        else:
            tokens, mask = self.text.encode(captions)
        with torch.no_grad(), self.autocast:
            both = self.teacher.text_kv(torch.cat([tokens, torch.zeros_like(tokens)]),
                                        torch.cat([mask, torch.zeros_like(mask)]))  # [prompts; empty prompt]
            landing = distill.teacher_jump(self.teacher, x, t0, t1, both, w, self.info.guidance_interval,
                                           self.info.substeps, free)
        target = (landing - x) / (t1 - t0).view(-1, 1, 1, 1, 1)
        with self.autocast:
            v = net(x, t0[:, None] * free, tokens, mask, guidance=w)
        loss = flow.flow_loss(v, target, free.bool())
        batch = len(captions)
        if self.dist.world_size > 1:
            loss, batch = self.global_mean(loss, target, free.bool())
        return loop.StepResult(loss, loss.detach(), {"bucket": bucket, "batch": batch, "time": f"{time.time():.0f}"})

    @property
    def result(self) -> Path:
        return self.out / "bundle"

    def on_save(self) -> None:
        student = distill.Distilled(self.ema, distill.adapter_state(self.ema), self.lora_cfg, self.info)
        Pipeline(self.vae, self.teacher, self.text, self.bundle_config, student).save(self.result)

    def after_step(self, step: int, done: bool) -> None:
        if self.cfg.sample_every:
            self.pipe.config = self.bundle_config
            self.pipe.distilled = distill.Distilled(self.ema, {}, self.lora_cfg, self.info)
            self.pipe.dit = self.teacher
        super().after_step(step, done)


def train_distill(cfg: DistillTrainConfig) -> Path:
    """Run (or resume) a distillation; returns the bundle with the student."""
    cfg.check()
    return loop.train(cfg, lambda dist: DistillTask(cfg, dist))
