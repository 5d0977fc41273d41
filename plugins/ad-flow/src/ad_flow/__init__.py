"""ad-flow: FastFlow and DifferNet (normalizing-flow detectors), registered with adcore through the ``adcore`` entry point."""

__version__ = "0.1.0"

__all__ = ["__version__"]
