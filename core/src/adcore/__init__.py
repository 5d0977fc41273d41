"""adcore: visual anomaly detection with pluggable detectors.

Learn "normal" from defect-free images, then score new images and localise defects. Detectors come
from plugins (``pip install ad-memory`` for PatchCore and SPADE, and so on); this package holds the
contracts, the plugin machinery, shared backbones, data, metrics and the ``adcore`` CLI.

    >>> import adcore
    >>> detector = adcore.get_model("patchcore")          # doctest: +SKIP
    >>> detector.fit(train_loader).calibrate(val_loader)  # doctest: +SKIP
    >>> prediction = detector.predict(images)             # doctest: +SKIP

Importing adcore is cheap: no plugin and no torch is imported until first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "__version__",
    "AnomalyDetector",
    "BaseDetector",
    "Prediction",
    "hookimpl",
    "get_model",
    "list_models",
    "list_models_by_category",
    "load",
    "ModelNotFoundError",
    "NotFittedError",
    "InvalidInputError",
    "ModelFileError",
]

from adcore._version import __version__
from adcore.errors import InvalidInputError, ModelFileError, NotFittedError
from adcore.factory import get_model, list_models, list_models_by_category, load
from adcore.hookspecs import hookimpl
from adcore.lazy import lazy_exports
from adcore.registry import ModelNotFoundError


def _export(detector: Any, out: Any, **options: Any) -> dict[str, Any]:
    # BaseDetector.export lives in the kit, the export package in the application tier: the front
    # door hands it down through adcore.lookups (imported on first use: it needs torch)
    from adcore.export import export_detector

    return export_detector(detector, out, **options)


def _install_exporter() -> None:
    from adcore.lookups import set_exporter

    set_exporter(_export)


_install_exporter()

if TYPE_CHECKING:
    from adcore.base import BaseDetector
    from adcore.prediction import AnomalyDetector, Prediction

__getattr__, __dir__ = lazy_exports(__name__, {"AnomalyDetector": "adcore.prediction", "Prediction": "adcore.prediction",
                                               "BaseDetector": "adcore.base"}, globals(), __all__)
