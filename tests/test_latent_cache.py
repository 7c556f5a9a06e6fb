"""The latent cache (videodit/data/latent_cache.py): cached caption embeddings under caption dropout."""

import torch


def test_cached_text_with_dropout_matches_encoding_the_dropped_captions():
    """The latent cache keeps caption embeddings; dropout then masks a row out instead of encoding
    "" -- the DiT's output must be the same either way (padding of several batches included)."""
    from conftest import random_dit

    from videodit.dit import DiTConfig
    from videodit.text import TextEncoder
    from videodit.data.latent_cache import cached_text

    text = TextEncoder()
    first, second = ["A red ball falls.", "Two blue squares move up on a white background."], ["A cyan disc."]
    embedded = [text.encode(first), text.encode(second)]
    dropped = ["", first[1], ""]  # captions after dropout
    tokens, mask = cached_text(embedded, dropped)
    ref_tokens, ref_mask = text.encode(dropped)
    cfg = DiTConfig.preset("tiny", text_dim=text.dim)
    dit = random_dit(cfg, 0)
    x = torch.randn(3, cfg.in_channels, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((3, 2), 0.5)
    with torch.no_grad():
        assert torch.allclose(dit(x, t, tokens, mask), dit(x, t, ref_tokens, ref_mask), atol=1e-5)
    assert mask[0].sum() == 0 and mask[2].sum() == 0 and mask[1].sum() == ref_mask[1].sum()
