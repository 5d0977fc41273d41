"""Hook module of ad-distill: registers its detectors with adcore by lazy "module:Class" strings."""

from __future__ import annotations

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]


@hookimpl
def adcore_register_detectors(registry) -> None:
    """Detectors of this distribution are added here as they land."""
