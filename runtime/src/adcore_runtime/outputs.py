"""What ``adcore-runtime predict`` writes: the same files as ``adcore predict``.

``OUT/scores.csv`` (``path,score,normalized_score,threshold,anomalous,regions,error``),
``OUT/results.jsonl`` (one JSON object per input) and ``OUT/heatmaps/<relative path>.png``, the
input's path relative to the folder it was found in (``cam1/img001.png`` ->
``heatmaps/cam1/img001.png.png``). Both tables are streamed: one line per image, flushed at once,
so a run stopped half-way keeps what it scored.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from adcore_runtime.images import IMAGE_EXTENSIONS

__all__ = ["CSV_FIELDS", "Input", "collect_inputs", "heatmap_name", "ResultWriter", "heatmap_image"]

CSV_FIELDS = ["path", "score", "normalized_score", "threshold", "anomalous", "regions", "error"]


class Input:
    """One file to score: the path as found, and its path relative to the argument it came from."""

    def __init__(self, path: Path, relative: Path) -> None:
        self.path, self.relative = path, relative

    def __repr__(self) -> str:
        return f"Input({str(self.path)!r}, {str(self.relative)!r})"


def collect_inputs(items: list[str]) -> list[Input]:
    """Files as given, and image files found in folders (recursively, sorted by relative path, hidden
    files and folders skipped, other extensions ignored)."""
    found: list[Input] = []
    for raw in items:
        path = Path(raw)
        if path.is_dir():
            inside: list[Input] = []
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        file = Path(folder) / name
                        inside.append(Input(file, file.relative_to(path)))
            found.extend(sorted(inside, key=lambda item: item.relative.parts))  # cam1/a.png before top.png
        else:
            found.append(Input(path, Path(path.name)))
    return found


def heatmap_name(item: Input, taken: set[str]) -> Path:
    """``heatmaps/<relative>.png``; an input whose relative path another input already took (two
    folders with the same file names) gets its argument's path spelled out instead."""
    relative = item.relative.as_posix()
    if relative in taken:
        parts = [p for p in item.path.parts if p not in ("/", "..", ".")]
        relative = "/".join(parts)
    taken.add(relative)
    return Path("heatmaps") / f"{relative}.png"


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class ResultWriter:
    """Streams ``scores.csv`` and ``results.jsonl`` into ``out``, one flushed line per image."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._csv_file = open(out / "scores.csv", "w", newline="", encoding="utf-8")
        self._jsonl = open(out / "results.jsonl", "w", encoding="utf-8")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        self._csv_file.flush()

    def write(self, path: str, *, score: float | None = None, normalized_score: float | None = None,
              threshold: float | None = None, anomalous: bool | None = None, regions: list[dict] | None = None,
              error: str | None = None) -> None:
        record: dict[str, Any] = {"path": path, "score": _number(score), "normalized_score": _number(normalized_score),
                                  "threshold": _number(threshold), "anomalous": anomalous,
                                  "regions": regions if regions is not None else [], "error": error}
        self._jsonl.write(json.dumps(record) + "\n")
        self._csv.writerow({
            "path": path, "score": "" if record["score"] is None else repr(record["score"]),
            "normalized_score": "" if record["normalized_score"] is None else repr(record["normalized_score"]),
            "threshold": "" if record["threshold"] is None else repr(record["threshold"]),
            "anomalous": "" if anomalous is None else str(anomalous).lower(),
            "regions": "" if regions is None else len(regions), "error": error or ""})
        self._jsonl.flush()
        self._csv_file.flush()

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic blue-cyan-yellow-red colour map, ``(H,W)`` in [0, 1] -> ``(H,W,3)`` in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    channels = np.array([0.75, 0.5, 0.25])  # centres of red, green, blue along the map
    return np.clip(1.5 - 4.0 * np.abs(v - channels), 0.0, 1.0)


def heatmap_image(image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The image (``(3,H,W)`` in [0, 1]) half-blended with the coloured map, as ``(H,W,3)`` uint8."""
    span = vmax - vmin if vmax > vmin else 1.0
    colours = _jet((anomaly_map - vmin) / span)
    blended = 0.5 * image.transpose(1, 2, 0) + 0.5 * colours
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)
