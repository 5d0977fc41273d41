import math
import re

import pytest
import torch

from ad_example.gaussian import GaussianPatchDetector
from adcore.errors import InvalidInputError
from adcore.testing import check_detector, make_normal_images


def test_gaussian_patch_detector_conforms():
    report = check_detector(lambda: GaussianPatchDetector(input_size=64))
    assert report.ok and "pasted defect scores higher" in report.passed


@pytest.mark.parametrize(("backbone", "stage"), [("tf_efficientnet_lite0", "blocks.2"), ("resnet18", "layer2")])
def test_default_stage_is_the_deepest_at_stride_8(backbone, stage):
    detector = GaussianPatchDetector(backbone=backbone)
    assert detector.layers is None and detector.resolved_layers() == (stage,)


def test_old_layer_name_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'layer' was renamed to 'layers'"):
        detector = GaussianPatchDetector(layer="blocks.4")
    assert detector.layers == ("blocks.4",) and detector.get_params()["layers"] == ("blocks.4",)


@pytest.mark.parametrize(("params", "fragment"), [
    ({"sigma": math.nan}, "sigma must be a finite number in [0, 64]"),
    ({"sigma": math.inf}, "sigma must be a finite number in [0, 64]"),
    ({"sigma": -1.0}, "sigma must be a finite number in [0, 64]"),
    ({"layers": ("blocks.2", "blocks.4")}, "layers must be 1 distinct backbone stage"),
    ({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
])
def test_bad_values_are_refused_at_construction(params, fragment):
    with pytest.raises(InvalidInputError, match=re.escape(fragment)):
        GaussianPatchDetector(**params)


def test_checkpoint_path_gives_the_providers_predictions(tmp_path):
    import timm
    from safetensors.torch import save_file

    from adcore.backbones import FeatureExtractor, deepest_stage

    # a local file holding the state dict of the whole timm model (here: the offline weights)
    whole = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    whole.update(FeatureExtractor("tf_efficientnet_lite0", [deepest_stage("tf_efficientnet_lite0")],
                                  trainable=True).model.state_dict())
    save_file({k: v.contiguous() for k, v in whole.items()}, str(tmp_path / "lite0.safetensors"))
    images = make_normal_images(6, (64, 64))
    from_file = GaussianPatchDetector(input_size=64, checkpoint_path=tmp_path / "lite0.safetensors").fit(images)
    from_provider = GaussianPatchDetector(input_size=64).fit(images)
    assert from_file.extractor is not from_provider.extractor
    assert from_file.extractor.weights_source.startswith("file:")
    assert torch.equal(from_file.predict(images).anomaly_map, from_provider.predict(images).anomaly_map)
