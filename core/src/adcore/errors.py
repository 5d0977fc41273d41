"""Exceptions a user can act on. Each message says what was wrong, where, and what to do.

Every exception adcore or a first-party plugin raises derives from :class:`AdcoreError`, so a
caller (the CLI among them) can catch adcore's errors in one clause; each also keeps the standard
library base a Python user would expect (``ValueError`` for a bad value, ``OSError`` for a file).
"""

from __future__ import annotations

__all__ = ["AdcoreError", "NotFittedError", "InvalidInputError", "ModelFileError", "ImageLoadError", "DatasetLayoutError",
           "DetectorOutputError", "BackboneWeightsError", "TrainingDivergedError", "PluginError", "ConfigurationError",
           "OutputPathError", "InvalidArgumentError", "DeviceUnavailableError"]


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


class BackboneWeightsError(AdcoreError, RuntimeError):
    """Pretrained weights were asked for but could not be loaded; never silently replaced by random ones."""


class TrainingDivergedError(AdcoreError, FloatingPointError):
    """A training loss became NaN or Inf; the message names the detector, the epoch and what to change."""


class PluginError(AdcoreError, RuntimeError):
    """A plugin could not be loaded or behaved wrongly; the message names its distribution."""


class ConfigurationError(AdcoreError, ValueError):
    """A command-line option, ``key=value`` parameter, dataset spec or benchmark config that cannot be used."""


class OutputPathError(AdcoreError, OSError):
    """An output path that cannot be written (a folder where a file is expected, read-only, a full disk)."""


class InvalidArgumentError(AdcoreError, TypeError):
    """An argument of the wrong kind: a keyword a detector does not take, a registration target that is
    not callable, or a plugin factory that built something other than a detector."""


class DeviceUnavailableError(AdcoreError, RuntimeError):
    """A device was asked for (``device="cuda"``, ``--device mps``) that this machine does not have; the
    message names the devices it does have."""
