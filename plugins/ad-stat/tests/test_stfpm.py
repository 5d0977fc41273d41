"""STFPM: conformance, loss and maps as in the paper, frozen teacher, optimiser settings, early stopping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ad_stat.stfpm import Stfpm, level_distances
from adcore.backbones import FeatureExtractor
from adcore.errors import InvalidInputError
from adcore.ops import upsample
from adcore.testing import build_registered, check_detector, make_normal_images, paste_defects

SIZE = 64


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_normal_images(8, (SIZE, SIZE), seed=3)


@pytest.fixture(scope="module")
def fitted(images: torch.Tensor) -> Stfpm:
    return Stfpm(input_size=SIZE, epochs=4, batch_size=4, seed=1).fit(images)


def test_conformance_with_quick_params() -> None:
    check_detector(lambda: build_registered("stfpm"))


def test_level_distance_is_half_squared_distance_of_normalised_features() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 5, 3, 4, generator=generator), torch.randn(2, 5, 3, 4, generator=generator)
    (distance,) = level_distances([F.normalize(teacher, dim=1)], [student])
    t = teacher / teacher.norm(dim=1, keepdim=True)
    s = student / student.norm(dim=1, keepdim=True)
    torch.testing.assert_close(distance, 0.5 * ((t - s) ** 2).sum(1))
    assert bool((distance >= 0).all()) and bool((distance <= 2 + 1e-6).all())  # unit vectors: ½‖a−b‖² ≤ 2
    (same,) = level_distances([F.normalize(teacher, dim=1)], [3.0 * teacher])  # scale-free by design
    assert float(same.abs().max()) < 1e-6


def test_teacher_is_pretrained_and_frozen_student_trained_from_scratch(fitted: Stfpm, images: torch.Tensor) -> None:
    teacher = fitted.extractor
    assert teacher.weights_source.startswith("offline:") and not teacher.trainable
    assert all(not p.requires_grad for p in teacher.parameters())
    untouched = FeatureExtractor("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"])
    assert untouched is not teacher
    for (name, weight), (_, original) in zip(teacher.model.state_dict().items(), untouched.model.state_dict().items(), strict=True):
        assert torch.equal(weight, original), f"training changed the teacher's {name}"
    student = fitted.student_
    assert student.weights_source == "random" and student.trainable
    assert list(student.channels) == ["blocks.1", "blocks.2", "blocks.4"]
    # unfolded (trainable), so its batch norms are there to compare with the student's
    pretrained = FeatureExtractor("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"],
                                  trainable=True).model.state_dict()
    trained = student.model.state_dict()
    # the same architecture (up to the last used stage)...
    assert all(k in pretrained and pretrained[k].shape == v.shape for k, v in trained.items())
    same = [k for k, v in trained.items() if v.is_floating_point() and torch.equal(v, pretrained[k])]
    assert not [k for k in same if k.endswith("weight")]  # ...but its own weights


def test_default_layers_are_the_first_stage_at_strides_4_8_16() -> None:
    assert Stfpm().resolved_layers() == ("blocks.1", "blocks.2", "blocks.4")
    assert Stfpm(backbone="resnet18").resolved_layers() == ("layer1", "layer2", "layer3")


def test_student_initialisation_follows_the_seed_only(images: torch.Tensor) -> None:
    # the student is drawn from fit's seeded stream; looking the stages up draws nothing, so the
    # first fit of a process (uncached stage probe) equals every later one
    from adcore import backbones

    backbones.stages.cache_clear()
    one = Stfpm(input_size=SIZE, epochs=1, batch_size=4, seed=1).fit(images[:4])
    two = Stfpm(input_size=SIZE, epochs=1, batch_size=4, seed=1).fit(images[:4])
    other = Stfpm(input_size=SIZE, epochs=1, batch_size=4, seed=2).fit(images[:4])
    for (name, a), b, c in zip(one.student_.state_dict().items(), two.student_.state_dict().values(),
                               other.student_.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"same seed, different {name}"
    assert not torch.equal(next(one.student_.parameters()), next(other.student_.parameters()))


def test_checkpoint_path_gives_the_provider_weights_predictions(images: torch.Tensor, tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    # a full timm model holding the offline provider's weights (the part the extractor uses)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    provider = FeatureExtractor("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], trainable=True)
    missing, unexpected = full.load_state_dict(provider.model.state_dict(), strict=False)
    assert not unexpected and missing
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "lite0.safetensors"))
    settings = {"input_size": SIZE, "epochs": 2, "batch_size": 4, "seed": 3}
    local = Stfpm(checkpoint_path=tmp_path / "lite0.safetensors", **settings).fit(images)
    offline = Stfpm(**settings).fit(images)
    assert local.extractor.weights_source.startswith("file:")
    assert offline.extractor.weights_source.startswith("offline:")
    assert local.student_.weights_source == "random"
    ours, theirs = local.predict(images[:3]), offline.predict(images[:3])
    torch.testing.assert_close(ours.anomaly_map, theirs.anomaly_map, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.pred_score, theirs.pred_score, rtol=1e-4, atol=1e-6)


def test_training_lowers_the_loss(fitted: Stfpm) -> None:
    losses = fitted.history_["loss"]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_map_is_product_or_sum_of_upsampled_level_maps(fitted: Stfpm, images: torch.Tensor) -> None:
    probe, _ = paste_defects(images[:2], seed=2)
    with torch.no_grad():
        teacher = [F.normalize(f, dim=1) for f in fitted.extractor(probe).values()]
        levels = [upsample(d, (SIZE, SIZE)) for d in level_distances(teacher, list(fitted.student_(probe).values()))]
    product = fitted.predict(probe)
    torch.testing.assert_close(product.anomaly_map, levels[0] * levels[1] * levels[2])
    torch.testing.assert_close(product.pred_score, product.anomaly_map.flatten(1).amax(1))
    fitted.map_combination = "sum"
    try:
        summed = fitted.predict(probe)
    finally:
        fitted.map_combination = "product"
    torch.testing.assert_close(summed.anomaly_map, levels[0] + levels[1] + levels[2])


def test_optimiser_matches_paper_sgd_on_the_batch_sum() -> None:
    """SGD(lr·B, wd/B) on Σloss/B must step exactly like the paper's SGD(0.4, 0.9, 1e-4) on Σloss."""
    detector = Stfpm(batch_size=8)
    torch.manual_seed(0)
    ours, paper = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    paper.load_state_dict(ours.state_dict())
    optimiser_ours = detector._make_optimizer(ours.parameters())
    optimiser_paper = torch.optim.SGD(paper.parameters(), lr=0.4, momentum=0.9, weight_decay=1e-4)
    data = torch.randn(8, 4)
    for _ in range(3):
        for model, optimiser, scale in ((ours, optimiser_ours, 1 / 8), (paper, optimiser_paper, 1.0)):
            optimiser.zero_grad()
            (model(data).pow(2).sum() * scale).backward()
            optimiser.step()
    for a, b in zip(ours.parameters(), paper.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_early_stopping_uses_a_held_out_share(images: torch.Tensor) -> None:
    detector = Stfpm(input_size=SIZE, epochs=3, batch_size=4, validation_fraction=0.25, patience=1, seed=0).fit(images)
    history = detector.history_
    assert len(history["validation"]) == len(history["loss"]) >= 1
    assert history["best_epoch"] is not None
    assert history["validation"][history["best_epoch"]] == min(history["validation"])


def test_paper_defaults() -> None:
    params = Stfpm().get_params()
    assert (params["learning_rate"], params["momentum"], params["weight_decay"]) == (0.4, 0.9, 1e-4)
    assert (params["epochs"], params["batch_size"], params["map_combination"]) == (100, 32, "product")


@pytest.mark.parametrize("params, message", [
    ({"epochs": 0}, r"epochs must be an integer in \[1, 100000\]"),
    ({"learning_rate": 0.0}, r"learning_rate must be a finite number in \(0, 10\]"),
    ({"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\)"),
    ({"weight_decay": -1e-4}, r"weight_decay must be a finite number in \[0, 1\]"),
    ({"map_combination": "max"}, "map_combination must be one of 'product', 'sum'"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be a finite number in \[0, 1\)"),
    ({"patience": 0}, "patience must be an integer"),
    ({"layers": []}, "layers must be a non-empty sequence"),
    ({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
    ({"checkpoint_path": 3}, "checkpoint_path must be a file path or None"),
    # not a finite number, or an absurd one: refused at construction, not after the work
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number"),
    ({"momentum": float("inf")}, "momentum must be a finite number"),
    ({"weight_decay": 1e300}, "weight_decay must be a finite number"),
    ({"epochs": 10**9}, "epochs must be an integer"),
    ({"batch_size": 10**9}, "batch_size must be an integer"),
    ({"seed": None}, r"seed must be an integer in \[0, \d+\]; got None"),
])
def test_invalid_parameters_are_rejected(params: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Stfpm(**params)
