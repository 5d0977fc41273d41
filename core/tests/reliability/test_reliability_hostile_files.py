"""Hostile model files (issue 22): a re-signed checksum does not make a file trusted. Loading checks
parameters with the constructor's constraints, accepts only fitted state, checks tensor dtypes and
module tensors; optional HMAC-SHA256 signing gives authenticity."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_tensors
from torch import nn

from adcore import persistence
from adcore.base import BaseDetector
from adcore.errors import ModelFileError


def resign(path: Path, edit: Callable[[dict, dict], None]) -> Path:
    """Edit a model file's header fields (JSON-decoded params/state) and tensors, then recompute its
    checksum, as anyone who can write the file can."""
    meta = persistence._read_meta(path)
    tensors = dict(load_tensors(path.read_bytes()))
    fields = {"params": json.loads(meta["params"]), "state": json.loads(meta["state"])}
    edit(fields, tensors)
    meta["params"], meta["state"] = json.dumps(fields["params"]), json.dumps(fields["state"])
    meta.pop("signature", None)
    meta["sha256"] = persistence._digest(tensors, meta)
    path.write_bytes(persistence._serialise(tensors, meta))
    return path


@pytest.fixture
def saved(mean_detector_class, normal_images, tmp_path) -> Path:
    return mean_detector_class(input_size=32).fit(normal_images).save(tmp_path / "m.safetensors")


def test_resigned_out_of_range_parameter_is_refused(gaussian, tmp_path):
    import adcore

    path = gaussian.save(tmp_path / "g.safetensors")
    resign(path, lambda fields, _: fields["params"].update(sigma=1e9))
    with pytest.raises(ModelFileError, match=r"with parameters this installed version of GaussianPatchDetector does "
                                             r"not accept \(InvalidInputError: .*sigma must be"):
        adcore.load(path)


@pytest.mark.parametrize("name", ["__dict__", "__class__", "_private_", "input_size", "mean__", "9lives_"])
def test_state_may_set_only_fitted_attributes(mean_detector_class, saved, name):
    resign(saved, lambda fields, _: fields["state"].update({name: {"x": 1}}))
    with pytest.raises(ModelFileError) as info:
        mean_detector_class.load(saved)
    assert str(info.value) == (f"{saved}: the saved state names {name!r}, which is not a fitted attribute (a name "
                               "starting with a letter and ending in one '_'); the file was not written by "
                               "MeanDetector.save()")


def test_state_cannot_shadow_what_the_class_defines(saved, mean_detector_class):
    class Shadowed(mean_detector_class):
        mode_ = "class attribute"

    Shadowed.__module__, Shadowed.__qualname__ = mean_detector_class.__module__, "MeanDetector"  # the same target
    resign(saved, lambda fields, _: fields["state"].update(mode_="replaced"))
    with pytest.raises(ModelFileError, match=r"the saved state would replace Shadowed.mode_, which the class "
                                             r"defines itself"):
        Shadowed.load(saved)


def test_declared_fitted_state_is_enforced(saved, mean_detector_class):
    class Declared(mean_detector_class):
        fitted_state = frozenset({"mean_", "count_"})

    Declared.__module__, Declared.__qualname__ = mean_detector_class.__module__, "MeanDetector"
    assert Declared.load(saved).is_fitted  # what fit produces loads
    resign(saved, lambda fields, _: fields["state"].update(extra_=1))
    with pytest.raises(ModelFileError, match=r"the saved state holds 'extra_', which Declared does not declare in "
                                             r"fitted_state \['count_', 'mean_'\]"):
        Declared.load(saved)


def test_a_tensor_of_no_module_is_refused(saved, mean_detector_class):
    resign(saved, lambda _, tensors: tensors.update({"evil.weight": torch.zeros(2)}))
    with pytest.raises(ModelFileError, match=r"tensor\(s\) \['evil.weight'\] belong to no module of the saved state"):
        mean_detector_class.load(saved)


def test_complex_tensors_are_refused_on_read_and_write(saved, mean_detector_class, tmp_path):
    resign(saved, lambda _, tensors: tensors.update({"mean_": tensors["mean_"].to(torch.complex64)}))
    with pytest.raises(ModelFileError, match=r"holds tensor\(s\) \['mean_'\] of dtype torch.complex64; a model file "
                                             r"holds floating-point, integer or bool tensors only"):
        mean_detector_class.load(saved)
    with pytest.raises(ModelFileError, match=r"tensor\(s\) \['z'\] have dtype torch.complex64"):
        persistence.write(tmp_path / "c.st", {"z": torch.zeros(2, dtype=torch.complex64)},
                          {"detector": "x", "target": "a:B", "params": {}, "state": {}})


class WithModule(BaseDetector):
    def __init__(self, *, input_size: int = 32, seed: int = 0) -> None:
        self.input_size = input_size
        self.seed = seed

    def _build_modules(self) -> None:
        self.net_ = nn.Linear(3, 2)

    def _fit(self, stream) -> None:
        self._build_modules()
        for _ in stream:
            pass

    def _predict(self, images):
        maps = self.net_(images.permute(0, 2, 3, 1)).sum(-1)
        return maps.flatten(1).amax(1), maps


def test_every_module_tensor_must_be_present(normal_images, tmp_path):
    path = WithModule().fit(normal_images).save(tmp_path / "w.safetensors")
    assert isinstance(WithModule.load(path).net_, nn.Linear)
    resign(path, lambda _, tensors: tensors.pop("net_.bias"))
    with pytest.raises(ModelFileError, match=r"(?s)its fitted state does not fit the installed WithModule \(RuntimeError: "
                                             r".*Missing key\(s\) in state_dict: \"bias\""):
        WithModule.load(path)


# -- signing ---------------------------------------------------------------------------------------------
@pytest.fixture
def no_signing(monkeypatch):
    for name in ("ADCORE_SIGNING_KEY", "ADCORE_SIGNING_KEY_FILE", "ADCORE_REQUIRE_SIGNED"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_signed_save_and_verified_load(no_signing, mean_detector_class, normal_images, tmp_path):
    no_signing.setenv("ADCORE_SIGNING_KEY", "line-7-secret")
    detector = mean_detector_class(input_size=32).fit(normal_images)
    path = detector.save(tmp_path / "s.safetensors")
    assert persistence._read_meta(path)["signature"].startswith("hmac-sha256:")
    assert detector.save(tmp_path / "t.safetensors").read_bytes() == path.read_bytes()  # still canonical bytes
    no_signing.setenv("ADCORE_REQUIRE_SIGNED", "1")
    assert mean_detector_class.load(path).is_fitted

    no_signing.setenv("ADCORE_SIGNING_KEY", "another-key")
    with pytest.raises(ModelFileError) as info:
        mean_detector_class.load(path)
    assert str(info.value) == (f"{path} failed its signature check: it was modified after it was signed, or signed "
                               "with another key. Use the original file, or the key it was signed with")


def test_a_resigned_checksum_fails_the_signature(no_signing, mean_detector_class, normal_images, tmp_path):
    no_signing.setenv("ADCORE_SIGNING_KEY", "line-7-secret")
    path = mean_detector_class(input_size=32).fit(normal_images).save(tmp_path / "s.safetensors")
    signature = persistence._read_meta(path)["signature"]

    def forge(fields, tensors):
        tensors["mean_"] = tensors["mean_"] * 0

    resign(path, forge)
    meta = persistence._read_meta(path)  # the forger keeps the old signature next to a valid checksum
    meta["signature"] = signature
    tensors = dict(load_tensors(path.read_bytes()))
    path.write_bytes(persistence._serialise(tensors, meta))
    with pytest.raises(ModelFileError, match="failed its signature check"):
        mean_detector_class.load(path)


def test_require_signed_refuses_unsigned_files(no_signing, saved, mean_detector_class):
    no_signing.setenv("ADCORE_REQUIRE_SIGNED", "1")
    no_signing.setenv("ADCORE_SIGNING_KEY", "line-7-secret")
    with pytest.raises(ModelFileError) as info:
        mean_detector_class.load(saved)
    assert str(info.value) == (f"{saved} is not signed, and ADCORE_REQUIRE_SIGNED=1 refuses unsigned model files; "
                               "save it again with ADCORE_SIGNING_KEY (or ADCORE_SIGNING_KEY_FILE) set")
    no_signing.delenv("ADCORE_REQUIRE_SIGNED")
    assert mean_detector_class.load(saved).is_fitted  # without it, unsigned files load as before


def test_key_file(no_signing, mean_detector_class, normal_images, tmp_path):
    key = tmp_path / "key"
    key.write_text("from-a-file\n")
    no_signing.setenv("ADCORE_SIGNING_KEY_FILE", str(key))
    path = mean_detector_class(input_size=32).fit(normal_images).save(tmp_path / "k.safetensors")
    no_signing.delenv("ADCORE_SIGNING_KEY_FILE")
    no_signing.setenv("ADCORE_SIGNING_KEY", "from-a-file")  # the same key, given directly
    assert mean_detector_class.load(path).is_fitted
    no_signing.setenv("ADCORE_SIGNING_KEY_FILE", str(tmp_path / "missing"))
    no_signing.delenv("ADCORE_SIGNING_KEY")
    from adcore.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"ADCORE_SIGNING_KEY_FILE=.*missing: cannot read the signing key"):
        mean_detector_class.load(path)


def test_a_file_naming_another_backbone_never_reaches_the_network(gaussian, tmp_path, monkeypatch):
    import timm

    import adcore
    from adcore.errors import AdcoreError

    real = timm.create_model
    asked: list[str] = []

    def recording(name, pretrained=False, **kwargs):
        if pretrained:
            asked.append(name)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording)
    path = resign(gaussian.save(tmp_path / "g.safetensors"), lambda fields, _: fields["params"].update(backbone="resnet18"))
    with pytest.raises(AdcoreError):  # resnet18 has no offline weights here: refused, not downloaded
        adcore.load(path).predict(torch.rand(1, 3, 32, 32))
    assert not asked
