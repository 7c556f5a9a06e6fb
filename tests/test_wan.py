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
