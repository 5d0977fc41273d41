"""Isolated plugin loading.

Every entry point in the ``adcore`` group is loaded on its own, through five stages:
``import`` → ``register`` (pluggy validates hook signatures) → ``check`` (hook names the specs do
not know, e.g. a typo) → ``hook`` (calling the plugin's hooks) → ``duplicate`` (names already
taken). A failure at any stage is recorded as a :class:`PluginFailure` with the distribution, its
version, the stage and the error, the plugin is unregistered, and every other plugin keeps
working. pluggy's ``load_setuptools_entrypoints`` is not used: it aborts on the first failure.

Loading is lazy: nothing happens at ``import adcore``; the first ``list_models``/``get_model``
call loads plugins once. ``ADCORE_STRICT_PLUGINS=1`` (or ``adcore --strict``) turns any failure
into a :class:`PluginLoadError`; ``ADCORE_DISABLE_PLUGINS=a,b`` skips plugins by entry-point or
distribution name.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from adcore import hookspecs
from adcore.registry import BackboneRegistry, DetectorRegistry, DuplicateDetectorError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginFailure",
    "PluginInfo",
    "PluginHost",
    "PluginLoadError",
    "get_host",
    "load_plugins",
    "reset_plugins",
]

ENTRY_POINT_GROUP = "adcore"
SLOW_IMPORT_SECONDS = 5.0
_BUILTIN = "adcore.builtin"


class PluginLoadError(RuntimeError):
    """Raised in strict mode when any plugin failed to load."""

    def __init__(self, failures: list[PluginFailure]) -> None:
        self.failures = failures
        lines = [f"{len(failures)} adcore plugin(s) failed to load (strict mode):"]
        lines += [f"  - {f.describe()}" for f in failures]
        lines.append("Fix or uninstall them, or skip them with ADCORE_DISABLE_PLUGINS=name1,name2.")
        super().__init__("\n".join(lines))


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


def _dist_of(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("unknown", "unknown")
    return (dist.metadata["Name"] or "unknown", dist.version or "unknown")


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
        unknown = [caller.name for caller in (self.manager.get_hookcallers(module) or [])
                   if not caller.has_spec()]
        unknown += [name for name in dir(module) if name.startswith("adcore_")
                    and not hasattr(self.manager.hook, name)]
        if unknown:
            self.manager.unregister(module)
            self.fail(plugin, dist, version, "check",
                      f"unknown hook(s) {sorted(set(unknown))}; known hooks are "
                      f"{sorted(n for n in dir(hookspecs) if n.startswith('adcore_'))}")
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
        except Exception as exc:
            self.fail(info.plugin, info.distribution, info.version, "hook", exc)
            return False
        finally:
            self.detectors._staged = None
            self.detectors._source = ("unknown", "unknown", "unknown")
        for entry in staged_detectors:
            try:
                self.detectors._commit(entry)
                info.detectors.append(entry.name)
            except DuplicateDetectorError as exc:
                self.fail(info.plugin, info.distribution, info.version, "duplicate", exc)
        for name in staged_backbones.names():
            try:
                self.backbones.add(name, staged_backbones.get(name), description=staged_backbones._providers[name][1])
                info.backbones.append(name)
            except DuplicateDetectorError as exc:
                self.fail(info.plugin, info.distribution, info.version, "duplicate", exc)
        return True


def load_plugins(*, strict: bool | None = None, entry_points_list: list[EntryPoint] | None = None) -> PluginHost:
    """Load every ``adcore`` entry point in isolation and return the resulting :class:`PluginHost`."""
    from adcore import builtin  # core's own backbone weight providers, registered like a plugin

    strict = _env_flag("ADCORE_STRICT_PLUGINS") if strict is None else strict
    disabled = _disabled_names()
    loader = _Loader()
    core_version = _core_version()
    loader.load_module(_BUILTIN, "adcore", core_version, builtin, 0.0)

    found = entry_points_list if entry_points_list is not None else list(entry_points(group=ENTRY_POINT_GROUP))
    seen: set[str] = set()
    for ep in sorted(found, key=lambda e: (_dist_of(e)[0].lower(), e.name)):
        dist, version = _dist_of(ep)
        if ep.name in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(ep.name)
        if {ep.name.lower().replace("_", "-"), dist.lower().replace("_", "-")} & disabled:
            continue
        started = time.perf_counter()
        try:
            module = ep.load()
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
        if seconds > SLOW_IMPORT_SECONDS:
            loader.fail(ep.name, dist, version, "slow-import",
                        f"importing took {seconds:.1f} s (> {SLOW_IMPORT_SECONDS:.0f} s): keep heavy imports "
                        "out of the hook module and register lazy 'module:Class' targets")
    host = PluginHost(loader.manager, loader.detectors, loader.backbones, loader.plugins, loader.failures)
    if strict and host.failures:
        raise PluginLoadError(host.failures)
    return host


def _core_version() -> str:
    from adcore import __version__

    return __version__


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
