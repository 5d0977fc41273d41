"""``adcore-runtime predict ARTEFACT IMAGES_OR_FOLDERS --out DIR``: ``adcore predict``'s outputs, no torch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from adcore_runtime._version import __version__
from adcore_runtime.errors import AdcoreRuntimeError, ImageLoadError, InvalidInputError

__all__ = ["main", "build_parser", "predict_command"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adcore-runtime", description="Score images with an adcore export, "
                                     "without torch (ONNX Runtime or OpenVINO).")
    parser.add_argument("--version", action="version", version=f"adcore-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="score image files and folders; scores.csv, results.jsonl, heatmaps")
    predict.add_argument("artefact", type=Path, help="the folder `adcore export` wrote, or its model.onnx")
    predict.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    predict.add_argument("--out", type=Path, default=Path("adcore-predictions"))
    predict.add_argument("--no-heatmaps", action="store_true")
    predict.add_argument("--backend", choices=["onnx", "openvino"], default=None,
                         help="default: the artefact's own runtime")
    predict.add_argument("--threads", type=int, default=None)
    return parser


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(temporary, format="PNG")
    os.replace(temporary, path)  # atomic: a reader never sees half a heatmap


def predict_command(args: argparse.Namespace) -> int:
    from adcore_runtime.images import load_image
    from adcore_runtime.outputs import ResultWriter, collect_inputs, heatmap_image, heatmap_name
    from adcore_runtime.regions import find_regions
    from adcore_runtime.runtime import Runtime

    runtime = Runtime(args.artefact, backend=args.backend, threads=args.threads)
    inputs = collect_inputs(args.images)
    if not inputs:
        raise InvalidInputError(f"no images found in {', '.join(args.images)}; give image files or folders holding them")
    threshold, pixel_threshold = runtime.threshold, runtime.pixel_threshold
    if pixel_threshold is None:
        print(f"note: {args.artefact} has no pixel threshold (the model was not calibrated with masks or maps), "
              "so no regions are reported (regions: [])", file=sys.stderr)
    taken: set[str] = set()
    failed = 0
    with ResultWriter(args.out) as writer:
        for item in inputs:
            shown = str(item.path)
            try:
                image = load_image(item.path)
            except ImageLoadError as exc:
                failed += 1
                writer.write(shown, error=str(exc))
                print(f"skipped {shown}: {exc}", file=sys.stderr)
                continue
            prediction = next(runtime.predict_each([image]))
            score, amap = float(prediction.pred_score[0]), prediction.anomaly_map[0]
            label = None if prediction.pred_label is None else bool(prediction.pred_label[0])
            normalized = None if prediction.normalized_score is None else float(prediction.normalized_score[0])
            # None: not computed (no pixel threshold): [] in results.jsonl, an empty cell in scores.csv
            regions = None if pixel_threshold is None else [r.as_dict() for r in find_regions(amap, pixel_threshold)]
            writer.write(shown, score=score, normalized_score=normalized, threshold=threshold, anomalous=label,
                         regions=regions)
            if not args.no_heatmaps:
                reference = pixel_threshold if pixel_threshold is not None else None
                vmin = float(amap.min()) if reference is None else 0.5 * reference
                vmax = float(amap.max()) if reference is None else max(1.5 * reference, float(amap.max()))
                _save_png(args.out / heatmap_name(item, taken), heatmap_image(image, amap, vmin, vmax))
            flag = "" if label is None else ("ANOMALOUS" if label else "ok")
            print(f"{score:.6g}\t{flag}\t{shown}", flush=True)
    if failed:
        print(f"{failed} of {len(inputs)} files could not be read and were skipped (see the error column of "
              f"{args.out / 'scores.csv'})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return predict_command(args)
    except AdcoreRuntimeError as exc:
        print(f"adcore-runtime: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
