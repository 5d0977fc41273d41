"""``python -m adcore ...``: the ``adcore`` command (``adcore.cli``) where its script is not on PATH."""

import sys

from adcore.cli import main

sys.exit(main())
