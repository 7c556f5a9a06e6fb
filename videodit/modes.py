"""Choices and defaults of the prompting modes (videodit.prompting), in a module that imports
nothing, so that `videodit generate --help` can show them without loading torch."""

DIRECTIONS = ("forward", "backward")  # extend: after the clip's end or before its start
DEFAULT_STRENGTH = 0.6  # edit: how far toward noise the clip is moved, 0 (keep it) .. 1 (ignore it)
