import warnings

import pytest
import torch

from videodit.errors import VideoditError
from videodit.text import TextEncoder, TextEncoderConfig, bundled_model_dir


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(TextEncoderConfig(max_length=16))


def test_shapes_and_mask(encoder):
    prompts = ["A small red circle moves to the right.", "", "red ball"]
    tokens, mask = encoder.encode(prompts)
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in prompts if p]
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.shape == (3, max(lengths), encoder.dim) and encoder.dim == 384
    assert mask.sum(dim=1).tolist() == [lengths[0], 0, lengths[1]]
    # The empty prompt is the unconditional input: nothing to attend to, and zeros everywhere padded.
    assert not mask[1].any()
    assert (tokens[~mask] == 0).all()
    assert (tokens[mask].abs().sum(dim=-1) > 0).all()


def test_deterministic_and_batch_independent(encoder):
    prompts = ["A blue square moves up.", "Three green squares move to the left on a gray background."]
    encoder._cache.clear()
    tokens, mask = encoder.encode(prompts)
    encoder._cache.clear()
    alone, alone_mask = encoder.encode(prompts[:1])
    n = int(alone_mask.sum())
    assert torch.allclose(tokens[0, :n], alone[0, :n], atol=1e-5)
    encoder._cache.clear()
    again, _ = encoder.encode(prompts)
    assert torch.equal(tokens, again)


def test_cache_hit_skips_the_model(encoder, monkeypatch):
    first, first_mask = encoder.encode(["a yellow triangle falls"])
    calls = []
    forward = encoder.model.forward
    monkeypatch.setattr(encoder.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    second, second_mask = encoder.encode(["a yellow triangle falls"])
    assert calls == []
    assert torch.equal(first, second) and torch.equal(first_mask, second_mask)


def test_cache_is_bounded():
    enc = TextEncoder(TextEncoderConfig(cache_size=2))
    enc.encode(["one", "two", "three"])
    assert list(enc._cache) == ["two", "three"]


def test_truncation_warns(encoder):
    long = "a red ball " * 20
    with pytest.warns(UserWarning, match="truncated"):
        tokens, mask = encoder.encode([long])
    assert tokens.shape[1] == 16 and mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["a short prompt"])


def test_embeddings_carry_meaning(encoder):
    tokens, mask = encoder.encode(["a red ball", "a red circle", "a blue square on a white background"])
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    sim = torch.nn.functional.cosine_similarity(pooled[0], pooled[1:], dim=-1)
    assert sim[0] > sim[1]


def test_local_folder_by_path(tmp_path):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(bundled_model_dir(), local_files_only=True)
    tokenizer.save_pretrained(tmp_path)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)
    transformers.BertModel(config).save_pretrained(tmp_path)
    enc = TextEncoder(TextEncoderConfig(model=str(tmp_path), dtype="bfloat16"))
    tokens, mask = enc.encode(["a red ball"])
    assert enc.dim == 32 and tokens.shape == (1, int(mask.sum()), 32) and tokens.dtype == torch.float32


def test_bad_inputs(tmp_path):
    with pytest.raises(VideoditError, match="not a folder"):
        TextEncoder(TextEncoderConfig(model=str(tmp_path / "missing")))
    with pytest.raises(VideoditError, match="cannot load"):
        TextEncoder(TextEncoderConfig(model=str(tmp_path)))
    with pytest.raises(VideoditError, match="dtype"):
        TextEncoder(TextEncoderConfig(dtype="float8"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_native_bert_equals_transformers(dtype):
    # BERT folders (the bundled one included) run on videodit.text.BertEncoder, not transformers,
    # to keep transformers' import out of `videodit generate`; the outputs must not change.
    import transformers

    from videodit.text import DTYPES, BertEncoder

    enc = TextEncoder(TextEncoderConfig(dtype=dtype))
    assert isinstance(enc.model, BertEncoder)
    folder = bundled_model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, dtype=DTYPES[dtype]).eval()
    prompts = ["A red circle moves to the right on a black background.", "red ball", "a red ball " * 20,
               "Ünïcode café, 日本"]
    for batch in (prompts, prompts[1:2]):  # padded, and not
        ours = enc.tokenizer(batch, padding=True, truncation=True, max_length=32, return_tensors="pt")
        ref = tokenizer(batch, padding=True, truncation=True, max_length=32, return_tensors="pt")
        assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
        with torch.no_grad():
            assert torch.equal(enc.model(**ours).last_hidden_state, model(**ref).last_hidden_state)
    assert [enc.tokenizer(p)["input_ids"] for p in prompts] == [tokenizer(p)["input_ids"] for p in prompts]


def _copy_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "text_encoder_copy.py"
    spec = importlib.util.spec_from_file_location("text_encoder_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("int8, rows", [(False, 0), (True, 300)])
def test_compact_copy_round_trip(tmp_path, int8, rows):
    """scripts/text_encoder_copy.py: pack, unpack, and the rebuilt folder encodes SynthWorld prompts
    close to the installed encoder (the GPU runs train with such a copy)."""
    copy = _copy_script()
    copy.pack(tmp_path / "q", int8, rows)
    copy.unpack(tmp_path / "q", tmp_path / "fp16")
    err = copy.output_error(tmp_path / "fp16", 20)
    assert 0 < err < (0.03 if int8 else 0.01)
    if rows:
        # Pruned: SynthWorld's words keep their rows, a word it never uses comes back as zeros.
        from safetensors.torch import load_file

        words = load_file(str(tmp_path / "fp16" / "model.safetensors"))[copy.WORDS]
        tok = TextEncoder(TextEncoderConfig(model=str(tmp_path / "fp16"))).tokenizer
        assert words[tok("red")["input_ids"][1]].abs().sum() > 0
        assert words[tok("violin")["input_ids"][1]].abs().sum() == 0
