"""Exceptions a user can act on. Each message says what was wrong, where, and what to do."""

from __future__ import annotations

__all__ = ["AdcoreError", "NotFittedError", "InvalidInputError", "ModelFileError", "ImageLoadError", "DatasetLayoutError",
           "DetectorOutputError"]


class AdcoreError(Exception):
    """Base class of adcore's own errors."""


class NotFittedError(AdcoreError, RuntimeError):
    """``predict``/``calibrate``/``save`` called before ``fit``."""


class InvalidInputError(AdcoreError, ValueError):
    """Images or parameters that a detector cannot use as given."""


class ModelFileError(AdcoreError, ValueError):
    """A model file that is missing, truncated, tampered with, or from an unknown format/plugin."""


class ImageLoadError(AdcoreError, OSError):
    """An image file that cannot be read; the message names the file."""


class DatasetLayoutError(AdcoreError, FileNotFoundError):
    """A dataset folder that does not have the expected layout."""


class DetectorOutputError(AdcoreError, RuntimeError):
    """A detector returned scores or maps of the wrong shape, or NaN/Inf: a bug in that detector."""
