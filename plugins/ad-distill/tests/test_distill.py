"""Tests of ad-distill: conformance, the offline teacher cache, and the methods' own mechanics."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from ad_distill.efficientad import PDN, EfficientAD, hard_feature_loss, pdn_output_size
from ad_distill.images import distort_for_penalty
from ad_distill.student_teacher import DescriptorNet, StudentTeacher, descriptor_output_size
from ad_distill.teachers import load_teacher, sampled_quantile
from adcore.errors import InvalidInputError, ModelFileError
from adcore.testing import build_registered, check_detector, make_normal_images, paste_defects

TINY_EAD = {"input_size": 64, "teacher_channels": 8, "width": 0.125, "teacher_steps": 2, "teacher_batch_size": 8,
            "train_steps": 4, "batch_size": 4, "learning_rate": 1e-3}
TINY_ST = {"input_size": 64, "receptive_fields": (17,), "descriptor_dim": 8, "width": 0.125, "num_students": 2,
           "teacher_steps": 2, "teacher_batch_size": 8, "train_steps": 4, "batch_size": 4, "learning_rate": 1e-3}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Everything here must work offline: any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("ad-distill tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def images():
    return make_normal_images(12, (64, 64), seed=3)


@pytest.mark.parametrize("name", ["efficientad", "student_teacher"])
def test_conformance(name):
    check_detector(lambda: build_registered(name), name=name)


# -- teacher: distillation, cache with provenance, teacher_path, saved with the model ----------------
def test_teacher_is_cached_with_provenance_and_reused(tmp_path, images):
    first = EfficientAD(cache_dir=str(tmp_path), **TINY_EAD).fit(images)
    files = list((tmp_path / "ad_distill" / "teachers").glob("pdn_small-*.safetensors"))
    assert len(files) == 1
    assert files[0].read_bytes()[:1] != b"\x80"  # not a pickle
    provenance = first.teacher_provenance_
    assert provenance["cache_hit"] is False
    assert provenance["backbone"] == "tf_efficientnet_lite0" and provenance["backbone_weights"].startswith("offline:")
    assert provenance["source"]["kind"] == "training images (augmented)" and provenance["source"]["images"] == 12
    assert provenance["epochs"] >= 1 and "T" in provenance["date"]

    second = EfficientAD(cache_dir=str(tmp_path), **TINY_EAD).fit(images)
    assert second.teacher_provenance_["cache_hit"] is True
    for a, b in zip(first.teacher_.state_dict().values(), second.teacher_.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    probe = images[:2]
    assert torch.equal(first.predict(probe).anomaly_map, second.predict(probe).anomaly_map)

    # other training images → another cache entry, not a stale teacher
    EfficientAD(cache_dir=str(tmp_path), **TINY_EAD).fit(make_normal_images(12, (64, 64), seed=4))
    assert len(list((tmp_path / "ad_distill" / "teachers").glob("*.safetensors"))) == 2


def test_cache_dir_from_environment(tmp_path, monkeypatch, images):
    monkeypatch.setenv("ADCORE_CACHE_DIR", str(tmp_path / "env-cache"))
    StudentTeacher(**TINY_ST).fit(images)
    assert list((tmp_path / "env-cache" / "ad_distill" / "teachers").glob("st_patch_17-*.safetensors"))


def test_teacher_path_loads_a_ready_teacher_and_checks_architecture(tmp_path, images):
    EfficientAD(cache_dir=str(tmp_path), **TINY_EAD).fit(images)
    teacher_file = next((tmp_path / "ad_distill" / "teachers").glob("*.safetensors"))
    detector = EfficientAD(teacher_path=str(teacher_file), use_cache=False, **TINY_EAD).fit(make_normal_images(12, (64, 64), seed=9))
    assert detector.teacher_provenance_["loaded_from"] == str(teacher_file.resolve())
    reference = PDN("small", 8, 0.125)
    load_teacher(teacher_file, reference)
    for a, b in zip(reference.state_dict().values(), detector.teacher_.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    wrong = dict(TINY_EAD, teacher_channels=16)
    with pytest.raises(InvalidInputError, match="architecture"):
        EfficientAD(teacher_path=str(teacher_file), use_cache=False, **wrong).fit(images)


def test_saved_model_needs_no_cache(tmp_path, images):
    cache = tmp_path / "cache"
    detector = StudentTeacher(cache_dir=str(cache), **TINY_ST).fit(images)
    path = detector.save(tmp_path / "st.safetensors")
    for file in (cache / "ad_distill" / "teachers").glob("*"):
        file.unlink()
    loaded = StudentTeacher.load(path)
    probe, _ = paste_defects(images[:3])
    assert torch.equal(detector.predict(probe).anomaly_map, loaded.predict(probe).anomaly_map)
    assert loaded.teacher_provenance_[0]["source"]["images"] == 12


def test_teacher_from_an_image_folder(tmp_path, images):
    from PIL import Image

    folder = tmp_path / "natural" / "sub"
    folder.mkdir(parents=True)
    for index, image in enumerate(make_normal_images(5, (80, 96), seed=11)):
        Image.fromarray((image.permute(1, 2, 0) * 255).byte().numpy()).save(folder / f"{index}.png")
    detector = EfficientAD(teacher_data_dir=str(tmp_path / "natural"), cache_dir=str(tmp_path / "c"), **TINY_EAD).fit(images)
    source = detector.teacher_provenance_["source"]
    assert source["kind"] == "folder" and source["images"] == 5
    with pytest.raises(InvalidInputError, match="no images"):
        EfficientAD(teacher_data_dir=str(tmp_path / "c" / "ad_distill"), use_cache=False, **TINY_EAD).fit(images)


# -- EfficientAD mechanics ---------------------------------------------------------------------
def test_hard_feature_loss_is_mean_above_the_quantile():
    distance = torch.rand(2, 8, 20, 20, generator=torch.Generator().manual_seed(0))
    threshold = torch.quantile(distance.flatten(), 0.999)
    expected = distance[distance >= threshold].mean()
    assert torch.allclose(hard_feature_loss(distance), expected)
    assert hard_feature_loss(distance) > distance.mean()


def test_pdn_receptive_field_is_33_and_grid_matches():
    network = PDN("small", 4, 0.125).eval()
    image = torch.rand(1, 3, 96, 96, requires_grad=True)
    out = network(image)
    assert tuple(out.shape[-2:]) == pdn_output_size((96, 96))
    out[0, :, 5, 5].sum().backward()
    rows = image.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    cols = image.grad[0].abs().sum(0).sum(0).nonzero().flatten()
    assert rows.numel() == 33 and cols.numel() == 33 and int(rows[0]) == 20  # stride 4: row 5 starts at 20
    assert pdn_output_size((256, 256)) == (56, 56)  # the paper's 56×56 grid


def test_efficientad_student_has_twice_the_teacher_channels_and_quantiles_normalise(images):
    detector = EfficientAD(use_cache=False, validation_fraction=0.25, **TINY_EAD).fit(images)
    assert detector.student_.layers[-1].out_channels == 2 * detector.teacher_.layers[-1].out_channels
    qa_st, qb_st, qa_ae, qb_ae = detector.quantiles_.tolist()
    assert qa_st < qb_st and qa_ae < qb_ae
    # the held-out images (same split as in fit, which splits the images in canonical order) land at 0
    # for the 0.9 quantile of each map
    from adcore.training import canonical_order, split_holdout

    _, held = split_holdout(canonical_order(images), 0.25, detector.seed)
    local, global_ = detector._raw_maps(held)
    assert abs(sampled_quantile(local, 0.9) - qa_st) < 1e-6 and abs(sampled_quantile(global_, 0.995) - qb_ae) < 1e-6


def test_penalty_images_are_distorted_but_valid(images):
    generator = torch.Generator().manual_seed(0)
    distorted = distort_for_penalty(images, generator)
    assert distorted.shape == images.shape and float(distorted.min()) >= 0 and float(distorted.max()) <= 1
    assert (distorted - images).abs().mean() > 0.02


# -- Student-Teacher mechanics -----------------------------------------------------------------
@pytest.mark.parametrize("receptive_field", [17, 33, 65])
def test_descriptor_net_has_the_papers_receptive_field(receptive_field):
    network = DescriptorNet(receptive_field, 4, 0.0625).eval()
    image = torch.rand(1, 3, 128, 128, requires_grad=True)
    out = network(image)
    assert tuple(out.shape[-2:]) == descriptor_output_size(receptive_field, (128, 128))
    out[0, :, 2, 3].sum().backward()
    rows = image.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    cols = image.grad[0].abs().sum(0).sum(0).nonzero().flatten()
    # max-pooling routes gradient through one input per window, so the support is at most p wide
    assert int(rows[-1] - rows[0]) + 1 <= receptive_field and int(cols[-1] - cols[0]) + 1 <= receptive_field
    assert int(rows[-1] - rows[0]) + 1 > receptive_field - 8


def test_student_teacher_error_and_variance_follow_the_paper(images):
    detector = StudentTeacher(use_cache=False, **TINY_ST).fit(images)
    probe = images[:2]
    with torch.no_grad():
        target = detector._teacher_descriptors(0, probe)
        predictions = torch.stack([s(probe) for s in detector.students_[0]])
        error, variance = detector._error_and_variance(0, probe)
    mean = predictions.mean(0)
    assert torch.allclose(error, ((mean - target) ** 2).sum(1), atol=1e-5)
    assert torch.allclose(variance, predictions.var(0, unbiased=False).sum(1), atol=1e-4)
    # identical students: no predictive variance
    detector.students_[0][1].load_state_dict(detector.students_[0][0].state_dict())
    with torch.no_grad():
        _, variance = detector._error_and_variance(0, probe)
    assert float(variance.abs().max()) < 1e-4


def test_student_teacher_multiscale_averages_scales(images):
    params = dict(TINY_ST, input_size=96, receptive_fields=(17, 33))
    detector = StudentTeacher(use_cache=False, **params).fit(make_normal_images(12, (96, 96), seed=3))
    assert len(detector.teachers_) == 2 and len(detector.students_[1]) == 2
    assert tuple(detector.score_statistics_.shape) == (2, 4)
    probe, masks = paste_defects(make_normal_images(3, (96, 96), seed=5))
    prediction = detector.predict(probe)
    assert float(prediction.anomaly_map[masks > 0].mean()) > float(prediction.anomaly_map[masks == 0].mean())


@pytest.mark.parametrize("cls, params, message", [
    (EfficientAD, {"model_size": "large"}, "model_size"),
    (EfficientAD, {"input_size": 48}, "each between 64 and 4096"),
    (EfficientAD, {"teacher_channels": 0}, "teacher_channels"),
    (EfficientAD, {"width": 0}, "width"),
    (StudentTeacher, {"num_students": 1}, "num_students"),
    (StudentTeacher, {"receptive_fields": (20,)}, "receptive_fields"),
    (StudentTeacher, {"input_size": 64, "receptive_fields": (65,)}, "too small"),
    (StudentTeacher, {"receptive_fields": (17, 33), "teacher_path": "a.safetensors"}, "one file per"),
])
def test_parameter_validation(cls, params, message):
    with pytest.raises(InvalidInputError, match=message):
        cls(**params)


def test_registered_cards():
    from adcore.factory import get_entry

    for name in ("efficientad", "student_teacher"):
        entry = get_entry(name)
        assert entry.category == "distillation" and entry.card["trains"] is True
        json.dumps(entry.card["quick_params"])


# -- the distillation target: core's shared backbone, named by backbone/layers/weights/checkpoint_path ----
def _provider_checkpoint(path):
    """tf_efficientnet_lite0's offline provider weights, written as a plain timm state dict."""
    import timm
    from safetensors.torch import save_file

    from adcore.weights import load_weights

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_weights(full, "tf_efficientnet_lite0", "pretrained", None)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    return path


def test_layers_none_means_the_deepest_stages_at_strides_8_and_16():
    for cls in (EfficientAD, StudentTeacher):
        assert cls().resolved_layers() == ("blocks.2", "blocks.4")
        assert cls(backbone="resnet18").resolved_layers() == ("layer2", "layer3")


@pytest.mark.parametrize("cls, params", [(EfficientAD, TINY_EAD), (StudentTeacher, TINY_ST)])
def test_checkpoint_path_gives_the_providers_predictions(tmp_path, images, cls, params):
    checkpoint = _provider_checkpoint(tmp_path / "lite0.safetensors")
    from_provider = cls(use_cache=False, **params).fit(images)
    from_file = cls(use_cache=False, checkpoint_path=str(checkpoint), **params).fit(images)
    provenance = from_file.teacher_provenance_
    provenance = provenance[0] if isinstance(provenance, list) else provenance
    assert provenance["backbone_weights"] == f"file:{checkpoint}"
    probe, _ = paste_defects(images[:3])
    assert torch.equal(from_provider.predict(probe).anomaly_map, from_file.predict(probe).anomaly_map)


def test_teacher_cache_key_names_the_target(tmp_path, images):
    teachers = tmp_path / "cache" / "ad_distill" / "teachers"

    def fit(**params):
        return EfficientAD(cache_dir=str(tmp_path / "cache"), **TINY_EAD, **params).fit(images)

    fit()
    assert fit(layers=("blocks.2", "blocks.4")).teacher_provenance_["cache_hit"] is True  # = layers=None
    assert fit(layers=("blocks.2",)).teacher_provenance_["cache_hit"] is False
    assert fit(weights=None).teacher_provenance_["cache_hit"] is False
    checkpoint = _provider_checkpoint(tmp_path / "lite0.safetensors")
    first = fit(checkpoint_path=str(checkpoint))
    assert first.teacher_provenance_["cache_hit"] is False and first.teacher_provenance_["checkpoint_sha256"]
    moved = checkpoint.rename(tmp_path / "moved.safetensors")  # the content names the target, not the path
    assert fit(checkpoint_path=str(moved)).teacher_provenance_["cache_hit"] is True
    assert len(list(teachers.glob("pdn_small-*.safetensors"))) == 4
    with pytest.raises(ModelFileError, match="does not exist"):
        fit(checkpoint_path=str(tmp_path / "missing.safetensors"))


@pytest.mark.parametrize("cls, params", [(EfficientAD, TINY_EAD), (StudentTeacher, TINY_ST)])
def test_renamed_parameters_still_work_with_a_warning(cls, params):
    old = {"teacher_layers": ("blocks.2",), "lr": 0.002, "teacher_lr": 0.003, "holdout_fraction": 0.2}
    base = {k: v for k, v in params.items() if k != "learning_rate"}
    with pytest.warns(DeprecationWarning, match="renamed") as caught:
        detector = cls(**base, **old)
    assert len(caught) == 4
    got = detector.get_params()
    assert (got["layers"], got["learning_rate"], got["teacher_learning_rate"], got["validation_fraction"]) == \
        (("blocks.2",), 0.002, 0.003, 0.2)
    assert not {"teacher_layers", "lr", "teacher_lr", "holdout_fraction"} & set(got)


@pytest.mark.parametrize("cls", [EfficientAD, StudentTeacher])
@pytest.mark.parametrize("params, message", [
    ({"learning_rate": float("nan")}, r"learning_rate must be a finite number in \(0, 10\]"),
    ({"teacher_learning_rate": float("inf")}, r"teacher_learning_rate must be a finite number in \(0, 10\]"),
    ({"width": 1e9}, r"width must be a finite number in \(0, 4\]"),
    ({"train_steps": 10**12}, r"train_steps must be an integer in \[1, 10000000\]"),
    ({"teacher_steps": 2.5}, "teacher_steps must be an integer"),
    ({"weight_decay": -1e-5}, r"weight_decay must be a finite number in \[0, 10\]"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be a finite number in \[0, 1\)"),
    ({"use_cache": 1}, "use_cache must be True or False"),
    ({"seed": None}, "seed must be an integer"),
    ({"weights": "imagenet"}, "weights must be one of 'pretrained', 'hub' or None"),
    ({"layers": "blocks.2"}, "layers must be a non-empty sequence"),
])
def test_bad_values_are_refused_at_construction(cls, params, message):
    with pytest.raises(InvalidInputError, match=message):
        cls(**params)


def test_an_unwritable_cache_does_not_break_fitting(tmp_path, images):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    detector = EfficientAD(cache_dir=str(blocker), **TINY_EAD).fit(images)
    assert detector.teacher_provenance_["cache_error"].startswith("OutputPathError")
    assert detector.teacher_provenance_["cache_hit"] is False and detector.is_fitted
