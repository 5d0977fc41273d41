"""adcore's version, in a module of its own so that lower layers need not import the package's front door."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
