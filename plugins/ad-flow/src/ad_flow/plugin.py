"""Hook module of ad-flow: registers its detectors with adcore by lazy "module:Class" strings."""

from __future__ import annotations

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]


@hookimpl
def adcore_register_detectors(registry) -> None:
    """FastFlow and DifferNet, imported only when first built (FrEIA and torch load lazily)."""
    registry.add(
        "fastflow", "ad_flow.fastflow:FastFlow", category="flow_based",
        paper="Yu et al., FastFlow: Unsupervised Anomaly Detection and Localization via 2D Normalizing Flows, arXiv 2021",
        paradigm="2D normalizing flow per frozen feature level, NLL training, likelihood maps",
        default_backbone="tf_efficientnet_lite0", input_size=256, trains=True,
        description="per-level 2D FrEIA flows (alternating 3x3/1x1 subnets) on layer-normalised features",
        quick_params={"input_size": 64, "epochs": 4, "flow_steps": 2, "batch_size": 8},
    )
    registry.add(
        "differnet", "ad_flow.differnet:DifferNet", category="flow_based",
        paper="Rudolph et al., Same Same But DifferNet: Semi-Supervised Defect Detection with Normalizing Flows, WACV 2021",
        paradigm="multi-scale pooled features into a fully connected flow; NLL over test-time transforms",
        default_backbone="tf_efficientnet_lite0", input_size=256, trains=True,
        description="FrEIA flow on multi-scale image features; score = mean NLL over transforms, map = input gradient",
        quick_params={"input_size": 64, "epochs": 8, "coupling_blocks": 2, "fc_hidden": 64, "num_transforms": 2,
                      "view_pool": 4, "num_test_transforms": 2, "batch_size": 8},
    )
