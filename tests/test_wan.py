"""Wan 2.1 from a diffusers folder (videodit/interop/wan.py), against diffusers and transformers
as the reference: a tiny random WanPipeline (transformer, VAE, UMT5 encoder, a sentencepiece
tokenizer trained here on a few sentences) saved with save_pretrained, loaded by videodit."""

import io
import json
import shutil
import warnings

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("sentencepiece")

from videodit.dit import PRESETS, DiT  # noqa: E402
from videodit.errors import VideoditError  # noqa: E402
from videodit.interop import wan  # noqa: E402
from videodit.pipeline import Pipeline  # noqa: E402
from videodit.sample import FrameCondition, SamplerConfig, generate  # noqa: E402
from videodit.text import TextEncoder  # noqa: E402

warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")  # diffusers' RMSNorm

TOL = 1e-4  # fp32, max abs error
SENTENCES = ["A small red circle moves to the right on a black background.", "A blue square falls slowly.",
             "A green ball bounces on a white floor.", "Two yellow triangles spin.", "An orange star drifts up."]
Z = 4  # latent channels of the tiny VAE
SIZE, FRAMES = (48, 32), 5  # (width, height): latents (Z, 2, 4, 6), 12 tokens per latent frame


def _tokenizer():
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 10), model_writer=model, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    # Away from the initial values (unit norm gains, zero biases), so every permutation matters.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_wan_folder(root):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8)).eval()
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=Z, out_channels=Z, text_dim=32, freq_dim=16, ffn_dim=48,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
    _randomise(transformer, 1)
    vae = AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    _randomise(vae, 2, 0.02)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(root)
    return root, pipe


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_wan_folder(tmp_path_factory.mktemp("wan") / "Wan-tiny")


@pytest.fixture(scope="module")
def folder(made):
    return made[0]


@pytest.fixture(scope="module")
def reference(made):
    # The WanPipeline that wrote the folder (from_pretrained would need accelerate for its fp32 modules).
    return made[1]


@pytest.fixture(scope="module")
def pipe(folder):
    return Pipeline.load(folder)


def _sampler(**changes) -> SamplerConfig:
    base = dict(steps=3, guidance=5.0, guidance_interval=(0.0, 1.0), shift=3.0, bf16=False, seed=0)
    return SamplerConfig(**(base | changes))


# ----------------------------------------------------------------------------- equivalence


def test_real_wan_1_3b_config_is_the_preset():
    # transformer/config.json of Wan-AI/Wan2.1-T2V-1.3B-Diffusers (its published values).
    cfg = {"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None, "attention_head_dim": 128,
           "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "image_dim": None,
           "in_channels": 16, "num_attention_heads": 12, "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
           "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096}
    assert wan.dit_config(cfg, "config.json") == PRESETS["wan-1.3b"]


def test_folder_is_recognised(folder, tmp_path):
    assert wan.is_wan_folder(folder)
    assert not wan.is_wan_folder(tmp_path)


def test_dit_equals_diffusers_transformer(folder, reference):
    dit = wan.load_dit(folder / "transformer")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, Z, 3, 4, 6, generator=g)
    t = torch.rand(2, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        ours = dit(x, t, text, torch.ones(2, 7, dtype=torch.bool))
        theirs = reference.transformer(x, t * 1000, text, return_dict=False)[0]  # Wan's time runs 0..1000
    err = (ours - theirs).abs().max().item()
    assert err < TOL, err
    assert theirs.abs().max() > 0.1  # not a comparison of two near-zero outputs


def test_vae_equals_diffusers(folder, reference, pipe):
    g = torch.Generator().manual_seed(4)
    video = torch.rand(1, 3, FRAMES, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        z = pipe.vae.encode(video)
        z_ref = reference.vae.encode(video).latent_dist.mode()
        assert (z - z_ref).abs().max().item() < TOL
        out = pipe.vae.decode(z)
        out_ref = reference.vae.decode(z_ref).sample
        assert (out - out_ref).abs().max().item() < TOL
        # WanPipeline's latent normalisation: (z - mean) * (1 / std), and back.
        mean = torch.tensor(reference.vae.config.latents_mean).view(1, Z, 1, 1, 1)
        std = torch.tensor(reference.vae.config.latents_std).view(1, Z, 1, 1, 1)
        assert torch.allclose(pipe.vae.normalize(z), (z - mean) * (1.0 / std), atol=1e-6)
        assert torch.allclose(pipe.vae.denormalize(pipe.vae.normalize(z)), z, atol=1e-5)
        pipe.vae.tile = 16  # tiled decode runs (diffusers' tiling) and stays close at this size
        tiled = pipe.vae.decode(z)
        pipe.vae.tile = None
    assert tiled.shape == out.shape and torch.isfinite(tiled).all()


def test_text_embeddings_equal_wan_pipeline(pipe, reference):
    prompts = [SENTENCES[0], "", SENTENCES[2]]
    tokens, mask = pipe.text.encode(prompts)
    assert tokens.shape == (3, wan.TEXT_TOKENS, 32) and mask.all()
    with torch.no_grad():
        ref, _ = reference.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512)
    assert (tokens - ref).abs().max().item() < TOL
    assert (tokens[1, 1:] == 0).all() and tokens[1, 0].abs().sum() > 0  # "" is its </s> token, then zeros


def _wan_sigmas(scheduler):
    """Make diffusers' FlowMatchEuler sample Wan 2.1's own sigmas (linspace(1, 0, n + 1)[:n],
    then shifted: Wan's get_sampling_sigmas), which videodit's flow.sampling_timesteps are."""
    set_timesteps = scheduler.set_timesteps

    def wan_schedule(num_inference_steps, device=None, **_):
        set_timesteps(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1], device=device)

    scheduler.set_timesteps = wan_schedule


def test_sampling_equals_wan_pipeline(folder, pipe, reference):
    sampler = _sampler()
    assert pipe.config.sampler.shift == 3.0  # read from scheduler/scheduler_config.json
    c, T, h, w = pipe.latent_shape(FRAMES, SIZE)
    noise = torch.randn((1, c, T, h, w), generator=torch.Generator().manual_seed(sampler.seed))  # sample.start_point
    ours = pipe.generate_latents([SENTENCES[0]], frames=FRAMES, size=SIZE, sampler=sampler)
    _wan_sigmas(reference.scheduler)
    with torch.no_grad():
        theirs = reference(SENTENCES[0], negative_prompt="", height=SIZE[1], width=SIZE[0], num_frames=FRAMES,
                           num_inference_steps=sampler.steps, guidance_scale=sampler.guidance, latents=noise.clone(),
                           output_type="latent").frames
        err = (ours - theirs).abs().max().item()
        assert err < TOL, err
        video = pipe.vae.decode(pipe.vae.denormalize(ours))
        video_ref = reference.vae.decode(theirs * torch.tensor(reference.vae.config.latents_std).view(1, Z, 1, 1, 1)
                                         + torch.tensor(reference.vae.config.latents_mean).view(1, Z, 1, 1, 1)).sample
    assert (video - video_ref).abs().max().item() < TOL
    assert pipe(SENTENCES[0], frames=FRAMES, size=SIZE, steps=2).shape == (FRAMES, 32, 48, 3)


# ----------------------------------------------------------------------------- wrong folders


def _copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


@pytest.mark.parametrize("damage, message", [
    (lambda p: shutil.rmtree(p / "vae"), "missing vae/"),
    (lambda p: (p / "transformer" / wan.WEIGHTS).unlink(), "no weights"),
    (lambda p: (p / "scheduler" / "scheduler_config.json").unlink(), "scheduler_config.json: missing"),
    (lambda p: (p / "tokenizer" / "tokenizer.json").unlink(), "no tokenizer.json"),
])
def test_partial_folder_names_what_is_missing(folder, tmp_path, damage, message):
    copy = _copy(folder, tmp_path)
    damage(copy)
    with pytest.raises(VideoditError, match=message):
        Pipeline.load(copy)


def test_missing_or_reshaped_transformer_key_is_named(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = _copy(folder, tmp_path)
    path = copy / "transformer" / wan.WEIGHTS
    state = load_file(path)
    del state["blocks.1.attn2.norm_k.weight"]
    state["proj_out.bias"] = state["proj_out.bias"][:-1]
    save_file(state, path)
    with pytest.raises(VideoditError) as e:
        Pipeline.load(copy)
    assert "missing keys [blocks.1.attn2.norm_k.weight]" in str(e.value) and "proj_out.bias" in str(e.value)
    assert "\n" not in str(e.value)


def test_image_to_video_transformer_is_refused(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    cfg_path = copy / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_dim"] = 1280
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(VideoditError, match="image_dim"):
        Pipeline.load(copy)


# ----------------------------------------------------------------------------- every mode, LoRA, CLI

PROMPT = SENTENCES[0]


@pytest.fixture(scope="module")
def small(pipe):
    """The Wan pipeline with defaults fit for the tiny model: 9-frame windows at 48x32, 1 step."""
    import dataclasses

    config = dataclasses.replace(pipe.config, size=SIZE, frames=9, sampler=_sampler(steps=1))
    return Pipeline(pipe.vae, pipe.dit, pipe.text, config)


@pytest.fixture(scope="module")
def clip():
    frames = np.zeros((7, 32, 48, 3), np.uint8)
    for f in range(7):
        frames[f, 12:20, 4 + 3 * f: 12 + 3 * f] = (220, 40, 40)
    return frames


def test_every_prompting_mode_runs_on_wan(small, clip):
    from videodit import prompting

    runs = {
        "animate": (prompting.animate(small, PROMPT, clip[0]), 9),
        "two images": (prompting.animate(small, PROMPT, clip[0], clip[-1]), 9),
        "forward": (prompting.extend(small, PROMPT, clip, "forward", new_frames=6), 13),
        "backward": (prompting.extend(small, PROMPT, clip, "backward", new_frames=6), 13),
        "connect": (prompting.connect(small, PROMPT, clip, clip[:1]), 7 + 4 + 1),
        "loop": (prompting.loop(small, PROMPT, frames=13), 13),
        "edit": (prompting.edit(small, PROMPT, clip, 0.5), 7),
        "long video": (prompting.long_video(small, PROMPT, 17), 17),
    }
    for name, (video, frames) in runs.items():
        assert video.shape == (frames, 32, 48, 3) and video.dtype == np.uint8, name
    assert (runs["forward"][0][:7] == clip).all()  # the extended clip is kept as it was


def test_lora_on_the_wan_dit_trains_saves_and_loads(folder, small, tmp_path):
    from videodit import flow
    from videodit.lora import LoRAConfig, add_lora, lora_state_dict, save_lora

    dit = wan.load_dit(folder / "transformer")
    cfg = LoRAConfig(rank=2)
    add_lora(dit, cfg)
    dit.train()
    trained = {n: p for n, p in dit.named_parameters() if p.requires_grad}
    assert trained and trained.keys() == lora_state_dict(dit).keys()  # the base stays frozen
    opt = torch.optim.AdamW(trained.values(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(2, Z, 2, 4, 6, generator=g), torch.randn(2, Z, 2, 4, 6, generator=g)
    text, mask = small.text.encode([PROMPT, SENTENCES[1]])
    for _ in range(2):
        x_t, v = flow.interpolate(x0, noise, torch.tensor([0.3, 0.8]))
        loss = flow.flow_loss(dit(x_t, torch.tensor([0.3, 0.8]), text, mask), v)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    adapter = save_lora(dit, cfg, tmp_path / "adapter")
    with_lora = Pipeline.load(folder, lora=adapter)
    base = small(PROMPT, frames=5, seed=1)
    tuned = Pipeline(with_lora.vae, with_lora.dit, with_lora.text, small.config)(PROMPT, frames=5, seed=1)
    assert tuned.shape == base.shape and not (tuned == base).all()


def test_cli_generates_from_a_wan_folder(folder, tmp_path):
    from videodit.cli import main
    from videodit.video import read_video

    out = tmp_path / "wan.mp4"
    argv = ["generate", PROMPT, "--model", str(folder), "--steps", "1", "--frames", "5", "--size", "48x32", "-o", str(out)]
    assert main(argv) == 0
    video = read_video(out)
    assert video.frames.shape == (5, 32, 48, 3) and video.fps == wan.FPS


# ----------------------------------------------------------------------------- Wan's original layout
# The tiny diffusers folder rewritten with Wan's own key names (github.com/Wan-Video/Wan2.1,
# wan/modules/{model,vae,t5}.py). These rules are typed here from Wan's module names, apart from
# wan.py's tables, so a wrong correspondence there fails the equality below.

DIT_TO_WAN = [(r"condition_embedder\.time_embedder\.linear_(\d)", lambda m: f"time_embedding.{2 * int(m[1]) - 2}"),
              (r"condition_embedder\.text_embedder\.linear_(\d)", lambda m: f"text_embedding.{2 * int(m[1]) - 2}"),
              (r"condition_embedder\.time_proj", "time_projection.1"), (r"^proj_out", "head.head"),
              (r"^scale_shift_table", "head.modulation"), (r"\.scale_shift_table", ".modulation"),
              (r"\.norm2\.", ".norm3."), (r"\.ffn\.net\.0\.proj\.", ".ffn.0."), (r"\.ffn\.net\.2\.", ".ffn.2."),
              (r"\.attn1\.", ".self_attn."), (r"\.attn2\.", ".cross_attn."), (r"\.to_([qkv])\.", r".\1."),
              (r"\.to_out\.0\.", ".o.")]
VAE_TO_WAN = [(r"\.norm1\.", ".residual.0."), (r"\.conv1\.", ".residual.2."), (r"\.norm2\.", ".residual.3."),
              (r"\.conv2\.", ".residual.6."), (r"\.conv_shortcut\.", ".shortcut."), (r"^quant_conv", "conv1"),
              (r"^post_quant_conv", "conv2"), (r"\.conv_in\.", ".conv1."), (r"\.norm_out\.", ".head.0."),
              (r"\.conv_out\.", ".head.2."), (r"mid_block\.resnets\.0", "middle.0"), (r"mid_block\.attentions\.0", "middle.1"),
              (r"mid_block\.resnets\.1", "middle.2"), (r"down_blocks\.", "downsamples."),
              # one residual block per stage in the tiny VAE: Wan's decoder stage is 2 residual blocks + a resampler
              (r"up_blocks\.(\d)\.resnets\.(\d)", lambda m: f"upsamples.{3 * int(m[1]) + int(m[2])}"),
              (r"up_blocks\.(\d)\.upsamplers\.0", lambda m: f"upsamples.{3 * int(m[1]) + 2}")]
T5_TO_WAN = [(r"^shared\.", "token_embedding."), (r"^encoder\.final_layer_norm\.", "norm."),
             (r"^encoder\.block\.", "blocks."), (r"layer\.0\.SelfAttention\.relative_attention_bias", "pos_embedding.embedding"),
             (r"layer\.0\.SelfAttention\.", "attn."), (r"layer\.0\.layer_norm", "norm1"), (r"layer\.1\.layer_norm", "norm2"),
             (r"layer\.1\.DenseReluDense\.wi_0", "ffn.gate.0"), (r"layer\.1\.DenseReluDense\.wi_1", "ffn.fc1"),
             (r"layer\.1\.DenseReluDense\.wo", "ffn.fc2")]


def _wan_names(state, rules):
    import re

    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def make_original_folder(diffusers_folder, root):
    from safetensors.torch import load_file, save_file

    root.mkdir()
    save_file(_wan_names(load_file(diffusers_folder / "transformer" / wan.WEIGHTS), DIT_TO_WAN),
              root / "diffusion_pytorch_model.safetensors")
    t = json.loads((diffusers_folder / "transformer" / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({  # the fields WanModel registers (patch_size, text_dim are not)
        "_class_name": "WanModel", "model_type": "t2v", "text_len": 512, "in_dim": t["in_channels"],
        "dim": t["num_attention_heads"] * t["attention_head_dim"], "ffn_dim": t["ffn_dim"], "freq_dim": t["freq_dim"],
        "out_dim": t["out_channels"], "num_heads": t["num_attention_heads"], "num_layers": t["num_layers"], "eps": t["eps"]}))
    torch.save(_wan_names(load_file(diffusers_folder / "vae" / wan.WEIGHTS), VAE_TO_WAN), root / wan.ORIGINAL_VAE)
    t5 = load_file(diffusers_folder / "text_encoder" / "model.safetensors")
    t5.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight; Wan stores it once
    torch.save(_wan_names(t5, T5_TO_WAN), root / wan.ORIGINAL_T5)
    shutil.copytree(diffusers_folder / "tokenizer", root / wan.ORIGINAL_TOKENIZER)
    return root


@pytest.fixture(scope="module")
def original(folder, tmp_path_factory):
    return make_original_folder(folder, tmp_path_factory.mktemp("wan-original") / "Wan-tiny")


@pytest.fixture
def tiny_latents(monkeypatch, reference):
    # Wan's statistics are 16 values typed into its code; the tiny VAE has Z channels.
    monkeypatch.setattr(wan, "ORIGINAL_LATENTS_MEAN", tuple(reference.vae.config.latents_mean))
    monkeypatch.setattr(wan, "ORIGINAL_LATENTS_STD", tuple(reference.vae.config.latents_std))


def test_original_key_names_are_wans(original):
    # A few names as wan/modules/{model,vae,t5}.py define them, against the test's own rules.
    from safetensors.torch import load_file

    dit = load_file(original / "diffusion_pytorch_model.safetensors")
    block = {k.removeprefix("blocks.0.") for k in dit if k.startswith("blocks.0.")}
    assert block == {"modulation", "norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
                     *(f"{a}.{p}.{w}" for a in ("self_attn", "cross_attn") for p in "qkvo" for w in ("weight", "bias")),
                     *(f"{a}.norm_{p}.weight" for a in ("self_attn", "cross_attn") for p in "qk")}
    assert {"head.head.weight", "head.modulation", "time_projection.1.bias", "text_embedding.2.weight"} <= dit.keys()
    vae = torch.load(original / wan.ORIGINAL_VAE, weights_only=True)
    assert {"conv1.weight", "encoder.middle.1.to_qkv.weight", "decoder.upsamples.2.resample.1.weight",
            "decoder.upsamples.3.shortcut.weight", "decoder.head.2.bias", "encoder.downsamples.0.residual.6.weight"} <= vae.keys()
    t5 = torch.load(original / wan.ORIGINAL_T5, weights_only=True)
    assert {"token_embedding.weight", "norm.weight", "blocks.1.pos_embedding.embedding.weight",
            "blocks.0.ffn.gate.0.weight", "blocks.0.attn.o.weight"} <= t5.keys()


def test_original_layout_loads_the_same_model(original, folder, pipe, tiny_latents):
    assert wan.is_wan_folder(original) and wan.is_original_folder(original) and not wan.is_original_folder(folder)
    ours = Pipeline.load(original)
    for a, b in ((ours.dit, pipe.dit), (ours.vae, pipe.vae), (ours.text.model, pipe.text.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), type(a).__name__
    prompts = [SENTENCES[0], "", SENTENCES[2]]
    assert torch.equal(ours.text.encode(prompts)[0], pipe.text.encode(prompts)[0])
    assert ours.config.sampler.shift == wan.ORIGINAL_SHIFT and ours.config.text.pad_to == wan.TEXT_TOKENS
    latents = ours.generate_latents([SENTENCES[0]], frames=FRAMES, size=SIZE, sampler=_sampler())
    assert torch.equal(latents, pipe.generate_latents([SENTENCES[0]], frames=FRAMES, size=SIZE, sampler=_sampler()))
    assert torch.equal(ours.vae.decode(ours.vae.denormalize(latents)), pipe.vae.decode(pipe.vae.denormalize(latents)))


def test_real_wan_1_3b_original_config_is_the_preset():
    # config.json of Wan-AI/Wan2.1-T2V-1.3B: the fields WanModel registers, Wan 2.1 T2V-1.3B's values
    # (wan/configs/wan_t2v_1_3B.py); patch_size and text_dim come from the weights' shapes.
    cfg = {"_class_name": "WanModel", "model_type": "t2v", "text_len": 512, "in_dim": 16, "dim": 1536, "ffn_dim": 8960,
           "freq_dim": 256, "out_dim": 16, "num_heads": 12, "num_layers": 30, "eps": 1e-06}
    shapes = {"patch_embedding.weight": torch.empty(1536, 16, 1, 2, 2, device="meta"),
              "text_embedding.0.weight": torch.empty(1536, 4096, device="meta")}
    assert wan.original_dit_config(cfg, shapes, "config.json") == PRESETS["wan-1.3b"]
    with pytest.raises(VideoditError, match="model_type 'i2v'"):
        wan.original_dit_config(cfg | {"model_type": "i2v"}, shapes, "config.json")


def _damage_dit(path):
    from safetensors.torch import load_file, save_file

    state = load_file(path / "diffusion_pytorch_model.safetensors")
    del state["blocks.1.norm3.weight"]
    save_file(state, path / "diffusion_pytorch_model.safetensors")


class _Code:  # a class of the test's: weights_only=True refuses to unpickle it
    pass


def _pickled_vae(path):
    torch.save({"model": _Code()}, path / wan.ORIGINAL_VAE)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / wan.ORIGINAL_VAE).unlink(), f"missing {wan.ORIGINAL_VAE}"),
    (lambda p: (p / wan.ORIGINAL_T5).unlink(), f"missing {wan.ORIGINAL_T5}"),
    (lambda p: shutil.rmtree(p / "google"), "missing google/umt5-xxl/"),
    (_damage_dit, r"missing keys \[blocks.1.norm3.weight\]"),
    (_pickled_vae, "needs pickled code to load"),
])
def test_partial_original_folder_names_what_is_missing(original, tmp_path, tiny_latents, damage, message):
    copy = shutil.copytree(original, tmp_path / "copy")
    damage(copy)
    with pytest.raises(VideoditError, match=message) as e:
        Pipeline.load(copy)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- model CPU offload


def test_offload_is_a_no_op_on_cpu(folder):
    p = Pipeline.load(folder)
    wan.enable_offload(p, "cpu")
    assert "forward" not in vars(p.dit) and "decode" not in vars(p.vae)  # nothing wrapped


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the bf16 autocast offload enters on "cuda"
def test_offload_moves_one_model_at_a_time(folder, pipe, monkeypatch):
    # A CPU-only machine cannot move to CUDA: record each move instead of making it, so the
    # models run where they are and the recorded order is what a GPU would see.
    moves = []
    names = {}

    def record(x, device):
        moves.append((names.get(id(x), "tensor"), str(device)))
        return x

    p = Pipeline.load(folder)
    names.update({id(p.text.model): "text", id(p.dit): "dit", id(p.vae): "vae"})
    expected_video = pipe(PROMPT, frames=FRAMES, size=SIZE, steps=2)
    monkeypatch.setattr(wan, "_to", record)
    wan.enable_offload(p, "cuda")
    assert moves == [("text", "cpu"), ("dit", "cpu"), ("vae", "cpu")]  # all wait on the CPU
    moves.clear()
    video = p(PROMPT, frames=FRAMES, size=SIZE, steps=2)
    models = [m for m in moves if m[0] != "tensor"]
    assert models == [("text", "cuda"), ("text", "cpu"), ("dit", "cuda"), ("dit", "cpu"), ("vae", "cuda")]
    assert ("tensor", "cuda") in moves and ("tensor", "cpu") in moves  # inputs there, results back
    assert (video == expected_video).all()
