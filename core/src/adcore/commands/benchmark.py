"""``adcore benchmark``: every detector × every dataset, each run in its own process (see :mod:`adcore.benchmark`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["NAME", "HELP", "DESCRIPTION", "add_arguments", "run"]

NAME = "benchmark"
HELP = "measure detectors × datasets: tables (md/csv/json) and plots"
DESCRIPTION = ("Fit, calibrate and evaluate every detector on every dataset, each in its own process; resumable. "
               "See docs/benchmarks.md.")


def _benchmark() -> tuple[Any, Any]:
    from adcore.benchmark import add_arguments, run_cli

    return add_arguments, run_cli


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _benchmark()[0](parser)


def run(args: argparse.Namespace) -> int:
    return int(_benchmark()[1](args) or 0)
