"""FastFlow: conformance, the paper's architecture, training behaviour, any-backbone support."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ad_flow.fastflow import FastFlow
from adcore.errors import InvalidInputError
from adcore.testing import build_registered, check_detector, make_normal_images


def test_conformance_with_registered_quick_params() -> None:
    check_detector(lambda: build_registered("fastflow"), name="fastflow")


@pytest.fixture(scope="module")
def fitted() -> FastFlow:
    images = make_normal_images(8, (64, 64), seed=3)
    return FastFlow(input_size=64, epochs=6, flow_steps=4, batch_size=4).fit(images)


def test_architecture_follows_the_paper(fitted: FastFlow) -> None:
    # Lite0 stages blocks.1/2/4 have strides 4/8/16 and 24/40/112 channels
    assert fitted.feature_shapes_ == [[24, 16, 16], [40, 8, 8], [112, 4, 4]]
    for norm, shape in zip(fitted.head_.norms, fitted.feature_shapes_, strict=True):
        assert isinstance(norm, nn.LayerNorm) and list(norm.normalized_shape) == shape
    for flow in fitted.head_.flows:
        assert len(flow.module_list) == 4
        kernels = [next(m for m in block.subnet if isinstance(m, nn.Conv2d)).kernel_size[0] for block in flow.module_list]
        assert kernels == [3, 1, 3, 1]
    assert FastFlow().flow_steps == 8 and FastFlow().learning_rate == 1e-3 and FastFlow().weight_decay == 1e-5


def test_training_lowers_the_negative_log_likelihood(fitted: FastFlow) -> None:
    loss = fitted.history_["loss"]
    assert len(loss) == 6 and loss[-1] < loss[0]


def test_map_is_the_negated_level_likelihood_averaged_over_levels(fitted: FastFlow) -> None:
    image = make_normal_images(1, (64, 64), seed=9)
    prediction = fitted.predict(image)
    # a likelihood in (0, 1], negated and averaged: the map lives in [-1, 0); the score is its max
    assert float(prediction.anomaly_map.max()) < 0 and float(prediction.anomaly_map.min()) >= -1
    assert torch.allclose(prediction.pred_score, prediction.anomaly_map.flatten(1).amax(1))


def test_any_timm_cnn_backbone_works() -> None:
    # anomalib accepts four backbones; any timm CNN with features_only works here (random weights: offline test)
    detector = FastFlow(backbone="resnet18", layers=("layer1", "layer2", "layer3"), weights=None, input_size=64,
                        epochs=1, flow_steps=2)
    detector.fit(make_normal_images(4, (64, 64)))
    assert detector.feature_shapes_ == [[64, 16, 16], [128, 8, 8], [256, 4, 4]]
    assert detector.predict(make_normal_images(2, (48, 80))).anomaly_map.shape == (2, 48, 80)


@pytest.mark.parametrize("params, message", [
    ({"flow_steps": 0}, "flow_steps"), ({"epochs": 0}, "epochs"), ({"hidden_ratio": 0.0}, "hidden_ratio"),
    ({"learning_rate": -1.0}, "learning_rate"), ({"layers": ()}, "layers"), ({"layers": "blocks.1"}, "layers"),
    ({"layers": ("blocks.1", "blocks.1")}, "layers must be a non-empty sequence of distinct"), ({"batch_size": 0}, "batch_size"), ({"clamp": 0}, "clamp"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        FastFlow(**params)


def test_unknown_layer_names_the_stages() -> None:
    with pytest.raises(InvalidInputError, match="blocks.2"):
        FastFlow(layers=("nope",), input_size=64, epochs=1).fit(make_normal_images(2, (64, 64)))
