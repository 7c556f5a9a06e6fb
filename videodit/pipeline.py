"""Text (+ image / video) -> video: the whole model in one object, loaded once.

    pipe = Pipeline.load()                      # the bundled model, or Pipeline.load("path/to/bundle")
    frames = pipe("A red ball bounces on a black background.", frames=17, size=(64, 64), seed=0)
    # frames: (F, H, W, 3) uint8
Image and video prompts (animate, extend, connect, loop, edit, long videos): videodit.prompting.

A model bundle is a folder (docs/DESIGN.md, "Conventions": config.json + safetensors, never pickle):
    config.json          {"text": TextEncoderConfig fields, "sampler": SamplerConfig defaults}
    vae/                 config.json + model.safetensors   (videodit.vae.VideoVAE)
    dit/                 config.json + model.safetensors   (videodit.dit.DiT)
    distilled/           optional: a few-step student of dit/ (videodit.distill), config.json + model.safetensors
each folder with its SHA256SUMS. Reading, writing and verifying them: videodit.bundle. Loading
checks every checksum, key and shape and names the file that does not fit.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from videodit import bundle, distill, use_cpu_threads
from videodit.bundle import BUNDLED
from videodit.config import from_dict
from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError, VideoditWarning, nearest_valid
from videodit.lora import load_lora
from videodit.sample import FrameCondition, SamplerConfig, generate
from videodit.text import TextEncoder, TextEncoderConfig
from videodit.vae import TEMPORAL_STRIDE, VideoVAE
from videodit.video import tensor_to_frames


@dataclass(frozen=True)
class BundleConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # the bundle's default settings
    size: tuple[int, int] = (64, 64)  # default (width, height)
    frames: int = 17  # default frame count
    fps: float = 8.0


def load_bundle_config(path: Path) -> BundleConfig:
    data = bundle.read_config(path, "model", f"{bundle.CONFIG}, vae/, dit/")
    cfg_path = str(path / bundle.CONFIG)
    try:
        return BundleConfig(text=from_dict(TextEncoderConfig, data.pop("text", {}), cfg_path),
                            sampler=from_dict(SamplerConfig, data.pop("sampler", {}), cfg_path),
                            **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except (TypeError, AttributeError) as e:
        raise VideoditError(f"{cfg_path}: not a valid bundle config ({e})") from None


def load_dit(path: str | Path, device: str | torch.device = "cpu") -> DiT:
    # Built on the meta device, so the random initialisation the checkpoint would overwrite is
    # skipped (constructing the bundled DiT: 0.17 s -> 0.015 s), and the loaded tensors are assigned.
    with torch.device("meta"):
        dit = DiT(bundle.read_bundle_config(DiTConfig, path, "DiT"))
    bundle.load_safetensors_checked(dit, Path(path) / bundle.WEIGHTS, assign=True)
    return dit.to(device).eval()


def save_dit(dit: DiT, path: str | Path) -> Path:
    return bundle.save_weights_bundle(dit, dit.config, path)


def available_memory() -> int:
    """Bytes of memory the OS can give us now (MemAvailable), or 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Pipeline:
    """VAE + DiT + text encoder, with the bundle's default settings. See the module docstring."""

    def __init__(self, vae: VideoVAE, dit: DiT, text: TextEncoder, config: BundleConfig = BundleConfig(),
                 distilled: distill.Distilled | None = None, distill_info: distill.DistillInfo | None = None):
        """``distilled``: the bundle's few-step student of ``dit`` (sampled with solver 'distilled');
        ``distill_info``: its settings when the student is not loaded (the teacher's fallback)."""
        if dit.config.in_channels != vae.cfg.latent_channels:
            raise VideoditError(f"DiT takes {dit.config.in_channels} latent channels, the VAE makes "
                                f"{vae.cfg.latent_channels}")
        if dit.config.text_dim != text.dim:
            raise VideoditError(f"DiT takes text of width {dit.config.text_dim}, the text encoder makes {text.dim}")
        self.vae, self.dit, self.text, self.config = vae.eval(), dit.eval(), text, config
        self.distilled = distilled
        self.distill_info = distilled.info if distilled is not None else distill_info or distill.DistillInfo()

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @classmethod
    def load(cls, path: str | Path | None = None, device: str | torch.device = "cpu", *,
             lora: str | Path | None = None, lora_scale: float = 1.0, compile: bool = False) -> Pipeline:
        """The bundle at ``path`` (default, or 'bundled': the bundled model); ``lora``: LoRA adapters
        trained on its DiT (`videodit train --lora`, videodit/lora.py), their update scaled by ``lora_scale``;
        ``compile``: the DiT through ``torch.compile`` (its first call per shape compiles; pays for
        long runs and large models, on a GPU above all)."""
        path = BUNDLED if path in (None, "bundled") else Path(path)
        if path == BUNDLED and not (path / "dit").is_dir():
            raise VideoditError("this version of videodit ships no trained text-to-video model yet (see "
                                "docs/STATUS.md); pass --model PATH with a bundle made by `videodit train`")
        if not path.exists():
            raise VideoditError(f"{path}: model bundle not found")
        if torch.device(device).type == "cpu":
            use_cpu_threads()
        from videodit.interop import wan

        if wan.is_wan_folder(path):  # Wan 2.1, diffusers' layout or Wan's own (docs/WAN.md)
            vae, dit, text, fields = wan.load(path, device)
            config = BundleConfig(**fields)
        else:
            config = load_bundle_config(path)
            vae = VideoVAE.from_pretrained(path / "vae", device=device)
            dit = load_dit(path / "dit", device=device)
            text = TextEncoder(config.text, device=device)
        distilled, info = None, None
        if (path / "distilled").is_dir():
            if lora is None:
                distilled = distill.load(dit, path / "distilled")
            else:  # the student was distilled from the base DiT, without the adapters
                info = distill.read_info(path / "distilled")
        if lora is not None:
            load_lora(dit, lora, scale=lora_scale)
        if compile:  # in place: the modules, their configs and their weights stay the same objects
            for model in (dit, distilled.dit if distilled else None):
                if model is not None:
                    model.compile()
        return cls(vae, dit, text, config, distilled, info)

    def save(self, path: str | Path) -> Path:
        """Write the bundle atomically: a crash leaves the old bundle at ``path`` or the new one."""
        path = Path(path)
        with bundle.writing(path) as tmp:
            self.vae.save_pretrained(tmp / "vae")
            save_dit(self.dit, tmp / "dit")
            if self.distilled is not None:
                distill.save_adapter(self.distilled, tmp / "distilled")
            bundle.write_config(self.config, tmp)
        return path

    # -- checks ---------------------------------------------------------------------------------
    def latent_shape(self, frames: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(c, T, h, w) for a clip of ``frames`` at ``size`` = (width, height); clear errors with
        the nearest valid values for anything the VAE and DiT cannot take."""
        if frames < 1 or (frames - 1) % TEMPORAL_STRIDE:
            raise VideoditError(f"frames={frames}: must be 4k+1 (1, 5, 9, 17, 33, ...); nearest: "
                                f"{nearest_valid(frames, 1, TEMPORAL_STRIDE)}")
        pt, ph, pw = self.dit.config.patch
        s = self.vae.cfg.spatial_stride
        width, height = size
        for name, value, p in (("width", width, pw), ("height", height, ph)):
            step = s * p
            if value < step or value % step:
                raise VideoditError(f"{name} {value}: must be a multiple of {step} (VAE stride {s} x patch {p}); "
                                    f"nearest: {nearest_valid(value, step, step)}")
        T = (frames - 1) // TEMPORAL_STRIDE + 1
        if T % pt:
            raise VideoditError(f"frames={frames}: {T} latent frames is not a multiple of the DiT's time patch {pt}")
        return self.vae.cfg.latent_channels, T, height // s, width // s

    def check_memory(self, batch: int, frames: int, size: tuple[int, int], guidance: float) -> None:
        """Refuse requests whose rough peak memory exceeds what the machine has free."""
        width, height = size
        c, T, h, w = self.latent_shape(frames, size)
        pt, ph, pw = self.dit.config.patch
        rows = batch * (2 if guidance != 1.0 else 1)
        tokens = (T // pt) * (h // ph) * (w // pw)
        # DiT: activations of one block at a time (~12 x width per token, fp32) plus attention. On a
        # CPU the math fallback of SDPA builds the full score matrix; on a GPU the flash and
        # memory-efficient kernels never do, and what counts is the GPU's own free memory.
        on_gpu = self.device.type == "cuda"
        dit_bytes = rows * tokens * self.dit.config.dim * 4 * 12
        if not on_gpu:
            dit_bytes += rows * self.dit.config.heads * tokens ** 2 * 4
        # VAE decoder: a few full-resolution feature maps of its widest layer at once.
        vae_bytes = batch * frames * height * width * self.vae.cfg.decoder_channels * max(self.vae.cfg.channel_mults) * 4 * 4
        need = dit_bytes + vae_bytes
        free = torch.cuda.mem_get_info(self.device)[0] if on_gpu else available_memory()
        if free and need > free:
            where = "GPU memory" if on_gpu else "memory"
            raise VideoditError(f"this request needs about {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB "
                                f"of {where} is free: lower --frames, --size or the batch")

    # -- generation -----------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text.encode(list(prompts))

    def encode_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, F, H, W) in [-1, 1] -> normalised latents (B, c, T, h, w), as the DiT sees them."""
        with torch.inference_mode():
            return self.vae.normalize(self.vae.encode(frames.to(self.device)))

    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Normalised latents (B, c, T, h, w) -> uint8 frames (B, F, H, W, 3)."""
        with torch.inference_mode():
            video = self.vae.decode(self.vae.denormalize(latents.to(self.device)))
        return tensor_to_frames(video.float().clamp(-1, 1).cpu())

    def generate_latents(self, prompts: list[str], *, frames: int, size: tuple[int, int],
                         sampler: SamplerConfig, negative: str = "", cond: FrameCondition | None = None,
                         start: torch.Tensor | None = None, start_time: float = 1.0,
                         on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Normalised latents (B, c, T, h, w) for the prompts; ``cond``, ``start`` and
        ``start_time`` as in videodit.sample.generate, the one sampler every mode calls."""
        c, T, h, w = self.latent_shape(frames, size)
        dit, sampler = self.model_for(sampler, negative)
        self.check_memory(len(prompts), frames, size, 1.0 if dit.config.guidance_embed else sampler.guidance)
        text, mask = self.encode_prompts(prompts)
        # An encoder with pad_to (Wan) encodes "" like any prompt: its DiT has no null token.
        neg = self.encode_prompts([negative]) if (negative or self.text.config.pad_to) and dit is self.dit else None
        return generate(dit, text, mask, (len(prompts), c, T, h, w), sampler, negative=neg, cond=cond,
                        start=start, start_time=start_time, on_step=on_step)

    def model_for(self, sampler: SamplerConfig, negative: str = "") -> tuple[DiT, SamplerConfig]:
        """The DiT that samples with ``sampler``: the distilled student for solver 'distilled', the
        bundle's DiT otherwise. Without a student (none in the bundle, or a --lora adapter on the
        DiT it was not distilled from), or with a negative prompt (which needs a second pass), the
        'distilled' solver falls back to the teacher's own settings (its steps, Euler), with a warning."""
        if sampler.solver != "distilled":
            return self.dit, sampler
        if self.distilled is not None and not negative:
            return self.distilled.dit, sampler
        why = "a negative prompt needs the two-pass guidance of the full model" if self.distilled is not None \
            else "no distilled student is loaded (none in the bundle, or --lora adapts the full model)"
        info = self.distill_info
        warnings.warn(f"{why}: sampling with it, {info.teacher_steps} Euler steps", VideoditWarning)
        return self.dit, dataclasses.replace(sampler, solver="euler", steps=info.teacher_steps,
                                             guidance_interval=info.guidance_interval)

    def sampler(self, *, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                solver: str | None = None, guidance_interval: tuple[float, float] | None = None) -> SamplerConfig:
        """The bundle's sampler settings with the given ones replaced (None keeps the bundle's)."""
        changes = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("solver", solver),
                                     ("guidance_interval", guidance_interval)) if v is not None}
        return dataclasses.replace(self.config.sampler, seed=seed, **changes)

    def __call__(self, prompt: str | list[str], *, frames: int | None = None, size: tuple[int, int] | None = None,
                 steps: int | None = None, guidance: float | None = None, seed: int = 0, negative: str = "",
                 solver: str | None = None, cond: FrameCondition | None = None,
                 guidance_interval: tuple[float, float] | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
        """One prompt -> (F, H, W, 3) uint8; a list of prompts -> (B, F, H, W, 3). Unset settings
        take the bundle's defaults. The empty prompt generates unconditionally."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise VideoditError("no prompts given")
        sampler = self.sampler(seed=seed, steps=steps, guidance=guidance, solver=solver,
                               guidance_interval=guidance_interval)
        frames = self.config.frames if frames is None else frames  # 0 is refused by latent_shape, not replaced
        latents = self.generate_latents(prompts, frames=frames, size=self.config.size if size is None else size,
                                        sampler=sampler, negative=negative, cond=cond, on_step=on_step)
        out = self.decode_latents(latents)
        return out[0] if isinstance(prompt, str) else out
