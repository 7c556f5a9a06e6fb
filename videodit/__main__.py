"""``python -m videodit``: the ``videodit`` command, so that ``torchrun -m videodit train ...``
launches it on every process."""

import sys

from videodit.cli import main

sys.exit(main())
