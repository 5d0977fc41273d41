"""Parameters of the reconstruction family: declared constraints, renamed names, backbone stages and files."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from adcore.errors import InvalidInputError
from adcore.factory import get_model
from adcore.testing import make_normal_images

NAMES = ["vanilla_ae", "unet_ae", "vae", "beta_vae", "wae", "resnet_ae"]
RESNET_TINY = {"input_size": 64, "epochs": 1, "base_channels": 4, "latent_channels": 8, "batch_size": 8,
               "residual": False}


@pytest.mark.parametrize("name", NAMES)
def test_every_constructor_parameter_has_a_declared_constraint(name: str) -> None:
    detector = get_model(name)
    assert set(detector.get_params()) <= set(type(detector).constraints())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300])
@pytest.mark.parametrize("parameter", ["learning_rate", "sigma", "topk_fraction", "weight_decay"])
def test_non_finite_and_huge_shared_values_are_refused_at_construction(name: str, parameter: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=f"{parameter} must be a finite number in"):
        get_model(name, **{parameter: value})


@pytest.mark.parametrize(("name", "params", "fragment"), [
    ("vanilla_ae", {"latent_dim": 10**9}, "latent_dim must be an integer in [1, 16384]"),
    ("vanilla_ae", {"epochs": 10**9}, "epochs must be an integer in [1, 100000]"),
    ("vae", {"beta": math.nan}, "beta must be a finite number in (0, 10000]"),
    ("beta_vae", {"beta": math.inf}, "beta must be a finite number in (1, 10000]"),
    ("wae", {"mmd_weight": math.inf}, "mmd_weight must be a finite number in [0, 1e+06]"),
    ("unet_ae", {"skip_dropout": math.nan}, "skip_dropout must be a finite number in [0, 1)"),
    ("unet_ae", {"depth": 1}, "depth must be an integer in [2, 8]"),
    ("resnet_ae", {"encoder_learning_rate": math.inf}, "encoder_learning_rate must be a finite number in (0, 10]"),
    ("resnet_ae", {"fine_tune": 1}, "fine_tune must be True or False"),
    ("resnet_ae", {"error": "perceptual"}, "error must be one of 'l2', 'ssim', 'l2_distance', 'feature'"),
    ("resnet_ae", {"layers": ("blocks.2", "blocks.4")}, "layers must be 1 distinct backbone stage"),
    ("resnet_ae", {"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
    ("vanilla_ae", {"error": "feature"}, "error must be one of 'l2', 'ssim'"),  # only resnet_ae has features
    ("vae", {"seed": None}, "seed must be an integer in"),  # training shuffles under the seed
])
def test_model_specific_values_are_refused_with_the_allowed_range(name: str, params: dict, fragment: str) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(fragment)):
        get_model(name, **params)


def test_set_params_refuses_and_keeps_the_previous_value() -> None:
    detector = get_model("wae")
    with pytest.raises(InvalidInputError, match="kernel must be one of 'imq', 'rbf'"):
        detector.set_params(kernel="laplace")
    assert detector.kernel == "imq"


# -- resnet_ae: a FeatureDetector ----------------------------------------------------------------------
@pytest.mark.parametrize(("backbone", "decoded", "perceptual"), [
    ("tf_efficientnet_lite0", ("blocks.4",), ("blocks.1", "blocks.2", "blocks.4")),
    ("resnet18", ("layer3",), ("layer1", "layer2", "layer3")),
])
def test_resnet_ae_default_stage_is_the_deepest_at_stride_16(backbone: str, decoded: tuple, perceptual: tuple) -> None:
    detector = get_model("resnet_ae", backbone=backbone)
    assert detector.layers is None
    assert detector.resolved_layers() == decoded
    assert detector.extractor_layers() == perceptual  # network order, the decoded stage last


def test_resnet_ae_old_layer_name_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="'layer' was renamed to 'layers'"):
        old = get_model("resnet_ae", layer="blocks.2")
    assert old.layers == ("blocks.2",) and old.get_params()["layers"] == ("blocks.2",)
    assert old.extractor_layers() == ("blocks.1", "blocks.2")  # the decoded stage is the stride-8 one itself
    with pytest.warns(DeprecationWarning):
        by_index = get_model("resnet_ae", layer=3)
    assert by_index.layers == (3,) and by_index.decoded_stage() == "blocks.4"
    with pytest.raises(InvalidInputError, match="give only layers="), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_model("resnet_ae", layer="blocks.2", layers=("blocks.4",))


def test_resnet_ae_detectors_share_one_frozen_extractor() -> None:
    first, second = get_model("resnet_ae"), get_model("resnet_ae", error="l2")
    assert first.extractor is second.extractor
    assert first.extractor.layer_names == ["blocks.1", "blocks.2", "blocks.4"] and not first.extractor.trainable


def test_resnet_ae_checkpoint_path_gives_the_providers_predictions(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    from adcore.backbones import FeatureExtractor, deepest_stage

    # a user's local file: the state dict of the whole timm model, holding the provider's weights
    whole = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    pretrained = FeatureExtractor("tf_efficientnet_lite0", [deepest_stage("tf_efficientnet_lite0")],
                                  trainable=True).model.state_dict()
    assert set(pretrained) <= set(whole)
    whole.update(pretrained)
    save_file({k: v.contiguous() for k, v in whole.items()}, str(tmp_path / "lite0.safetensors"))

    images = make_normal_images(8, (64, 64))
    from_file = get_model("resnet_ae", checkpoint_path=str(tmp_path / "lite0.safetensors"), **RESNET_TINY).fit(images)
    from_provider = get_model("resnet_ae", **RESNET_TINY).fit(images)
    assert from_file.weights_source_.startswith("file:") and from_provider.weights_source_.startswith("offline:")
    first, second = from_file.predict(images[:3]), from_provider.predict(images[:3])
    assert torch.equal(first.pred_score, second.pred_score) and torch.equal(first.anomaly_map, second.anomaly_map)
    random = get_model("resnet_ae", weights=None, **RESNET_TINY).fit(images)
    assert not torch.equal(random.predict(images[:3]).pred_score, second.pred_score)
