"""``adcore train MODEL PATH``: fit on good images, calibrate the threshold on held-out ones, save."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adcore.commands.options import (add_dataset_options, add_fit_options, add_model_options, build_detector,
                                     dataset_from_args, detector_params, load_size_of, loader_batch_size)

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "train"
HELP = "fit a detector on good images, calibrate its threshold, save it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_dataset_options(parser)
    add_fit_options(parser)
    parser.add_argument("--out", required=True, type=Path, help="model file to write (.safetensors)")


def run(args: argparse.Namespace) -> int:
    from adcore.data import make_loader
    from adcore.datasets import open_dataset
    from adcore.evaluation import split_calibration

    detector = build_detector(args)
    spec = dataset_from_args(args)
    train = open_dataset(spec, "train", load_size_of(detector))
    batch_size = loader_batch_size(detector, args.batch_size)
    seed = detector_params(args).get("seed") or 0
    fit_set, calibration_set = split_calibration(train, args.calibration_fraction, seed=seed)
    print(f"fitting {args.model} on {len(fit_set)} good images of {spec.describe()}", file=sys.stderr)
    detector.fit(make_loader(fit_set, batch_size))
    if len(calibration_set):
        detector.calibrate(make_loader(calibration_set, batch_size), target_fpr=args.target_fpr)
        print(f"threshold {detector.threshold_:.6g} from {len(calibration_set)} held-out good images "
              f"(target false-positive rate {args.target_fpr})", file=sys.stderr)
    else:
        print(f"no threshold: {len(train)} good images are too few to hold some out (4 or more are needed); "
              "predictions will have scores but no labels", file=sys.stderr)
    print(str(detector.save(args.out)))
    return 0
