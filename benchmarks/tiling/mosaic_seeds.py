"""Tiled against untiled over mosaic draws: mean ± std (over seeds) of each metric and of the paired margin.

Reads ``RESULTS/seed<S>/{untiled,tiled}/results.jsonl`` (written by ``mosaic_seeds.sh``) and prints
a Markdown table per detector: image AUROC, pixel AUROC and AUPRO untiled, tiled, and tiled −
untiled on the same mosaics (the margin's std is over the seeds' paired differences).

    python benchmarks/tiling/mosaic_seeds.py --results results/tiling --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

__all__ = ["main", "collect"]

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def collect(results: Path, seeds: list[int]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{detector: {mode: {metric: [value per seed]}}}`` from the records with status ok."""
    table: dict[str, dict[str, dict[str, list[float]]]] = {}
    for seed in seeds:
        for mode in ("untiled", "tiled"):
            path = results / f"seed{seed}" / mode / "results.jsonl"
            for line in path.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record.get("status") != "ok":
                    raise SystemExit(f"{path}: {record['detector']} did not finish ({record.get('status')}); rerun that seed")
                values = table.setdefault(record["detector"], {}).setdefault(mode, {})
                for metric in METRICS:
                    values.setdefault(metric, []).append(float(record[metric]))
    return table


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results/tiling"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    table = collect(args.results, args.seeds)
    print(f"mosaic seeds {' '.join(map(str, args.seeds))} (mean ± std over {len(args.seeds)} draws)\n")
    print("| detector | mode | image AUROC | pixel AUROC | AUPRO |")
    print("|---|---|---:|---:|---:|")
    for detector, modes in table.items():
        for mode in ("untiled", "tiled"):
            print(f"| {detector} | {mode} | " + " | ".join(_mean_std(modes[mode][m]) for m in METRICS) + " |")
        margins = [[t - u for t, u in zip(modes["tiled"][m], modes["untiled"][m])] for m in METRICS]
        print(f"| {detector} | tiled − untiled | " + " | ".join(_mean_std(values) for values in margins) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
