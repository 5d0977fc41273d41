"""``adcore eval MODEL PATH``: fit, calibrate, evaluate on the test split; metrics table, model, heatmaps.

``MODEL`` is a registered detector name (fitted and calibrated here), or a saved model: a
``.safetensors`` model file or an ``adcore export`` artefact (its folder or ``adcore-export.json``),
opened by :func:`adcore.deployed.open_model` and evaluated as it is, with its own threshold, on the
test split only, so a user evaluates exactly what they will deploy. A name that is also a folder
in the current directory is the detector; write ``./NAME`` for the folder.

A test set without ground-truth masks is evaluated image-level: pixel AUROC and AUPRO are shown as
not available, with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adcore.commands.options import (add_dataset_options, add_device_options, add_fit_options, add_model_options,
                                     build_detector,
                                     check_fit_options, dataset_from_args, load_size_of, loader_batch_size,
                                     split_for_fit, warn_no_threshold, written_files)

__all__ = ["NAME", "HELP", "add_arguments", "run", "metrics_table", "METRIC_KEYS"]

NAME = "eval"
HELP = "fit, calibrate and evaluate on the test split; metrics table, heatmaps"

#: the rows of the metrics table, in order
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold_f1", "fit_seconds",
               "ms_per_image_batch1", "ms_per_image_batched", "peak_rss_mb")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_dataset_options(parser)
    add_fit_options(parser)
    add_device_options(parser)
    parser.add_argument("--out", type=Path, default=None, help="folder for model.safetensors, metrics.json/md, heatmaps/ "
                        "(no model.safetensors when MODEL is a saved model)")
    parser.add_argument("--max-heatmaps", type=int, default=24, help="heatmap PNGs to write (defects first)")


def _value_text(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def metrics_table(row: dict[str, Any]) -> str:
    """``| metric | value |`` for :data:`METRIC_KEYS` (``n/a`` when undefined), then one row per note."""
    from adcore.tables import markdown_table

    notes = row.get("notes", {})
    rows = [{"metric": key, "value": _value_text(row.get(key))} for key in METRIC_KEYS]
    rows += [{"metric": f"note: {key}", "value": note} for key, note in notes.items()]
    return markdown_table(rows, [("metric", "metric", "s"), ("value", "value", "s")])


def run(args: argparse.Namespace) -> int:
    from adcore.datasets import open_dataset
    from adcore.evaluation import evaluate_detector
    from adcore.files import atomic_write_text, check_output_file, check_output_folder

    check_fit_options(args)
    if _names_a_saved_model(args.model):
        return _evaluate_saved(args)
    detector = build_detector(args)
    if args.out:  # before the fit: a bad --out must not lose the work
        check_output_folder(args.out)
        for name in ("model.safetensors", "metrics.json", "metrics.md"):
            check_output_file(Path(args.out) / name)
        check_output_folder(Path(args.out) / "heatmaps")
    spec = dataset_from_args(args)
    size = load_size_of(detector)
    train = open_dataset(spec, "train", size)
    test_set = open_dataset(spec, "test", size)
    fit_set, calibration_set = split_for_fit(args, train, fallback_split=True)
    result, outputs = evaluate_detector(detector, fit_set, test_set, batch_size=loader_batch_size(detector, args.batch_size),
                                        calibration_set=calibration_set if len(calibration_set) else None,
                                        target_fpr=args.target_fpr, workers=args.workers or 0)
    if getattr(detector, "threshold_", None) is None:
        warn_no_threshold(args, len(train))
    row = {"model": args.model, "data": spec.root or spec.train, "category": spec.category or spec.name,
           "dataset": spec.describe(), "params": detector.get_params(), **result.as_dict()}
    table = metrics_table(row)
    print(table)
    if args.out:
        out = Path(args.out)
        from adcore.datasets import training_folder

        detector.training_images_ = str(training_folder(spec))  # adcore export adds some to its parity check
        with written_files(args.command) as written:
            written.append(detector.save(out / "model.safetensors"))
            written.append(atomic_write_text(out / "metrics.json", json.dumps(row, indent=2, default=str)))
            written.append(atomic_write_text(out / "metrics.md", table + "\n"))
            _write_heatmaps(out / "heatmaps", test_set, outputs, getattr(detector, "threshold_", None),
                            args.max_heatmaps)
        print(f"wrote {out}/model.safetensors, metrics.json, metrics.md and heatmaps/", file=sys.stderr)
    return 0


def _names_a_saved_model(model: str) -> bool:
    """A path (with a folder part or a model/sidecar suffix), or an existing path no detector is registered as."""
    from adcore.factory import find_entry

    path = Path(model)
    if path.suffix in (".safetensors", ".json") or len(path.parts) > 1:
        return True
    return path.exists() and find_entry(model) is None


def _evaluate_saved(args: argparse.Namespace) -> int:
    """``adcore eval MODEL_FILE_OR_EXPORT PATH``: the saved model as it is, on the test split."""
    from adcore.commands.options import detector_params
    from adcore.datasets import open_dataset
    from adcore.deployed import open_model
    from adcore.errors import ConfigurationError
    from adcore.evaluation import evaluate_fitted
    from adcore.files import atomic_write_text, check_output_file, check_output_folder

    if detector_params(args):
        raise ConfigurationError(f"{args.model} is a saved model: its parameters are fixed, so -p, --input-size and "
                                 "--seed do not apply; give a detector name to fit a new one")
    if args.out:
        check_output_folder(args.out)
        for name in ("metrics.json", "metrics.md"):
            check_output_file(Path(args.out) / name)
        check_output_folder(Path(args.out) / "heatmaps")
    model = open_model(args.model, device=args.device)
    if args.precision is not None and hasattr(model, "set_params"):
        model.set_params(precision=args.precision)
    if args.require_threshold and getattr(model, "threshold_", None) is None:
        raise ConfigurationError(f"--require-threshold: {args.model} has no threshold (it was not calibrated)")
    spec = dataset_from_args(args)
    test_set = open_dataset(spec, "test", load_size_of(model))
    result, outputs = evaluate_fitted(model, test_set, batch_size=loader_batch_size(model, args.batch_size),
                                      workers=args.workers or 0)
    result.notes["model"] = f"{args.model} evaluated as saved: nothing fitted, its own threshold"
    row = {"model": str(args.model), "detector": getattr(model, "name", type(model).__name__),
           "data": spec.root or spec.train, "category": spec.category or spec.name, "dataset": spec.describe(),
           "params": model.get_params(), **result.as_dict()}
    table = metrics_table(row)
    print(table)
    if args.out:
        out = Path(args.out)
        with written_files(args.command) as written:
            written.append(atomic_write_text(out / "metrics.json", json.dumps(row, indent=2, default=str)))
            written.append(atomic_write_text(out / "metrics.md", table + "\n"))
            _write_heatmaps(out / "heatmaps", test_set, outputs, getattr(model, "threshold_", None), args.max_heatmaps)
        print(f"wrote {out}/metrics.json, metrics.md and heatmaps/", file=sys.stderr)
    return 0


def _write_heatmaps(folder: Path, dataset: Any, outputs: dict[str, Any], threshold: float | None, limit: int) -> None:
    from adcore.progress import progress
    from adcore.viz import save_heatmap_panel

    maps = outputs["maps"]
    vmin, vmax = float(maps.min()), float(maps.max())
    # defective images first, so a capped run still shows defects
    order = sorted(range(len(dataset)), key=lambda i: -int(outputs["labels"][i]))[:limit]
    for index in progress(order, desc="heatmaps", total=len(order)):
        item = dataset[index]
        score = float(outputs["scores"][index])
        verdict = "" if threshold is None else (" ANOMALOUS" if score >= threshold else " ok")
        name = f"{item['defect_type']}_{Path(item['path']).stem}.png"
        save_heatmap_panel(folder / name, item["image"], maps[index], vmin=vmin, vmax=vmax, mask=item["mask"],
                           title=f"{Path(item['path']).name}  score {score:.4g}{verdict}")
