"""A local Ray for the scale-out tests, started by the tests themselves: 2 CPUs, no dashboard.

Every test that needs Ray is skipped, saying why, when it is not installed (``pip install 'adcore[ray]'``).
"""

from __future__ import annotations

import os

import pytest

SKIP_REASON = "Ray is not installed: the scale-out tests need pip install 'adcore[ray]'"


def require_ray():
    ray = pytest.importorskip("ray", reason=SKIP_REASON)
    pytest.importorskip("ray.data", reason=SKIP_REASON)
    return ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module (started once: a start takes seconds), shut down after it."""
    ray = require_ray()
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"ADCORE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
                                       "PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
