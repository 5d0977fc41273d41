"""``adcore plugins``: a JSON report of the loaded plugins, their detectors and their failures."""

from __future__ import annotations

import argparse
import json

from adcore.commands.options import plugin_report

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "plugins"
HELP = "JSON report of loaded plugins, their detectors and failures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--details", action="store_true", help="include tracebacks of failures")


def run(args: argparse.Namespace) -> int:
    print(json.dumps(plugin_report(details=args.details), indent=2))
    return 0
