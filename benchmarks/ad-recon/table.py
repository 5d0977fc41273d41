"""Print the Markdown results table of docs/ad-recon.md from benchmark records.

    .venv/bin/python benchmarks/ad-recon/table.py                      # benchmarks/ad-recon/results/benchmark/results.jsonl
    .venv/bin/python benchmarks/ad-recon/table.py benchmarks/ad-recon/results/bottle.jsonl   # the historical record

Reads the ``results.jsonl`` of ``adcore benchmark --config benchmarks/ad-recon/config.json`` and also
the JSON lines the former ``run.py`` harness wrote (the committed ``results/*.jsonl``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["main", "normalise"]

DEFAULT = "benchmarks/ad-recon/results/benchmark/results.jsonl"


def _fmt(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    """A benchmark record in the harness's field names (a harness line as it is; unfinished runs: None)."""
    if "format" not in record:
        return record
    if record.get("status") != "ok":
        return None
    row = {"model": record["detector"], "category": record["dataset"], "train_images": record.get("train_images"),
           "fit_seconds": record.get("fit_seconds"), "ms_batch1": record.get("ms_per_image_batch1"),
           "ms_batched": record.get("ms_per_image_batched"), "peak_rss_mb": record.get("peak_rss_mb"),
           "variants": {k: v for k, v in (record.get("variants") or {}).items() if "error" not in v}}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        row[key] = record.get(key)
    return row


def main(paths: list[str] | None = None) -> None:
    print("| set | model | img AUROC | px AUROC | AUPRO | F1-max | fit s | ms/img bs1 / batched | peak RSS MB |"
          " variants (img / px AUROC) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths or [DEFAULT]:
        for line in open(path):
            r = normalise(json.loads(line)) if line.strip() else None
            if r is None:
                continue
            variants = "; ".join(f"{k}: {_fmt(v['image_auroc'])} / {_fmt(v['pixel_auroc'])}"
                                 for k, v in (r.get("variants") or {}).items())
            print(f"| {r['category']} ({r['train_images']} train) | {r['model']} | {_fmt(r['image_auroc'])} | "
                  f"{_fmt(r['pixel_auroc'])} | {_fmt(r['aupro'])} | {_fmt(r['image_f1_max'])} | "
                  f"{_fmt(r['fit_seconds'], 1)} | {_fmt(r['ms_batch1'], 1)} / {_fmt(r['ms_batched'], 1)} | "
                  f"{_fmt(r['peak_rss_mb'], 0)} | {variants or '—'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
