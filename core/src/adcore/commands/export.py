"""``adcore export MODEL_FILE --format onnx|openvino|torchscript --out DIR``: a deployable artefact.

Writes DIR/model.onnx (model.xml + model.bin for OpenVINO, model.pt for TorchScript) and
DIR/adcore-export.json, after checking that the artefact gives the torch detector's scores and
maps on the ``--check`` images (default: generated good and defective images plus up to 16
training images, from ``--check-data`` or from the training folder the model file records);
beyond the tolerance it exits 1 and writes nothing. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "export"
HELP = "export a saved model to ONNX, OpenVINO or TorchScript, checked for parity with torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_file", type=Path)
    # adcore.export.FORMATS, spelled out so that building the parser imports no torch
    parser.add_argument("--format", choices=["onnx", "openvino", "torchscript"], default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="folder for the artefact and adcore-export.json")
    parser.add_argument("--check", nargs="+", metavar="IMAGES", default=[],
                        help="image files or folders for the parity check (default: generated images and up to 16 "
                             "training images, see --check-data)")
    parser.add_argument("--check-data", default=None, metavar="DATASET",
                        help="the dataset the model was trained on (a category folder, a folder of good images or any "
                             "dataset spec): its training images join the default parity check (default: the "
                             "training folder the model file records, when it exists)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    parser.add_argument("--score-tolerance", type=float, default=1e-4, help="relative score difference allowed")
    parser.add_argument("--map-tolerance", type=float, default=1e-3,
                        help="map difference allowed, as a share of the map's range")


def run(args: argparse.Namespace) -> int:
    from adcore.export import SIDECAR, Tolerance, export_detector
    from adcore.factory import load

    detector = load(args.model_file)
    check_training = None
    if args.check_data is not None:
        from adcore.datasets import parse_dataset, training_folder
        from adcore.errors import ConfigurationError

        if args.check:
            raise ConfigurationError("give --check IMAGES or --check-data DATASET, not both: --check replaces the "
                                     "default parity images, --check-data adds training images to them")
        check_training = training_folder(parse_dataset(args.check_data))
    sidecar = export_detector(detector, args.out, format=args.format, check=args.check, check_training=check_training,
                              opset=args.opset, tolerance=Tolerance(args.score_tolerance, args.map_tolerance))
    parity = sidecar["parity"]
    if not args.check and "training" not in parity["sources"]:
        print("adcore export: no training images in the parity check (the model file records no training folder, "
              "or it is not on this machine); add them with --check-data DATASET", file=sys.stderr)
    print(f"wrote {args.out / sidecar['artefact']} and {args.out / SIDECAR}: {sidecar['detector']} at "
          f"{sidecar['input_size'][0]}x{sidecar['input_size'][1]}, outputs {', '.join(sidecar['outputs'])}; parity on "
          f"{parity['images']} images: scores {parity['max_score_rel_diff']:.2g} relative, "
          + ("no maps (a score-only artefact)" if parity["max_map_diff_over_range"] is None else
             f"maps {parity['max_map_diff_over_range']:.2g} of their range"))
    return 0
