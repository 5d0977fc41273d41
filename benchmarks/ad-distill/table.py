"""Markdown table of docs/ad-distill.md from benchmark records (one row per run, in file order).

    .venv/bin/python benchmarks/ad-distill/table.py                     # benchmarks/ad-distill/results/benchmark/results.jsonl
    .venv/bin/python benchmarks/ad-distill/table.py benchmarks/ad-distill/results.jsonl   # the historical record

Reads the ``results.jsonl`` of ``adcore benchmark --config benchmarks/ad-distill/config.json`` and also
the JSON lines the former ``run.py`` harness wrote (the committed ``results.jsonl``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "normalise"]

DEFAULT = "benchmarks/ad-distill/results/benchmark/results.jsonl"


def normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    """A benchmark record in the harness's field names (a harness line as it is; unfinished runs: None)."""
    if "format" not in record:
        return record
    if record.get("status") != "ok":
        return None
    attributes = record.get("attributes") or {}
    provenance = attributes.get("teacher_provenance_") or {}
    teachers = provenance if isinstance(provenance, list) else [provenance]
    row = {"model": record["detector"], "category": record["dataset"], "params": record.get("params", {}),
           "training": attributes.get("training_summary_") or [{"steps": None}],
           "teacher_seconds": sum((t or {}).get("seconds", 0.0) for t in teachers),
           "fit_seconds": record.get("fit_seconds"), "ms_batch1": record.get("ms_per_image_batch1"),
           "ms_batched": record.get("ms_per_image_batched"), "peak_rss_mb": record.get("peak_rss_mb"),
           "train_images": record.get("train_images")}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        row[key] = record.get(key)
    return row


def main(path: str = DEFAULT) -> None:
    print("| set | model | budget | img AUROC | px AUROC | AUPRO | F1-max | teacher s | fit s | ms/img bs1 / bs8 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for line in Path(path).read_text().splitlines():
        r = normalise(json.loads(line)) if line.strip() else None
        if r is None:
            continue
        p = r["params"]
        training = r["training"] if isinstance(r["training"], list) else [r["training"]]
        budget = (f"teacher {p.get('teacher_steps')}×{p.get('teacher_batch_size')} @ lr {p.get('teacher_learning_rate', p.get('teacher_lr', 1e-4))}; "
                  f"student {training[0]['steps']}×{p.get('batch_size')} @ lr {p.get('learning_rate', p.get('lr'))}")
        print(f"| {r['category']} ({r['train_images']} train) | {r['model']} | {budget} | {r['image_auroc']:.3f} | "
              f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['image_f1_max']:.3f} | {r['teacher_seconds']:.0f} | "
              f"{r['fit_seconds']:.0f} | {r['ms_batch1']:.0f} / {r['ms_batched']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
