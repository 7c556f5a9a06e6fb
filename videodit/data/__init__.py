"""Data sets: the SynthWorld stream (synthworld.py) and the loaders of real videos and latents."""
