"""``adcore benchmark``'s command line: :func:`add_arguments`, :func:`run_cli` and ``python -m`` :func:`main`."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

from adcore.benchmark.plan import DEFAULT_TIME_LIMIT, build_plan
from adcore.benchmark.report import STATUSES, aggregate_seeds, collect_rows, write_report, write_tables
from adcore.benchmark.runner import RunOutcome, run_benchmark
from adcore.benchmark.store import ResultStore
from adcore.benchmark.worker import run_worker
from adcore.commands.options import add_device_options
from adcore.errors import AdcoreError
from adcore.process import prepare_process

__all__ = ["add_arguments", "add_cli", "run_cli", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``adcore benchmark`` option to ``parser`` (the CLI's command module and ``python -m`` use it)."""
    parser.add_argument("--config", help="JSON or TOML file with models, params, datasets, time limits, output paths "
                                         "(command-line options override it)")
    parser.add_argument("--model", "-m", nargs="+", action="extend", metavar="NAME",
                        help="detectors: names, 'all', a category, a glob, or module:Class (default: all)")
    parser.add_argument("--exclude", nargs="+", action="extend", metavar="GLOB", help="detectors to leave out")
    parser.add_argument("--param", "-p", action="append", metavar="DETECTOR.KEY=VALUE",
                        help="a constructor parameter (value parsed as JSON); KEY=VALUE applies to every detector")
    parser.add_argument("--dataset", "-d", nargs="+", action="extend", metavar="SPEC",
                        help="ROOT:CATEGORY, a category folder, a parent of category folders, or "
                             "folder:train=DIR,good=DIR,defect=DIR[,masks=DIR]")
    parser.add_argument("--data-root", help="folder that relative dataset paths start from")
    parser.add_argument("--out", "-o", help="output folder for results.jsonl, tables, runs/ and figures "
                                            "(default results/benchmark)")
    parser.add_argument("--report", help="also write a Markdown report page here (figures linked relative to it)")
    parser.add_argument("--figures", help="folder for the PNG figures (default OUT/figures)")
    parser.add_argument("--published", help="JSON of published numbers per detector for the summary's comparison column")
    parser.add_argument("--quick", action="store_true", help="each detector's card quick_params (a small smoke budget); "
                                                             "--input-size overrides their size")
    parser.add_argument("--input-size", type=int, help="input size for every detector (default: config, else each default)")
    parser.add_argument("--seed", type=int, help="seed for every detector")
    add_device_options(parser)  # --device/--precision for every detector; --workers: decoding processes per run
    parser.add_argument("--seeds", metavar="S,S,...", help="run every pair once per seed (e.g. 0,1,2); tables and "
                                                         "figures show mean ± std over the seeds")
    parser.add_argument("--allow-import", action="store_true",
                        help="allow module:Class detectors that are not registered (imports and runs that module's "
                             "code: only for code you trust; a configuration file cannot grant this)")
    parser.add_argument("--curve", type=int, metavar="EPOCHS",
                        help="evaluate the test set every EPOCHS epochs of training (a learning curve in each record; "
                             "that time is not counted in fit seconds)")
    parser.add_argument("--image-size", type=int, help="load the data (and score the maps against the masks) at this "
                                                       "size instead of each detector's input size")
    parser.add_argument("--calibration-fraction", type=float,
                        help="share of the good training images held out for the threshold (default 0.2; 0 fits on "
                             "all of them and sets no threshold)")
    parser.add_argument("--record-attribute", dest="record_attributes", action="append", metavar="NAME",
                        help="also record this fitted attribute (e.g. coreset_stats_, timing_; tensors by shape)")
    parser.add_argument("--preimport", action="append", metavar="MODULE",
                        help="import MODULE before building the detector and record its import seconds (e.g. timm)")
    parser.add_argument("--cpu-latency", action="store_true", help="also record CPU milliseconds per image (all threads)")
    parser.add_argument("--batch-size", type=int, help="batch size for fit, evaluation and batched latency (default 8)")
    parser.add_argument("--max-train", type=int, help="cap training images per dataset (evenly spaced); test sets stay full")
    parser.add_argument("--time-limit", nargs="+", action="extend", metavar="SECONDS|DETECTOR=SECONDS",
                        help=f"wall-clock budget per run, including start-up (default {DEFAULT_TIME_LIMIT:g} s)")
    parser.add_argument("--lock", help="flock this file around each run (e.g. /tmp/adcore-bench.lock) so other "
                                       "measurements on the machine interleave between runs, never during one")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's own choice)")
    parser.add_argument("--jobs", "-j", type=int, help="runs at once (default 1: timings are only honest one at a time)")
    parser.add_argument("--fresh", action="store_true", help="redo every pair, even those already recorded")
    parser.add_argument("--retry-failed", action="store_true", help="redo pairs recorded as error, timeout or crashed")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild tables, figures and report")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (and what is already recorded) and exit")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--fail-on-error", action="store_true", help="exit 1 when any run failed, timed out or crashed")
    scale = parser.add_argument_group("scale-out (docs/scale-out.md; needs the ray extra: pip install 'adcore[ray]')")
    scale.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local: worker processes on this machine (--jobs at once); ray: one Ray task per pair, "
                            "as many at once as the cluster's resources allow, records stored here")
    scale.add_argument("--address", help="with --executor ray: the Ray cluster to join (default: a local Ray)")
    scale.add_argument("--cpus-per-run", type=float, default=1.0, help="with --executor ray: CPUs per pair (default 1)")
    scale.add_argument("--gpus-per-run", type=float, default=0.0, help="with --executor ray: GPUs per pair (default 0)")


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``benchmark`` sub-command to an ``argparse`` sub-parsers object; sets ``func``."""
    parser = subparsers.add_parser(
        "benchmark", help="measure detectors × datasets: tables (md/csv/json) and plots",
        description="Fit, calibrate and evaluate every detector on every dataset, each in its own process; resumable. "
                    "See docs/benchmarks.md.")
    add_arguments(parser)
    parser.set_defaults(func=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """The ``adcore benchmark`` handler: returns the exit code."""
    try:
        plan = build_plan(args)
    except (ValueError, KeyError, OSError, AdcoreError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"adcore benchmark: {message}", file=sys.stderr)
        return 2
    if args.dry_run:
        latest = ResultStore(plan.results_path).latest()
        for run in plan.runs:
            status = latest.get(run.key, {}).get("status", "pending")
            options = f" options {json.dumps(run.options, sort_keys=True)}" if run.options else ""
            print(f"{run.dataset.name:24s} {run.detector:20s} {status:8s} limit {run.time_limit:g}s "
                  f"{json.dumps(run.params, sort_keys=True)}{options}")
        return 0
    outcome = RunOutcome()
    if not args.report_only:
        if getattr(args, "executor", "local") == "ray":
            from adcore.scale import ClusterOptions, run_benchmark_on_ray

            outcome = run_benchmark_on_ray(plan, fresh=args.fresh, retry_failed=args.retry_failed,
                                           cluster=ClusterOptions(address=args.address),
                                           cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
        else:
            outcome = run_benchmark(plan, fresh=args.fresh, retry_failed=args.retry_failed)
    rows = collect_rows(plan)
    paths = write_tables(plan, rows)
    figures: list[Path] = []
    if not args.no_plots:
        from adcore.benchmark.figures import make_figures

        figures = make_figures(aggregate_seeds(rows), plan.out, plan.figures or plan.out / "figures", datasets=[d.name for d in plan.datasets],
                               detectors=plan.detectors)
    if plan.report is not None:
        paths["report"] = write_report(plan, rows, figures, plan.report)
    counts = collections.Counter(r.get("status") for r in rows)
    print("adcore benchmark: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s]) +
          "; wrote " + ", ".join(str(p) for p in paths.values()) + (f" and {len(figures)} figure(s)" if figures else ""),
          file=sys.stderr)
    if outcome.interrupted:
        return 130
    if args.fail_on_error and any(r.get("status") != "ok" for r in rows):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m adcore.benchmark [options]`` (and ``--worker SPEC`` inside each run's process)."""
    argv = sys.argv[1:] if argv is None else argv
    prepare_process()  # each pair's worker is a process of its own: set it up before torch and timm
    if argv[:1] == ["--worker"]:
        if len(argv) != 2:
            print("usage: python -m adcore.benchmark --worker SPEC.json", file=sys.stderr)
            return 2
        return run_worker(argv[1])
    parser = argparse.ArgumentParser(prog="adcore benchmark", description="Benchmark detectors × datasets.")
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))
