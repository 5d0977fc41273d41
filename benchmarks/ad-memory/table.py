"""Markdown tables for docs/ad-memory.md from benchmark records.

    .venv/bin/python benchmarks/ad-memory/table.py                      # benchmarks/ad-memory/results/benchmark*/results.jsonl
    .venv/bin/python benchmarks/ad-memory/table.py benchmarks/ad-memory/results/session3.jsonl   # the historical record

Reads the ``results.jsonl`` of ``adcore benchmark --config benchmarks/ad-memory/config.json`` (and
``scaling.json``), and also the JSON lines the former ``run.py`` harness wrote (the committed
``results/session*.jsonl``), so the tables of earlier sessions can still be rebuilt. The backbone's
own forward time is not part of a benchmark record (``latency_breakdown.py`` measures it): ``—``.
"""

from __future__ import annotations

import glob
import json
import sys
from typing import Any

__all__ = ["main", "normalise"]

DEFAULT = "benchmarks/ad-memory/results/benchmark*/results.jsonl"


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _num(value: object, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    """A benchmark record in the harness's field names (a harness line as it is; unfinished runs: None)."""
    if "format" not in record:
        return record
    if record.get("status") != "ok":
        return None
    attributes = record.get("attributes") or {}
    row = {"category": record["dataset"], "model": record["detector"], "train_images": record.get("train_images"),
           "threads": record.get("torch_threads"), "fit_seconds": record.get("fit_seconds"),
           "rss_after_fit_mb": record.get("peak_rss_mb_fit"), "peak_rss_mb": record.get("peak_rss_mb"),
           "ms_per_image_batch1": record.get("ms_per_image_batch1"),
           "ms_per_image_batched": record.get("ms_per_image_batched"),
           "backbone_ms_batch1": None, "backbone_ms_batched": None}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        row[key] = record.get(key)
    if "coreset_stats_" in attributes:
        row["coreset"] = attributes["coreset_stats_"]
        row["bank"] = (attributes.get("memory_bank_") or {}).get("shape", [None])
    for label, found in (record.get("variants") or {}).items():
        key, _, value = label.partition("=")
        if key == "index" and "error" not in found:
            row[f"index_{json.loads(value)}"] = found
    return row


def main(paths: list[str] | None = None) -> None:
    paths = paths or sorted(glob.glob(DEFAULT))
    rows = [row for path in paths for line in open(path) if line.strip() and (row := normalise(json.loads(line)))]
    print("| set (train) | model | threads | img AUROC | px AUROC | AUPRO | F1-max | fit s | ms/img bs1 / bs8 | backbone ms bs1 / bs8 | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("image_auroc") is None:  # fit-only (scaling) runs appear in the second table only
            continue
        print(f"| {r['category']} ({r['train_images']}) | {r['model']} | {r['threads']} | {_fmt(r['image_auroc'])} | {_fmt(r['pixel_auroc'])} | "
              f"{_fmt(r['aupro'])} | {_fmt(r['image_f1_max'])} | {r['fit_seconds']:.1f} | "
              f"{_num(r['ms_per_image_batch1'])} / {_num(r['ms_per_image_batched'])} | "
              f"{_num(r['backbone_ms_batch1'])} / {_num(r['backbone_ms_batched'])} | {r['peak_rss_mb']:.0f} |")
    coreset = [r for r in rows if r.get("model") == "patchcore" and r.get("coreset")]
    if coreset:
        print()
        print("| set (train) | threads | patches | bank | coreset s | it/s | touched/step | fit s | RSS after fit MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in coreset:
            c = r["coreset"]
            print(f"| {r['category']} ({r['train_images']}) | {r['threads']} | {c['patches_used']} | {r['bank'][0]} | {_fmt(c.get('seconds'), 1)} | "
                  f"{_fmt(c.get('iterations_per_second'), 0)} | {_fmt(c.get('touched_fraction'), 3)} | {r['fit_seconds']:.1f} | "
                  f"{_num(r['rss_after_fit_mb'])} |")
    extra = [(r, kind) for r in rows for kind in ("flat", "ivf", "hnsw") if f"index_{kind}" in r]
    if extra:
        print()
        print("| set | index | img AUROC | px AUROC | AUPRO | ms/img bs1 / bs8 |")
        print("|---|---|---|---|---|---|")
        for r, kind in extra:
            e = r[f"index_{kind}"]
            print(f"| {r['category']} | {kind} | {_fmt(e['image_auroc'])} | {_fmt(e['pixel_auroc'])} | {_fmt(e['aupro'])} | "
                  f"{e['ms_per_image_batch1']:.0f} / {e['ms_per_image_batched']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
