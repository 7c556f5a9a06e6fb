"""What the user is told about bad input: the one exception type, videodit's warnings, and long
values shortened in both.

VideoditError subclasses ValueError so library users can catch either. The CLI prints its message
as one line and exits with code 2; anything else is a bug and keeps its traceback.

Importing videodit (videodit/__init__.py) installs ``install_warning_format``: videodit's own
warnings print as one line, ``videodit: warning: <message>``, without Python's source-line echo,
and on a line of their own when a tqdm progress bar is open. Other libraries' warnings keep
Python's format.
"""

from __future__ import annotations

import os
import sys
import warnings

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
ELIDE_AT = 80  # characters of a user's value (a prompt, a path) quoted in a message


class VideoditError(ValueError):
    pass


class VideoditWarning(UserWarning):
    """The category of videodit's warnings (those raised inside the package count too)."""


def elide(text: str, limit: int = ELIDE_AT) -> str:
    """``text`` itself, or its start and "…" when it is longer than ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ours(category: type[Warning], filename: str) -> bool:
    return issubclass(category, VideoditWarning) or os.path.abspath(filename).startswith(PACKAGE_DIR)


def install_warning_format() -> None:
    python_format, python_show = warnings.formatwarning, warnings.showwarning
    if getattr(python_show, "__module__", None) == __name__:
        return  # already installed

    def formatwarning(message, category, filename, lineno, line=None):
        if not _ours(category, filename):
            return python_format(message, category, filename, lineno, line)
        return f"videodit: warning: {' '.join(str(message).split())}\n"

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if not _ours(category, filename) or file not in (None, sys.stderr) or sys.stderr is None:
            return python_show(message, category, filename, lineno, file, line)
        text = formatwarning(message, category, filename, lineno, line)
        tqdm = sys.modules.get("tqdm")
        if tqdm is not None:
            # Clears any open bar, writes the line, and redraws the bar below it.
            tqdm.tqdm.write(text.rstrip("\n"), file=sys.stderr)
        else:
            sys.stderr.write(text)

    warnings.formatwarning, warnings.showwarning = formatwarning, showwarning


def nearest_valid(value: int, first: int, step: int) -> str:
    """The valid value nearest an invalid ``value`` (first, first + step, ... are valid): "9",
    or "8 or 16" when the one below and the one above are equally near."""
    if value < first:
        return str(first)
    below = first + (value - first) // step * step
    above = below + step
    if value - below == above - value:
        return f"{below} or {above}"
    return str(below if value - below < above - value else above)
