"""The runtime's exceptions: one base to catch, each keeping the standard-library base a caller expects.

adcore-runtime cannot import adcore (that would pull torch), so it mirrors adcore's rule instead of
reusing ``adcore.errors.AdcoreError``: every error derives from :class:`AdcoreRuntimeError`.
"""

from __future__ import annotations

__all__ = ["AdcoreRuntimeError", "ArtefactError", "ImageLoadError", "InvalidInputError", "BackendError"]


class AdcoreRuntimeError(Exception):
    """Base of every error adcore-runtime raises on purpose (``except AdcoreRuntimeError``)."""


class ArtefactError(AdcoreRuntimeError, ValueError):
    """The artefact is not an adcore export, is from a newer format, or is incomplete."""


class ImageLoadError(AdcoreRuntimeError, ValueError):
    """An image file cannot be read (corrupt, truncated, too large, not an image)."""


class InvalidInputError(AdcoreRuntimeError, ValueError):
    """An argument has the wrong type, shape or value."""


class BackendError(AdcoreRuntimeError, RuntimeError):
    """The inference backend is missing or failed (e.g. OpenVINO not installed)."""
