"""Wan 2.1 text-to-video (Wan-AI, Apache-2.0) from a local folder in diffusers' layout.

    pipe = Pipeline.load("Wan2.1-T2V-1.3B-Diffusers")    # Pipeline.load recognises the layout
    vae, dit, fields = load("Wan2.1-T2V-1.3B-Diffusers")  # the parts; fields: a BundleConfig's

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

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from videodit import bundle
from videodit.dit import DiT, DiTConfig
from videodit.errors import VideoditError
from videodit.sample import SamplerConfig
from videodit.text import TextEncoderConfig
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


def is_wan_folder(path: str | Path) -> bool:
    """True for a folder whose model_index.json names a WanPipeline (diffusers' layout)."""
    index = Path(path) / "model_index.json"
    try:
        return json.loads(index.read_text()).get("_class_name") == PIPELINE_CLASS
    except (OSError, ValueError, AttributeError):
        return False


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
    state = dit_state(wan, cfg)
    del wan
    with torch.device("meta"):  # no random init of ~1.3 B parameters only to overwrite them
        dit = DiT(cfg)
    bundle.check_state_dict(dit, state, str(folder))
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

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

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
    """(WanVAE, DiT, the fields of the pipeline's BundleConfig) of a Wan folder; the text encoder
    is built by the pipeline from fields["text"]. Everything is checked before the large weights load."""
    path = Path(path)
    check_folder(path)
    text = text_config(path)
    sampler = sampler_config(path / "scheduler")
    vae = load_vae(path / "vae", device, vae_tile)
    dit = load_dit(path / "transformer", device)
    if dit.config.in_channels != vae.cfg.latent_channels or dit.config.text_dim != _text_width(path):
        raise VideoditError(f"{path}: transformer takes {dit.config.in_channels} latent channels and text of width "
                            f"{dit.config.text_dim}; vae/ and text_encoder/ do not fit")
    return vae, dit, dict(text=text, sampler=sampler, size=DEFAULT_SIZE, frames=DEFAULT_FRAMES, fps=FPS)


def _text_width(path: Path) -> int:
    return _json(path / "text_encoder" / bundle.CONFIG, "the text encoder's config").get("d_model", -1)

