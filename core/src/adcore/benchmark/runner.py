"""Running a plan: one subprocess per pair (``python -m adcore.benchmark --worker SPEC``).

So that peak RSS is that run's own, not the accumulated maximum of everything before it; a crash
(segfault, out-of-memory kill) or a run over its time limit kills only that run (its whole process
group), is recorded with its status, and the rest continue. Every finished run is appended to the
store at once; re-running the same plan skips the pairs already recorded (``retry_failed`` redoes
the failed and timed-out ones, ``fresh`` all of them).
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adcore.benchmark.plan import RUNS_DIR, BenchmarkPlan, RunSpec
from adcore.benchmark.store import ResultStore, base_record, json_default, now
from adcore.files import atomic_write_text
from adcore.tables import format_cell

__all__ = ["RunOutcome", "run_benchmark", "run_one", "select_pending", "summary_line", "write_spec"]


@dataclass
class RunOutcome:
    """What :func:`run_benchmark` did."""

    launched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False


class _Running:
    """One worker process, its stderr pump and its deadline."""

    def __init__(self, run: RunSpec, process: subprocess.Popen, spec_path: Path, result_path: Path, echo: bool) -> None:
        self.run, self.process, self.spec_path, self.result_path = run, process, spec_path, result_path
        self.lock: Any = None
        self.started = time.monotonic()
        self.started_at = now()
        self.tail: collections.deque[bytes] = collections.deque(maxlen=64)
        self.pump = threading.Thread(target=self._pump, args=(echo,), daemon=True)
        self.pump.start()

    def _pump(self, echo: bool) -> None:
        stream = self.process.stdout
        assert stream is not None
        sink = getattr(sys.stderr, "buffer", None)
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            self.tail.append(chunk)
            if echo and sink is not None:
                try:
                    sink.write(chunk)
                    sink.flush()
                except (OSError, ValueError):
                    pass

    def tail_text(self, lines: int = 20) -> str:
        text = b"".join(self.tail).decode("utf-8", errors="replace")
        parts = [p.rstrip() for p in re.split(r"[\r\n]+", text) if p.strip()]
        return "\n".join(parts[-lines:])

    def kill(self) -> None:
        """Kill the worker's whole process group (it may have started children of its own)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def write_spec(run: RunSpec, plan: BenchmarkPlan) -> tuple[Path, Path]:
    """Write the worker's spec for ``run`` under ``plan.out``; returns ``(spec path, result path)``.

    ``python -m adcore.benchmark --worker SPEC`` runs it; so does a profiler that calls
    :func:`adcore.benchmark.worker.run_worker` in its own process (``benchmarks/performance/padim_memory.py``).
    """
    runs_dir = plan.out / RUNS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    spec_path = runs_dir / f"{run.slug}.spec.json"
    result_path = runs_dir / f"{run.slug}.result.json"
    result_path.unlink(missing_ok=True)
    spec = {"run": {"detector": run.detector, "dataset": asdict(run.dataset), "params": run.params,
                    "batch_size": run.batch_size, "time_limit": run.time_limit, "options": run.options,
                    "allow_import": run.allow_import},
            "record": base_record(run), "threads": plan.threads,
            "result_path": str(result_path.resolve()), "artifacts_path": str((runs_dir / f"{run.slug}.npz").resolve())}
    atomic_write_text(spec_path, json.dumps(spec, indent=1, default=json_default))
    return spec_path, result_path


def _launch(run: RunSpec, plan: BenchmarkPlan, env: dict[str, str] | None, echo: bool) -> _Running:
    spec_path, result_path = write_spec(run, plan)
    child_env = dict(os.environ if env is None else env)
    if plan.threads:
        child_env.setdefault("OMP_NUM_THREADS", str(plan.threads))
    process = subprocess.Popen([sys.executable, "-m", "adcore.benchmark", "--worker", str(spec_path.resolve())],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env=child_env, start_new_session=True)
    return _Running(run, process, spec_path, result_path, echo)


def _finish(running: _Running, timed_out: bool) -> dict[str, Any]:
    """The record of a finished, crashed or killed worker."""
    running.pump.join(timeout=5)
    wall = time.monotonic() - running.started
    record: dict[str, Any] | None = None
    if not timed_out and running.result_path.is_file():
        try:
            record = json.loads(running.result_path.read_text(encoding="utf-8"))
        except ValueError:
            record = None
    if record is None:
        record = base_record(running.run)
        stage_path = running.result_path.with_suffix(".stage")
        stage = stage_path.read_text().strip() if stage_path.is_file() else "startup"
        stage_path.unlink(missing_ok=True)
        if timed_out:
            record.update(status="timeout", error={
                "type": "TimeLimitExceeded", "stage": stage,
                "message": f"killed after {wall:.0f} s: over its time limit of {running.run.time_limit:g} s",
                "output_tail": running.tail_text()})
        else:
            code = running.process.returncode
            reason = f"killed by signal {-code} ({signal.Signals(-code).name})" if code is not None and code < 0 else \
                f"exited with status {code}"
            hint = " (SIGKILL without a time-out is usually the kernel's out-of-memory killer)" if code == -9 else ""
            record.update(status="crashed", error={"type": "WorkerCrashed", "stage": stage,
                                                   "message": f"the worker process {reason} without a result{hint}",
                                                   "output_tail": running.tail_text()})
    record.update(wall_seconds=round(wall, 2), started_at=running.started_at, finished_at=now(),
                  time_limit=running.run.time_limit)
    running.spec_path.unlink(missing_ok=True)
    running.result_path.unlink(missing_ok=True)
    running.result_path.with_suffix(".stage").unlink(missing_ok=True)
    return record


def select_pending(plan: BenchmarkPlan, store: ResultStore, *, fresh: bool = False,
                   retry_failed: bool = False) -> tuple[list[RunSpec], RunOutcome]:
    """The pairs still to run (see :func:`run_benchmark`) and an outcome holding the skipped ones."""
    done = {} if fresh else store.latest()
    outcome = RunOutcome()
    pending: list[RunSpec] = []
    for run in plan.runs:
        previous = done.get(run.key)
        if previous is not None and not (retry_failed and previous.get("status") != "ok"):
            outcome.skipped.append(run.key)
            outcome.statuses[run.key] = previous.get("status", "ok")
        else:
            pending.append(run)
    return pending, outcome


def run_one(run: RunSpec, plan: BenchmarkPlan, *, env: dict[str, str] | None = None,
            poll_seconds: float = 0.2) -> dict[str, Any]:
    """Run one pair in its own worker process on this machine, within its time limit, and return its
    record (written nowhere: the caller stores it). Its artefacts land in ``plan.out/runs``."""
    item = _launch(run, plan, env, echo=False)
    timed_out = False
    try:
        while item.process.poll() is None:
            if time.monotonic() - item.started > run.time_limit:
                item.kill()
                timed_out = True
                break
            time.sleep(poll_seconds)
    except BaseException:
        item.kill()  # cancelled (Ctrl-C, a Ray task cancelled): never leave the worker running on its own
        raise
    return _finish(item, timed_out)


def run_benchmark(plan: BenchmarkPlan, *, fresh: bool = False, retry_failed: bool = False,
                  env: dict[str, str] | None = None, echo: bool = True, poll_seconds: float = 0.2) -> RunOutcome:
    """Run every pending pair of ``plan`` (``jobs`` at a time), appending each record as it finishes.

    Pending = no record yet (all of them with ``fresh``; also failed/timed-out/crashed ones with
    ``retry_failed``). Ctrl-C kills the running workers; records already written stay.
    """
    from adcore.progress import progress_enabled

    store = ResultStore(plan.results_path)
    pending, outcome = select_pending(plan, store, fresh=fresh, retry_failed=retry_failed)
    total = len(plan.runs)
    bar = None
    if echo and progress_enabled():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(pending), desc="benchmark", unit="run", position=0,
                   dynamic_ncols=True, leave=True)
    say = (bar.write if bar is not None else lambda text: print(text, file=sys.stderr)) if echo else (lambda text: None)
    if outcome.skipped:
        say(f"adcore benchmark: {len(outcome.skipped)} of {total} run(s) already recorded in {plan.results_path} "
            "(skipped; --fresh redoes them, --retry-failed redoes the failed ones)")
    queue = list(pending)
    running: list[_Running] = []
    number = total - len(pending)
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        # `kill PID` (SIGTERM) of the benchmark must not leave a worker running on its own: treat it as Ctrl-C
        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        previous_handler = signal.signal(signal.SIGTERM, on_term)
    try:
        while queue or running:
            while queue and len(running) < (1 if plan.lock else max(1, plan.jobs)):
                run = queue.pop(0)
                number += 1
                lock = _acquire(plan.lock, say) if plan.lock else None
                say(f"▶ [{number}/{total}] {run.detector} × {run.dataset.name} (limit {run.time_limit:g} s)")
                try:
                    item = _launch(run, plan, env, echo)
                except BaseException:
                    if lock is not None:
                        lock.close()
                    raise
                item.lock = lock
                running.append(item)
                outcome.launched.append(run.key)
            time.sleep(poll_seconds)
            for item in list(running):
                elapsed = time.monotonic() - item.started
                timed_out = item.process.poll() is None and elapsed > item.run.time_limit
                if timed_out:
                    item.kill()
                if item.process.poll() is None:
                    continue
                running.remove(item)
                if item.lock is not None:
                    item.lock.close()  # closing the file releases the flock
                record = _finish(item, timed_out)
                store.append(record)
                outcome.statuses[record["key"]] = record["status"]
                say(summary_line(record))
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        outcome.interrupted = True
        for item in running:
            item.kill()
            item.spec_path.unlink(missing_ok=True)
            if item.lock is not None:
                item.lock.close()
        say("adcore benchmark: interrupted; finished runs are kept in "
            f"{plan.results_path}, run the same command again to resume")
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if bar is not None:
            bar.close()
    return outcome


def _acquire(path: Path, say: Any) -> Any:
    """Open and ``flock`` ``path`` exclusively, saying so when someone else holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"  waiting for the measurement lock {path} (another measurement is running)")
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def summary_line(record: dict[str, Any]) -> str:
    head = f"  {record['detector']} × {record['dataset']}: {record['status']}"
    if record["status"] == "ok":
        parts = [f"{label} {format_cell(record.get(key), fmt)}" for key, label, fmt in
                 [("image_auroc", "img AUROC", ".3f"), ("pixel_auroc", "px AUROC", ".3f"), ("fit_seconds", "fit s", ".1f"),
                  ("ms_per_image_batch1", "ms/img", ".1f"), ("peak_rss_mb", "RSS MB", ".0f")]]
        return f"{head} ({', '.join(parts)}) in {record.get('wall_seconds', 0):.0f} s"
    error = record.get("error") or {}
    return f"{head}: {error.get('type', '?')}: {str(error.get('message', ''))[:300]}"


