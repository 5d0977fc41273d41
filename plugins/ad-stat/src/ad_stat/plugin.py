"""Hook module of ad-stat: registers its detectors with adcore by lazy "module:Class" strings."""

from __future__ import annotations

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]


@hookimpl
def adcore_register_detectors(registry) -> None:
    """Register PaDiM and STFPM (imported only when built, so ``adcore list`` stays light)."""
    registry.add(
        "padim",
        "ad_stat.padim:Padim",
        category="statistical",
        paper="Defard et al., PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and "
              "Localization, ICPR 2021",
        paradigm="per-position multivariate Gaussian over multi-scale pretrained features, Mahalanobis distance",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=False,
        description="Gaussian per patch position over 3-stage features (random 100 channels); Mahalanobis map",
        quick_params={"input_size": 64, "num_features": 32},
    )
    registry.add(
        "stfpm",
        "ad_stat.stfpm:Stfpm",
        category="statistical",
        paper="Wang et al., Student-Teacher Feature Pyramid Matching for Anomaly Detection, BMVC 2021",
        paradigm="knowledge distillation: student regresses a frozen teacher's normalised feature pyramid",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=True,
        description="student from scratch matches a pretrained teacher at 3 levels; product of level errors",
        quick_params={"input_size": 64, "epochs": 5, "batch_size": 4},
    )
