"""Declarative parameter constraints, aliases of renamed parameters, and FeatureDetector's one extractor."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from adcore.base import BaseDetector
from adcore.errors import InvalidInputError
from adcore.feature_detector import FeatureDetector
from adcore.params import Boolean, Check, Integer, Options, Real, Size, Stages, Text, validate_parameters


class Toy(BaseDetector):
    parameter_constraints = {"rate": [Real(0.0, 1.0, closed="right")], "mode": [Options("a", "b")],
                             "count": [Integer(1, 10), None]}
    parameter_aliases = {"lr": "rate", "n": ("count", lambda v: v * 2)}

    def __init__(self, *, rate: float = 0.5, mode: str = "a", count: int | None = None, input_size: int = 32,
                 seed: int = 0) -> None:
        self.rate = rate
        self.mode = mode
        self.count = count
        self.input_size = input_size
        self.seed = seed

    def _fit(self, stream) -> None:
        self.mean_ = torch.zeros(())

    def _predict(self, images):
        return images.mean((1, 2, 3)), images.mean(1)


@pytest.mark.parametrize("params,match", [
    ({"rate": 0.0}, r"rate must be a finite number in \(0, 1\]"),
    ({"rate": math.inf}, "rate must be"),
    ({"rate": float("nan")}, "rate must be"),
    ({"rate": True}, "rate must be"),
    ({"mode": "c"}, "mode must be one of 'a', 'b'"),
    ({"count": 0}, r"count must be an integer in \[1, 10\] or None"),
    ({"count": 2.0}, "count must be"),
    ({"input_size": 8}, "input_size must be"),
    ({"seed": -1}, r"seed must be an integer in \[0, \d+\] or None"),
])
def test_constraints_refuse_at_construction_with_the_allowed_range(params, match):
    with pytest.raises(InvalidInputError, match=match):
        Toy(**params)


def test_set_params_validates_and_rolls_back():
    toy = Toy()
    with pytest.raises(InvalidInputError, match="rate"):
        toy.set_params(rate=2.0)
    assert toy.rate == 0.5


def test_constraints_merge_over_the_mro():
    merged = Toy.constraints()
    assert {"rate", "mode", "count", "input_size", "seed", "batch_size"} <= set(merged)


def test_renamed_parameters_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match="'lr' was renamed to 'rate'"):
        toy = Toy(lr=0.25)
    assert toy.rate == 0.25 and toy.get_params()["rate"] == 0.25
    with pytest.warns(DeprecationWarning):
        assert Toy(n=3).count == 6
    with pytest.raises(InvalidInputError, match="give only rate="), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Toy(lr=0.1, rate=0.2)


def test_constraint_words():
    assert Stages(2).accepts(("layer2", "layer3")) and not Stages(2).accepts(("layer2",))
    assert not Stages().accepts("layer2") and not Stages().accepts(("a", "a"))
    assert Size().accepts((32, 48)) and not Size().accepts((32, 10_000))
    assert Boolean().accepts(False) and not Boolean().accepts(0)
    assert Text().accepts("resnet18") and not Text().accepts("") and not Text().accepts(" x")
    assert Check(lambda v: v % 2 == 0, "an even number").accepts(4)
    assert not Check(lambda v: v % 2 == 0, "an even number").accepts("x")  # a TypeError is a refusal
    with pytest.raises(ValueError):
        Real(0.0, math.inf)
    with pytest.raises(InvalidInputError, match="Owner: k must be an even number; got 3"):
        validate_parameters("Owner", {"k": 3}, {"k": [Check(lambda v: v % 2 == 0, "an even number")]})


class Probe(FeatureDetector):
    default_strides = (4, 8, 16)
    stage_pick = "first"

    def __init__(self, *, backbone: str = "tf_efficientnet_lite0", layers=None, weights: str | None = "pretrained",
                 checkpoint_path=None, input_size: int = 32, seed: int = 0) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.checkpoint_path = checkpoint_path
        self.input_size = input_size
        self.seed = seed

    def _fit(self, stream) -> None:
        self.mean_ = torch.zeros(())

    def _predict(self, images):
        features = self.extractor(images)
        level = next(iter(features.values())).mean(1)
        return level.flatten(1).amax(1), level


def test_feature_detector_resolves_layers_and_shares_its_extractor():
    first, second = Probe(), Probe()
    assert first.resolved_layers() == ("blocks.1", "blocks.2", "blocks.4")
    assert first.extractor is second.extractor  # one shared frozen instance
    first.set_params(layers=("blocks.2",))
    assert first.extractor is not second.extractor and first.extractor.layer_names == ["blocks.2"]
    student = first.build_extractor(pretrained=False, trainable=True)
    assert student is not first.extractor and student.trainable and student.weights_source == "random"


@pytest.mark.parametrize("params,match", [({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
                                          ({"layers": "blocks.2"}, "layers must be a non-empty sequence"),
                                          ({"backbone": ""}, "backbone must be"),
                                          ({"checkpoint_path": 3}, "checkpoint_path must be a file path or None")])
def test_feature_detector_parameters_are_checked(params, match):
    with pytest.raises(InvalidInputError, match=match):
        Probe(**params)
