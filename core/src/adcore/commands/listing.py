"""``adcore list``: registered detectors by category (imports no detector code and no torch)."""

from __future__ import annotations

import argparse
import json

from adcore.commands.options import detector_entries, report_plugin_failures

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "list"
HELP = "list registered detectors by category"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over names, e.g. '*ae'")
    parser.add_argument("--category", default=None)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    entries = detector_entries(args.pattern, args.category)
    if args.json:
        print(json.dumps([entry.as_dict() for entry in entries], indent=2))
    elif not entries and (args.pattern != "*" or args.category is not None):
        asked = " and ".join(part for part in (f"pattern {args.pattern!r}" if args.pattern != "*" else "",
                                               f"category {args.category!r}" if args.category is not None else "") if part)
        categories = sorted({entry.category for entry in detector_entries()})
        print(f"No detector matched {asked}; categories: {', '.join(categories) or '(none)'}. "
              "Run `adcore list` to see every registered detector")
    elif not entries:
        print("No detectors registered. Install a plugin, e.g. pip install ad-memory")
    else:
        category = None
        for entry in entries:
            if entry.category != category:
                category = entry.category
                print(f"{category}:")
            trains = "trains" if entry.card.get("trains") else "no training"
            print(f"  {entry.name:<18} {entry.distribution} {entry.version:<8} {trains:<12} {entry.card.get('paper', '')}")
    report_plugin_failures()
    return 0
