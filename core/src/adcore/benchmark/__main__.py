"""``python -m adcore.benchmark [options]`` and, inside each run's process, ``--worker SPEC``."""

import sys

from adcore.benchmark.cli import main

__all__: list[str] = []

sys.exit(main())
