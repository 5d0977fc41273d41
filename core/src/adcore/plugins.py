"""Isolated plugin loading.

Every entry point in the ``adcore`` group is loaded on its own, through these stages:
``discover`` (a distribution whose entry-point metadata cannot be read; two distributions claiming
the same plugin name) → ``import`` (any exception, including ``SystemExit``) → ``register`` (pluggy
validates hook signatures) → ``check`` (hook names the specs do not know, e.g. a typo; a hook
function not marked with ``@hookimpl``) → ``hook`` (calling the plugin's hooks raised; nothing it
registered is kept) → ``detector`` (a registered class that is abstract or lacks
fit/predict/get_params; only that detector is dropped) → ``duplicate`` (a distribution registering
one name twice). A name that two distributions register is a ``conflict``: both are kept and listed,
a bare ``get_model(name)`` is ambiguous until ``"distribution:name"`` or ``ADCORE_PREFER=name=dist``
chooses, and a model file loads with the distribution that wrote it. A failure at any stage is recorded as a :class:`PluginFailure` with the distribution, its version,
the stage and the error, the plugin (or detector) is dropped, and every other plugin keeps
working. pluggy's ``load_setuptools_entrypoints`` is not used: it aborts on the first failure, and
so does ``importlib.metadata.entry_points()`` on one malformed ``entry_points.txt``.

A plugin whose import takes longer than ``ADCORE_SLOW_IMPORT_SECONDS`` (default 5) still loads
and is reported with stage ``slow-import``: a warning, which strict mode does not count. While it
is still importing it is named on stderr at that moment; one that has not finished after
``ADCORE_PLUGIN_TIMEOUT`` seconds (default 30) ends loading with :class:`PluginTimeoutError`
naming the distribution and how to disable it. To be able to give up, each import runs in a
daemon worker thread while the loader waits; a timed-out import may still hold its modules' import
locks, so the loader never continues past it (nothing else is imported in that process) and later
calls fail fast with the same error. ``ADCORE_PLUGIN_TIMEOUT=0`` imports in the calling thread,
without a limit (for a plugin that must import in the main thread, e.g. to install signal handlers).

What a plugin prints while it is imported or its hooks run goes to stderr, so the JSON of
``adcore list --json`` and ``adcore plugins`` on stdout stays parseable.

Loading is lazy: nothing happens at ``import adcore``; the first ``list_models``/``get_model``
call loads plugins once. ``ADCORE_STRICT_PLUGINS=1`` (or ``adcore --strict``) turns any failure
into a :class:`PluginLoadError`; ``ADCORE_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or
distribution name. What cannot be isolated in-process: a plugin that calls ``os._exit``, crashes
the interpreter or hangs inside a hook; ``ADCORE_DISABLE_PLUGINS`` is the way out.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib.metadata import EntryPoint, distributions
from types import ModuleType
from typing import Any

import pluggy

from adcore import hookspecs
from adcore._version import __version__
from adcore.errors import PluginError
from adcore.hookspecs import ENTRY_POINT_GROUP
from adcore.registry import BackboneRegistry, DetectorRegistry, DuplicateDetectorError
from adcore.values import parse_assignments

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginInfo",
    "PluginHost",
    "PluginLoadError",
    "PluginTimeoutError",
    "WARNING_STAGES",
    "discover_entry_points",
    "get_host",
    "load_plugins",
    "reset_plugins",
]

SLOW_IMPORT_SECONDS = 5.0
PLUGIN_TIMEOUT_SECONDS = 30.0
#: failure stages that are warnings: reported, but the plugin loaded and strict mode ignores them
WARNING_STAGES = frozenset({"slow-import", "conflict"})
_BUILTIN = "adcore.builtin"
_DETECTOR_METHODS = ("fit", "predict", "get_params")


class PluginLoadError(PluginError):
    """Raised in strict mode when any plugin failed to load."""

    def __init__(self, failures: list[PluginFailure]) -> None:
        failures = [f for f in failures if f.stage not in WARNING_STAGES] or failures
        self.failures = failures
        lines = [f"{len(failures)} adcore plugin(s) failed to load (strict mode):"]
        lines += [f"  - {f.describe()}" for f in failures]
        lines.append("Fix or uninstall them, or skip them with ADCORE_DISABLE_PLUGINS=name1,name2.")
        super().__init__("\n".join(lines))


class PluginTimeoutError(PluginError, TimeoutError):
    """A plugin did not finish importing within ``ADCORE_PLUGIN_TIMEOUT`` seconds."""


@dataclass(frozen=True)
class PluginFailure:
    """One plugin that did not load, and why."""

    plugin: str
    distribution: str
    version: str
    stage: str
    error: str
    details: str = ""

    def describe(self) -> str:
        return f"{self.distribution} {self.version} (plugin {self.plugin!r}) failed at stage {self.stage!r}: {self.error}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PluginInfo:
    """One plugin that loaded (possibly with some of its detectors rejected)."""

    plugin: str
    distribution: str
    version: str
    module: str
    load_seconds: float
    detectors: list[str] = field(default_factory=list)
    backbones: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PluginHost:
    """The loaded state: a pluggy manager, both registries, what loaded and what failed."""

    manager: pluggy.PluginManager
    detectors: DetectorRegistry
    backbones: BackboneRegistry
    plugins: list[PluginInfo]
    failures: list[PluginFailure]

    def report(self) -> dict[str, Any]:
        return {
            "plugins": [p.as_dict() for p in self.plugins],
            "failures": [f.as_dict() for f in self.failures],
            "detectors": [e.as_dict() for e in self.detectors],
            "backbones": self.backbones.names(),
        }


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _disabled_names() -> set[str]:
    raw = os.environ.get("ADCORE_DISABLE_PLUGINS", "")
    return {part.strip().lower().replace("_", "-") for part in raw.split(",") if part.strip()}


def _slow_import_seconds() -> float:
    raw = os.environ.get("ADCORE_SLOW_IMPORT_SECONDS", "")
    try:
        return float(raw) if raw.strip() else SLOW_IMPORT_SECONDS
    except ValueError:
        return SLOW_IMPORT_SECONDS


def _seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        return default
    return value if value >= 0 and value == value else default


def _preferences() -> dict[str, str]:
    """``ADCORE_PREFER=padim=ad-stat,patchcore=ad-memory`` → ``{"padim": "ad-stat", ...}``."""
    raw = os.environ.get("ADCORE_PREFER", "")
    pairs = [part for part in raw.split(",") if part.strip()]
    return {key: str(value) for key, value in parse_assignments(pairs, option="ADCORE_PREFER").items()}


def _name_and_version(dist: Any) -> tuple[str, str]:
    try:
        name = dist.metadata["Name"]
    except Exception:  # noqa: BLE001 - unreadable METADATA must not stop discovery
        name = None
    try:
        version = dist.version
    except Exception:  # noqa: BLE001
        version = None
    return (name or "unknown", version or "unknown")


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "unknown")
    return _name_and_version(dist)


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def discover_entry_points() -> tuple[list[EntryPoint], list[PluginFailure]]:
    """Every ``adcore`` entry point of every installed distribution, one distribution at a time.

    ``importlib.metadata.entry_points()`` raises on the first malformed ``entry_points.txt`` of any
    installed package, which would hide every plugin; here that distribution alone is reported
    (stage ``discover``). A distribution visible twice on ``sys.path`` counts once (the first).
    """
    found: list[EntryPoint] = []
    failures: list[PluginFailure] = []
    seen: set[str] = set()
    for dist in distributions():
        # Parsing every distribution's METADATA costs seconds per process in a large environment;
        # the dist-info folder name already gives the normalised name, so METADATA is read only
        # where that is missing or the distribution has something to report.
        key = _folder_key(dist)
        if key is None:
            name, version = _name_and_version(dist)
            key = _normalise(name) if name != "unknown" else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        try:
            eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        except Exception as exc:  # noqa: BLE001
            name, version = _name_and_version(dist)
            path = getattr(dist, "_path", "?")
            failures.append(PluginFailure("?", name, version, "discover",
                                          f"cannot read the entry points of {path}: {type(exc).__name__}: {exc}"))
            continue
        found.extend(eps)
    return found, failures


def _folder_key(dist: Any) -> str | None:
    """Normalised project name from the ``.dist-info``/``.egg-info`` folder name, without reading METADATA."""
    name = getattr(dist, "_normalized_name", None)
    return _normalise(name) if isinstance(name, str) and name else None


class _Loader:
    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.detectors = DetectorRegistry()
        self.backbones = BackboneRegistry()
        self.plugins: list[PluginInfo] = []
        self.failures: list[PluginFailure] = []

    def fail(self, plugin: str, dist: str, version: str, stage: str, exc: BaseException | str) -> None:
        if isinstance(exc, BaseException):
            error = f"{type(exc).__name__}: {exc}"
            details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            error, details = exc, ""
        self.failures.append(PluginFailure(plugin, dist, version, stage, error, details))

    def load_module(self, plugin: str, dist: str, version: str, module: ModuleType, seconds: float) -> None:
        try:
            self.manager.register(module, name=plugin)
        except Exception as exc:  # pluggy.PluginValidationError, or a name clash (ValueError)
            self.fail(plugin, dist, version, "register", exc)
            return
        known = sorted(n for n in dir(hookspecs) if n.startswith("adcore_"))
        callers = self.manager.get_hookcallers(module) or []
        unknown = [caller.name for caller in callers if not caller.has_spec()]
        unknown += [name for name in dir(module) if name.startswith("adcore_") and callable(getattr(module, name))
                    and not hasattr(self.manager.hook, name)]
        if unknown:
            self.manager.unregister(module)
            self.fail(plugin, dist, version, "check", f"unknown hook(s) {sorted(set(unknown))}; known hooks are {known}")
            return
        implemented = {caller.name for caller in callers}
        unmarked = [name for name in known if name not in implemented and callable(getattr(module, name, None))
                    and getattr(getattr(module, name), "__module__", None) == module.__name__]
        if unmarked:
            self.manager.unregister(module)
            self.fail(plugin, dist, version, "check",
                      f"{', '.join(unmarked)} defined but not marked as a hook: decorate it with @adcore.hookimpl")
            return
        info = PluginInfo(plugin, dist, version, module.__name__, round(seconds, 3))
        ok = self.call_hooks(info, module)
        if not ok:
            self.manager.unregister(module)
            return
        self.plugins.append(info)

    def call_hooks(self, info: PluginInfo, module: ModuleType) -> bool:
        """Call this plugin's hooks only, staging its registrations so a raise leaves nothing behind."""
        source = (info.plugin, info.distribution, info.version)
        staged_detectors = []
        staged_backbones = BackboneRegistry()
        staged_backbones._source = f"{info.distribution} {info.version}"
        arguments = {"adcore_register_detectors": {"registry": self.detectors},
                     "adcore_register_backbones": {"registry": staged_backbones}}
        self.detectors._source, self.detectors._staged = source, staged_detectors
        try:
            for hook_name, kwargs in arguments.items():
                for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                    if impl.plugin is module:
                        impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except BaseException as exc:  # noqa: BLE001 - sys.exit in a hook is that plugin's failure
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.fail(info.plugin, info.distribution, info.version, "hook", exc)
            return False
        finally:
            self.detectors._staged = None
            self.detectors._source = ("unknown", "unknown", "unknown")
        for entry in staged_detectors:
            problem = _nonconforming(entry.target)
            if problem:
                self.fail(info.plugin, info.distribution, info.version, "detector",
                          f"detector {entry.name!r} ({entry.target_path}) {problem}; it was not registered")
                continue
            others = [e for e in self.detectors._entries.get(entry.name, ()) if e.distribution != entry.distribution]
            try:
                self.detectors._commit(entry)
                info.detectors.append(entry.name)
            except DuplicateDetectorError as exc:
                self.fail(info.plugin, info.distribution, info.version, "duplicate", exc)
                continue
            if others:
                every = [*others, entry]
                self.fail(info.plugin, info.distribution, info.version, "conflict",
                          f"detector name {entry.name!r} is registered by "
                          f"{' and '.join(f'{e.distribution} {e.version}' for e in every)}; all are kept and "
                          f"listed, and a bare {entry.name!r} is ambiguous: choose "
                          f"{' or '.join(repr(e.qualified_name) for e in every)}, or set "
                          f"ADCORE_PREFER={entry.name}={others[0].distribution}")
        for name in staged_backbones.names():
            try:
                self.backbones.add(name, staged_backbones.get(name), description=staged_backbones._providers[name][1])
                info.backbones.append(name)
            except DuplicateDetectorError as exc:
                self.fail(info.plugin, info.distribution, info.version, "duplicate", exc)
        return True


def _nonconforming(target: Any) -> str:
    """Why an eagerly registered class cannot be a detector ('' if it looks fine, or is lazy)."""
    if not isinstance(target, type):
        return ""  # a lazy "module:attr" string or a factory: checked when built (get_model)
    missing = [name for name in _DETECTOR_METHODS if not callable(getattr(target, name, None))]
    if missing:
        return f"lacks {', '.join(missing)} (the AnomalyDetector protocol needs fit, predict and get_params)"
    if inspect.isabstract(target):
        return f"is abstract (does not implement {', '.join(sorted(target.__abstractmethods__))})"
    return ""


def load_plugins(*, strict: bool | None = None, entry_points_list: list[EntryPoint] | None = None) -> PluginHost:
    """Load every ``adcore`` entry point in isolation and return the resulting :class:`PluginHost`.

    Raises :class:`PluginLoadError` in strict mode when a plugin failed, and
    :class:`PluginTimeoutError` when a plugin's import did not finish within the budget.
    """
    # whatever a plugin prints while it loads goes to stderr: stdout carries JSON reports
    with contextlib.redirect_stdout(sys.stderr):
        return _load_plugins(strict, entry_points_list)


def _load_plugins(strict: bool | None, entry_points_list: list[EntryPoint] | None) -> PluginHost:
    from adcore import builtin  # core's own backbone weight providers, registered like a plugin

    strict = _env_flag("ADCORE_STRICT_PLUGINS") if strict is None else strict
    disabled = _disabled_names()
    loader = _Loader()
    loader.detectors.preferences = _preferences()
    core_version = __version__
    loader.load_module(_BUILTIN, "adcore", core_version, builtin, 0.0)

    if entry_points_list is not None:
        found = list(entry_points_list)
    else:
        found, discovery_failures = discover_entry_points()
        loader.failures.extend(discovery_failures)
    slow = _slow_import_seconds()
    budget = _seconds_from_env("ADCORE_PLUGIN_TIMEOUT", PLUGIN_TIMEOUT_SECONDS)
    seen: dict[str, str] = {}
    for ep in sorted(found, key=lambda e: (_dist_of(e)[0].lower(), e.name)):
        dist, version = _dist_of(ep)
        if ep.name in seen:
            if _normalise(seen[ep.name]) != _normalise(dist):
                loader.fail(ep.name, dist, version, "discover",
                            f"plugin name {ep.name!r} is already provided by {seen[ep.name]}; this one is skipped. "
                            "Uninstall one of them")
            continue  # else: the same distribution visible twice on sys.path
        seen[ep.name] = dist
        if {ep.name.lower().replace("_", "-"), dist.lower().replace("_", "-")} & disabled:
            continue
        if EntryPoint.pattern.match(ep.value) is None or not ep.module:
            loader.fail(ep.name, dist, version, "import",
                        f"entry point value {ep.value!r} is not module:attr (a dotted module name, optionally "
                        f"followed by ':attr'), e.g. {ep.name} = my_plugin.hooks; fix the entry_points of {dist}")
            continue
        started = time.perf_counter()
        try:
            module = _import_entry_point(ep, dist, version, slow, budget)
        except PluginTimeoutError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin calling sys.exit must not kill the host
            if isinstance(exc, KeyboardInterrupt):
                raise
            loader.fail(ep.name, dist, version, "import", exc)
            continue
        seconds = time.perf_counter() - started
        if not isinstance(module, ModuleType):
            loader.fail(ep.name, dist, version, "import",
                        f"entry point {ep.value!r} must name a module holding hook implementations, "
                        f"got {type(module).__name__}")
            continue
        loader.load_module(ep.name, dist, version, module, seconds)
        if seconds > slow:
            loader.fail(ep.name, dist, version, "slow-import",
                        f"importing took {seconds:.1f} s (> {slow:g} s; it still loaded): keep heavy imports "
                        "out of the hook module and register lazy 'module:Class' targets")
    host = PluginHost(loader.manager, loader.detectors, loader.backbones, loader.plugins, loader.failures)
    if strict and any(f.stage not in WARNING_STAGES for f in host.failures):
        raise PluginLoadError(host.failures)
    return host


#: entry points whose import timed out in this process: their module locks may still be held
_timed_out: dict[tuple[str, str], PluginTimeoutError] = {}


def _import_entry_point(ep: EntryPoint, dist: str, version: str, slow: float, budget: float) -> Any:
    """``ep.load()``, in a daemon worker thread when ``budget`` > 0, so that a hang can be given up on.

    The plugin is named on stderr once it has taken ``slow`` seconds; after ``budget`` seconds
    :class:`PluginTimeoutError` is raised. Exceptions of the import (``SystemExit`` and
    ``KeyboardInterrupt`` included) are re-raised in the calling thread.
    """
    key = (dist, ep.name)
    if key in _timed_out:
        raise _timed_out[key]
    if budget == 0:
        return ep.load()
    outcome: dict[str, Any] = {}

    def work() -> None:  # sys.stdout is process-wide: load_plugins' redirect covers this thread too
        try:
            outcome["module"] = ep.load()
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"adcore-import-{ep.name}", daemon=True)
    started = time.perf_counter()
    worker.start()
    worker.join(min(slow, budget))
    if worker.is_alive() and slow < budget:
        print(f"adcore: still importing plugin {ep.name!r} from {dist} {version} after {slow:g} s "
              f"(giving up at {budget:g} s, ADCORE_PLUGIN_TIMEOUT)...", file=sys.stderr, flush=True)
        worker.join(max(0.0, budget - (time.perf_counter() - started)))
    if worker.is_alive():
        error = PluginTimeoutError(
            f"plugin {ep.name!r} of {dist} {version} did not finish importing within {budget:g} s "
            f"(ADCORE_PLUGIN_TIMEOUT); it hangs or is very slow. Disable it with "
            f"ADCORE_DISABLE_PLUGINS={dist}, uninstall it (pip uninstall {dist}), or raise the budget with "
            "ADCORE_PLUGIN_TIMEOUT=SECONDS")
        _timed_out[key] = error
        raise error
    if "error" in outcome:
        raise outcome["error"]
    return outcome["module"]


_host: PluginHost | None = None
_lock = threading.Lock()


def get_host() -> PluginHost:
    """The process-wide :class:`PluginHost`, loading plugins on first use."""
    global _host
    with _lock:
        if _host is None:
            _host = load_plugins()
        return _host


def reset_plugins() -> None:
    """Forget loaded plugins so the next call reloads them (tests, or after ``pip install``)."""
    global _host
    with _lock:
        _host = None
