"""``python -m adcore ...``: the ``adcore`` command (``adcore.cli``) where its script is not on PATH."""

from adcore.cli import console_main, main

__all__ = ["main"]

if __name__ == "__main__":
    console_main()
