"""Option groups and helpers shared by the ``train``, ``eval`` and ``predict`` commands."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adcore.datasets import SPEC_HELP
from adcore.devices import DEVICE_HELP, PRECISION_HELP, PRECISIONS, is_device_spec
from adcore.errors import ConfigurationError

__all__ = ["load_size_of", "loader_batch_size", "add_model_options", "add_dataset_options", "add_fit_options",
           "add_device_options", "device_option", "detector_params", "build_detector",
           "dataset_from_args", "detector_entries", "plugin_failures", "plugin_report", "report_plugin_failures",
           "check_fit_options", "split_for_fit", "warn_no_threshold", "MIN_CALIBRATION_TRAIN", "written_files",
           "positive_int", "non_negative_int", "non_negative_float"]

#: good training images needed before some are held out to calibrate (see evaluation.split_calibration)
MIN_CALIBRATION_TRAIN = 4


# The plugin host is reached through adcore.factory, the one module besides adcore.plugins that talks to it.
def detector_entries(pattern: str = "*", category: str | None = None) -> list[Any]:
    """Registered detectors matching ``pattern`` and ``category``, by category then name."""
    from adcore import factory

    return factory.detector_entries(pattern, category)


def plugin_failures() -> list[Any]:
    """Plugins (or single detectors) that did not load."""
    from adcore import factory

    return factory.plugin_failures()


def plugin_report(*, details: bool = False) -> dict[str, Any]:
    """The ``adcore plugins`` JSON report (tracebacks of failures only with ``details``)."""
    from adcore import factory

    return factory.plugin_report(details=details)


def report_plugin_failures() -> None:
    """One warning line per plugin that failed to load, on stderr; the other detectors still work."""
    failures = plugin_failures()
    for failure in failures:
        print(f"adcore: warning: plugin {failure.describe()}", file=sys.stderr)
    if failures:
        print("adcore: run `adcore plugins` for details; other detectors are unaffected.", file=sys.stderr)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``MODEL``, ``-p KEY=VALUE``, ``--input-size``, ``--seed``."""
    parser.add_argument("model", help="registered detector name, e.g. patchcore (see `adcore list`)")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="detector parameter (repeatable; JSON values, true/false/none), e.g. -p coreset_ratio=0.05")
    parser.add_argument("--input-size", type=int, default=None, help="detector input size in pixels (= -p input_size=N)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the detector's; = -p seed=N)")


def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """``[PATH]``, ``--dataset SPEC`` and the older ``--data ROOT [--category C]`` (= PATH ROOT/C)."""
    parser.add_argument("path", nargs="?", default=None, metavar="PATH",
                        help="an MVTec-layout category folder (train/good, test/, ground_truth/) or a plain folder of "
                             "good images; any --dataset SPEC works here too")
    parser.add_argument("--dataset", "-d", default=None, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--data", type=Path, default=None, metavar="ROOT",
                        help="MVTec-layout root; with --category C the same as PATH ROOT/C")
    parser.add_argument("--category", default=None, help="category folder under --data, e.g. bottle")


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-size``, ``--calibration-fraction``, ``--target-fpr``."""
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--calibration-fraction", type=float, default=0.2,
                        help="share of the good training images held out to set the threshold (default 0.2)")
    parser.add_argument("--target-fpr", type=float, default=0.01,
                        help="false-positive rate the threshold allows on held-out good images (default 0.01)")
    parser.add_argument("--require-threshold", action="store_true",
                        help="refuse (before fitting) to produce a model without a calibrated threshold")


def device_option(text: str) -> str:
    """``--device`` as given, when well-formed (whether the device is here is checked when it is used)."""
    if not is_device_spec(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: give auto, cpu, cuda, cuda:N or mps")
    return text


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number of 0 or more (NaN refused)."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--workers must be a whole number ≥ 0, got {text!r}")
    return value


def add_device_options(parser: argparse.ArgumentParser, *, workers: bool = True) -> None:
    """``--device``, ``--precision`` and (``workers=True``; ``predict`` has its own) ``--workers``.

    ``--device``/``--precision`` left out keep the detector's own (``-p device=...`` or its default
    ``auto``; a model file's precision).
    """
    parser.add_argument("--device", type=device_option, default=None, metavar="DEVICE", help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    if workers:
        parser.add_argument("--workers", type=_workers, default=None, metavar="N",
                            help="image-decoding worker processes of the data loader (default 0: decode in the main "
                                 "process); a few keep a GPU fed")


def check_fit_options(args: argparse.Namespace) -> None:
    """``--target-fpr`` in [0, 1), ``--calibration-fraction`` in [0, 1), ``--batch-size`` ≥ 1: checked
    before anything is loaded or fitted."""
    import math

    if not (math.isfinite(args.target_fpr) and 0.0 <= args.target_fpr < 1.0):
        raise ConfigurationError(f"--target-fpr must be in [0, 1), got {args.target_fpr:g}; e.g. --target-fpr 0.01")
    if not (math.isfinite(args.calibration_fraction) and 0.0 <= args.calibration_fraction < 1.0):
        raise ConfigurationError(f"--calibration-fraction must be in [0, 1), got {args.calibration_fraction:g}; "
                                 "e.g. 0.2 holds out a fifth of the good images, 0 turns calibration off")
    if args.batch_size < 1:
        raise ConfigurationError(f"--batch-size must be a positive integer, got {args.batch_size}")


def split_for_fit(args: argparse.Namespace, train: Any, *, fallback_split: bool = False) -> tuple[Any, Any]:
    """The fit and calibration subsets of ``train``, refused before the fit when nothing would be
    left to fit, or when ``--require-threshold`` is given and the model would get no threshold.

    ``fallback_split``: the caller holds out a fifth of the fit set itself when the calibration set
    is empty (``evaluate_detector`` does), so only too few images leave the model without one.
    """
    from adcore.evaluation import split_calibration

    seed = detector_params(args).get("seed") or 0
    fit_set, calibration_set = split_calibration(train, args.calibration_fraction, seed=seed)
    if len(fit_set) == 0:
        raise ConfigurationError(f"--calibration-fraction {args.calibration_fraction:g} holds out all {len(train)} "
                                 "good training images, leaving none to fit; lower it (e.g. 0.2)")
    fallback = fallback_split and len(fit_set) >= MIN_CALIBRATION_TRAIN
    if args.require_threshold and len(calibration_set) == 0 and not fallback:
        raise ConfigurationError(f"--require-threshold: {_why_no_threshold(args, len(train))}; nothing was fitted")
    return fit_set, calibration_set


def _why_no_threshold(args: argparse.Namespace, count: int) -> str:
    if args.calibration_fraction <= 0:
        return "calibration is off (--calibration-fraction 0), so the model would have no threshold"
    return (f"{count} good training image(s) are too few to hold some out for calibration "
            f"({MIN_CALIBRATION_TRAIN} or more are needed), so the model would have no threshold")


@contextlib.contextmanager
def written_files(command: str) -> Iterator[list[Path]]:
    """Collect the files a command has finished writing; Ctrl-C then says which ones are complete.

    The interrupt is re-raised (the CLI exits 130); only the message is added.
    """
    written: list[Path] = []
    try:
        yield written
    except KeyboardInterrupt as interrupt:
        if written:
            print(f"adcore {command}: interrupted after writing {', '.join(str(p) for p in written)}: "
                  f"{'it is' if len(written) == 1 else 'each is'} complete (written atomically); nothing after it was "
                  "written", file=sys.stderr)
            interrupt.adcore_reported = True  # the CLI then adds nothing that could contradict it
        raise


def warn_no_threshold(args: argparse.Namespace, count: int) -> None:
    """The loud warning for a model saved without a threshold (train/eval)."""
    print(f"adcore {args.command}: WARNING: {_why_no_threshold(args, count)}. predict will give scores but "
          "cannot flag any image as anomalous. Add good images or raise --calibration-fraction, calibrate "
          "later with detector.calibrate(good_images), or pass --require-threshold to make this an error.",
          file=sys.stderr)


def detector_params(args: argparse.Namespace) -> dict[str, Any]:
    """``-p`` pairs (the one ``key=value`` grammar) merged with ``--input-size``/``--seed``.

    An option and a ``-p`` of the same parameter with different values is an error, never a silent
    override.
    """
    from adcore.values import parse_assignments

    params = parse_assignments(args.param, option="--param")
    dotted = [key for key in params if "." in key]
    if dotted:
        raise ConfigurationError(f"--param {dotted[0]}: {args.command} builds one detector, so give plain names "
                                 f"(-p {dotted[0].rpartition('.')[2]}=...); DETECTOR.KEY is for `adcore benchmark`")
    for option, key in (("--input-size", "input_size"), ("--seed", "seed"), ("--device", "device"),
                        ("--precision", "precision")):
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in params and params[key] != value:
            raise ConfigurationError(f"{option} {value} and -p {key}={params[key]!r} disagree; give the value once")
        params[key] = value
    return params


def build_detector(args: argparse.Namespace) -> Any:
    """The detector ``args.model`` with :func:`detector_params`."""
    from adcore.factory import get_model

    return get_model(args.model, **detector_params(args))


def dataset_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~adcore.datasets.DatasetSpec` named by ``PATH``, ``--dataset`` or ``--data``/``--category``."""
    from adcore.datasets import parse_dataset

    given = [(name, value) for name, value in (("PATH", args.path), ("--dataset", args.dataset),
                                               ("--data", args.data)) if value is not None]
    if args.category is not None and args.data is None:
        raise ConfigurationError("--category needs --data ROOT (or give the category folder as PATH)")
    if not given:
        raise ConfigurationError(f"give the data: adcore {args.command} {args.model} PATH, or --dataset {SPEC_HELP}")
    if len(given) > 1:
        raise ConfigurationError(f"give the data once: {' and '.join(name for name, _ in given)} were both given")
    name, value = given[0]
    if name == "--data" and args.category:
        # ROOT:CATEGORY keeps root and category apart (as metrics.json reports them); a missing
        # folder is named whole in the error
        folder = args.data / args.category
        value = f"{args.data}:{args.category}" if folder.is_dir() else str(folder)
    elif name == "--data":
        value = str(args.data)
    return parse_dataset(value)


def load_size_of(detector: Any) -> Any:
    """The size to load images at for ``detector``: its ``load_size`` (``None``, each image's own
    size, when it tiles), else its ``input_size`` (third-party detectors without the base class)."""
    return getattr(detector, "load_size", getattr(detector, "input_size", 256))


def loader_batch_size(detector: Any, requested: int) -> int:
    """Images per loader batch: one at a time when images keep their own (possibly mixed) sizes."""
    return requested if load_size_of(detector) is not None else 1
