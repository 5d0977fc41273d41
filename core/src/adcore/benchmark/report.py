"""Tables and the Markdown report, rebuilt from the store after every invocation.

``results.md``/``.csv``/``.json`` (one row per pair, including pairs that failed, timed out or have
not run) and, with ``--report``, a page with the settings, the machine, the versions, a per-detector
summary with the published MVTec AD numbers beside it, the full table, the failures and the figures.
A pair run over several seeds (``--seeds``) is one row with ``mean ± std`` (sample standard
deviation over its finished seeds, their count in the seed column); CSV and JSON keep every run.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import platform
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adcore.benchmark.plan import BenchmarkPlan, DatasetSpec, portable_dataset
from adcore.benchmark.store import ResultStore, base_record, json_default, now, plugin_versions
from adcore.files import atomic_write_text
from adcore.tables import Column, format_cell, markdown_table

__all__ = [
    "STATUSES",
    "TABLE_COLUMNS",
    "CSV_COLUMNS",
    "SUMMARY_COLUMNS",
    "AGGREGATED",
    "collect_rows",
    "aggregate_seeds",
    "summarise",
    "results_table",
    "machine_info",
    "write_tables",
    "write_report",
]

#: statuses a run can end with (``missing`` is a planned pair with no record yet)
STATUSES = ("ok", "error", "timeout", "crashed", "missing")

# columns of the results table: (key in a row, Markdown header, format)
TABLE_COLUMNS: list[tuple[str, str, str]] = [
    ("dataset", "dataset", "s"),
    ("detector", "detector", "s"),
    ("status", "status", "s"),
    ("image_auroc", "img AUROC", ".3f"),
    ("pixel_auroc", "px AUROC", ".3f"),
    ("aupro", "AUPRO", ".3f"),
    ("image_f1_max", "F1-max", ".3f"),
    ("fit_seconds", "fit s", ".1f"),
    ("ms_per_image_batch1", "ms/img bs1", ".1f"),
    ("ms_per_image_batched", "ms/img batched", ".1f"),
    ("peak_rss_mb", "peak RSS MB", ".0f"),
    ("backbone", "backbone", "s"),
    ("input_size", "size", "s"),
    ("seed", "seed", "s"),
    ("plugin", "plugin", "s"),
]
CSV_COLUMNS = [
    "dataset", "detector", "status", "image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold",
    "threshold_f1", "fit_seconds", "ms_per_image_batch1", "ms_per_image_batched", "batch_size", "peak_rss_mb",
    "wall_seconds", "train_images", "calibration_images", "test_images", "backbone", "input_size", "seed", "device",
    "device_name", "precision", "plugin", "plugin_version",
    "adcore_version", "params", "time_limit", "error_type", "error_message", "error_stage", "finished_at", "key",
]
#: the numbers a pair over several seeds reports as mean ± std
AGGREGATED = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "threshold_f1", "fit_seconds", "fit_cpu_seconds",
              "ms_per_image_batch1", "ms_per_image_batched", "peak_rss_mb")


SUMMARY_COLUMNS = [
    ("detector", "detector", "s"), ("finished", "runs ok", "s"), ("image_auroc", "mean img AUROC", ".3f"),
    ("pixel_auroc", "mean px AUROC", ".3f"), ("aupro", "mean AUPRO", ".3f"), ("fit_seconds", "mean fit s", ".1f"),
    ("ms_per_image_batch1", "median ms/img bs1", ".1f"), ("peak_rss_mb", "max RSS MB", ".0f"),
    ("published_image_auroc", "paper MVTec img AUROC", ".3f"), ("published_pixel_auroc", "paper MVTec px AUROC", ".3f"),
    ("published_setting", "paper setting", "s"),
]
_FORMATS = {key: fmt for key, _, fmt in [*TABLE_COLUMNS, *SUMMARY_COLUMNS]}


def collect_rows(plan: BenchmarkPlan) -> list[dict[str, Any]]:
    """One row per planned pair (dataset-major, in plan order): its newest record, or ``missing``."""
    latest = ResultStore(plan.results_path).latest()
    rows = []
    for run in plan.runs:
        record = latest.get(run.key)
        if record is None:
            record = {**base_record(run), "status": "missing"}
        rows.append(record)
    return rows


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    error = row.get("error") or {}
    flat = {key: row.get(key) for key in CSV_COLUMNS}
    flat.update(error_type=error.get("type"), error_message=(error.get("message") or "").replace("\n", " ")[:500] or None,
                error_stage=error.get("stage"), adcore_version=(row.get("versions") or {}).get("adcore"),
                params=json.dumps(row.get("params", {}), sort_keys=True))
    if isinstance(flat.get("input_size"), (list, tuple)):
        flat["input_size"] = "x".join(str(v) for v in flat["input_size"])
    return flat


def _cell(row: Mapping[str, Any], key: str) -> Any:
    """A table cell: ``mean ± std`` where the row aggregates several seeds, plugin with its version."""
    value = row.get(key)
    if key == "plugin" and value:
        return f"{value} {row.get('plugin_version') or ''}".strip()
    if key == "status" and row.get("runs", 1) > 1 and row.get("runs_ok") != row.get("runs"):
        return f"{value} ({row.get('runs_ok')}/{row.get('runs')} seeds)"
    if key == "seed" and row.get("seeds"):
        return f"{','.join(str(s) for s in row['seeds'])} (n={len(row['seeds'])})"
    std = row.get(f"{key}_std")
    if std is not None and value is not None:
        fmt = _FORMATS.get(key, ".3f")
        return f"{format_cell(value, fmt)} ± {format_cell(std, fmt)}"
    return value


def results_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column] | None = None) -> str:
    """The results table in GitHub Markdown (``—`` where a value is undefined or the run did not finish)."""
    return markdown_table(rows, columns or TABLE_COLUMNS, cell=_cell)


def aggregate_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per pair: the runs of one (dataset, detector, parameters but the seed) combined.

    A pair with one run keeps its row as it is (the same object; the input list itself is returned
    when no pair has several seeds). A pair with several: the first finished run's row (its
    artifacts, settings) with each of :data:`AGGREGATED` replaced by the mean over the finished
    seeds, plus ``KEY_std`` (sample standard deviation, ``None`` from one value) and ``KEY_n``;
    ``seeds`` lists every seed, ``runs``/``runs_ok`` count the runs and those that finished, and
    ``status`` is ``ok`` when at least one finished.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        params = {key: value for key, value in (row.get("params") or {}).items() if key != "seed"}
        identity = (row.get("dataset"), row.get("detector"), json.dumps(params, sort_keys=True, default=str),
                    row.get("batch_size"), json.dumps(row.get("options"), sort_keys=True, default=str))
        groups.setdefault(identity, []).append(row)
    if all(len(members) == 1 for members in groups.values()):
        return rows
    return [members[0] if len(members) == 1 else _combine(members) for members in groups.values()]


def _combine(members: list[dict[str, Any]]) -> dict[str, Any]:
    finished = [m for m in members if m.get("status") == "ok"]
    row = dict(finished[0] if finished else members[0])
    row.update(seeds=[m.get("seed") for m in members], runs=len(members), runs_ok=len(finished),
               status="ok" if finished else members[0].get("status"))
    for key in AGGREGATED:
        values = [float(m[key]) for m in finished if isinstance(m.get(key), (int, float)) and not isinstance(m[key], bool)
                  and math.isfinite(m[key])]
        row[key] = statistics.fmean(values) if values else None
        row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        row[f"{key}_n"] = len(values)
    return row


def summarise(rows: list[dict[str, Any]], detectors: list[str], published: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-detector means over the datasets where the run finished, beside the published MVTec AD numbers."""
    summary = []
    for name in detectors:
        mine = [r for r in rows if r["detector"] == name]
        ok = [r for r in mine if r.get("status") == "ok"]

        def mean(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
            return sum(values) / len(values) if values else None

        def median(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            values = sorted(r[key] for r in ok if isinstance(r.get(key), (int, float)))
            return values[len(values) // 2] if values else None

        paper = published.get(name, {}) if isinstance(published, dict) else {}
        summary.append({
            "detector": name, "finished": f"{len(ok)}/{len(mine)}",
            "image_auroc": mean("image_auroc"), "pixel_auroc": mean("pixel_auroc"), "aupro": mean("aupro"),
            "fit_seconds": mean("fit_seconds"), "ms_per_image_batch1": median("ms_per_image_batch1"),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in ok if r.get("peak_rss_mb")), default=None),
            "published_image_auroc": paper.get("image_auroc"), "published_pixel_auroc": paper.get("pixel_auroc"),
            "published_setting": paper.get("setting") or paper.get("backbone"),
        })
    return summary




def machine_info() -> dict[str, Any]:
    """The machine the runs are on (CPU model, cores, memory, OS, Python, torch)."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "hostname": platform.node()}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_tables(plan: BenchmarkPlan, rows: list[dict[str, Any]] | None = None) -> dict[str, Path]:
    """``results.md``, ``results.csv`` and ``results.json`` in ``plan.out``."""
    rows = collect_rows(plan) if rows is None else rows
    pairs = aggregate_seeds(rows)
    plan.out.mkdir(parents=True, exist_ok=True)
    paths = {"md": plan.out / "results.md", "csv": plan.out / "results.csv", "json": plan.out / "results.json"}
    versions = plugin_versions()
    header = [f"# {plan.title}: results", "",
              f"Generated {now()} by `{plan.settings.get('command', '')}`.", "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
              results_table(pairs), ""]
    if pairs is not rows:
        header += ["Every run (one row per seed):", "", results_table(rows), ""]
    atomic_write_text(paths["md"], "\n".join(header))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(_csv_row(row))
    atomic_write_text(paths["csv"], buffer.getvalue())
    document = {"title": plan.title, "generated_at": now(), "machine": machine_info(), "versions": versions,
                "settings": plan.settings, "datasets": [portable_dataset(d) for d in plan.datasets], "detectors": plan.detectors,
                "plugin_failures": plan.plugin_failures,
                "summary": summarise(pairs, plan.detectors, plan.published), "runs": rows}
    if pairs is not rows:
        document["pairs"] = pairs  # one row per pair: mean and sample std over its seeds
    atomic_write_text(paths["json"], json.dumps(document, indent=1, default=json_default))
    return paths


def write_report(plan: BenchmarkPlan, rows: list[dict[str, Any]], figures: list[Path], path: Path) -> Path:
    """A Markdown page: settings, machine, versions, summary with published numbers, full table, failures, figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pairs = aggregate_seeds(rows)
    machine = machine_info()
    versions = plugin_versions()
    counts = collections.Counter(r.get("status") for r in rows)
    lines = [f"# {plan.title}", ""]
    for note in plan.notes:
        lines += [note, ""]
    lines += ["## How it was run", "", "```bash", plan.settings.get("command", ""), "```", "",
              f"- Machine: {machine.get('cpu', 'unknown CPU')}, {machine.get('usable_cores', machine.get('cpu_count'))} "
              f"usable cores, {machine.get('memory_gb', '?')} GB RAM; {machine.get('platform')}; Python "
              f"{machine.get('python')}, torch {machine.get('torch', '?')}.",
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
              f"- Every run: fit on the good training images less a held-out fifth → threshold calibrated on that "
              f"held-out fifth (1 % false-positive target; no test data) → test-set metrics; its own subprocess; "
              f"time limits "
              f"{_limits_text(plan.settings.get('time_limits', {}))}; batch size {plan.settings.get('batch_size')}; "
              f"input size {plan.settings.get('input_size') or 'each detector default'}; {_seed_text(plan.settings)}.",
              f"- Runs: {len(rows)} planned; " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) + "."]
    started = sorted(r["started_at"] for r in rows if r.get("started_at"))
    finished = sorted(r["finished_at"] for r in rows if r.get("finished_at"))
    if started and finished:
        lines.append(f"- Run window: first run started {started[0]}, last run finished {finished[-1]} (UTC).")
    lines.append("")
    params = plan.settings.get("params", {})
    if params:
        lines += ["Parameters per detector (everything else at the detector's defaults):", ""]
        lines += [f"- `{name}`: `{json.dumps(p, sort_keys=True)}`" for name, p in params.items()]
        lines.append("")
    overrides = plan.settings.get("dataset_params", {})
    if overrides:
        lines += ["Budgets for single data sets (`DETECTOR@DATASET`, `*` = every detector), applied on top:", ""]
        lines += [f"- `{key}`: `{json.dumps(p, sort_keys=True)}`" for key, p in overrides.items()]
        lines.append("")
    options = plan.settings.get("options", {})
    if options:
        lines += ["Measured besides the metrics (`curve`, `variants`, ... see the usage notes at the end):", ""]
        lines += [f"- `{name}`: `{json.dumps(o, sort_keys=True)}`" for name, o in options.items()]
        lines.append("")
    lines += ["Datasets:", ""] + [f"- {_dataset_line(d, rows)}" for d in plan.datasets] + [""]
    if plan.plugin_failures:
        lines += ["Plugins that failed to load (their detectors are absent):", ""]
        lines += [f"- {f['distribution']} {f['version']} at stage {f['stage']}: {f['error']}" for f in plan.plugin_failures]
        lines.append("")
    lines += ["## Summary per detector", "",
              "Means over the datasets where the run finished (`runs ok`). The `paper` columns are the "
              "method's own published MVTec AD averages over its 15 categories, with the paper's larger backbone "
              "and resolution: context for the order of magnitude, not the same test.", "",
              results_table(summarise(pairs, plan.detectors, plan.published), SUMMARY_COLUMNS), ""]
    sources = [(name, entry) for name, entry in (plan.published or {}).items() if name in plan.detectors
               and isinstance(entry, dict) and entry.get("source")]
    if sources:
        lines += ["Published numbers from:", ""]
        lines += [f"- `{name}`: {entry['source']}" + (f" ({entry['note']})" if entry.get("note") else "")
                  for name, entry in sources]
        lines.append("")
    if pairs is not rows:
        lines += [f"Seeds: {', '.join(str(s) for s in plan.settings.get('seeds') or [])}. Where a pair ran with several "
                  "seeds its cells show the mean ± the sample standard deviation over the seeds that finished "
                  "(`n` in the seed column); figures with per-image data (ROC, scores, maps) show its first seed.", ""]
    lines += ["## Image AUROC per data set", "", _pivot(pairs, plan, "image_auroc"), "",
              "Pixel AUROC:", "", _pivot(pairs, plan, "pixel_auroc"), ""]
    lines += ["## All runs", "", results_table(pairs), ""]
    if pairs is not rows:
        lines += ["Every run (one row per seed):", "", results_table(rows), ""]
    failed = [r for r in rows if r.get("status") not in ("ok",)]
    if failed:
        lines += ["## Runs that did not finish", "", "| dataset | detector | status | stage | error |", "|---|---|---|---|---|"]
        for r in failed:
            error = r.get("error") or {}
            message = (error.get("message") or ("not run yet" if r.get("status") == "missing" else "")).replace("\n", " ")
            if r.get("plugin"):
                message += f" [{r['plugin']} {r.get('plugin_version') or ''}]".rstrip()
            cells = [r["dataset"], r["detector"], r["status"], error.get("stage", "—"),
                     f"{error.get('type') + ': ' if error.get('type') else ''}{message[:300]}"]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    if figures:
        from adcore.benchmark.figures import figure_caption

        lines += ["## Figures", ""]
        slugs = {d.name: re.sub(r"[^A-Za-z0-9_.-]+", "-", d.name).strip("-") for d in plan.datasets}
        general = [f for f in figures if not any(f.stem.endswith(f"_{slug}") for slug in slugs.values())]
        groups = [("Overview", general)] + [(name, [f for f in figures if f.stem.endswith(f"_{slug}")])
                                            for name, slug in slugs.items()]
        for heading, members in groups:
            if not members:
                continue
            lines += [f"### {heading}", ""]
            for figure in members:
                relative = os.path.relpath(figure, path.parent)
                lines += [f"![{figure.stem}]({relative})", "", f"*{figure_caption(figure.stem)}*", ""]
    lines += [USAGE_MARKDOWN]
    atomic_write_text(path, "\n".join(lines))
    return path


USAGE_MARKDOWN = """## Running `adcore benchmark` yourself

```bash
adcore benchmark --model patchcore padim --param patchcore.coreset_ratio=0.05 \\
    --dataset /data/mvtec:bottle /data/mvtec:cable --time-limit 900 --out results/mine
adcore benchmark --model all --quick --dataset /data/mvtec --input-size 128     # smoke run, every category
adcore benchmark --model vae stfpm --seeds 0,1,2 --curve 5 --dataset /data/mvtec:bottle   # mean ± std, learning curves
adcore benchmark --config benchmarks/config.json --report-only                  # redraw tables and figures
bash benchmarks/ad-recon/run_all.sh bottle --seeds 0,1,2                        # a plugin page's measurements
```

- Detectors: names, `all`, a category (`memory_based`), a glob (`*_ae`) or, with `--allow-import` (it runs
  that module's code; a configuration file cannot grant it), an importable `package.module:Class` that is a
  detector class. Parameters: `--param DETECTOR.KEY=VALUE` (values as in `adcore train -p`) or `KEY=VALUE` for
  all; in a JSON/TOML `--config`, `params` maps `DETECTOR`, `*`, `DETECTOR@DATASET` or `*@DATASET` to parameters.
- Data sets: `ROOT:CATEGORY`, a category folder, a parent of category folders (every category), or
  `folder:train=DIR,good=DIR,defect=DIR,masks=DIR` for generic folders; `--data-root` anchors relative paths.
- `--seeds 0,1,2` runs every pair once per seed (the seed is part of a pair's identity); tables, figures and
  the report show mean ± sample standard deviation over the seeds that finished, with their count.
- What a run measures besides the metrics (command line or configuration): `--curve N` (test-set metrics
  every N training epochs, through `adcore.training.on_epoch`; not counted in the fit time), `--image-size`
  (data and masks at another size than the model's input), `--calibration-fraction` (0: fit on every good
  image, no threshold), `variants` (the fitted detector re-scored with other settings, no refit),
  `--record-attribute NAME` (a fitted attribute), `--preimport MODULE` (import time kept out of the fit),
  `--cpu-latency`. Every record also holds the fit's CPU seconds, the peak RSS after the fit and the loss
  and seconds per epoch of every training loop.
- Every pair runs in its own process (`--time-limit SECONDS` or `DETECTOR=SECONDS`, start-up included); a
  failure or time-out is recorded and the rest continue. Each finished run is added to `OUT/results.jsonl`
  at once; running the same command again skips recorded pairs (`--retry-failed`, `--fresh`).
- Outputs: `OUT/results.md|csv|json`, `OUT/figures/*.png` (or `--figures`), `--report PAGE.md`, and per run
  `OUT/runs/*.npz` (scores, labels, threshold, sample maps) from which the figures are drawn.
- `--lock FILE` takes a file lock around each run so other measurements on a shared machine interleave
  between runs instead of during one; `--jobs N` runs N pairs at once (timings are then not comparable).
- The plugin pages' measurements are configurations too: `benchmarks/ad-*/config.json`, run by
  `benchmarks/ad-*/run_all.sh [GROUP] [OPTIONS]`; their `table.py` (`report.py` for ad-flow) prints the
  page's tables from the records.
"""


def _pivot(rows: list[dict[str, Any]], plan: BenchmarkPlan, key: str) -> str:
    """Detectors × data sets of one metric (unfinished runs by their status)."""
    lookup = {(r["detector"], r["dataset"]): r for r in rows}
    names = [d.name for d in plan.datasets]
    lines = ["| detector | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for detector in plan.detectors:
        cells = []
        for name in names:
            row = lookup.get((detector, name), {})
            cells.append(format_cell(_cell(row, key), ".3f") if row.get("status") == "ok" else (row.get("status") or "—"))
        lines.append(f"| {detector} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_text(settings: dict[str, Any]) -> str:
    if settings.get("seeds"):
        return "seeds " + ", ".join(str(s) for s in settings["seeds"]) + " (one run each)"
    return f"seed {settings.get('seed') if settings.get('seed') is not None else 'each detector default (0)'}"


def _limits_text(limits: dict[str, float]) -> str:
    if not limits:
        return "none"
    default = limits.get("*")
    others = [f"{k} {v:g} s" for k, v in limits.items() if k != "*"]
    return (f"{default:g} s per run" if default else "") + (f" ({', '.join(others)})" if others else "")


def _dataset_line(dataset: DatasetSpec, rows: list[dict[str, Any]]) -> str:
    text = dataset.describe().replace(str(Path.cwd()) + os.sep, "")
    done = next((r for r in rows if r.get("dataset") == dataset.name and r.get("status") == "ok"), None)
    if done is not None:
        fit, held, test = done.get("train_images"), done.get("calibration_images"), done.get("test_images")
        text += f" — {fit} training images fitted, {held} held out for the threshold, {test} test images"
    return text


