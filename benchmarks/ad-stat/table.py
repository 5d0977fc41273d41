"""Markdown tables for docs/ad-stat.md from benchmark records.

    .venv/bin/python benchmarks/ad-stat/table.py                      # benchmarks/ad-stat/results/benchmark/results.jsonl
    .venv/bin/python benchmarks/ad-stat/table.py benchmarks/ad-stat/results/session3.jsonl   # the historical record

Reads the ``results.jsonl`` of ``adcore benchmark --config benchmarks/ad-stat/config.json`` and also
the JSON lines the former ``run.py`` harness wrote (the committed ``results/*.jsonl``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["main", "normalise"]

DEFAULT = "benchmarks/ad-stat/results/benchmark/results.jsonl"


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    """A benchmark record in the harness's field names (a harness line as it is; unfinished runs: None)."""
    if "format" not in record:
        return record
    if record.get("status") != "ok":
        return None
    loops = record.get("training") or []
    seconds = [s for loop in loops for s in loop.get("seconds", [])]
    row = {"model": record["detector"], "category": record["dataset"], "train_images": record.get("train_images"),
           "fit_seconds": record.get("fit_seconds"), "fit_cpu_seconds": record.get("fit_cpu_seconds"),
           "epoch_seconds": sum(seconds) / len(seconds) if seconds else None,
           "epochs_run": record.get("epochs_run"), "final_loss": record.get("final_loss"),
           "ms_batch1": record.get("ms_per_image_batch1"), "ms_batched": record.get("ms_per_image_batched"),
           "cpu_ms_batch1": record.get("cpu_ms_per_image_batch1"), "cpu_ms_batched": record.get("cpu_ms_per_image_batched"),
           "peak_rss_mb_fit": record.get("peak_rss_mb_fit"), "peak_rss_mb": record.get("peak_rss_mb"),
           "curve_how": "evaluated between epochs, one uninterrupted training",
           "curve": [{"epochs": p["epoch"], **p} for p in record.get("curve") or [] if "error" not in p] or None}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        row[key] = record.get(key)
    return row


def main(paths: list[str] | None = None) -> None:
    rows = [row for path in paths or [DEFAULT] for line in open(path) if line.strip()
            and (row := normalise(json.loads(line)))]
    print("| set (train imgs) | model | img AUROC | px AUROC | AUPRO | F1-max | fit s (per epoch) | fit CPU s "
          "| ms/img bs1 / bs8 | CPU ms/img bs1 / bs8 | peak RSS MB after fit / whole run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        model = r["model"] + (f" ({r['epochs_run']} ep)" if r.get("epochs_run") else "")
        fit = _f(r["fit_seconds"], 1) + (f" ({_f(r['epoch_seconds'], 1)})" if r.get("epoch_seconds") else "")
        print(f"| {r['category']} ({r['train_images']}) | {model} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} "
              f"| {_f(r['aupro'])} | {_f(r['image_f1_max'])} | {fit} | {_f(r['fit_cpu_seconds'], 1)} "
              f"| {_f(r['ms_batch1'], 1)} / {_f(r['ms_batched'], 1)} | {_f(r['cpu_ms_batch1'], 1)} / {_f(r['cpu_ms_batched'], 1)} "
              f"| {_f(r['peak_rss_mb_fit'], 0)} / {_f(r['peak_rss_mb'], 0)} |")
    curves = [r for r in rows if r.get("curve")]
    for r in curves:
        print(f"\nSTFPM on {r['category']}, accuracy against epochs (same run, "
              f"{r.get('curve_how', 'evaluated between segments')}):\n")
        print("| epochs | train loss | img AUROC | px AUROC | AUPRO |")
        print("|---|---|---|---|---|")
        for point in r["curve"]:
            print(f"| {point['epochs']} | {point['loss']:.4f} | {_f(point['image_auroc'])} | {_f(point['pixel_auroc'])} "
                  f"| {_f(point['aupro'])} |")
        print(f"| {r['epochs_run']} | {r['final_loss']:.4f} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} "
              f"| {_f(r['aupro'])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
