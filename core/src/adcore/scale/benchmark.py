"""``adcore benchmark --executor ray``: every pair of a benchmark plan as one Ray task.

The plan, the store, the tables and the report are the benchmark's own (:mod:`adcore.benchmark`);
only where a pair runs changes. Each pending (detector, dataset) pair becomes a Ray task asking for
``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs, so Ray runs as many at once as the cluster has
room for. Inside the task the pair runs exactly as on one machine
(:func:`adcore.benchmark.runner.run_one`: its own worker process, fit → calibrate → evaluate, killed
at its time limit, a crash or an exception recorded with its stage), in a scratch folder of the
node that runs it. The task returns the record and the run's ``.npz`` artefacts as bytes; the
driver stores them (``OUT/results.jsonl``, ``OUT/runs/``) as each task finishes, so workers need
no shared disk for the outputs and a failed pair is one record while the others go on.

A node lost mid-task is retried once by Ray (``max_retries=1``); a task that still fails is recorded
as ``crashed`` with Ray's reason. Ctrl-C cancels the tasks still running (each kills its worker
process) and keeps the records already stored; the same command resumes.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from adcore.benchmark.plan import BenchmarkPlan, RunSpec
from adcore.benchmark.runner import RunOutcome, run_one, select_pending, summary_line
from adcore.benchmark.store import ResultStore, base_record, now
from adcore.scale.cluster import ClusterOptions, connect

__all__ = ["run_benchmark_on_ray"]


def _run_pair(run: RunSpec, threads: int | None, env: dict[str, str] | None) -> tuple[dict[str, Any], bytes | None]:
    """Inside the Ray task: the pair in a worker process under a scratch folder; record and artefacts back."""
    import socket

    with tempfile.TemporaryDirectory(prefix="adcore-ray-benchmark-") as scratch:
        plan = BenchmarkPlan(runs=[run], datasets=[run.dataset], detectors=[run.detector], out=Path(scratch),
                             threads=threads)
        record = run_one(run, plan, env={**os.environ, **(env or {})})
        artefacts = None
        if record.get("artifacts"):
            path = Path(scratch) / record["artifacts"]
            artefacts = path.read_bytes() if path.is_file() else None
    record.update(executor="ray", node=socket.gethostname())
    return record, artefacts


def _lost(run: RunSpec, exc: BaseException, submitted_at: str) -> dict[str, Any]:
    """The record of a task Ray could not finish (its node lost twice, the task cancelled, ...)."""
    record = base_record(run)
    record.update(status="crashed", executor="ray", started_at=submitted_at, finished_at=now(),
                  time_limit=run.time_limit,
                  error={"type": type(exc).__name__, "stage": "ray",
                         "message": f"the Ray task of this pair failed without a record: {str(exc)[:1500]}"})
    return record


def run_benchmark_on_ray(plan: BenchmarkPlan, *, fresh: bool = False, retry_failed: bool = False,
                         cluster: ClusterOptions | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
                         env: dict[str, str] | None = None, echo: bool = True,
                         poll_seconds: float = 0.5) -> RunOutcome:
    """Run every pending pair of ``plan`` as a Ray task (see the module docstring).

    ``env`` adds variables to each worker process's environment (the node's own environment is the
    base, never the driver's). ``plan.jobs`` is not used: the resources per run decide how many run
    at once. Returns what :func:`adcore.benchmark.runner.run_benchmark` returns.
    """
    from adcore.files import atomic_write_bytes

    store = ResultStore(plan.results_path)
    pending, outcome = select_pending(plan, store, fresh=fresh, retry_failed=retry_failed)
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if echo else (lambda text: None)
    if outcome.skipped:
        say(f"adcore benchmark: {len(outcome.skipped)} of {len(plan.runs)} run(s) already recorded in "
            f"{plan.results_path} (skipped; --fresh redoes them, --retry-failed redoes the failed ones)")
    if not pending:
        return outcome
    with connect(cluster) as ray:
        task = ray.remote(_run_pair).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=1,
                                             retry_exceptions=False)
        waiting: dict[Any, tuple[RunSpec, str]] = {}
        for run in pending:
            waiting[task.remote(run, plan.threads, env)] = (run, now())
            outcome.launched.append(run.key)
        say(f"adcore benchmark: {len(pending)} run(s) submitted to Ray ({cpus_per_run:g} CPU"
            f"{f', {gpus_per_run:g} GPU' if gpus_per_run else ''} each)")
        try:
            while waiting:
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=poll_seconds)
                for reference in ready:
                    run, submitted_at = waiting.pop(reference)
                    try:
                        record, artefacts = ray.get(reference)
                    except Exception as exc:  # noqa: BLE001 - a pair Ray could not run is a record, not a stop
                        record, artefacts = _lost(run, exc, submitted_at), None
                    if artefacts is not None:
                        atomic_write_bytes(plan.out / record["artifacts"], artefacts)
                    else:
                        record.pop("artifacts", None)
                    store.append(record)
                    outcome.statuses[record["key"]] = record["status"]
                    say(summary_line(record) + f" [{record.get('node', 'ray')}]")
        except KeyboardInterrupt:
            outcome.interrupted = True
            for reference in waiting:
                ray.cancel(reference, force=False)  # KeyboardInterrupt inside the task: it kills its worker
            say("adcore benchmark: interrupted; finished runs are kept in "
                f"{plan.results_path}, run the same command again to resume")
    return outcome
