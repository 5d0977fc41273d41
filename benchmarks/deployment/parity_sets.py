"""Export parity on every shared set: each exportable registered detector, torch against its artefact.

    python benchmarks/deployment/parity_sets.py                       # every detector x every shared set
    python benchmarks/deployment/parity_sets.py --detectors padim --sets mvtec_bottle:bottle --formats onnx

For every registered detector (``adcore.factory.list_models``; DifferNet's artefact is score-only, so
its scores are compared and its map is not) and every shared set (``../shared/data``: MVTec bottle,
magnetic tile, PIPED's three sets), it

1. fits the detector at its card's ``quick_params`` with ``input_size`` 256 (``--input-size``) on
   ``--train-images`` evenly spaced good training images, and calibrates it on ``--calibration-images``
   others (so the calibrated graph, with ``normalized_score``, is the one exported);
2. exports it with ``adcore.export.export_detector`` to ONNX and, on ``--openvino-sets`` (bottle by
   default: each format costs an export and a scoring pass), OpenVINO, with the export's own parity
   check on its generated images (``--check-training`` adds 16 of the set's training images, as
   ``adcore export`` does for a model file that records its training folder);
3. scores the test split, loaded as ``adcore eval`` loads it (``open_dataset(spec, "test",
   load_size)``; the whole split, except that a split over ``--max-test`` images, i.e. magnetic
   tile's 583, is cut to that many evenly spaced over the sorted split, so every defect class stays
   in: 14 detectors x 583 images x 2 engines did not fit the hour on 2 shared cores), batch by
   batch with the torch detector and with each artefact opened by
   ``adcore.deployed.open_model`` (what ``adcore eval`` / ``adcore predict`` run on an artefact);
4. records, per artefact: the largest relative score difference, the largest map difference over the
   torch maps' range, image AUROC and pixel AUROC of torch and of the artefact, and whether they agree
   to 3 decimals (rounded values equal; the difference itself is recorded too).

Parity is a property of the export path, not of how well the detector was trained, so the training
is deliberately small (quick parameters, a subset of the images); the architecture and input size
are what the graph is made of. One JSON line per (detector, set) is appended to ``--results``; a
rerun skips the pairs already there (the script is resumable), ``--fresh`` starts over. Accuracy,
not timing: it does not need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# magnetic tile last: its 583 test images cost as much as the other four sets together
SETS = ("mvtec_bottle:bottle", "piped/PA_BDP01_TL", "piped/PA_BRG01_RL", "piped/PA_FLR01_TL",
        "magnetic_tile:magnetic_tile")
SKIP = ("example_gaussian",)  # the plugin-authoring example, not a shipped detector
LAST = ("differnet",)  # its torch map is an input gradient: a backward pass per image, ~5x the others' scoring


def _evenly(count: int, take: int, offset: float = 0.0) -> list[int]:
    take = min(count, take)
    return sorted({min(count - 1, int((i + offset) * count / take)) for i in range(take)})


def _fit(name: str, spec: Any, input_size: int, train_images: int, calibration_images: int) -> Any:
    from torch.utils.data import Subset

    from adcore.data import make_loader
    from adcore.datasets import open_dataset
    from adcore.testing import build_registered

    detector = build_registered(name, input_size=input_size)
    train = open_dataset(spec, "train", detector.load_size)
    fit_positions = _evenly(len(train), train_images)
    rest = [i for i in range(len(train)) if i not in set(fit_positions)]
    calibration = [rest[i] for i in _evenly(len(rest), calibration_images, 0.5)] if rest else []
    detector.fit(make_loader(Subset(train, fit_positions), 8))
    if calibration:
        detector.calibrate(make_loader(Subset(train, calibration), 8))
    return detector, len(fit_positions), len(calibration)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from adcore.metrics import UndefinedMetricError, auroc

    try:
        return float(auroc(labels, scores))
    except UndefinedMetricError:
        return None


def _same3(a: float | None, b: float | None) -> bool | None:
    return None if a is None or b is None else round(a, 3) == round(b, 3)


def run_pair(name: str, set_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fit, export and compare one detector on one set; the record."""
    import torch
    from torch.utils.data import Subset

    from adcore.data import make_loader
    from adcore.datasets import open_dataset, parse_dataset, training_folder
    from adcore.deployed import open_model
    from adcore.evaluation import masks_given
    from adcore.export import export_detector

    spec = parse_dataset(set_name, args.data_root)
    started = time.perf_counter()
    detector, fitted, calibrated = _fit(name, spec, args.input_size, args.train_images, args.calibration_images)
    record: dict[str, Any] = {"detector": name, "set": set_name, "input_size": args.input_size,
                              "params": {k: v for k, v in detector.get_params().items() if _plain(v)},
                              "train_images": fitted, "calibration_images": calibrated,
                              "fit_seconds": round(time.perf_counter() - started, 1), "artefacts": {}}
    scratch = tempfile.TemporaryDirectory(prefix="adcore-parity-sets-")
    models = {"torch": detector}
    openvino_here = set_name in args.openvino_sets or "all" in args.openvino_sets
    formats = [f for f in args.formats if f != "openvino" or openvino_here]
    for format in formats:
        folder = Path(scratch.name) / format
        begun = time.perf_counter()
        training = training_folder(spec) if args.check_training else None
        sidecar = export_detector(detector, folder, format=format, check_training=training)
        record["artefacts"][format] = {"export_seconds": round(time.perf_counter() - begun, 1),
                                       "score_only": sidecar["score_only"], "export_parity": sidecar["parity"]}
        models[format] = open_model(folder)
    test = open_dataset(spec, "test", detector.load_size)
    with_masks = masks_given(test)
    record["test_images_in_split"] = len(test)
    if args.max_test and len(test) > args.max_test:  # evenly spaced over the sorted split: every class kept
        test = Subset(test, _evenly(len(test), args.max_test))
    scores: dict[str, list[np.ndarray]] = {k: [] for k in models}
    maps: dict[str, list[np.ndarray]] = {k: [] for k in models}
    labels, masks = [], []
    worst = {k: {"score_rel": 0.0, "map_abs": 0.0} for k in models if k != "torch"}
    low, high = np.inf, -np.inf
    begun = time.perf_counter()
    for batch in make_loader(test, args.batch_size):  # decoded once, scored by every engine
        labels.append(np.asarray(batch["label"]))
        if with_masks:
            masks.append(batch["mask"].to(torch.bool).numpy())
        outputs = {k: model.predict(batch["image"]) for k, model in models.items()}
        reference_scores = outputs["torch"].pred_score.double().numpy()
        reference_maps = outputs["torch"].anomaly_map.float().numpy()
        low, high = min(low, float(reference_maps.min())), max(high, float(reference_maps.max()))
        for key, prediction in outputs.items():
            scores[key].append(prediction.pred_score.double().numpy())
            if with_masks and getattr(models[key], "has_maps", True):
                maps[key].append(prediction.anomaly_map.float().numpy())
            if key == "torch":
                continue
            exported = prediction.pred_score.double().numpy()
            rel = np.abs(reference_scores - exported) / np.maximum(np.abs(reference_scores), 1e-6)
            worst[key]["score_rel"] = max(worst[key]["score_rel"], float(rel.max()))
            if getattr(models[key], "has_maps", True):
                diff = np.abs(reference_maps - prediction.anomaly_map.float().numpy())
                worst[key]["map_abs"] = max(worst[key]["map_abs"], float(diff.max()))
    record["score_seconds"] = round(time.perf_counter() - begun, 1)
    label_array = np.concatenate(labels) > 0
    mask_array = np.concatenate(masks).reshape(-1) if with_masks else None
    record["test_images"] = int(label_array.size)
    image_auroc = {k: _auroc(label_array, np.concatenate(v)) for k, v in scores.items()}
    pixel_auroc = {k: (_auroc(mask_array, np.concatenate(maps[k]).reshape(-1)) if maps[k] else None)
                   for k in models} if with_masks else {k: None for k in models}
    record["torch"] = {"image_auroc": image_auroc["torch"], "pixel_auroc": pixel_auroc["torch"]}
    span = max(high - low, 1e-12)
    for key in worst:
        has_maps = getattr(models[key], "has_maps", True)
        record["artefacts"][key].update({
            "max_score_rel_diff": worst[key]["score_rel"],
            "max_map_diff_over_range": worst[key]["map_abs"] / span if has_maps else None,
            "image_auroc": image_auroc[key], "pixel_auroc": pixel_auroc[key],
            "image_auroc_diff": None if image_auroc[key] is None else abs(image_auroc[key] - image_auroc["torch"]),
            "pixel_auroc_diff": None if pixel_auroc[key] is None else abs(pixel_auroc[key] - pixel_auroc["torch"]),
            "image_auroc_equal_3dp": _same3(image_auroc["torch"], image_auroc[key]),
            "pixel_auroc_equal_3dp": _same3(pixel_auroc["torch"], pixel_auroc[key]),
            "within_tolerance": worst[key]["score_rel"] <= 1e-4
            and (not has_maps or worst[key]["map_abs"] / span <= 1e-3)})
    scratch.cleanup()
    return record


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, list, tuple))


def _done(results: Path) -> set[tuple[str, str]]:
    if not results.exists():
        return set()
    pairs = set()
    for line in results.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if "error" not in row:
                pairs.add((row["detector"], row["set"]))
    return pairs


def table(results: Path) -> str:
    """The Markdown table of ``results`` (one row per detector, set and format)."""
    from adcore.tables import markdown_table

    rows = []
    for line in results.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "error" in row:
            rows.append({"detector": row["detector"], "set": row["set"], "format": "error: " + row["error"][:80]})
            continue
        for format, art in row["artefacts"].items():
            rows.append({"detector": row["detector"], "set": row["set"].split("/")[-1].split(":")[-1],
                         "format": format, "n": row["test_images"], "score": art["max_score_rel_diff"],
                         "map": art["max_map_diff_over_range"],
                         "iauc": f"{row['torch']['image_auroc']:.4f} / {art['image_auroc']:.4f}",
                         "pauc": ("n/a" if art["pixel_auroc"] is None or row["torch"]["pixel_auroc"] is None
                                  else f"{row['torch']['pixel_auroc']:.4f} / {art['pixel_auroc']:.4f}"),
                         "same": "yes" if art["image_auroc_equal_3dp"] and art["pixel_auroc_equal_3dp"] in (True, None)
                         else "**no**", "ok": "yes" if art["within_tolerance"] else "**no**"})
    return markdown_table(rows, [("detector", "detector", "s"), ("set", "set", "s"), ("format", "artefact", "s"),
                                 ("n", "test images", "d"), ("score", "max score rel. diff", ".1e"),
                                 ("map", "max map diff / range", ".1e"), ("iauc", "image AUROC torch / artefact", "s"),
                                 ("pauc", "pixel AUROC torch / artefact", "s"), ("same", "equal to 3 dp", "s"),
                                 ("ok", "within 1e-4 / 1e-3", "s")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--detectors", nargs="+", default=None, help="default: every registered detector")
    parser.add_argument("--formats", nargs="+", default=["onnx", "openvino"],
                        choices=["onnx", "openvino", "torchscript"])
    parser.add_argument("--openvino-sets", nargs="+", default=["mvtec_bottle:bottle"],
                        help="sets on which the openvino artefact is checked too (cost), or 'all'")
    parser.add_argument("--check-training", action="store_true",
                        help="add 16 training images to the export's own parity check (default: generated images)")
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--train-images", type=int, default=16)
    parser.add_argument("--calibration-images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-test", type=int, default=200,
                        help="score at most this many test images, evenly spaced (magnetic tile has 583); 0: all")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "deployment" / "parity_sets.jsonl")
    parser.add_argument("--fresh", action="store_true", help="truncate --results first")
    parser.add_argument("--table", action="store_true", help="print the table of --results and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.results))
        return
    from adcore.factory import list_models
    from adcore.seeding import seeded

    names = args.detectors or [n for n in list_models() if n not in SKIP]
    names.sort(key=lambda n: n in LAST)  # stable: alphabetical, the costly ones last in each set
    if args.fresh and args.results.exists():
        args.results.unlink()
    done = _done(args.results)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for set_name in args.sets:
        for name in names:
            if (name, set_name) in done:
                continue
            began = time.perf_counter()
            try:
                with seeded(0):
                    record = run_pair(name, set_name, args)
            except Exception as exc:  # noqa: BLE001 - a failure is a finding: recorded, the others still run
                record = {"detector": name, "set": set_name, "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc()[-2000:]}
            record.update(seconds=round(time.perf_counter() - began, 1), machine=platform.machine(),
                          omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
            with open(args.results, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
            print(json.dumps({k: record.get(k) for k in ("detector", "set", "seconds", "error")}), file=sys.stderr,
                  flush=True)
    print(table(args.results))


if __name__ == "__main__":
    main()
