"""The hook module named by this distribution's ``adcore`` entry point."""

from adcore import hookimpl

__all__ = ["adcore_register_detectors"]


@hookimpl
def adcore_register_detectors(registry):
    registry.add(
        "example_gaussian",
        "ad_example.gaussian:GaussianPatchDetector",  # lazy: imported only when built
        category="example",
        paper="(template) diagonal Gaussian over pretrained patch features",
        default_backbone="tf_efficientnet_lite0",
        input_size=256,
        trains=False,
        quick_params={"input_size": 64},
    )
