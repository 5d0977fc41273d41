"""ad-example: a template third-party adcore plugin."""

__version__ = "0.1.0"
__all__ = ["__version__"]
