"""``adcore train MODEL PATH``: fit on good images, calibrate the threshold on held-out ones, save."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adcore.commands.options import (add_dataset_options, add_device_options, add_fit_options, add_model_options,
                                     build_detector,
                                     check_fit_options, dataset_from_args, load_size_of, loader_batch_size,
                                     split_for_fit, warn_no_threshold, written_files)

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "train"
HELP = "fit a detector on good images, calibrate its threshold, save it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_dataset_options(parser)
    add_fit_options(parser)
    add_device_options(parser)
    parser.add_argument("--out", required=True, type=Path, help="model file to write (.safetensors)")


def run(args: argparse.Namespace) -> int:
    from adcore.data import make_loader
    from adcore.datasets import open_dataset
    from adcore.files import check_output_file

    check_fit_options(args)
    detector = build_detector(args)
    check_output_file(args.out, what="model file")  # before the fit: a bad --out must not lose the work
    spec = dataset_from_args(args)
    train = open_dataset(spec, "train", load_size_of(detector))
    batch_size = loader_batch_size(detector, args.batch_size)
    fit_set, calibration_set = split_for_fit(args, train)
    device = getattr(detector, "device_", None)  # an unavailable --device fails here, before any image is read
    where = f" on {device}" if device is not None else ""
    print(f"fitting {args.model} on {len(fit_set)} good images of {spec.describe()}{where}", file=sys.stderr)
    workers = args.workers or 0
    detector.fit(make_loader(fit_set, batch_size, num_workers=workers, device=device))
    if len(calibration_set):
        detector.calibrate(make_loader(calibration_set, batch_size, num_workers=workers, device=device),
                           target_fpr=args.target_fpr)
        print(f"threshold {detector.threshold_:.6g} from {len(calibration_set)} held-out good images "
              f"(target false-positive rate {args.target_fpr})", file=sys.stderr)
    else:
        warn_no_threshold(args, len(train))
    from adcore.datasets import training_folder

    detector.training_images_ = str(training_folder(spec))  # adcore export adds some to its parity check
    with written_files(args.command) as written:
        written.append(detector.save(args.out))
        print(str(written[-1]))
    return 0
