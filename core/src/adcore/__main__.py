"""``python -m adcore ...``: the ``adcore`` command (``adcore.cli``) where its script is not on PATH."""

import sys

from adcore.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
