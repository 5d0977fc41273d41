"""``adcore predict`` for a production line: inputs, decoding, regions, heatmaps, streaming outputs.

:func:`run_predictions` runs a whole pipeline (see :mod:`adcore.line.pipeline`); the pieces are
usable on their own: :func:`collect_inputs` (unique relative names), :func:`find_regions` (defect
regions of a map), :class:`RunOutputs` (Contract B files, resumable).
"""

from __future__ import annotations

from adcore.line.outputs import RESULT_KEYS, SCORES_HEADER, RunOutputs, check_output_folder, read_results
from adcore.line.pipeline import PredictOptions, RunSummary, run_predictions
from adcore.line.regions import Region, find_regions
from adcore.line.sources import InputImage, collect_inputs

__all__ = ["RESULT_KEYS", "SCORES_HEADER", "RunOutputs", "check_output_folder", "read_results", "PredictOptions",
           "RunSummary", "run_predictions", "Region", "find_regions", "InputImage", "collect_inputs"]
