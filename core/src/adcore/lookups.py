"""What the detector kit needs to know from the plugin host, handed down instead of imported up.

Two questions only the plugin host can answer: under which registry name, by which distribution
and version, a detector class is registered (written into every model file's header); and which
offline weight provider a timm backbone has. The kit must not import the host (layers point one
way), so it asks these two functions, and :mod:`adcore.factory` installs the registry-backed
answers when it is imported (``import adcore`` imports it, so they are always in place).

One slot the application tier fills: the exporter ``BaseDetector.export`` calls (the kit must not
import :mod:`adcore.export`); ``import adcore`` installs it.

This module imports neither torch nor the host, so installing the answers keeps ``import adcore``
light. Without them (a kit module used on its own) a class's origin comes from
``importlib.metadata.packages_distributions`` and no backbone has an offline provider.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from typing import Any, NamedTuple, Optional

__all__ = ["Origin", "OriginResolver", "WeightProviderLookup", "set_origin_resolver", "origin_of",
           "default_origin", "set_weight_provider_lookup", "weight_provider_for", "Exporter", "set_exporter", "exporter"]


class Origin(NamedTuple):
    """Where a detector class comes from: its registry name and the distribution that ships it."""

    name: str
    distribution: str
    distribution_version: str


#: ``fn(cls) -> (registry_name, distribution, distribution_version)``
OriginResolver = Callable[[type], tuple[str, str, str]]
#: ``fn(timm_name) -> provider or None``; ``provider()`` returns a state dict
WeightProviderLookup = Callable[[str], Optional[Callable[[], dict[str, Any]]]]

_origin_resolver: OriginResolver | None = None
_weight_provider_lookup: WeightProviderLookup | None = None


def set_origin_resolver(fn: OriginResolver | None) -> None:
    """Install ``fn`` as the answer to :func:`origin_of` (``None`` restores :func:`default_origin`)."""
    global _origin_resolver
    _origin_resolver = fn


def origin_of(cls: type) -> Origin:
    """Registry name, distribution and version of the detector class ``cls``."""
    resolver = _origin_resolver or default_origin
    return Origin(*resolver(cls))


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    # scanning every installed distribution takes about a second: once per process is enough
    return packages_distributions()


def default_origin(cls: type) -> Origin:
    """The lowercased class name, and the installed distribution that provides its top-level package
    (``"unknown"`` for a class defined outside any installed distribution, e.g. in a test)."""
    top = cls.__module__.split(".")[0]
    for name in _packages_distributions().get(top, []):
        try:
            return Origin(cls.__name__.lower(), name, version(name))
        except PackageNotFoundError:
            continue
    return Origin(cls.__name__.lower(), "unknown", "unknown")


def set_weight_provider_lookup(fn: WeightProviderLookup | None) -> None:
    """Install ``fn`` as the answer to :func:`weight_provider_for` (``None``: no offline providers)."""
    global _weight_provider_lookup
    _weight_provider_lookup = fn


def weight_provider_for(timm_name: str) -> Callable[[], dict[str, Any]] | None:
    """The offline weight provider registered for the timm backbone ``timm_name``, or ``None``."""
    if _weight_provider_lookup is None:
        return None
    return _weight_provider_lookup(timm_name)


#: ``fn(detector, out, format=..., **options) -> sidecar dict``: :func:`adcore.export.export_detector`
Exporter = Callable[..., dict[str, Any]]
_exporter: Exporter | None = None


def set_exporter(fn: Exporter | None) -> None:
    """Install ``fn`` as what ``BaseDetector.export`` calls (``import adcore`` installs adcore.export's)."""
    global _exporter
    _exporter = fn


def exporter() -> Exporter:
    """The installed exporter; the kit does not import the application tier that writes artefacts."""
    if _exporter is None:
        from adcore.errors import ConfigurationError

        raise ConfigurationError("no exporter is installed: import adcore (which installs adcore.export's) before "
                                 "calling detector.export()")
    return _exporter
