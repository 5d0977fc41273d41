"""Learning-curve plot and Markdown table of docs/ad-flow.md from benchmark records.

    .venv/bin/python benchmarks/ad-flow/report.py benchmarks/ad-flow/results/benchmark/results.jsonl \
        --plot docs/img/ad-flow-learning-curves.png
    .venv/bin/python benchmarks/ad-flow/report.py benchmarks/ad-flow/results/*.json --plot PNG   # the historical record

Reads the ``results.jsonl`` of ``adcore benchmark --config benchmarks/ad-flow/config.json`` (one
record per line) and also the one-record JSON files the former ``run.py`` harness wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["main", "normalise", "read_records"]


def _fmt(value: object, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def normalise(record: dict[str, Any]) -> dict[str, Any] | None:
    """A benchmark record in the harness's field names (a harness record as it is; unfinished runs: None)."""
    if "format" not in record:
        return record
    if record.get("status") != "ok":
        return None
    attributes = record.get("attributes") or {}
    loops = record.get("training") or [{}]
    loss = (attributes.get("history_") or {}).get("loss") or loops[-1].get("loss") or []
    train_s = (attributes.get("timing_") or {}).get("train_s")
    row = {"model": record["detector"], "category": record["dataset"], "train_images": record.get("train_images"),
           "params": record.get("effective_params") or record.get("params", {}), "loss": loss, "epochs": len(loss),
           "fit_s": record.get("fit_seconds"),
           "train_s_per_epoch": train_s / max(len(loss), 1) if train_s is not None else None,
           "ms_per_image_bs1": record.get("ms_per_image_batch1"), "ms_per_image_batched": record.get("ms_per_image_batched"),
           "peak_rss_mb": record.get("peak_rss_mb")}
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max"):
        row[key] = record.get(key)
    return row


def read_records(paths: list[str]) -> list[dict[str, Any]]:
    """Every finished run in ``paths`` (``.jsonl``: one record a line; ``.json``: one record)."""
    found = []
    for path in paths:
        text = Path(path).read_text()
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.endswith(".jsonl") \
            else [json.loads(text)]
        found.extend(row for record in records if (row := normalise(record)) is not None)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", nargs="+")
    parser.add_argument("--plot", required=True)
    args = parser.parse_args()
    records = read_records(args.records)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in records})
    figure, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        for record in (r for r in records if r["model"] == model):
            loss = record["loss"]
            label = f"{record['category']} (batch {record['params']['batch_size']})"
            axis.plot(range(1, len(loss) + 1), loss, marker="o", markersize=3, label=label)
        axis.set_title(f"{model}: training loss per epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel("NLL" + (" per feature dimension" if model == "differnet" else " (sum over levels)"))
        # DifferNet's first epochs on small sets reach 1e7..1e12 per dimension before settling near 0
        axis.set_yscale("symlog", linthresh=1.0)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.plot, dpi=110)

    print("| set | model | epochs (batch) | img AUROC | px AUROC | AUPRO | F1-max | fit s (s/epoch) | ms/img bs1 / batched | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(records, key=lambda r: (r["category"], r["model"])):
        print(f"| {r['category']} ({r['train_images']} train) | {r['model']} | {r['epochs']} ({r['params']['batch_size']}) | {_fmt(r['image_auroc'])} | "
              f"{_fmt(r['pixel_auroc'])} | {_fmt(r['aupro'])} | {_fmt(r['image_f1_max'])} | "
              f"{r['fit_s']:.1f} ({_fmt(r['train_s_per_epoch'], 1)}) | {r['ms_per_image_bs1']:.0f} / "
              f"{r['ms_per_image_batched']:.0f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
