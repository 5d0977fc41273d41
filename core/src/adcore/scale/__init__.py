"""Beyond one machine: ``adcore predict --executor ray`` and ``adcore benchmark --executor ray``.

Ray is an optional extra (``pip install 'adcore[ray]'``): nothing here imports it at import time,
and neither ``import adcore`` nor a command without ``--executor ray`` imports this package.

- :mod:`adcore.scale.cluster`: start a local Ray or join a cluster (:func:`connect`).
- :mod:`adcore.scale.predict`: the input listing as a Ray Dataset scored by an actor pool, results
  written by the driver into the same outputs as the local predict (:func:`predict_on_ray`).
- :mod:`adcore.scale.benchmark`: every (detector, dataset) pair of a benchmark plan as a Ray task
  with its resources and time limit, records gathered into the same store (:func:`run_benchmark_on_ray`).

See docs/scale-out.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcore.lazy import lazy_exports

__all__ = ["ClusterOptions", "connect", "ray_available", "require_ray", "RayPredictOptions", "predict_on_ray",
           "run_benchmark_on_ray"]

if TYPE_CHECKING:
    from adcore.scale.benchmark import run_benchmark_on_ray
    from adcore.scale.cluster import ClusterOptions, connect, ray_available, require_ray
    from adcore.scale.predict import RayPredictOptions, predict_on_ray

# the predict half needs torch, the cluster half does not: a driver starts Ray before importing torch
__getattr__, __dir__ = lazy_exports(__name__, {
    "run_benchmark_on_ray": "adcore.scale.benchmark",
    **dict.fromkeys(("ClusterOptions", "connect", "ray_available", "require_ray"), "adcore.scale.cluster"),
    **dict.fromkeys(("RayPredictOptions", "predict_on_ray"), "adcore.scale.predict")}, globals(), __all__)
