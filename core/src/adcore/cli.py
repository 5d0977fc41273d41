"""The ``adcore`` command line: the driver over the table of commands in :mod:`adcore.commands`.

Run ``adcore COMMAND --help`` for each command's options. Examples::

    adcore list
    adcore eval patchcore examples/sample_data/piped/PA_FLR01_TL --out runs/demo
    adcore train padim photos/good --out line1.safetensors          # a plain folder of good images
    adcore eval padim --dataset folder:good=photos/good,defect=photos/bad
    adcore predict line1.safetensors /line/camera1/*.png --out results/

Every :class:`~adcore.errors.AdcoreError` becomes one line ``adcore COMMAND: error: MESSAGE`` and
exit code 1; a plugin failure under ``--strict`` exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

from adcore.commands import benchmark, evaluate, export, listing, plugins, predict, serve, train

__all__ = ["main", "console_main", "build_parser", "COMMANDS"]

#: the sub-commands, in ``--help`` order; each module has NAME, HELP, add_arguments(parser) and run(args)
COMMANDS: tuple[ModuleType, ...] = (listing, plugins, train, evaluate, predict, export, benchmark, serve)

EPILOG = """Data: PATH is an MVTec-layout category folder or a plain folder of good images; --dataset SPEC takes
ROOT:CATEGORY or folder:good=DIR,defect=DIR[,masks=DIR][,test_good=DIR] (see adcore.datasets).
Plugins: detectors come from installed distributions (ad-memory, ad-stat, ad-flow, ad-distill,
ad-recon, or third-party ones). ADCORE_DISABLE_PLUGINS=a,b skips plugins; ADCORE_STRICT_PLUGINS=1 or
--strict makes any plugin failure fatal; ADCORE_PROGRESS=0 hides progress bars."""


def build_parser() -> argparse.ArgumentParser:
    """The ``adcore`` parser: global options and one sub-parser per row of :data:`COMMANDS`."""
    from adcore import __version__

    parser = argparse.ArgumentParser(prog="adcore", description="Visual anomaly detection: train on good images, "
                                     "score new ones, localise defects.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"adcore {__version__}")
    parser.add_argument("--strict", action="store_true", help="fail (exit 2) if any plugin failed to load")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(command.NAME, help=command.HELP,
                               description=getattr(command, "DESCRIPTION", None) or command.__doc__.split("\n")[0])
        command.add_arguments(child)
        child.set_defaults(run=command.run)
    return parser


def _message(exc: BaseException) -> str:
    # a KeyError's str() is its repr (quoted); its first argument is the sentence
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """``adcore [--strict] COMMAND ...``; returns the exit code."""
    # only effective before torch and timm are imported, which the CLI guarantees (imports are lazy)
    from adcore.process import prepare_process

    prepare_process()
    from adcore.errors import AdcoreError
    from adcore.factory import PluginLoadError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strict:
        os.environ["ADCORE_STRICT_PLUGINS"] = "1"
    if os.environ.get("ADCORE_DETERMINISTIC", "").strip() in ("1", "true", "yes"):
        from adcore.seeding import set_deterministic

        set_deterministic(True)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    # the stdlib kinds keep one-line errors for a third-party detector's own checks (a TypeError
    # for a wrong -p, a ValueError for a bad value): they are about input, not adcore bugs
    one_line = (AdcoreError, TypeError, ValueError, OSError)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as interrupt:
        if not getattr(interrupt, "adcore_reported", False):  # else the command said what it had written
            print("adcore: interrupted; no model file was left half-written (saves are atomic)",
                  file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, PluginLoadError):
            print(f"adcore: {exc}", file=sys.stderr)
            return 2
        if not isinstance(exc, one_line):
            raise  # a bug: the traceback is what its report needs
        print(f"adcore {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 1


def console_main() -> None:
    """The ``adcore`` console script: :func:`main`, then the process ends without Python's teardown.

    With torch, timm and the plugins loaded, the interpreter's own finalisation (freeing every module
    and object one by one) takes seconds on a small machine after the last output is written. What
    an exit must still do is done first, in the order ``Py_Finalize`` does it: wait for the
    non-daemon threads (and run what they registered), run the ``atexit`` handlers (Ray's shutdown,
    temporary folders, logging), flush the standard streams; then :func:`os._exit`. Every output
    file is already closed and renamed into place by then (writes are atomic). A command that raises
    a bug ends the usual way, with its traceback.
    """
    code = main()
    _finish_process(code)


def _finish_process(code: int) -> None:
    """Run the exit work Python would (threads, ``atexit``, streams) and end the process with ``code``."""
    shutdown_threads = getattr(threading, "_shutdown", None)  # CPython's own first step of finalisation
    if shutdown_threads is not None:
        shutdown_threads()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) or stream: nothing left to deliver
            pass
    os._exit(code)


if __name__ == "__main__":
    console_main()
