"""Starting or joining Ray, quietly: the one place that calls ``ray.init``.

Without an address a local Ray starts with the machine's CPUs (``num_cpus``), no dashboard and
warnings-only logs, and is shut down when the command ends; with one (``ray://HOST:10001``,
``HOST:6379`` or ``auto``) the command joins that cluster and leaves it running. A Ray that is
already initialised in this process (a test, a notebook) is used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from adcore.errors import ConfigurationError

__all__ = ["ClusterOptions", "connect", "ray_available", "require_ray", "INSTALL_HINT"]

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
    try:
        if options.address:
            quiet.pop("include_dashboard")  # the cluster's head decides that
            ray.init(address=options.address, **quiet)
        else:
            ray.init(num_cpus=options.num_cpus or os.cpu_count() or 1, **quiet)
    except ConnectionError as exc:
        raise ConfigurationError(f"cannot join the Ray cluster at {options.address!r}: {exc}; start its head with "
                                 "'ray start --head' (see docs/scale-out.md) or leave --address out to run "
                                 "on this machine") from exc
    try:
        _quiet_data()
        yield ray
    finally:
        ray.shutdown()


def _quiet_data() -> None:
    """No Ray Data progress bars unless adcore's own are on (ADCORE_PROGRESS)."""
    from ray.data import DataContext

    from adcore.progress import progress_enabled

    context = DataContext.get_current()
    context.enable_progress_bars = progress_enabled()
    with contextlib.suppress(AttributeError):  # newer Ray Data versions only
        context.print_on_execution_start = False
