"""Out-of-range parameters are rejected at construction, naming the allowed range."""

from __future__ import annotations

import pytest

from adcore.errors import InvalidInputError


@pytest.mark.parametrize("value", [8, 15, 5000, 0, -32, (32,), (32, 32, 32), "abc", True, 32.5, None, (16, 4097)])
def test_input_size_out_of_range(mean_detector_class, value):
    with pytest.raises(InvalidInputError, match=r"input_size must be (between 16 and 4096 pixels per side|an int or "
                                                r"\(height, width\))"):
        mean_detector_class(input_size=value)


@pytest.mark.parametrize("value", [16, 4096, (16, 4096), [40, 24]])
def test_input_size_in_range(mean_detector_class, value):
    assert mean_detector_class(input_size=value).input_size == value


def test_example_detector_rejects_negative_sigma_and_bad_input_size():
    from ad_example.gaussian import GaussianPatchDetector

    with pytest.raises(InvalidInputError, match=r"sigma must be a finite number in \[0, 64\]; got -1"):
        GaussianPatchDetector(sigma=-1)
    with pytest.raises(InvalidInputError, match=r"input_size must be between 16 and 4096 pixels per side, as an int or \(height, width\); got 8"):
        GaussianPatchDetector(input_size=8)


def test_registry_factory_validates_too():
    import adcore

    with pytest.raises(InvalidInputError, match="between 16 and 4096"):
        adcore.get_model("example_gaussian", input_size=4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sigmaa'"):
        adcore.get_model("example_gaussian", sigmaa=2.0)


def test_subclass_validation_runs_once_after_the_most_derived_init(mean_detector_class):
    with pytest.raises(InvalidInputError, match=r"scale must be a number in \(0, 10\], got 0"):
        mean_detector_class(scale=0)
    with pytest.raises(InvalidInputError, match=r"scale must be a number in \(0, 10\], got 'big'"):
        mean_detector_class(scale="big")

    calls = []

    class Derived(mean_detector_class):
        def __init__(self, *, input_size: int = 32, scale: float = 1.0, seed: int = 0, extra: int = 1) -> None:
            super().__init__(input_size=input_size, scale=scale, seed=seed)
            self.extra = extra  # set after super().__init__: validation must wait for it

        def _validate_params(self) -> None:
            calls.append(self.extra)
            super()._validate_params()
            if self.extra < 1:
                raise InvalidInputError(f"extra must be >= 1, got {self.extra}")

    assert Derived(extra=3).extra == 3 and calls == [3]
    with pytest.raises(InvalidInputError, match="extra must be >= 1, got 0"):
        Derived(extra=0)
    with pytest.raises(InvalidInputError, match=r"scale must be a number in \(0, 10\]"):
        Derived(scale=11)


def test_set_params_validates(mean_detector_class):
    detector = mean_detector_class()
    with pytest.raises(InvalidInputError, match=r"MeanDetector has no parameter 'scal'; valid: \['device', 'input_size', 'precision', 'scale', 'seed', 'tile_input_size', 'tile_overlap', 'tile_size'\]"):
        detector.set_params(scal=2)
    with pytest.raises(InvalidInputError, match="input_size must be between 16 and 4096"):
        detector.set_params(input_size=2)


def test_fit_revalidates_parameters_changed_by_assignment(mean_detector_class, normal_images):
    detector = mean_detector_class()
    detector.scale = -1  # bypassing set_params
    with pytest.raises(InvalidInputError, match="scale must be a number"):
        detector.fit(normal_images)


def test_other_core_arguments(mean_detector_class, normal_images):
    from adcore.metrics import aupro

    detector = mean_detector_class().fit(normal_images)
    for fpr in (-0.1, 1.0, 1.5):
        with pytest.raises(InvalidInputError, match=rf"target_fpr must be in \[0, 1\), got {fpr}"):
            detector.calibrate(normal_images, target_fpr=fpr)
    with pytest.raises(ValueError, match=r"fpr_limit must be in \(0, 1\], got 0"):
        aupro([[[0, 1]]], [[[0.1, 0.2]]], fpr_limit=0)
    with pytest.raises(InvalidInputError, match="batch_size must be a positive integer"):
        from adcore.inputs import ImageStream

        ImageStream(normal_images, (32, 32), batch_size=0)
