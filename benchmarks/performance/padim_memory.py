"""Where a whole benchmark run's resident memory goes, stage by stage, in one process.

    OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE ADCORE_PROGRESS=0 flock /tmp/adcore-bench.lock \\
        .venv/bin/python benchmarks/performance/padim_memory.py [--model padim] [--dataset mvtec_bottle:bottle] \\
        [--data-root ../shared/data] [--quick] [-p KEY=VALUE ...] [--floor-only]

"Whole run" is what ``abba.py`` measures and the docs quote: one ``adcore benchmark`` pair with
abba's options (``--seed 0 --threads 2 --batch-size 8 --calibration-fraction 0 --input-size 256``):
the data opened, fit on every good training image, the test split predicted, the metrics, the
batch-1 and batch-8 latency, the artefacts written. This script plans that pair with the benchmark's
own parser and calls the very worker (:func:`adcore.benchmark.worker.run_worker`) in this process,
with the stage functions wrapped so that each stage's start is marked.

Per stage it prints the level (``VmRSS``) at its end and its own peak: the kernel's high-water mark
(``VmHWM``) is reset at every stage start (``/proc/self/clear_refs`` = 5), so a peak shorter than
any sampling interval is still caught; where that file cannot be written a 5 ms sampling thread
stands in. ``whole_run_peak_mb`` is the highest stage peak (what ``ru_maxrss`` reports for a worker
process of its own). ``--floor-only``: just ``import torch`` and ``import timm``, the import floor of
this environment measured the same way. Memory does not depend on the machine's load, so this may
run while others work. ``--quick``: a tiny generated dataset, to check the script.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * _PAGE / 2**20


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class Stages:
    """A flat sequence of stages: each :meth:`enter` closes the current one with its level and peak."""

    def __init__(self) -> None:
        self.exact = _reset_high_water()
        self.rows: list[dict[str, Any]] = []
        self.current, self.started = "start (interpreter, this script)", time.perf_counter()
        self._sampled = _rss_mb()
        if not self.exact:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self._sampled = max(self._sampled, _rss_mb())
            time.sleep(0.005)

    def enter(self, name: str) -> None:
        level = _rss_mb()
        peak = _status_mb("VmHWM") if self.exact else max(self._sampled, level)
        self.rows.append({"stage": self.current, "level_mb": round(level, 1), "peak_mb": round(peak, 1),
                          "seconds": round(time.perf_counter() - self.started, 2)})
        if self.exact:
            _reset_high_water()
        self._sampled = _rss_mb()
        self.current, self.started = name, time.perf_counter()


def _wrap(owner: Any, attribute: str, stages: Stages, name: str, after: str) -> None:
    """Mark ``name`` when ``owner.attribute`` is called and ``after`` when it returns (or raises)."""
    original = getattr(owner, attribute, None)
    if original is None:
        return

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stages.enter(name)
        try:
            return original(*args, **kwargs)
        finally:
            stages.enter(after)

    setattr(owner, attribute, wrapped)


def _plan_args(args: argparse.Namespace, out: Path) -> list[str]:
    """abba.py's options for one adcore pair (``_adcore`` there), plus ``-p`` parameters."""
    argv = ["--model", args.model, "--dataset", args.dataset, "--data-root", str(args.data_root), "--seed", "0",
            "--threads", os.environ.get("OMP_NUM_THREADS", "2"), "--batch-size", "8", "--calibration-fraction", "0",
            "--out", str(out), "--fresh", "--no-plots"]
    argv += ["--quick"] if args.quick else ["--input-size", "256"]
    for assignment in args.param:
        argv += ["-p", f"{args.model}.{assignment}"]
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="padim")
    parser.add_argument("--dataset", default="mvtec_bottle:bottle")
    parser.add_argument("--data-root", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--floor-only", action="store_true", help="only import torch and timm")
    parser.add_argument("-p", "--param", action="append", default=[], help="a detector parameter, KEY=VALUE")
    parser.add_argument("--as-before", action="store_true",
                        help="skip adcore.process.prepare_process (a process set up as before issue 21's last change)")
    args = parser.parse_args()
    if not args.as_before:
        from adcore.process import prepare_process

        prepare_process()  # what every worker process of `adcore benchmark` does first
    stages = Stages()
    stages.enter("import torch")
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    stages.enter("import timm (and torchvision)")
    import timm  # noqa: F401

    stages.enter("import adcore.benchmark, plan the pair")
    if args.floor_only:
        stages.enter("end")
        print(json.dumps({"floor_only": True, "stages": stages.rows[1:-1], "exact_peaks": stages.exact}))
        return
    from adcore import evaluation, feature_detector
    from adcore.base import BaseDetector
    from adcore.benchmark import worker
    from adcore.benchmark.cli import add_arguments
    from adcore.benchmark.plan import build_plan
    from adcore.benchmark.runner import write_spec

    with tempfile.TemporaryDirectory(prefix="padim-memory-") as folder:
        data_root = args.data_root
        if args.quick:
            from adcore.testing import write_tiny_category

            data_root = Path(folder) / "data"
            write_tiny_category(data_root / "tiny", "tiny", size=64)
            args.dataset = "tiny:tiny"
        args.data_root = data_root
        bench = argparse.ArgumentParser()
        add_arguments(bench)
        plan = build_plan(bench.parse_args(_plan_args(args, Path(folder) / "out")))
        spec_path, result_path = write_spec(plan.runs[0], plan)
        detector_class = type(worker._build_detector(args.model, {}))
        _wrap(worker, "_build_detector", stages, "build the detector", "open the data")
        _wrap(BaseDetector, "fit", stages, "fit: start", "between fit and predict")
        _wrap(feature_detector, "shared_extractor", stages, "fit: the backbone built", "fit: statistics")
        _wrap(detector_class, "_whitening", stages, "fit: whitening", "fit: after the whitening")
        _wrap(evaluation, "collect_predictions", stages, "predict the test split", "after predict")
        _wrap(evaluation, "evaluate", stages, "metrics", "after the metrics")
        _wrap(evaluation, "measure_latency", stages, "latency (batch 1, batch 8)", "after the latency")
        _wrap(worker, "_save_artifacts", stages, "artefacts written", "record written")
        stages.enter("worker setup")
        worker.run_worker(str(spec_path))
        stages.enter("end")
        record = json.loads(result_path.read_text())
    rows = stages.rows[1:-1]
    print(json.dumps({"dataset": args.dataset, "model": args.model, "params": args.param, "status": record.get("status"),
                      "error": record.get("error"), "exact_peaks": stages.exact,
                      "whole_run_peak_mb": max(row["peak_mb"] for row in rows), "stages": rows,
                      "metrics": {key: record.get(key) for key in
                                                                 ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")}}))
    for row in rows:
        print(f"{row['stage']:<40} level {row['level_mb']:8.1f}  peak {row['peak_mb']:8.1f}  {row['seconds']:6.2f} s",
              file=sys.stderr)


if __name__ == "__main__":
    main()
