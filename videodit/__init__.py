"""videodit: an open, Sora-style text-to-video system (causal 3D VAE + flow-matching DiT)."""

__version__ = "0.1.0"
