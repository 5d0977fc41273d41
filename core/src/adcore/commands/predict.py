"""``adcore predict MODEL_FILE IMAGES...``: score image files and folders with a saved model.

Writes ``scores.json``, ``scores.csv`` and (unless ``--no-heatmaps``) one heatmap PNG per image.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

__all__ = ["NAME", "HELP", "add_arguments", "run"]

NAME = "predict"
HELP = "score images with a saved model; CSV/JSON scores and heatmap PNGs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_file", type=Path)
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, default=Path("adcore-predictions"))
    parser.add_argument("--no-heatmaps", action="store_true")


def _image_paths(items: list[str]) -> list[Path]:
    from adcore.data import list_images
    from adcore.errors import InvalidInputError

    paths: list[Path] = []
    for raw in items:
        path = Path(raw)
        paths.extend(list_images(path) if path.is_dir() else [path])
    if not paths:
        raise InvalidInputError(f"no images found in {', '.join(items)}; give image files or folders holding them")
    return paths


def run(args: argparse.Namespace) -> int:
    import torch

    from adcore.data import load_image
    from adcore.factory import load
    from adcore.files import atomic_write_text
    from adcore.progress import progress
    from adcore.viz import save_heatmap_panel

    detector = load(args.model_file)
    paths = _image_paths(args.images)
    out = Path(args.out)
    rows = []
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
            verdict = "" if label is None else (" ANOMALOUS" if label else " ok")
            save_heatmap_panel(out / "heatmaps" / f"{path.stem}.png", image, amap, vmin=vmin, vmax=vmax,
                               title=f"{path.name}  score {score:.4g}{verdict}")
        del prediction
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    atomic_write_text(out / "scores.json", json.dumps(rows, indent=2))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=["path", "score", "anomalous"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", buffer.getvalue())
    for row in rows:
        flag = "" if row["anomalous"] is None else ("ANOMALOUS" if row["anomalous"] else "ok")
        print(f"{row['score']:.6g}\t{flag}\t{row['path']}")
    return 0
