"""The ``adcore`` sub-commands: one module per command, each a row of :data:`adcore.cli.COMMANDS`.

Every command module exposes ``NAME`` (the sub-command), ``HELP`` (one line for ``adcore --help``),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Module-level imports stay light
(argparse and the standard library): torch, the plugins and the detectors load inside ``run``, so
``adcore list`` and ``adcore --help`` import no torch. A new command (``export``, ``serve``) is a new
module here plus one line in ``adcore.cli.COMMANDS``. Option groups shared by several commands live
in :mod:`adcore.commands.options`.
"""

from __future__ import annotations

__all__: list[str] = []
