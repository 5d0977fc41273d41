"""ad-stat: PaDiM and STFPM (statistical detectors), registered with adcore through the ``adcore`` entry point."""

__version__ = "0.1.0"

__all__ = ["__version__"]
