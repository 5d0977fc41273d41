"""``get_model``, ``list_models``, ``list_models_by_category`` and ``load``: the front door."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adcore.plugins import get_host
from adcore.weights import set_weight_provider_lookup

__all__ = ["get_model", "list_models", "list_models_by_category", "load", "get_entry"]


def get_entry(name: str):
    """The registry entry (card, distribution, version) for ``name`` or ``"distribution:name"``."""
    return get_host().detectors.get(name)


def list_models(pattern: str = "*", category: str | None = None) -> list[str]:
    """Registered detector names matching a glob ``pattern`` and optional ``category``. Imports no model code."""
    return sorted(entry.name for entry in get_host().detectors.select(pattern, category))


def list_models_by_category() -> dict[str, list[str]]:
    """``{category: [names]}`` over every registered detector."""
    grouped: dict[str, list[str]] = {}
    for entry in get_host().detectors:
        grouped.setdefault(entry.category, []).append(entry.name)
    return {category: sorted(names) for category, names in sorted(grouped.items())}


def get_model(name: str, **params: Any):
    """Build the detector registered as ``name`` (or ``"ad-memory:patchcore"``) with ``params``.

    Raises :class:`adcore.ModelNotFoundError` (a ``KeyError``) naming close matches and the
    distribution to install when no plugin registered ``name``.
    """
    from adcore.prediction import AnomalyDetector

    entry = get_entry(name)
    factory = entry.load()
    try:
        detector = factory(**params)
    except TypeError as exc:
        raise TypeError(f"{entry.name} ({entry.distribution} {entry.version}): {exc}") from exc
    if not isinstance(detector, AnomalyDetector):
        raise TypeError(f"{entry.distribution} {entry.version} registered {entry.name!r} but {entry.target_path} built a "
                        f"{type(detector).__name__}, which lacks fit/predict/get_params; report it to the plugin's authors")
    return detector


def load(path: str | Path):
    """Load any detector file written by ``detector.save(path)``, whichever plugin made it."""
    from adcore.persistence import load_detector

    return load_detector(Path(path))


def _offline_weight_provider(name: str):
    return get_host().backbones.get(name)


# the kit's weight loader finds offline providers through the plugin host without importing it
set_weight_provider_lookup(_offline_weight_provider)
