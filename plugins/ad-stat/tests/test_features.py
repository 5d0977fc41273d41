"""The shared feature plumbing: default stages, the truncated extractor, batch-norm folding."""

from __future__ import annotations

import torch
from torch import nn

from ad_stat.features import build_extractor, resolve_layers
from adcore.backbones import FeatureExtractor

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


def test_default_layers_follow_the_papers_strides() -> None:
    assert resolve_layers("tf_efficientnet_lite0", None) == LAYERS
    assert resolve_layers("resnet18", None) == ["layer1", "layer2", "layer3"]
    assert resolve_layers("tf_efficientnet_lite0", ("blocks.2",)) == ["blocks.2"]


def test_truncated_extractor_returns_the_same_features_with_fewer_blocks() -> None:
    torch.manual_seed(0)
    full = FeatureExtractor("tf_efficientnet_lite0", LAYERS, weights=None, trainable=True).eval()
    cut = build_extractor("tf_efficientnet_lite0", LAYERS, weights=None, trainable=True).eval()
    cut.model.load_state_dict({k: v for k, v in full.model.state_dict().items() if k in cut.model.state_dict()})
    assert len(cut.model.blocks) == 5 < len(full.model.blocks)  # blocks.5 and blocks.6 are gone
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = full(images), cut(images)
    assert list(got) == LAYERS
    for name in LAYERS:
        # same weights, same ops; with several threads oneDNN may pick another conv kernel (~1e-5 apart)
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale)


def test_frozen_extractor_folds_batch_norms_without_changing_features() -> None:
    reference = FeatureExtractor("tf_efficientnet_lite0", LAYERS)
    folded = build_extractor("tf_efficientnet_lite0", LAYERS)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(images), folded(images)
    for name in LAYERS:
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale)


def test_trainable_extractor_keeps_its_batch_norms() -> None:
    student = build_extractor("tf_efficientnet_lite0", LAYERS, weights=None, trainable=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in student.modules())
    assert all(p.requires_grad for p in student.parameters())
