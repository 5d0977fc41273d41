"""Hook module of ad-memory: registers its detectors with adcore by lazy "module:Class" strings."""

from __future__ import annotations

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]


@hookimpl
def adcore_register_detectors(registry) -> None:
    """PatchCore and SPADE; nothing heavy is imported until a detector is built."""
    registry.add(
        "patchcore",
        "ad_memory.patchcore:PatchCore",
        category="memory_based",
        paper="Roth et al., Towards Total Recall in Industrial Anomaly Detection, CVPR 2022",
        paradigm="memory bank of locally aware patch features, greedy coreset, nearest-neighbour distance",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=False,
        description="PatchCore: coreset memory bank of mid-level patch features, faiss kNN scoring",
        quick_params={"input_size": 64, "coreset_ratio": 0.25},
    )
    registry.add(
        "spade",
        "ad_memory.spade:SPADE",
        category="memory_based",
        paper="Cohen & Hoshen, Sub-Image Anomaly Detection with Deep Pyramid Correspondences, arXiv 2020",
        paradigm="kNN over global features, then pixel kNN against the feature pyramids of the nearest images",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=False,
        description="SPADE: image kNN on pooled features, pixel kNN on the K nearest images' feature pyramids",
        quick_params={"input_size": 64},
    )
