"""Parameters of both flow detectors: default stages, ranges, renamed names, local backbone weights."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from ad_flow.differnet import DifferNet
from ad_flow.fastflow import FastFlow
from adcore.backbones import DEFAULT_BACKBONE, FeatureExtractor, deepest_stage
from adcore.errors import InvalidInputError, ModelFileError
from adcore.testing import make_normal_images

#: small, fast settings (a few seconds per fit on 64 px images)
TINY = {
    FastFlow: dict(input_size=64, epochs=2, flow_steps=2, batch_size=4),
    DifferNet: dict(input_size=64, epochs=2, coupling_blocks=2, fc_hidden=32, num_transforms=2, view_pool=2,
                    num_test_transforms=2, batch_size=4),
}


def test_default_layers_are_the_stages_the_papers_use() -> None:
    # FastFlow: the first stage at strides 4/8/16 (ResNet layer1-3); DifferNet: the deepest stage
    assert FastFlow().resolved_layers() == ("blocks.1", "blocks.2", "blocks.4")
    assert FastFlow(backbone="resnet18", weights=None).resolved_layers() == ("layer1", "layer2", "layer3")
    assert DifferNet().resolved_layers() == ("blocks.6",)
    assert DifferNet(backbone="resnet18", weights=None).resolved_layers() == ("layer4",)
    # the old explicit default names the same stages, so it shares the same frozen extractor
    assert FastFlow(layers=("blocks.1", "blocks.2", "blocks.4")).extractor is FastFlow().extractor
    assert DifferNet(layers=("blocks.6",)).extractor is DifferNet().extractor
    assert DifferNet().extractor.layer_names == ["blocks.6"]


def test_differnet_reads_exactly_one_stage() -> None:
    for layers in (("blocks.5", "blocks.6"), "blocks.6", ()):
        with pytest.raises(InvalidInputError, match=r"layers must be one backbone stage as a one-element tuple"):
            DifferNet(layers=layers)
    assert DifferNet(layers=(5,)).resolved_layers() == (5,)


def test_ranges_are_named_in_the_message() -> None:
    with pytest.raises(InvalidInputError, match=r"FastFlow: epochs must be an integer in \[1, 100000\]; got 0"):
        FastFlow(epochs=0)
    with pytest.raises(InvalidInputError, match="epochs must be"):
        FastFlow(epochs=True)  # a boolean is not a count
    with pytest.raises(InvalidInputError, match=r"learning_rate must be a finite number in \(0, 10\]; got 0.0"):
        FastFlow(learning_rate=0.0)
    with pytest.raises(InvalidInputError, match=r"DifferNet: brightness must be a finite number in \[0, 0.99\]"):
        DifferNet(brightness=1.0)
    with pytest.raises(InvalidInputError, match=r"view_pool must be an integer in \[0, 4096\]"):
        DifferNet(view_pool=-1)
    assert FastFlow(weight_decay=0.0).weight_decay == 0.0 and DifferNet(view_pool=0, sigma=0.0).sigma == 0.0


@pytest.mark.parametrize("cls, name, value", [
    (FastFlow, "learning_rate", math.nan), (FastFlow, "clamp", math.inf), (FastFlow, "hidden_ratio", 1e300),
    (FastFlow, "weight_decay", -math.inf), (FastFlow, "epochs", 10**12), (FastFlow, "flow_steps", 10**6),
    (DifferNet, "sigma", math.nan), (DifferNet, "rotation_degrees", math.inf), (DifferNet, "clamp", 1e300),
    (DifferNet, "learning_rate", math.inf), (DifferNet, "fc_hidden", 2**40), (DifferNet, "num_test_transforms", 10**9),
    (DifferNet, "num_scales", 64), (DifferNet, "input_size", 10**6),
])
def test_nan_infinite_and_huge_values_are_refused_at_construction(cls: type, name: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=f"{cls.__name__}: {name} must be"):
        cls(**{name: value})
    detector = cls()
    with pytest.raises(InvalidInputError, match=f"{name} must be"):
        detector.set_params(**{name: value})
    assert getattr(detector, name) == getattr(cls(), name)  # the refused value did not stay set


@pytest.mark.parametrize("cls, old, new, value, stored", [
    (FastFlow, "lr", "learning_rate", 0.01, 0.01),
    (DifferNet, "lr", "learning_rate", 0.01, 0.01),
    (DifferNet, "n_scales", "num_scales", 2, 2),
    (DifferNet, "n_transforms", "num_transforms", 3, 3),
    (DifferNet, "n_transforms_test", "num_test_transforms", 5, 5),
    (DifferNet, "layer", "layers", "blocks.5", ("blocks.5",)),
    (DifferNet, "layer", "layers", None, None),
])
def test_renamed_parameters_still_work_with_a_warning(cls: type, old: str, new: str, value, stored) -> None:
    with pytest.warns(DeprecationWarning, match=f"'{old}' was renamed to '{new}'"):
        detector = cls(**{old: value})
    params = detector.get_params()
    assert params[new] == stored and old not in params
    with pytest.raises(InvalidInputError, match=f"give only {new}="), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cls(**{old: value, new: stored})


def test_a_model_file_written_with_the_old_names_still_loads(tmp_path: Path, monkeypatch) -> None:
    images = make_normal_images(4, (64, 64), seed=6)
    detector = DifferNet(**TINY[DifferNet]).fit(images)
    old_names = {"layers": "layer", "learning_rate": "lr", "num_scales": "n_scales", "num_transforms": "n_transforms",
                 "num_test_transforms": "n_transforms_test"}
    current = detector.get_params()
    written = {old_names.get(k, k): v for k, v in current.items()}
    written["layer"] = "blocks.6"  # before the rename the stage was a plain name
    monkeypatch.setattr(detector, "get_params", lambda deep=True: written)  # what the old version saved
    detector.save(tmp_path / "old.adcore")
    monkeypatch.undo()
    with pytest.warns(DeprecationWarning) as caught:
        loaded = DifferNet.load(tmp_path / "old.adcore")
    assert {f"'{old}' was renamed to '{new}'" for new, old in old_names.items()} \
        <= {str(w.message).split(": parameter ")[1].split(";")[0] for w in caught}
    assert loaded.get_params() == {**current, "layers": ("blocks.6",)}
    probe = make_normal_images(2, (64, 64), seed=7)
    assert torch.equal(loaded.predict(probe).pred_score, detector.predict(probe).pred_score)


@pytest.fixture(scope="module")
def lite0_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline provider's Lite0 weights written as a safetensors state dict of timm's full model."""
    import timm
    from safetensors.torch import save_file

    provided = FeatureExtractor(DEFAULT_BACKBONE, (deepest_stage(DEFAULT_BACKBONE),), weights="pretrained",
                                trainable=True)
    full = timm.create_model(DEFAULT_BACKBONE, pretrained=False)
    result = full.load_state_dict(provided.model.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith(("conv_head", "bn2", "classifier")) for k in result.missing_keys)
    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("cls", [FastFlow, DifferNet])
def test_checkpoint_path_gives_the_predictions_of_the_same_weights_from_the_provider(cls: type,
                                                                                      lite0_checkpoint: Path) -> None:
    images = make_normal_images(4, (64, 64), seed=8)
    probe = make_normal_images(2, (64, 64), seed=9)
    from_provider = cls(**TINY[cls]).fit(images)
    from_file = cls(**TINY[cls], checkpoint_path=lite0_checkpoint).fit(images)
    assert from_provider.extractor.weights_source == f"offline:{DEFAULT_BACKBONE}"
    assert from_file.extractor.weights_source == f"file:{lite0_checkpoint}"
    assert from_file.extractor is not from_provider.extractor
    expected, got = from_provider.predict(probe), from_file.predict(probe)
    assert torch.equal(got.pred_score, expected.pred_score)
    assert torch.equal(got.anomaly_map, expected.anomaly_map)
    with pytest.raises(ModelFileError, match="does not exist"):
        cls(**TINY[cls], checkpoint_path=lite0_checkpoint.with_name("missing.safetensors")).fit(images)
