"""``adcore export MODEL_FILE --format onnx|openvino|torchscript --out DIR``: a deployable artefact.

Writes DIR/model.onnx (model.xml + model.bin for OpenVINO, model.pt for TorchScript) and
DIR/adcore-export.json, after checking that the artefact gives the torch detector's scores and
maps on the ``--check`` images (default: generated good and defective images); beyond the
tolerance it exits 1 and writes nothing. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
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
                        help="image files or folders for the parity check (default: generated images)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17)")
    parser.add_argument("--score-tolerance", type=float, default=1e-4, help="relative score difference allowed")
    parser.add_argument("--map-tolerance", type=float, default=1e-3,
                        help="map difference allowed, as a share of the map's range")


def run(args: argparse.Namespace) -> int:
    from adcore.export import SIDECAR, Tolerance, export_detector
    from adcore.factory import load

    detector = load(args.model_file)
    sidecar = export_detector(detector, args.out, format=args.format, check=args.check, opset=args.opset,
                              tolerance=Tolerance(args.score_tolerance, args.map_tolerance))
    parity = sidecar["parity"]
    print(f"wrote {args.out / sidecar['artefact']} and {args.out / SIDECAR}: {sidecar['detector']} at "
          f"{sidecar['input_size'][0]}x{sidecar['input_size'][1]}, outputs {', '.join(sidecar['outputs'])}; parity on "
          f"{parity['images']} images: scores {parity['max_score_rel_diff']:.2g} relative, maps "
          f"{parity['max_map_diff_over_range']:.2g} of their range")
    return 0
