"""Training: the one loop (loop.py) with the DiT's and the VAE's steps (dit.py, vae.py), their
checkpoints (checkpoint.py), the VAE's adversarial part (discriminator.py) and the CLI (cli.py)."""
