"""Markdown tables from the JSON lines written by run.py: ``python benchmarks/ad-stat/table.py results.jsonl``."""

from __future__ import annotations

import json
import sys

__all__ = ["main"]


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    print("| set (train imgs) | model | img AUROC | px AUROC | AUPRO | F1-max | fit s (per epoch) | fit CPU s "
          "| ms/img bs1 / bs8 | CPU ms/img bs1 / bs8 | peak RSS MB after fit / whole run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        model = r["model"] + (f" ({r['epochs_run']} ep)" if r.get("epochs_run") else "")
        fit = _f(r["fit_seconds"], 1) + (f" ({_f(r['epoch_seconds'], 1)})" if r.get("epoch_seconds") else "")
        print(f"| {r['category']} ({r['train_images']}) | {model} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} "
              f"| {_f(r['aupro'])} | {_f(r['image_f1_max'])} | {fit} | {_f(r['fit_cpu_seconds'], 1)} "
              f"| {_f(r['ms_batch1'], 1)} / {_f(r['ms_batched'], 1)} | {_f(r['cpu_ms_batch1'], 1)} / {_f(r['cpu_ms_batched'], 1)} "
              f"| {r['peak_rss_mb_fit']:.0f} / {r['peak_rss_mb']:.0f} |")
    curves = [r for r in rows if r.get("curve")]
    for r in curves:
        print(f"\nSTFPM on {r['category']}, accuracy against epochs (same run, evaluated between segments):\n")
        print("| epochs | train loss | img AUROC | px AUROC | AUPRO |")
        print("|---|---|---|---|---|")
        for point in r["curve"]:
            print(f"| {point['epochs']} | {point['loss']:.4f} | {_f(point['image_auroc'])} | {_f(point['pixel_auroc'])} "
                  f"| {_f(point['aupro'])} |")
        print(f"| {r['epochs_run']} | {r['final_loss']:.4f} | {_f(r['image_auroc'])} | {_f(r['pixel_auroc'])} "
              f"| {_f(r['aupro'])} |")


if __name__ == "__main__":
    main()
