"""Print mean ± std over seeds (issue 23) of benchmark records as Markdown table rows.

    .venv/bin/python benchmarks/seeds_table.py benchmarks/ad-flow/results/benchmark/results.jsonl [more.jsonl ...]
    .venv/bin/python benchmarks/seeds_table.py --set PA_ benchmarks/ad-stat/results/benchmark/results.jsonl  # the PIPED rows
    .venv/bin/python benchmarks/seeds_table.py --fill docs/ad-stat.md benchmarks/ad-stat/results/benchmark/results.jsonl

``--fill PAGE`` rewrites, in place, every block of PAGE that lies between ``<!-- seeds-table PREFIX -->``
and ``<!-- /seeds-table -->`` with the table of the sets named ``PREFIX…`` (the pages' tables over
seeds are regenerated so, never typed).

One row per (data set, detector, parameters but the seed) with at least one finished run: the seeds
that finished, image / pixel AUROC and AUPRO as mean ± sample std (n − 1, as ``adcore benchmark``'s
tables), and each seed's image / pixel AUROC. Only accuracy: the records of ``benchmarks/seeds.sh``
run without the measurement lock, so their seconds are not timings.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from adcore.files import atomic_write_text

__all__ = ["main", "rows", "table", "fill"]

HEADER = ("| set | model | seeds | img AUROC | px AUROC | AUPRO | per seed (img / px) |\n"
          "|---|---|---|---|---|---|---|")
BLOCK = re.compile(r"<!-- seeds-table (\S+) -->\n.*?<!-- /seeds-table -->", re.S)

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f} (one seed)"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def rows(paths: list[str], sets: tuple[str, ...] = ()) -> list[str]:
    """The table rows, newest record per run key, finished runs only; ``sets``: data-set name
    prefixes to keep (all when empty)."""
    latest: dict[str, dict] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                latest[record["key"]] = record
    groups: dict[tuple, list[dict]] = {}
    for record in latest.values():
        if record.get("status") != "ok" or (sets and not record["dataset"].startswith(sets)):
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


def table(paths: list[str], sets: tuple[str, ...] = ()) -> str:
    """The whole Markdown table: header and rows."""
    return "\n".join([HEADER, *rows(paths, sets)])


def fill(page: Path, paths: list[str]) -> int:
    """Rewrite ``page``'s seeds-table blocks from ``paths``; returns how many blocks were filled."""
    text = page.read_text(encoding="utf-8")
    new, count = BLOCK.subn(lambda m: f"<!-- seeds-table {m.group(1)} -->\n{table(paths, (m.group(1),))}\n<!-- /seeds-table -->", text)
    if count:  # an interrupted fill leaves the page whole
        atomic_write_text(page, new)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", help="results.jsonl files of adcore benchmark")
    parser.add_argument("--set", action="append", default=[], help="keep data sets whose name starts so (repeatable)")
    parser.add_argument("--fill", type=Path, help="a Markdown page whose seeds-table blocks to rewrite")
    args = parser.parse_args(argv)
    missing = [path for path in args.records if not Path(path).is_file()]
    if missing:
        parser.error(f"no records file {', '.join(missing)} (adcore benchmark writes OUT/results.jsonl)")
    if args.fill is not None:
        if not fill(args.fill, args.records):
            parser.error(f"{args.fill} has no <!-- seeds-table PREFIX --> ... <!-- /seeds-table --> block")
        return 0
    print(table(args.records, tuple(args.set)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
