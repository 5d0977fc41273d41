"""Package front doors that import their heavy halves on first use (PEP 562).

``import adcore``, ``import adcore.line`` and ``import adcore.scale`` must stay cheap: the command
line imports them before it knows whether the command needs torch, and ``adcore predict --executor
ray`` starts Ray before torch is imported so that the two overlap (docs/scale-out.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: dict[str, str], namespace: dict[str, Any],
                 public: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__, __dir__ = lazy_exports(__name__, {"name": "module", ...}, globals(), __all__)``:
    each name is imported from its module the first time it is read, then kept in the package."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
