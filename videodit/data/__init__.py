"""Data sets. synthworld.py streams the built-in SynthWorld clips with their captions."""
