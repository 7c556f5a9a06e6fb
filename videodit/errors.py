"""The one exception type for bad input (a wrong size, a corrupt file, missing weights...).

It subclasses ValueError so library users can catch either. The CLI prints its message as one
line and exits with code 2; anything else is a bug and keeps its traceback.
"""


class VideoditError(ValueError):
    pass
