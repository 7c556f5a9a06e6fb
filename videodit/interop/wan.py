"""Wan 2.1 text-to-video (Wan-AI, Apache-2.0) from a local folder in diffusers' layout or in
Wan's own (the section "Wan's original layout" below), and model CPU offload (enable_offload).

    pipe = Pipeline.load("Wan2.1-T2V-1.3B-Diffusers")    # Pipeline.load recognises the layout
    vae, dit, text, fields = load("Wan2.1-T2V-1.3B")     # the parts; fields: a BundleConfig's

The folder is what ``WanPipeline.save_pretrained`` writes (docs/WAN.md):
    model_index.json     {"_class_name": "WanPipeline", ...}
    transformer/         config.json + diffusion_pytorch_model*.safetensors   -> videodit.dit.DiT
    vae/                 config.json + diffusion_pytorch_model*.safetensors   -> WanVAE (below)
    text_encoder/        UMT5 encoder (transformers)                          -> videodit.text
    tokenizer/           its tokenizer
    scheduler/           scheduler_config.json: the timestep shift            -> SamplerConfig
Every file, key and shape is checked before anything is built; a missing or wrong piece is a
one-line VideoditError naming it. Nothing is downloaded: the folder is read as it is (diffusers'
folders carry no SHA256SUMS, so unlike a videodit bundle there are no checksums to verify).

The transformer IS videodit's DiT (preset ``wan-1.3b``), with four DiTConfig switches (biases,
tanh GELU, QK-norm across heads, no null text token). Two differences are layouts, absorbed
here when the weights are mapped:
- RoPE pairs: Wan rotates interleaved channel pairs (2i, 2i + 1) of each head, videodit pairs
  (i, i + head_dim / 2) with the same frequency order (t, h, w). Permuting the rows of the query
  and key projections (and their QK-norm gains) per head, even channels first, turns one into the
  other; q.k is unchanged by a permutation applied to both.
- The output head: Wan's rows are ordered (pt, ph, pw, c), videodit's (c, pt, ph, pw).
The time embedding (t x 1000, [cos | sin]), modulation order, norms and head are the same math.

The VAE is diffusers' ``AutoencoderKLWan``, wrapped behind videodit's VAE interface rather than
mapped into videodit.vae: Wan's VAE is another network (RMS norms, a mid-block attention,
zero-padded resampling, a per-chunk feature cache), and a second implementation of it would be
code to keep equal to the reference for nothing; the wrapper adds only the interface and Wan's
per-channel latent statistics.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from videodit import bundle
from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError
from videodit.sample import SamplerConfig
from videodit.text import DTYPES, TextEncoder, TextEncoderConfig
from videodit.vae import TEMPORAL_STRIDE

PIPELINE_CLASS = "WanPipeline"
TRANSFORMER_CLASS = "WanTransformer3DModel"
VAE_CLASS = "AutoencoderKLWan"
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTS = "diffusion_pytorch_model.safetensors"
TEXT_TOKENS = 512  # WanPipeline's max_sequence_length: every prompt is 512 attended tokens
# Wan 2.1's own defaults (its README and WanPipeline): 832 x 480, 81 frames at 16 fps, 50 steps, guidance 5.
DEFAULT_SIZE = (832, 480)
DEFAULT_FRAMES = 81
FPS = 16.0
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 5.0


# ----------------------------------------------------------------------------- the folder


def _json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise VideoditError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VideoditError(f"{path}: not valid JSON ({e})") from None


def _class_name(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def is_original_folder(path: str | Path) -> bool:
    """True for Wan's own layout: a config.json naming WanModel at the top of the folder."""
    return _class_name(Path(path) / bundle.CONFIG) == ORIGINAL_DIT_CLASS


def is_wan_folder(path: str | Path) -> bool:
    """True for a Wan folder in either layout: diffusers' (model_index.json names a WanPipeline)
    or Wan's own (is_original_folder)."""
    return _class_name(Path(path) / "model_index.json") == PIPELINE_CLASS or is_original_folder(path)


def check_folder(path: Path) -> None:
    """Every component folder the layout needs, or one error naming the missing ones."""
    index = _json(path / "model_index.json", "diffusers' model index")
    if index.get("transformer_2") and index["transformer_2"][0] is not None:
        raise VideoditError(f"{path}: a two-expert Wan 2.2 pipeline (transformer_2); only Wan 2.1 T2V loads")
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise VideoditError(f"{path}: not a complete Wan folder, missing {', '.join(m + '/' for m in missing)}")


def read_safetensors(folder: Path, name: str = WEIGHTS) -> dict[str, torch.Tensor]:
    """A component's tensors, from one file or from shards listed in ``name``.index.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / f"{name}.index.json"
    if (folder / name).is_file():
        files = [folder / name]
    elif index.is_file():
        files = [folder / f for f in sorted(set(_json(index, "shard index").get("weight_map", {}).values()))]
        absent = [f.name for f in files if not f.is_file()]
        if not files or absent:
            raise VideoditError(f"{index}: lists shards that are missing ({', '.join(absent) or 'none listed'})")
    else:
        raise VideoditError(f"{folder}: no weights ({name} or {index.name})")
    state = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise VideoditError(f"{f}: not a readable safetensors file ({e})") from None
    bundle.check_finite(state, str(folder))
    return state


def _check_keys(expected: dict[str, tuple], state: dict[str, torch.Tensor], source: str) -> None:
    """``expected``: key -> shape. One error naming missing / unexpected keys and wrong shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs {tuple(s)}" for k, s in expected.items()
             if k in state and tuple(state[k].shape) != tuple(s)]
    problems = [f"{what} {bundle._short(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)) if keys]
    if problems:
        raise VideoditError(f"{source}: weights do not match its config.json ({'; '.join(problems)})")


# ----------------------------------------------------------------------------- transformer -> DiT


def dit_config(cfg: dict, source: str) -> DiTConfig:
    """The DiTConfig of a WanTransformer3DModel config.json (text-to-video variants only)."""
    if cfg.get("_class_name") != TRANSFORMER_CLASS:
        raise VideoditError(f"{source}: _class_name {cfg.get('_class_name')!r}, expected {TRANSFORMER_CLASS}")
    unsupported = {"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None,
                   "qk_norm": "rms_norm_across_heads", "cross_attn_norm": True}
    for key, want in unsupported.items():
        if cfg.get(key, want) != want:
            raise VideoditError(f"{source}: {key} = {cfg[key]!r}; videodit loads Wan 2.1 text-to-video "
                                f"transformers ({key} = {want!r})")
    try:
        heads, head_dim, ffn = cfg["num_attention_heads"], cfg["attention_head_dim"], cfg["ffn_dim"]
        dim = heads * head_dim
        if cfg.get("out_channels", cfg["in_channels"]) not in (None, cfg["in_channels"]):
            raise VideoditError(f"{source}: out_channels {cfg['out_channels']} != in_channels {cfg['in_channels']}")
        dit = DiTConfig(in_channels=cfg["in_channels"], patch=tuple(cfg["patch_size"]), dim=dim,
                        depth=cfg["num_layers"], heads=heads, mlp_ratio=ffn / dim, text_dim=cfg["text_dim"],
                        freq_dim=cfg["freq_dim"], norm_eps=cfg["eps"], bias=True, gelu="tanh",
                        qk_norm_span="all", null_text=False)
    except KeyError as e:
        raise VideoditError(f"{source}: no {e.args[0]!r}") from None
    if int(dit.dim * dit.mlp_ratio) != ffn:
        raise VideoditError(f"{source}: ffn_dim {ffn} is not representable as dim x mlp_ratio")
    return dit


def _wan_shapes(cfg: DiTConfig) -> dict[str, tuple]:
    """Every key of a WanTransformer3DModel state dict for ``cfg``, with its shape."""
    D, c = cfg.dim, cfg.in_channels
    hidden = int(D * cfg.mlp_ratio)
    out = c * cfg.patch[0] * cfg.patch[1] * cfg.patch[2]
    shapes = {"patch_embedding.weight": (D, c, *cfg.patch), "patch_embedding.bias": (D,),
              "proj_out.weight": (out, D), "proj_out.bias": (out,), "scale_shift_table": (1, 2, D)}
    e = "condition_embedder."
    for name, (n_in, n_out) in {"time_embedder.linear_1": (cfg.freq_dim, D), "time_embedder.linear_2": (D, D),
                                "time_proj": (D, 6 * D), "text_embedder.linear_1": (cfg.text_dim, D),
                                "text_embedder.linear_2": (D, D)}.items():
        shapes |= {f"{e}{name}.weight": (n_out, n_in), f"{e}{name}.bias": (n_out,)}
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        shapes |= {f"{b}scale_shift_table": (1, 6, D), f"{b}norm2.weight": (D,), f"{b}norm2.bias": (D,),
                   f"{b}ffn.net.0.proj.weight": (hidden, D), f"{b}ffn.net.0.proj.bias": (hidden,),
                   f"{b}ffn.net.2.weight": (D, hidden), f"{b}ffn.net.2.bias": (D,)}
        for attn in ("attn1", "attn2"):
            for lin in ("to_q", "to_k", "to_v", "to_out.0"):
                shapes |= {f"{b}{attn}.{lin}.weight": (D, D), f"{b}{attn}.{lin}.bias": (D,)}
            shapes |= {f"{b}{attn}.norm_q.weight": (D,), f"{b}{attn}.norm_k.weight": (D,)}
    return shapes


def dit_state(wan: dict[str, torch.Tensor], cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """A checked WanTransformer3DModel state dict -> videodit DiT state dict (fp32); see the module
    docstring for the two permutations."""
    D, H, hd = cfg.dim, cfg.heads, cfg.head_dim
    pt, ph, pw = cfg.patch
    # RoPE layout: videodit channel j of a head <- Wan channel 2j (j < hd/2), hd/2 + j <- 2j + 1.
    rope_perm = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])
    rows = (torch.arange(H)[:, None] * hd + rope_perm).reshape(-1)  # (D,) rows of q and k, head by head

    def w(key):
        return wan[key].float()

    def lin(prefix: str, perm=None):
        weight, bias = w(f"{prefix}.weight"), w(f"{prefix}.bias")
        return (weight, bias) if perm is None else (weight[perm], bias[perm])

    e = "condition_embedder."
    head_w = w("proj_out.weight").view(pt, ph, pw, cfg.in_channels, D).permute(3, 0, 1, 2, 4)  # (c, pt, ph, pw, D)
    head_b = w("proj_out.bias").view(pt, ph, pw, cfg.in_channels).permute(3, 0, 1, 2)  # (c, pt, ph, pw)
    state = {
        "patch_embed.weight": w("patch_embedding.weight").reshape(D, -1),  # (D, c*pt*ph*pw), videodit's patch order
        "patch_embed.bias": w("patch_embedding.bias"),
        "text_embed.0.weight": w(f"{e}text_embedder.linear_1.weight"), "text_embed.0.bias": w(f"{e}text_embedder.linear_1.bias"),
        "text_embed.2.weight": w(f"{e}text_embedder.linear_2.weight"), "text_embed.2.bias": w(f"{e}text_embedder.linear_2.bias"),
        "time_embed.0.weight": w(f"{e}time_embedder.linear_1.weight"), "time_embed.0.bias": w(f"{e}time_embedder.linear_1.bias"),
        "time_embed.2.weight": w(f"{e}time_embedder.linear_2.weight"), "time_embed.2.bias": w(f"{e}time_embedder.linear_2.bias"),
        "time_proj.1.weight": w(f"{e}time_proj.weight"), "time_proj.1.bias": w(f"{e}time_proj.bias"),
        "head_modulation": w("scale_shift_table").view(2, D),
        "head.weight": head_w.reshape(-1, D), "head.bias": head_b.reshape(-1),
    }
    for i in range(cfg.depth):
        b = o = f"blocks.{i}."  # Wan's block prefix, videodit's
        q, k, v = lin(f"{b}attn1.to_q", rows), lin(f"{b}attn1.to_k", rows), lin(f"{b}attn1.to_v")
        cq, ck, cv = lin(f"{b}attn2.to_q"), lin(f"{b}attn2.to_k"), lin(f"{b}attn2.to_v")
        state |= {
            f"{o}modulation": w(f"{b}scale_shift_table").view(6, D),
            f"{o}self_attn.qkv.weight": torch.cat([q[0], k[0], v[0]]), f"{o}self_attn.qkv.bias": torch.cat([q[1], k[1], v[1]]),
            f"{o}self_attn.q_gain": w(f"{b}attn1.norm_q.weight")[rows].view(H, hd),
            f"{o}self_attn.k_gain": w(f"{b}attn1.norm_k.weight")[rows].view(H, hd),
            f"{o}self_attn.out.weight": w(f"{b}attn1.to_out.0.weight"), f"{o}self_attn.out.bias": w(f"{b}attn1.to_out.0.bias"),
            f"{o}norm_cross.weight": w(f"{b}norm2.weight"), f"{o}norm_cross.bias": w(f"{b}norm2.bias"),
            f"{o}cross_attn.q.weight": cq[0], f"{o}cross_attn.q.bias": cq[1],
            f"{o}cross_attn.kv.weight": torch.cat([ck[0], cv[0]]), f"{o}cross_attn.kv.bias": torch.cat([ck[1], cv[1]]),
            f"{o}cross_attn.q_gain": w(f"{b}attn2.norm_q.weight").view(H, hd),  # no RoPE: no permutation
            f"{o}cross_attn.k_gain": w(f"{b}attn2.norm_k.weight").view(H, hd),
            f"{o}cross_attn.out.weight": w(f"{b}attn2.to_out.0.weight"), f"{o}cross_attn.out.bias": w(f"{b}attn2.to_out.0.bias"),
            f"{o}mlp.0.weight": w(f"{b}ffn.net.0.proj.weight"), f"{o}mlp.0.bias": w(f"{b}ffn.net.0.proj.bias"),
            f"{o}mlp.2.weight": w(f"{b}ffn.net.2.weight"), f"{o}mlp.2.bias": w(f"{b}ffn.net.2.bias"),
        }
    return {k: v.contiguous() for k, v in state.items()}


def load_dit(folder: str | Path, device: str | torch.device = "cpu") -> DiT:
    """videodit's DiT holding the weights of a Wan transformer/ folder (fp32 parameters, as every
    videodit DiT; run it under bf16 autocast for speed, videodit.sample does)."""
    folder = Path(folder)
    cfg = dit_config(_json(folder / bundle.CONFIG, "the transformer's config"), str(folder / bundle.CONFIG))
    wan = read_safetensors(folder)
    wan.pop("norm_added_q.weight", None)  # diffusers ignores this stray key of some checkpoints too
    _check_keys(_wan_shapes(cfg), wan, str(folder))
    return _build_dit(cfg, dit_state(wan, cfg), str(folder), device)


def _build_dit(cfg: DiTConfig, state: dict[str, torch.Tensor], source: str, device) -> DiT:
    with torch.device("meta"):  # no random init of ~1.3 B parameters only to overwrite them
        dit = DiT(cfg)
    bundle.check_state_dict(dit, state, source)
    dit.load_state_dict(state, assign=True)
    return dit.to(device).eval()


# ----------------------------------------------------------------------------- VAE


@dataclass(frozen=True)
class WanVAEConfig:
    """What the pipeline reads of a VAE's config (videodit.vae.VAEConfig's names), for Wan's."""

    latent_channels: int
    spatial_stride: int
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    # Pipeline.check_memory charges decoder_channels x max(channel_mults) x 16 bytes per output
    # pixel of every frame. Wan's decoder runs one latent frame at a time through a feature cache,
    # its full-resolution stage base_dim wide: base_dim and (1,) state that peak.
    decoder_channels: int
    channel_mults: tuple[int, ...] = (1,)


class WanVAE(nn.Module):
    """diffusers' AutoencoderKLWan behind videodit's VAE interface: pixels (B, 3, F, H, W) in
    [-1, 1] <-> raw latents (B, z, T, h, w); normalize / denormalize with Wan's per-channel
    latents_mean / latents_std (normalised = (z - mean) / std, what the DiT sees, as WanPipeline
    computes). ``tile``: decode (and encode) in spatial tiles of that many pixels (diffusers'
    tiling, a quarter overlapping) to bound memory at large sizes; None = whole frames."""

    def __init__(self, model: nn.Module, cfg: WanVAEConfig, tile: int | None = None):
        super().__init__()
        self.model, self.cfg, self.tile = model, cfg, tile
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    def _tiling(self):
        if self.tile:
            stride = self.tile * 3 // 4  # diffusers' default proportion: 256-pixel tiles every 192
            self.model.enable_tiling(self.tile, self.tile, stride, stride)
        else:
            self.model.disable_tiling()

    def encode(self, x: torch.Tensor, sample: bool = False, *, generator: torch.Generator | None = None) -> torch.Tensor:
        self._tiling()
        dist = self.model.encode(x.to(self.mean.dtype)).latent_dist
        return dist.sample(generator) if sample else dist.mode()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._tiling()
        return self.model.decode(z.to(self.mean.dtype)).sample

    # The statistics follow z's device, so an offloaded VAE (enable_offload) need not move for them.
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std.to(z.device) + self.mean.to(z.device)

    def save_pretrained(self, path):
        raise VideoditError("a pipeline loaded from a Wan folder is not saved as a videodit bundle; keep the folder")


def load_vae(folder: str | Path, device: str | torch.device = "cpu", tile: int | None = None) -> WanVAE:
    from diffusers import AutoencoderKLWan

    folder = Path(folder)
    source = str(folder / bundle.CONFIG)
    cfg = _json(folder / bundle.CONFIG, "the VAE's config")
    if cfg.get("_class_name") != VAE_CLASS:
        raise VideoditError(f"{source}: _class_name {cfg.get('_class_name')!r}, expected {VAE_CLASS}")
    z = cfg.get("z_dim", 16)
    mean, std = cfg.get("latents_mean") or [], cfg.get("latents_std") or []
    if cfg.get("patch_size") is not None or cfg.get("scale_factor_temporal", TEMPORAL_STRIDE) != TEMPORAL_STRIDE:
        raise VideoditError(f"{source}: patch_size / scale_factor_temporal of a Wan 2.2 VAE; Wan 2.1's loads")
    if len(mean) != z or len(std) != z or min(std) <= 0:
        raise VideoditError(f"{source}: latents_mean / latents_std need {z} values each (std > 0)")
    model = AutoencoderKLWan.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    state = read_safetensors(folder)
    _check_keys({k: v.shape for k, v in model.state_dict().items()}, state, str(folder))
    model.load_state_dict(state)
    vae_cfg = WanVAEConfig(latent_channels=z, spatial_stride=cfg.get("scale_factor_spatial", 8),
                           latents_mean=tuple(mean), latents_std=tuple(std),
                           decoder_channels=cfg.get("decoder_base_dim") or cfg.get("base_dim", 96))
    return WanVAE(model.float(), vae_cfg, tile).to(device).eval()


# ----------------------------------------------------------------------------- text, sampler, all


def _check_text_encoder(folder: Path, tokenizer: Path) -> str:
    """Every key and shape of the UMT5 encoder checked; returns its stored dtype as a videodit
    text dtype (bfloat16 for 16-bit checkpoints, else float32)."""
    import transformers

    cfg = _json(folder / bundle.CONFIG, "the text encoder's config")
    if cfg.get("model_type") not in ("umt5", "t5"):
        raise VideoditError(f"{folder / bundle.CONFIG}: model_type {cfg.get('model_type')!r}, expected umt5")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "spiece.model")):
        raise VideoditError(f"{tokenizer}: no tokenizer.json or spiece.model")
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(transformers.AutoConfig.from_pretrained(folder, local_files_only=True))
    state = read_safetensors(folder, "model.safetensors")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for tied, source in (getattr(model, "_tied_weights_keys", None) or {}).items():
        if tied not in state and source in state:  # tied weights are saved once
            expected.pop(tied, None)
    _check_keys(expected, state, str(folder))
    stored = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return "bfloat16" if stored in ("bfloat16", "float16") else "float32"


def text_config(path: Path) -> TextEncoderConfig:
    dtype = _check_text_encoder(path / "text_encoder", path / "tokenizer")
    return TextEncoderConfig(model=str(path / "text_encoder"), tokenizer=str(path / "tokenizer"),
                             max_length=TEXT_TOKENS, pad_to=TEXT_TOKENS, dtype=dtype)


def sampler_config(folder: Path) -> SamplerConfig:
    """Euler on the flow ODE with the scheduler's timestep shift, guidance 5 at every step.

    WanPipeline ships UniPCMultistepScheduler (a multistep solver) with ``flow_shift``;
    FlowMatchEulerDiscreteScheduler has ``shift``. videodit's schedule is Wan's own sampling
    sigmas (linspace(1, 0, steps + 1) shifted, Wan 2.1's get_sampling_sigmas), integrated by
    videodit's Euler or Heun: the same ODE, another solver than UniPC's."""
    path = folder / "scheduler_config.json"
    cfg = _json(path, "the scheduler's config")
    shift = cfg.get("flow_shift") if "flow_shift" in cfg else cfg.get("shift")
    if not isinstance(shift, (int, float)) or shift <= 0 or cfg.get("use_dynamic_shifting"):
        raise VideoditError(f"{path}: no fixed timestep shift (flow_shift or shift > 0, no dynamic shifting)")
    return SamplerConfig(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, guidance_interval=(0.0, 1.0),
                         shift=float(shift))


def load(path: str | Path, device: str | torch.device = "cpu", *, vae_tile: int | None = None):
    """(WanVAE, DiT, TextEncoder, the fields of the pipeline's BundleConfig) of a Wan folder in
    either layout. Every file, key and shape is checked before the large weights load."""
    path = Path(path)
    if is_original_folder(path):
        return _load_original(path, device, vae_tile)
    check_folder(path)
    text = text_config(path)
    sampler = sampler_config(path / "scheduler")
    vae = load_vae(path / "vae", device, vae_tile)
    dit = load_dit(path / "transformer", device)
    _check_fit(path, dit, vae.cfg.latent_channels, _text_width(path))
    fields = dict(text=text, sampler=sampler, size=DEFAULT_SIZE, frames=DEFAULT_FRAMES, fps=FPS)
    return vae, dit, TextEncoder(text, device=device), fields


def _text_width(path: Path) -> int:
    return _json(path / "text_encoder" / bundle.CONFIG, "the text encoder's config").get("d_model", -1)


def _check_fit(path: Path, dit: DiT, latent_channels: int, text_width: int) -> None:
    if dit.config.in_channels != latent_channels or dit.config.text_dim != text_width:
        raise VideoditError(f"{path}: the DiT takes {dit.config.in_channels} latent channels and text of width "
                            f"{dit.config.text_dim}; the VAE makes {latent_channels}, the text encoder {text_width}")


# ----------------------------------------------------------------------------- Wan's original layout
# The folder Wan-AI publishes as Wan2.1-T2V-1.3B (github.com/Wan-Video/Wan2.1, wan/configs/wan_t2v_1_3B.py):
#     config.json                          WanModel's config (wan/modules/model.py)   -> videodit.dit.DiT
#     diffusion_pytorch_model*.safetensors its weights, Wan's key names
#     Wan2.1_VAE.pth                       Wan's VAE state dict (wan/modules/vae.py)   -> WanVAE
#     models_t5_umt5-xxl-enc-bf16.pth      Wan's UMT5-XXL encoder (wan/modules/t5.py)  -> transformers' UMT5EncoderModel
#     google/umt5-xxl/                     its tokenizer
# Each is mapped key by key into the module the diffusers layout loads, so both layouts run the same code.

ORIGINAL_DIT_CLASS = "WanModel"
ORIGINAL_VAE = "Wan2.1_VAE.pth"
ORIGINAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
ORIGINAL_TOKENIZER = "google/umt5-xxl"
ORIGINAL_SHIFT = 5.0  # Wan's generate.py default --sample_shift for text-to-video (no scheduler file here)
# Wan 2.1's latent statistics: typed into wan/modules/vae.py (WanVAE), not stored in the .pth.
ORIGINAL_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                         0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
ORIGINAL_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# Module names, Wan's -> diffusers' (a parameter's last name is kept). In a WanAttentionBlock Wan
# runs norm1, norm3, norm2: norm3 is the cross-attention's affine LayerNorm, diffusers' norm2.
_DIT_NAMES = {"time_embedding.0": "condition_embedder.time_embedder.linear_1",
              "time_embedding.2": "condition_embedder.time_embedder.linear_2",
              "text_embedding.0": "condition_embedder.text_embedder.linear_1",
              "text_embedding.2": "condition_embedder.text_embedder.linear_2",
              "time_projection.1": "condition_embedder.time_proj",
              "head.head": "proj_out", "head.modulation": "scale_shift_table"}
_DIT_BLOCK_NAMES = {"modulation": "scale_shift_table", "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
                    **{f"{wan}.{a}": f"{ours}.{b}" for wan, ours in (("self_attn", "attn1"), ("cross_attn", "attn2"))
                       for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"),
                                    ("norm_q", "norm_q"), ("norm_k", "norm_k"))}}
# Wan's T5 encoder block -> transformers' UMT5 block (every UMT5 layer has its own relative bias).
_T5_BLOCK_NAMES = {"norm1": "layer.0.layer_norm", "attn.q": "layer.0.SelfAttention.q", "attn.k": "layer.0.SelfAttention.k",
                   "attn.v": "layer.0.SelfAttention.v", "attn.o": "layer.0.SelfAttention.o",
                   "pos_embedding.embedding": "layer.0.SelfAttention.relative_attention_bias",
                   "norm2": "layer.1.layer_norm", "ffn.gate.0": "layer.1.DenseReluDense.wi_0",  # the GELU'd half
                   "ffn.fc1": "layer.1.DenseReluDense.wi_1", "ffn.fc2": "layer.1.DenseReluDense.wo"}
_T5_NAMES = {"token_embedding": "shared", "norm": "encoder.final_layer_norm"}
# Wan's VAE -> diffusers' AutoencoderKLWan (read from diffusers' scripts/convert_wan_to_diffusers.py).
_VAE_RESNET_NAMES = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
                     "shortcut": "conv_shortcut"}
_VAE_NAMES = {"conv1": "quant_conv", "conv2": "post_quant_conv", "encoder.conv1": "encoder.conv_in",
              "decoder.conv1": "decoder.conv_in", "encoder.head.0": "encoder.norm_out", "encoder.head.2": "encoder.conv_out",
              "decoder.head.0": "decoder.norm_out", "decoder.head.2": "decoder.conv_out"}


def _renamed(name: str, names: dict[str, str]) -> str:
    """``name`` with its module (all but the last part) looked up in ``names``; a whole name too."""
    if name in names:
        return names[name]
    module, _, leaf = name.rpartition(".")
    return f"{names.get(module, module)}.{leaf}"


def _inverse(names: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in names.items()}


def dit_key(key: str, to_wan: bool = False) -> str:
    """A WanModel key as diffusers names it (``to_wan``: the other way)."""
    top, block = (_inverse(_DIT_NAMES), _inverse(_DIT_BLOCK_NAMES)) if to_wan else (_DIT_NAMES, _DIT_BLOCK_NAMES)
    if key.startswith("blocks."):
        _, i, rest = key.split(".", 2)
        return f"blocks.{i}.{_renamed(rest, block)}"
    return _renamed(key, top)


def t5_key(key: str, to_wan: bool = False) -> str:
    """A key of Wan's T5Encoder as transformers' UMT5EncoderModel names it (``to_wan``: the other way)."""
    top, block = (_inverse(_T5_NAMES), _inverse(_T5_BLOCK_NAMES)) if to_wan else (_T5_NAMES, _T5_BLOCK_NAMES)
    wan_block, ours_block = ("encoder.block.", "blocks.") if to_wan else ("blocks.", "encoder.block.")
    if key.startswith(wan_block):
        i, rest = key.removeprefix(wan_block).split(".", 1)
        return f"{ours_block}{i}.{_renamed(rest, block)}"
    return _renamed(key, top)


def vae_key(key: str, res_blocks: int) -> str:
    """A key of Wan's VAE (WanVAE_) as diffusers' AutoencoderKLWan names it. Wan's decoder is one
    flat list, per stage ``res_blocks`` + 1 residual blocks then a resampler; diffusers nests it."""
    if key.rpartition(".")[0] in _VAE_NAMES:
        return _renamed(key, _VAE_NAMES)
    side, part, *rest = key.split(".")
    if part == "middle":  # (resnet, attention, resnet)
        i, *rest = rest
        part = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}[i]
    elif part == "downsamples":  # the same flat list in diffusers
        i, *rest = rest
        part = f"down_blocks.{i}"
    elif part == "upsamples":
        i, *rest = rest
        stage, j = divmod(int(i), res_blocks + 2)
        part = f"up_blocks.{stage}." + (f"resnets.{j}" if j <= res_blocks else "upsamplers.0")
    tail = ".".join(rest)
    return f"{side}.{part}.{_renamed(tail, _VAE_RESNET_NAMES) if '.' in tail else tail}"


def read_pth(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state dict, read with weights_only=True only: a file that needs pickled code is refused."""
    import pickle
    import re
    import zipfile

    try:  # mmap: the 11 GB T5 file is paged in, not copied (zip-format files, torch.save's since 1.6)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if code:
            raise VideoditError(f"{path}: needs pickled code to load ({code[1]}); videodit reads .pth files "
                                f"with weights_only=True only") from None
        raise VideoditError(f"{path}: not a readable torch file (unpickling failed)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VideoditError(f"{path}: not a readable torch file ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VideoditError(f"{path}: not a state dict (a dict of tensors)")
    bundle.check_finite(state, str(path))
    return state


def check_original_folder(path: Path) -> None:
    """Every file Wan's layout needs, or one error naming the missing ones."""
    weights = any(path.glob("diffusion_pytorch_model*.safetensors"))
    tokenizer = path / ORIGINAL_TOKENIZER
    missing = [name for name, ok in (("diffusion_pytorch_model*.safetensors", weights),
                                     (ORIGINAL_VAE, (path / ORIGINAL_VAE).is_file()),
                                     (ORIGINAL_T5, (path / ORIGINAL_T5).is_file()),
                                     (ORIGINAL_TOKENIZER + "/", tokenizer.is_dir())) if not ok]
    if missing:
        raise VideoditError(f"{path}: not a complete Wan folder, missing {', '.join(missing)}")
    if not any((tokenizer / f).is_file() for f in ("tokenizer.json", "spiece.model")):
        raise VideoditError(f"{tokenizer}: no tokenizer.json or spiece.model")


def original_dit_config(cfg: dict, wan: dict[str, torch.Tensor], source: str) -> DiTConfig:
    """The DiTConfig of WanModel's config.json. WanModel leaves patch_size and text_dim out of its
    config (ignore_for_config), so they are read from the weights' shapes."""
    if cfg.get("model_type", "t2v") != "t2v":
        raise VideoditError(f"{source}: model_type {cfg['model_type']!r}; videodit loads Wan 2.1 text-to-video (t2v)")
    try:
        heads = cfg["num_heads"]
        patch = wan["patch_embedding.weight"].shape[2:]  # (D, c, pt, ph, pw)
        text_dim = wan["text_embedding.0.weight"].shape[1]
        as_diffusers = {"_class_name": TRANSFORMER_CLASS, "num_attention_heads": heads,
                        "attention_head_dim": cfg["dim"] // heads, "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"],
                        "in_channels": cfg["in_dim"], "out_channels": cfg["out_dim"], "num_layers": cfg["num_layers"],
                        "eps": cfg["eps"], "text_dim": text_dim, "patch_size": list(patch)}
    except KeyError as e:
        raise VideoditError(f"{source}: no {e.args[0]!r} (in config.json or its weights)") from None
    return dit_config(as_diffusers, source)


def _original_vae(path: Path, device, tile: int | None) -> WanVAE:
    from diffusers import AutoencoderKLWan

    source = path / ORIGINAL_VAE
    wan = read_pth(source)
    try:  # the architecture, from the shapes: Wan's file stores no config
        down = sorted({int(k.split(".")[2]) for k in wan if k.startswith("encoder.downsamples.")})
        resamplers = [i for i in down if f"encoder.downsamples.{i}.resample.1.weight" in wan]
        stages = len(resamplers) + 1
        res_blocks = (len(down) - len(resamplers)) // stages
        base = wan["encoder.conv1.weight"].shape[0]
        z = wan["conv2.weight"].shape[0]
        cfg = dict(base_dim=base, z_dim=z, num_res_blocks=res_blocks, attn_scales=[],
                   dim_mult=[wan[f"encoder.downsamples.{s * (res_blocks + 1)}.residual.2.weight"].shape[0] // base
                             for s in range(stages)],
                   temperal_downsample=[f"encoder.downsamples.{i}.time_conv.weight" in wan for i in resamplers],
                   latents_mean=list(ORIGINAL_LATENTS_MEAN), latents_std=list(ORIGINAL_LATENTS_STD))
    except (KeyError, IndexError, ValueError) as e:
        raise VideoditError(f"{source}: not a Wan 2.1 VAE state dict ({e})") from None
    if any(".to_qkv." in k for k in wan if not k.split(".")[1] == "middle") or z != len(ORIGINAL_LATENTS_MEAN):
        raise VideoditError(f"{source}: a {z}-channel VAE or one with attention outside its middle blocks; "
                            f"Wan 2.1's has {len(ORIGINAL_LATENTS_MEAN)} channels and none")
    model = AutoencoderKLWan(**cfg)
    state = {vae_key(k, res_blocks): v for k, v in wan.items()}
    _check_keys({k: v.shape for k, v in model.state_dict().items()}, state, f"{source} (keys in diffusers' names)")
    model.load_state_dict(state)
    vae_cfg = WanVAEConfig(latent_channels=z, spatial_stride=2 ** (stages - 1), latents_mean=ORIGINAL_LATENTS_MEAN,
                           latents_std=ORIGINAL_LATENTS_STD, decoder_channels=base)
    return WanVAE(model.float(), vae_cfg, tile).to(device).eval()


class _BuiltTextEncoder(TextEncoder):
    """A TextEncoder around a model built here (Wan's T5 mapped in memory) rather than read from a
    Hugging Face folder by TextEncoder itself; it sets what TextEncoder.__init__ sets."""

    def __init__(self, config: TextEncoderConfig, tokenizer, model: nn.Module, device):
        self.config, self.device = config, torch.device(device)
        self.tokenizer, self.model = tokenizer, model.to(self.device).eval()
        self.dim = model.config.hidden_size
        self._cache = OrderedDict()


def _original_text(path: Path, device) -> TextEncoder:
    import transformers

    source = path / ORIGINAL_T5
    wan = read_pth(source)
    try:  # UMT5-XXL's sizes, from the shapes (Wan's umt5_xxl in wan/modules/t5.py types them)
        buckets, heads = wan["blocks.0.pos_embedding.embedding.weight"].shape
        vocab, width = wan["token_embedding.weight"].shape
        cfg = transformers.UMT5Config(vocab_size=vocab, d_model=width, d_kv=wan["blocks.0.attn.q.weight"].shape[0] // heads,
                                      d_ff=wan["blocks.0.ffn.fc1.weight"].shape[0], num_heads=heads,
                                      num_layers=len({k.split(".")[1] for k in wan if k.startswith("blocks.")}),
                                      relative_attention_num_buckets=buckets, feed_forward_proj="gated-gelu")
    except (KeyError, ValueError) as e:
        raise VideoditError(f"{source}: not a T5 encoder state dict (no {e})") from None
    with torch.device("meta"):
        model = transformers.UMT5EncoderModel(cfg)
    expected = {t5_key(k, to_wan=True): v.shape for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    _check_keys(expected, wan, str(source))
    state = {t5_key(k): v for k, v in wan.items()}
    state["encoder.embed_tokens.weight"] = state["shared.weight"]  # tied in UMT5, stored once by Wan
    model.load_state_dict(state, assign=True)
    dtype = "bfloat16" if wan["token_embedding.weight"].dtype in (torch.bfloat16, torch.float16) else "float32"
    tokenizer = transformers.AutoTokenizer.from_pretrained(path / ORIGINAL_TOKENIZER, local_files_only=True)
    config = TextEncoderConfig(model=str(source), tokenizer=str(path / ORIGINAL_TOKENIZER), max_length=TEXT_TOKENS,
                               pad_to=TEXT_TOKENS, dtype=dtype)
    return _BuiltTextEncoder(config, tokenizer, model.to(DTYPES[dtype]), device)


def _load_original(path: Path, device, vae_tile: int | None):
    check_original_folder(path)
    source = str(path / bundle.CONFIG)
    cfg = _json(path / bundle.CONFIG, "WanModel's config")
    wan = read_safetensors(path)
    dit_cfg = original_dit_config(cfg, wan, source)
    _check_keys({dit_key(k, to_wan=True): s for k, s in _wan_shapes(dit_cfg).items()}, wan, str(path))
    diffusers_named = {dit_key(k): v for k, v in wan.items()}
    del wan
    dit = _build_dit(dit_cfg, dit_state(diffusers_named, dit_cfg), str(path), device)
    del diffusers_named
    vae = _original_vae(path, device, vae_tile)
    text = _original_text(path, device)
    _check_fit(path, dit, vae.cfg.latent_channels, text.dim)
    sampler = SamplerConfig(steps=DEFAULT_STEPS, guidance=DEFAULT_GUIDANCE, guidance_interval=(0.0, 1.0),
                            shift=ORIGINAL_SHIFT)
    return vae, dit, text, dict(text=text.config, sampler=sampler, size=DEFAULT_SIZE, frames=DEFAULT_FRAMES, fps=FPS)


# ----------------------------------------------------------------------------- model CPU offload


def _to(x, device):  # the one place offload moves a module or a tensor (tests record it)
    return x.to(device)


def enable_offload(pipe, device: str | torch.device = "cuda") -> None:
    """Model CPU offload: the text encoder, the DiT and the VAE wait on the CPU, and each moves to
    ``device`` when it is called, sending the model that ran before it back to the CPU (the policy
    of diffusers' enable_model_cpu_offload): one model at a time holds device memory, and the DiT
    stays on ``device`` for all its sampling steps. Load the pipeline on the CPU, then call this.

    Callers see no difference: tensor arguments go to ``device``, tensor results come back to the
    device of the first tensor argument, and a bf16 autocast the caller runs under (the sampler's)
    is entered on ``device`` too. A no-op for device "cpu"."""
    device = torch.device(device)
    if device.type == "cpu":
        return
    held = {"module": None}  # the model on ``device`` now

    def offloaded(module: nn.Module, method):
        def run(*args, **kwargs):
            if held["module"] is not module:
                if held["module"] is not None:
                    _to(held["module"], "cpu")
                _to(module, device)
                held["module"] = module
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            caller = tensors[0].device if tensors else torch.device("cpu")
            args = [_to(a, device) if isinstance(a, torch.Tensor) else a for a in args]
            kwargs = {k: _to(v, device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            amp = torch.autocast(device.type, torch.get_autocast_dtype(caller.type)) \
                if torch.is_autocast_enabled(caller.type) else contextlib.nullcontext()
            with amp:
                out = method(*args, **kwargs)
            return _to(out, caller) if isinstance(out, torch.Tensor) else out
        return run

    for module in (pipe.text.model, pipe.dit, pipe.vae):
        _to(module, "cpu")
    # Instance attributes shadow the class's methods; nn.Module.__call__ calls self.forward.
    pipe.text.model.forward = offloaded(pipe.text.model, pipe.text.model.forward)
    pipe.dit.forward = offloaded(pipe.dit, pipe.dit.forward)
    pipe.vae.encode = offloaded(pipe.vae, pipe.vae.encode)
    pipe.vae.decode = offloaded(pipe.vae, pipe.vae.decode)

