"""``adcore benchmark``: every detector × every dataset (× every seed), one isolated run each, resumable, with tables and plots.

A *plan* is the cross product of detectors (names, ``all``, a category, a glob, or an importable
``module:Class``) with parameters, and datasets (MVTec-layout roots and categories, or generic
folders). Each (detector, dataset) pair runs ``fit → calibrate on the good training images →
evaluate`` (:func:`adcore.evaluation.evaluate_detector`) in its **own subprocess**
(``python -m adcore.benchmark --worker SPEC``), so that

- peak RSS is that run's own, not the accumulated maximum of everything before it;
- a crash (segfault, out-of-memory kill) or a run over its ``--time-limit`` kills only that run
  (the whole process group is killed), is recorded with its status, and the rest continue;
- an exception is recorded with its type, message, stage (fit / calibrate / predict / latency),
  the traceback's tail and the plugin's name and version.

Every finished run is added to ``OUT/results.jsonl`` at once (the file is rewritten to a temporary
file and atomically renamed, so a kill at any moment leaves either the old or the new file, never
a torn one; a damaged line written by anything else is skipped with a warning). Re-running the same
command skips pairs already recorded (``--retry-failed`` re-runs the failed and timed-out ones,
``--fresh`` all of them). A pair's identity is its detector, its final parameters, the dataset's
name/category/train cap and the batch size; the time limit is not part of it.

Outputs, rebuilt after every invocation from the JSONL (``--report-only`` rebuilds without
running anything): ``results.md``/``.csv``/``.json`` (one row per pair, including pairs that
failed, timed out or have not run), figures (per-dataset AUROC bars, an AUROC matrix,
accuracy-versus-latency, ROC curves, score histograms with the calibrated threshold and a grid of
anomaly-map overlays on the same test images for every detector) and, with ``--report``, a
Markdown page with the settings, the machine, the versions, a per-detector summary with the
published MVTec AD numbers beside it, the full table, the failures and the figures.

Each run also stores ``OUT/runs/<slug>.npz``: per-image scores, labels and defect types, the
threshold, and small (128 px) images, masks and maps of a fixed choice of test images (the first
image of each defect type, round-robin, plus the first good image), which is what the plots read.

Command line (also ``adcore benchmark``)::

    python -m adcore.benchmark --model patchcore padim --param patchcore.coreset_ratio=0.05 \\
        --dataset /data/mvtec:bottle /data/piped --time-limit 600 --out results/benchmark
    python -m adcore.benchmark --config benchmarks/config.json          # what docs/benchmarks.md shows

With ``--seeds 0,1,2`` every pair runs once per seed (the seed is part of its identity) and the
tables, figures and report show mean ± std over the seeds. ``--curve N`` records a learning curve
(the test set scored every N epochs, through :func:`adcore.training.on_epoch`); see
:mod:`adcore.benchmark.worker` for everything a record holds.

The package: :mod:`~adcore.benchmark.plan` (what to run), :mod:`~adcore.benchmark.store` (the JSONL
store), :mod:`~adcore.benchmark.runner` (one subprocess per pair), :mod:`~adcore.benchmark.worker`
(inside it), :mod:`~adcore.benchmark.report` (tables, page), :mod:`~adcore.benchmark.figures`
(PNG figures) and :mod:`~adcore.benchmark.cli` (options, :func:`run_cli`).
"""

from __future__ import annotations

from adcore.benchmark.cli import add_arguments, add_cli, main, run_cli
from adcore.benchmark.options import parse_param, parse_seeds, parse_time_limit
from adcore.benchmark.plan import (
    BenchmarkPlan,
    DatasetSpec,
    RunSpec,
    build_plan,
    load_config,
    load_detector_class,
    parse_datasets,
    resolve_models,
)
from adcore.benchmark.report import aggregate_seeds, collect_rows, machine_info, write_report, write_tables
from adcore.benchmark.runner import RunOutcome, run_benchmark
from adcore.benchmark.store import ResultStore
from adcore.benchmark.worker import SAMPLE_IMAGES, SAMPLE_SIDE

__all__ = [
    "DatasetSpec",
    "RunSpec",
    "BenchmarkPlan",
    "ResultStore",
    "RunOutcome",
    "parse_param",
    "parse_time_limit",
    "parse_seeds",
    "parse_datasets",
    "resolve_models",
    "load_config",
    "build_plan",
    "load_detector_class",
    "run_benchmark",
    "collect_rows",
    "aggregate_seeds",
    "write_tables",
    "write_report",
    "machine_info",
    "add_arguments",
    "add_cli",
    "run_cli",
    "main",
    "SAMPLE_IMAGES",
    "SAMPLE_SIDE",
]
