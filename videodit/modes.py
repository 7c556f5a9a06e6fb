"""Choices and defaults of the sampler and the prompting modes (videodit.sample, videodit.prompting),
in a module that imports nothing, so that `videodit generate --help` can show them without loading torch."""

DIRECTIONS = ("forward", "backward")  # extend: after the clip's end or before its start
DEFAULT_STRENGTH = 0.6  # edit: how far toward noise the clip is moved, 0 (keep it) .. 1 (ignore it)
# ODE solvers of videodit.sample.solve: euler and dpm++2m take one velocity per step, heun two;
# distilled = Euler steps of a bundle's distilled student (videodit/distill.py)
SOLVERS = ("euler", "heun", "dpm++2m", "distilled")
