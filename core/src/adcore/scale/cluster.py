"""Starting or joining Ray, quietly: the one place that calls ``ray.init``.

Without an address a local Ray of its own starts (even when another runs on the machine) with the
machine's CPUs (``num_cpus``), no dashboard and warnings-only logs, and is shut down when the command
ends; with one (``ray://HOST:10001``, ``HOST:6379`` or ``auto``) the command joins that cluster and
leaves it running. A Ray that is already initialised in this process (a test, a notebook) is used
as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from adcore.errors import ConfigurationError

__all__ = ["ClusterOptions", "connect", "connect_while", "ray_available", "require_ray", "INSTALL_HINT",
           "Timeline", "TIMELINE"]

T = TypeVar("T")


class Timeline:
    """Where this process's Ray run spent its time, for ``ADCORE_RAY_TIMINGS=FILE`` (the scale-out
    benchmark reads it; docs/scale-out.md): named marks (seconds since the epoch) set by
    :func:`connect` (``connect_start``, ``connected``, ``disconnected``) and by the predict
    (``adcore.scale.predict``), and each actor's start-up times. With the variable set, the file is
    written when the interpreter exits, so it holds the shutdown too."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.driver_cpu: dict[str, float] = {}
        self.actors: list[dict[str, Any]] = []
        self._armed = False

    def mark(self, name: str, *, again: bool = True) -> None:
        """Set mark ``name`` to now (``again=False``: only if it is not set yet)."""
        if again or name not in self.marks:
            self.marks[name] = time.time()
            self.driver_cpu[name] = time.process_time()  # this process's CPU seconds, all its threads
        target = os.environ.get("ADCORE_RAY_TIMINGS")
        if target and not self._armed:
            import atexit

            atexit.register(self.write, target)
            self._armed = True

    def start_run(self) -> None:
        """Forget an earlier run's marks and actors in this process (the connection's marks stay)."""
        self.marks = {k: v for k, v in self.marks.items() if k in ("connect_start", "connected")}
        self.driver_cpu = {k: v for k, v in self.driver_cpu.items() if k in self.marks}
        self.actors = []

    def write(self, target: str) -> None:
        from pathlib import Path

        from adcore.files import atomic_write_text

        # the driver's own CPU seconds at each mark and in all (its threads, Ray Data's executor
        # included; not the actors')
        atomic_write_text(Path(target), json.dumps({"marks": self.marks, "actors": self.actors,
                                                    "driver_cpu": {**self.driver_cpu, "exit": time.process_time()}},
                                                   indent=1))


#: this process's timeline
TIMELINE = Timeline()

INSTALL_HINT = "install the extra: pip install 'adcore[ray]' (Ray Data, pyarrow)"


def ray_available() -> bool:
    """Whether Ray can be imported (without importing it when it is not installed)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigurationError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the batch-inference half lives in the [data] extra
    except ImportError as exc:
        raise ConfigurationError(f"--executor ray needs Ray, which is not installed ({exc}); {INSTALL_HINT}") from exc
    return ray


@dataclass(frozen=True)
class ClusterOptions:
    """Where to run: ``address`` of a cluster (``None``: a local Ray with ``num_cpus``, default the
    machine's), and the Ray ``runtime_env`` of this job (what is shipped to the workers)."""

    address: str | None = None
    num_cpus: int | None = None
    runtime_env: dict[str, Any] | None = field(default=None, hash=False)


@contextlib.contextmanager
def connect(options: ClusterOptions | None = None) -> Iterator[Any]:
    """``with connect(options) as ray:``: Ray initialised for the block; a local Ray this call
    started is shut down after it, a joined cluster is left running."""
    ray = require_ray()
    options = options or ClusterOptions()
    if ray.is_initialized():
        yield ray
        return
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                             "configure_logging": True, "log_to_driver": True}
    if options.runtime_env:
        quiet["runtime_env"] = options.runtime_env
    TIMELINE.marks.pop("disconnected", None)
    TIMELINE.mark("connect_start")
    try:
        if options.address:
            quiet.pop("include_dashboard")  # the cluster's head decides that
            ray.init(address=options.address, **quiet)
        else:
            # "local": a Ray of its own, never one that `ray start` left running on this machine
            # (ray.init without an address joins that one, and refuses num_cpus then)
            ray.init(address="local", num_cpus=options.num_cpus or os.cpu_count() or 1, **quiet)
        TIMELINE.mark("connected")
    except ConnectionError as exc:
        raise ConfigurationError(f"cannot join the Ray cluster at {options.address!r}: {exc}; start its head with "
                                 "'ray start --head' (see docs/scale-out.md; a cluster of Ray 2.60 or later also "
                                 "needs its token: RAY_AUTH_TOKEN, or the head's ~/.ray/auth_token) or leave "
                                 "--address out to run on this machine") from exc
    try:
        _quiet_data()
        yield ray
    finally:
        ray.shutdown()
        TIMELINE.mark("disconnected")


@contextlib.contextmanager
def connect_while(work: Callable[[], T], options: ClusterOptions | None = None) -> Iterator[tuple[Any, T]]:
    """``with connect_while(prepare, options) as (ray, prepared):``: :func:`connect`, with the
    driver's own preparation (``work``: listing the inputs, opening the model) run in a thread
    meanwhile. ``ray.init`` must run in the main thread (a local head installs a SIGTERM handler)
    and spends most of its seconds waiting for the processes it starts, so the preparation fills
    that wait instead of following it. An exception of ``work`` is raised once Ray is up (and Ray
    is then shut down as usual); one of ``connect`` waits for ``work`` to end first."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="adcore-prepare") as pool:
        prepared = pool.submit(work)
        with connect(options) as ray:
            yield ray, prepared.result()


def _quiet_data() -> None:
    """No Ray Data progress bars unless adcore's own are on (ADCORE_PROGRESS)."""
    from ray.data import DataContext

    from adcore.progress import progress_enabled

    context = DataContext.get_current()
    context.enable_progress_bars = progress_enabled()
    with contextlib.suppress(AttributeError):  # newer Ray Data versions only
        context.print_on_execution_start = False
