"""The ``adcore`` command line: list, plugins, train, eval, predict, benchmark.

Run ``adcore COMMAND --help`` for each command's options. Examples::

    adcore list
    adcore eval patchcore --data examples/sample_data/piped --category PA_FLR01_TL --out runs/demo
    adcore train padim --data /data/mvtec --category bottle --out bottle.safetensors
    adcore predict bottle.safetensors /line/camera1/*.png --out results/
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

EPILOG = """Plugins: detectors come from installed distributions (ad-memory, ad-stat, ad-flow, ad-distill,
ad-recon, or third-party ones). ADCORE_DISABLE_PLUGINS=a,b skips plugins; ADCORE_STRICT_PLUGINS=1 or
--strict makes any plugin failure fatal; ADCORE_PROGRESS=0 hides progress bars."""


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"adcore: --param expects key=value (JSON values allowed), got {pair!r}")
        params[key.strip()] = _parse_value(value)
    return params


def _host():
    from adcore.plugins import get_host

    return get_host()


def _report_failures(host: Any) -> None:
    for failure in host.failures:
        print(f"adcore: warning: plugin {failure.describe()}", file=sys.stderr)
    if host.failures:
        print("adcore: run `adcore plugins` for details; other detectors are unaffected.", file=sys.stderr)


# -- list / plugins --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    host = _host()
    entries = host.detectors.select(args.pattern, args.category)
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
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
    _report_failures(host)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    host = _host()
    report = host.report()
    if not args.details:
        for failure in report["failures"]:
            failure.pop("details", None)
    print(json.dumps(report, indent=2))
    return 0


# -- train / eval / predict ------------------------------------------------------------------------
def _build(args: argparse.Namespace):
    from adcore.factory import get_model

    params = _parse_params(args.param)
    if args.input_size:
        params["input_size"] = args.input_size
    if args.seed is not None:
        params["seed"] = args.seed
    return get_model(args.model, **params)


def _datasets(args: argparse.Namespace, image_size: int):
    from adcore.data import MVTecDataset
    from adcore.evaluation import split_calibration

    train = MVTecDataset(args.data, args.category, "train", image_size=image_size)
    fit_set, calibration_set = split_calibration(train, args.calibration_fraction, seed=args.seed or 0)
    return fit_set, calibration_set


def cmd_train(args: argparse.Namespace) -> int:
    from adcore.data import make_loader

    detector = _build(args)
    size = getattr(detector, "input_size", 256)
    fit_set, calibration_set = _datasets(args, size)
    print(f"fitting {args.model} on {len(fit_set)} good images of {args.data}/{args.category or ''}", file=sys.stderr)
    detector.fit(make_loader(fit_set, args.batch_size))
    if len(calibration_set):
        detector.calibrate(make_loader(calibration_set, args.batch_size), target_fpr=args.target_fpr)
        print(f"threshold {detector.threshold_:.6g} from {len(calibration_set)} held-out good images "
              f"(target false-positive rate {args.target_fpr})", file=sys.stderr)
    path = detector.save(args.out)
    print(str(path))
    return 0


def _metrics_table(row: dict[str, Any]) -> str:
    keys = ["image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold_f1", "fit_seconds",
            "ms_per_image_batch1", "ms_per_image_batched", "peak_rss_mb"]
    lines = ["| metric | value |", "|---|---|"]
    for key in keys:
        value = row.get(key)
        text = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) and abs(value) < 10 else
                                            f"{value:.1f}" if isinstance(value, float) else str(value))
        lines.append(f"| {key} | {text} |")
    for key, note in row.get("notes", {}).items():
        lines.append(f"| note: {key} | {note} |")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from adcore.data import MVTecDataset
    from adcore.evaluation import evaluate_detector
    from adcore.persistence import atomic_write_bytes

    detector = _build(args)
    size = getattr(detector, "input_size", 256)
    fit_set, calibration_set = _datasets(args, size)
    test_set = MVTecDataset(args.data, args.category, "test", image_size=size)
    result, outputs = evaluate_detector(detector, fit_set, test_set, batch_size=args.batch_size,
                                        calibration_set=calibration_set if len(calibration_set) else None,
                                        target_fpr=args.target_fpr)
    row = {"model": args.model, "data": str(args.data), "category": args.category, "params": detector.get_params(),
           **result.as_dict()}
    table = _metrics_table(row)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        detector.save(out / "model.safetensors")
        atomic_write_bytes(out / "metrics.json", json.dumps(row, indent=2, default=str).encode())
        atomic_write_bytes(out / "metrics.md", (table + "\n").encode())
        _write_heatmaps(out / "heatmaps", test_set, outputs, getattr(detector, "threshold_", None), args.max_heatmaps)
        print(f"wrote {out}/model.safetensors, metrics.json, metrics.md and heatmaps/", file=sys.stderr)
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


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from adcore.data import list_images, load_image
    from adcore.factory import load
    from adcore.persistence import atomic_write_bytes
    from adcore.viz import save_heatmap_panel

    detector = load(args.model_file)
    paths: list[Path] = []
    for raw in args.images:
        path = Path(raw)
        paths.extend(list_images(path) if path.is_dir() else [path])
    if not paths:
        raise SystemExit("adcore predict: no images found in the given paths")
    out = Path(args.out)
    rows = []
    from adcore.progress import progress

    for path in progress(paths, desc="predict", total=len(paths)):
        image = load_image(path)
        prediction = detector.predict(image[None])
        score = float(prediction.pred_score[0])
        label = None if prediction.pred_label is None else bool(prediction.pred_label[0])
        rows.append({"path": str(path), "score": score, "anomalous": label})
        if not args.no_heatmaps:
            amap = prediction.anomaly_map[0]
            threshold = getattr(detector, "threshold_", None)
            vmin = float(amap.min()) if threshold is None else 0.5 * threshold
            vmax = float(amap.max()) if threshold is None else max(1.5 * threshold, float(amap.max()))
            save_heatmap_panel(out / "heatmaps" / f"{path.stem}.png", image, amap, vmin=vmin, vmax=vmax,
                               title=f"{path.name}  score {score:.4g}" + ("" if label is None else (" ANOMALOUS" if label else " ok")))
        del prediction
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "scores.json", json.dumps(rows, indent=2).encode())
    with open(out / "scores.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "score", "anomalous"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / "scores.csv.tmp", out / "scores.csv")
    for row in rows:
        flag = "" if row["anomalous"] is None else ("ANOMALOUS" if row["anomalous"] else "ok")
        print(f"{row['score']:.6g}\t{flag}\t{row['path']}")
    return 0


# -- parser ----------------------------------------------------------------------------------------
def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="registered detector name, e.g. patchcore (see `adcore list`)")
    parser.add_argument("--data", required=True, type=Path, help="MVTec-layout root (ROOT/CATEGORY/train/good, ...)")
    parser.add_argument("--category", default=None, help="category folder under --data, e.g. bottle")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="detector parameter (repeatable; JSON values), e.g. -p coreset_ratio=0.05")
    parser.add_argument("--input-size", type=int, default=None, help="detector input size in pixels")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the detector's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--calibration-fraction", type=float, default=0.2,
                        help="share of train/good held out to set the threshold (default 0.2)")
    parser.add_argument("--target-fpr", type=float, default=0.01,
                        help="false-positive rate the threshold allows on held-out good images (default 0.01)")


def build_parser() -> argparse.ArgumentParser:
    from adcore import __version__

    parser = argparse.ArgumentParser(prog="adcore", description="Visual anomaly detection: train on good images, "
                                     "score new ones, localise defects.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"adcore {__version__}")
    parser.add_argument("--strict", action="store_true", help="fail (exit 2) if any plugin failed to load")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list registered detectors by category")
    p.add_argument("pattern", nargs="?", default="*", help="glob over names, e.g. '*ae'")
    p.add_argument("--category", default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plugins", help="JSON report of loaded plugins, their detectors and failures")
    p.add_argument("--details", action="store_true", help="include tracebacks of failures")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("train", help="fit a detector on good images, calibrate its threshold, save it")
    _add_model_options(p)
    p.add_argument("--out", required=True, type=Path, help="model file to write (.safetensors)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="fit, calibrate and evaluate on the test split; metrics table, heatmaps")
    _add_model_options(p)
    p.add_argument("--out", type=Path, default=None, help="folder for model.safetensors, metrics.json/md, heatmaps/")
    p.add_argument("--max-heatmaps", type=int, default=24, help="heatmap PNGs to write (defects first)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="score images with a saved model; CSV/JSON scores and heatmap PNGs")
    p.add_argument("model_file", type=Path)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", type=Path, default=Path("adcore-predictions"))
    p.add_argument("--no-heatmaps", action="store_true")
    p.set_defaults(func=cmd_predict)

    try:
        from adcore.benchmark import add_cli
    except ImportError:
        add_cli = None
    if add_cli is not None:
        add_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # torch and faiss each bring an OpenMP runtime; busy-waiting threads of one stall the other.
    # Only effective before either is imported, which adcore's CLI guarantees (imports are lazy).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from adcore.errors import AdcoreError
    from adcore.plugins import PluginLoadError
    from adcore.registry import DetectorImportError, ModelNotFoundError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strict:
        os.environ["ADCORE_STRICT_PLUGINS"] = "1"
    if os.environ.get("ADCORE_DETERMINISTIC", "").strip() in ("1", "true", "yes"):
        from adcore.seeding import set_deterministic

        set_deterministic(True)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PluginLoadError as exc:
        print(f"adcore: {exc}", file=sys.stderr)
        return 2
    except (ModelNotFoundError, DetectorImportError, AdcoreError, TypeError, ValueError, OSError) as exc:
        print(f"adcore {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adcore: interrupted; no partial model file was written (saves are atomic)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
