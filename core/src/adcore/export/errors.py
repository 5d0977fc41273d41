"""What can go wrong in an export, as errors a person can act on."""

from __future__ import annotations

from adcore.errors import AdcoreError

__all__ = ["ExportError", "NotExportableError", "ParityError", "ExportDependencyError"]


class ExportError(AdcoreError, RuntimeError):
    """An export could not be written."""


class NotExportableError(ExportError):
    """The detector cannot be expressed as a static graph (the message says why and what can be)."""


class ParityError(ExportError):
    """The exported artefact disagrees with the torch detector beyond the tolerance; nothing was written."""


class ExportDependencyError(ExportError, ImportError):
    """A package the chosen format needs (onnx, onnxruntime, openvino) is not installed."""
