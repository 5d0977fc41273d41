"""The pluggy hook specifications every adcore plugin can implement.

A plugin is a module named by an entry point in the ``adcore`` group. It implements any of the
hooks below with the :data:`hookimpl` marker::

    from adcore import hookimpl

    @hookimpl
    def adcore_register_detectors(registry):
        registry.add("my_detector", "my_plugin.model:MyDetector", category="statistical",
                     paper="...", trains=False)

Hooks receive a registry and call back into it (the callback style of simonw/llm), so new hooks
and new keyword arguments can be added later without breaking existing plugins: pluggy passes a
hook implementation only the arguments it names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from adcore.registry import BackboneRegistry, DetectorRegistry

__all__ = ["PROJECT_NAME", "ENTRY_POINT_GROUP", "hookimpl", "hookspec", "adcore_register_detectors", "adcore_register_backbones"]

PROJECT_NAME = "adcore"
#: the entry-point group a plugin distribution declares its hook module in (``[project.entry-points.adcore]``)
ENTRY_POINT_GROUP = "adcore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def adcore_register_detectors(registry: DetectorRegistry) -> None:
    """Register detectors with ``registry.add(name, target, category=..., **card)``.

    ``target`` is the detector class, any callable returning a detector, or preferably a lazy
    ``"module:attr"`` string so that listing detectors imports nothing heavy.
    """


@hookspec
def adcore_register_backbones(registry: BackboneRegistry) -> None:
    """Register offline weight providers for timm backbones with ``registry.add(name, provider)``.

    ``provider()`` returns a state dict for ``timm.create_model(name)``; adcore remaps it onto the
    ``features_only`` model and checks that every tensor arrived.
    """
