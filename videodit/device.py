"""Device choice shared by the command-line tools, inference and training alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it."""
    import torch  # here, so that importing this module stays cheap for a CLI's --help

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
