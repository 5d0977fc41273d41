"""The front door to the plugin host: building detectors, loading model files, reporting plugins.

Only this module (and :mod:`adcore.plugins` itself) talks to the plugin host; the CLI, the
benchmark and the conformance kit use the functions below. Importing it installs the
registry-backed answers the detector kit asks for (:mod:`adcore.lookups`): the registry name and
distribution written into model files, and the offline weight providers of backbones. Importing it
loads no plugin and no torch: plugins load on the first call that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adcore import lookups
from adcore._version import __version__
from adcore.errors import InvalidArgumentError, ModelFileError
from adcore.plugins import PluginFailure, PluginInfo, PluginLoadError, get_host
from adcore.registry import DetectorEntry, ModelNotFoundError

__all__ = ["get_model", "list_models", "list_models_by_category", "load", "get_entry", "find_entry",
           "detector_entries", "plugin_report", "plugin_failures", "loaded_plugins", "plugin_versions",
           "entry_for_file", "PluginLoadError"]


def get_entry(name: str) -> DetectorEntry:
    """The registry entry (card, distribution, version) for ``name`` or ``"distribution:name"``.

    Raises :class:`adcore.ModelNotFoundError` naming close matches when nothing registered ``name``.
    """
    return get_host().detectors.get(name)


def find_entry(name: str) -> DetectorEntry | None:
    """The registry entry for ``name`` or ``"distribution:name"``, or ``None`` when it is not registered."""
    registry = get_host().detectors
    return registry.get(name) if name in registry else None


def detector_entries(pattern: str = "*", category: str | None = None) -> list[DetectorEntry]:
    """Registered detectors whose name matches the glob ``pattern`` (and ``category``), ordered by
    category, then name. Imports no model code."""
    return get_host().detectors.select(pattern, category)


def list_models(pattern: str = "*", category: str | None = None) -> list[str]:
    """Registered detector names matching a glob ``pattern`` and optional ``category``. Imports no model code.

    A name that several distributions register appears once per distribution as
    ``"distribution:name"``, so that every name listed can be given to :func:`get_model`.
    """
    entries = detector_entries(pattern, category)
    conflicts = get_host().detectors.conflicts()
    return sorted(entry.qualified_name if entry.name in conflicts else entry.name for entry in entries)


def list_models_by_category() -> dict[str, list[str]]:
    """``{category: [names]}`` over every registered detector."""
    grouped: dict[str, list[str]] = {}
    conflicts = get_host().detectors.conflicts()
    for entry in get_host().detectors:
        grouped.setdefault(entry.category, []).append(entry.qualified_name if entry.name in conflicts else entry.name)
    return {category: sorted(names) for category, names in sorted(grouped.items())}


def plugin_failures() -> list[PluginFailure]:
    """Plugins (or single detectors) that did not load, and why; ``slow-import`` ones did load."""
    return list(get_host().failures)


def loaded_plugins() -> list[PluginInfo]:
    """Plugins that loaded, with their distribution, version and what they registered."""
    return list(get_host().plugins)


def plugin_versions() -> dict[str, str]:
    """``{"adcore": version, distribution: version, ...}`` over the loaded plugins."""
    versions = {"adcore": __version__}
    for info in get_host().plugins:
        versions.setdefault(info.distribution, info.version)
    return versions


def plugin_report(*, details: bool = False) -> dict[str, Any]:
    """The ``adcore plugins`` report: loaded plugins, failures (with tracebacks if ``details``),
    detectors and offline backbones, as JSON values."""
    report = get_host().report()
    if not details:
        for failure in report["failures"]:
            failure.pop("details", None)
    return report


def get_model(name: str, **params: Any):
    """Build the detector registered as ``name`` (or ``"ad-memory:patchcore"``) with ``params``.

    Raises :class:`adcore.ModelNotFoundError` (a ``KeyError``) naming close matches and the
    distribution to install when no plugin registered ``name``,
    :class:`~adcore.registry.AmbiguousDetectorError` (a ``LookupError``) when several
    distributions registered ``name`` and neither ``"distribution:name"`` nor ``ADCORE_PREFER``
    chooses, and
    :class:`~adcore.errors.InvalidArgumentError` (a ``TypeError``) for a parameter the detector
    does not take.
    """
    from adcore.prediction import AnomalyDetector

    entry = get_entry(name)
    factory = entry.load()
    try:
        detector = factory(**params)
    except TypeError as exc:
        raise InvalidArgumentError(f"{entry.name} ({entry.distribution} {entry.version}): {exc}") from exc
    if not isinstance(detector, AnomalyDetector):
        raise InvalidArgumentError(
            f"{entry.distribution} {entry.version} registered {entry.name!r} but {entry.target_path} built a "
            f"{type(detector).__name__}, which lacks fit/predict/get_params; report it to the plugin's authors")
    return detector


def entry_for_file(path: str | Path, header: dict[str, Any]) -> DetectorEntry:
    """The registry entry that can rebuild the model file ``path`` with this ``header``.

    A file that records its distribution is looked up as ``distribution:name``, so it always loads
    with the detector of the distribution that wrote it, never with a same-named one from another.
    """
    name, distribution = header["detector"], header.get("distribution", "unknown")
    registry = get_host().detectors
    try:
        entry = registry.get(name if distribution == "unknown" else f"{distribution}:{name}")
    except ModelNotFoundError:
        if distribution == "unknown":
            raise ModelFileError(
                f"{path} holds a {name!r} detector ({header['target']}) that no installed plugin registers; "
                "load it with its class: TheClass.load(path)") from None
        others = [e for e in registry if e.name == name]
        also = (f" ({name!r} is registered by {', '.join(f'{e.distribution} {e.version}' for e in others)}, "
                "a different detector)" if others else "")
        raise ModelFileError(
            f"{path} holds a {name!r} detector from {distribution} {header.get('distribution_version', 'unknown')}, "
            f"which is not installed: pip install {distribution}{also}") from None
    if entry.target_path != header["target"]:
        raise ModelFileError(f"{path} was written by {header['target']} but {name!r} is now provided by "
                             f"{entry.target_path} ({entry.distribution} {entry.version}); they may be incompatible")
    return entry


def load(path: str | Path, *, device: Any = None):
    """Load any detector file written by ``detector.save(path)``, whichever plugin made it.

    ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; see :mod:`adcore.devices`)
    is where it will run; the file keeps none, so a model trained on a GPU loads on a CPU-only
    machine and the reverse. ``None`` leaves it to the detector's ``load`` (``"auto"``).
    """
    from adcore import persistence

    path = Path(path)
    entry = entry_for_file(path, persistence.read_header(path))
    cls = entry.load()
    if not callable(getattr(cls, "load", None)):
        raise ModelFileError(f"{path} holds {entry.name!r}, registered by {entry.distribution} {entry.version} as "
                             f"{entry.target_path}, which has no load(path) classmethod to rebuild it from a file")
    if device is None:
        return cls.load(path)
    import inspect

    accepted = inspect.signature(cls.load).parameters
    if "device" not in accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        raise InvalidArgumentError(f"{path} holds {entry.name!r} ({entry.target_path}), whose load(path) takes no "
                                   "device; load it without device= (it runs where its plugin puts it)")
    return cls.load(path, device=device)


# -- what the detector kit asks the host (see adcore.lookups) -----------------------------------------------
def _registry_origin(cls: type) -> tuple[str, str, str]:
    """The registered name, distribution and version of ``cls``; the metadata fallback when unregistered."""
    entry = get_host().detectors.find_by_target(f"{cls.__module__}:{cls.__qualname__}")
    if entry is not None:
        return entry.name, entry.distribution, entry.version
    return tuple(lookups.default_origin(cls))  # type: ignore[return-value]


def _offline_weights(timm_name: str):
    return get_host().backbones.get(timm_name)


lookups.set_origin_resolver(_registry_origin)
lookups.set_weight_provider_lookup(_offline_weights)
