"""``adcore predict`` for a production line: inputs, decoding, regions, heatmaps, streaming outputs.

:func:`run_predictions` runs a whole pipeline (see :mod:`adcore.line.pipeline`); the pieces are
usable on their own: :func:`collect_inputs` (unique relative names), :func:`find_regions` (defect
regions of a map), :class:`RunOutputs` (Contract B files, resumable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcore.lazy import lazy_exports

__all__ = ["RESULT_KEYS", "SCORES_HEADER", "RunOutputs", "check_output_folder", "read_results", "PredictOptions",
           "RunSummary", "run_predictions", "Region", "find_regions", "InputImage", "collect_inputs"]

if TYPE_CHECKING:
    from adcore.line.outputs import RESULT_KEYS, SCORES_HEADER, RunOutputs, check_output_folder, read_results
    from adcore.line.pipeline import PredictOptions, RunSummary, run_predictions
    from adcore.line.regions import Region, find_regions
    from adcore.line.sources import InputImage, collect_inputs

# the pipeline needs torch; the listing and the output folder do not (a Ray driver starts Ray first)
__getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(("RESULT_KEYS", "SCORES_HEADER", "RunOutputs", "check_output_folder", "read_results"),
                    "adcore.line.outputs"),
    **dict.fromkeys(("PredictOptions", "RunSummary", "run_predictions"), "adcore.line.pipeline"),
    **dict.fromkeys(("Region", "find_regions"), "adcore.line.regions"),
    **dict.fromkeys(("InputImage", "collect_inputs"), "adcore.line.sources")}, globals(), __all__)
