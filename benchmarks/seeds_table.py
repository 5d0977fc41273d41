"""Print mean ± std over seeds (issue 23) of benchmark records as Markdown table rows.

    python benchmarks/seeds_table.py benchmarks/ad-flow/results/benchmark/results.jsonl [more.jsonl ...]

One row per (data set, detector, parameters but the seed) with at least one finished run: the seeds
that finished, image / pixel AUROC and AUPRO as mean ± sample std (n − 1, as ``adcore benchmark``'s
tables), and each seed's image / pixel AUROC. Only accuracy: the records of ``benchmarks/seeds.sh``
run without the measurement lock, so their seconds are not timings.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

__all__ = ["main", "rows"]

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (one seed)"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def rows(paths: list[str]) -> list[str]:
    """The table rows, newest record per run key, finished runs only."""
    latest: dict[str, dict] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                latest[record["key"]] = record
    groups: dict[tuple, list[dict]] = {}
    for record in latest.values():
        if record.get("status") != "ok":
            continue
        params = {k: v for k, v in (record.get("params") or {}).items() if k != "seed"}
        groups.setdefault((record["dataset"], record["detector"], json.dumps(params, sort_keys=True)), []).append(record)
    out = []
    for (dataset, detector, _), members in sorted(groups.items()):
        members.sort(key=lambda r: r.get("seed", 0))
        cells = [_mean_std([float(m[k]) for m in members if isinstance(m.get(k), (int, float))]) for k in METRICS]
        per_seed = " · ".join(f"{m['seed']}: {m['image_auroc']:.3f} / {m['pixel_auroc']:.3f}" for m in members)
        seeds = ",".join(str(m.get("seed")) for m in members)
        out.append(f"| {dataset} | {detector} | {seeds} | {' | '.join(cells)} | {per_seed} |")
    return out


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    print("| set | model | seeds | img AUROC | px AUROC | AUPRO | per seed (img / px) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows(paths):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
