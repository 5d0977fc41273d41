"""adcore.devices and the device plumbing of the base class, on the CPU (CUDA checks: tests/test_devices_registered.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from adcore.base import BaseDetector
from adcore.devices import (PRECISIONS, autocast, available_devices, check_precision, grad_scaler, is_device_spec,
                            precision_dtype, resolve_device)
from adcore.device_checks import misplaced_tensors
from adcore.errors import AdcoreError, DeviceUnavailableError, InvalidInputError
from adcore.testing import make_normal_images

no_accelerator = pytest.mark.skipif(torch.cuda.is_available() or resolve_device("auto").type != "cpu",
                                    reason="this machine has an accelerator")


class MeanDetector(BaseDetector):
    """Scores by distance to the mean training image (a tensor and a module in its fitted state)."""

    def __init__(self, input_size: int = 32, seed: int = 0) -> None:
        self.input_size = input_size
        self.seed = seed

    def _fit(self, stream) -> None:
        images = torch.cat(list(stream))
        self.mean_ = images.mean(0)
        self.head_ = nn.Conv2d(3, 1, 1)
        self.seen_device_ = str(images.device)

    def _build_modules(self) -> None:
        self.head_ = nn.Conv2d(3, 1, 1)

    def _predict(self, images):
        assert images.device == self.device_  # inputs arrive on device_
        maps = (images - self.mean_).abs().mean(1)
        return maps.flatten(1).amax(1), maps


def test_specs_are_checked_for_form_without_torch_knowing_the_device():
    assert all(is_device_spec(s) for s in ("auto", "cpu", "cuda", "cuda:1", "mps", torch.device("cpu")))
    assert not any(is_device_spec(s) for s in ("gpu0", "cuda:", "cpu:1", "CUDA", " cpu", "", None, 0, "cuda:x"))


def test_importing_devices_does_not_import_torch():
    code = "import sys, adcore.devices as d; assert d.is_device_spec('cuda:0'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert available_devices()[0] == "cpu"


@no_accelerator
def test_auto_is_the_cpu_without_an_accelerator():
    assert resolve_device("auto") == torch.device("cpu")
    assert available_devices() == ["cpu"]


@no_accelerator
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "mps"])
def test_an_absent_device_names_what_is_available(spec):
    with pytest.raises(DeviceUnavailableError, match=r"not available.*Available here: cpu") as caught:
        resolve_device(spec)
    assert isinstance(caught.value, AdcoreError) and isinstance(caught.value, RuntimeError)


def test_a_malformed_spec_is_an_input_error():
    with pytest.raises(InvalidInputError, match="'gpu0' is not a device"):
        resolve_device("gpu0")


def test_precisions():
    assert PRECISIONS == ("32", "16-mixed", "bf16-mixed")
    assert precision_dtype("32") is None and precision_dtype("bf16-mixed") is torch.bfloat16
    assert precision_dtype("16-mixed") is torch.float16
    with pytest.raises(InvalidInputError, match="precision must be one of 32, 16-mixed, bf16-mixed; got '16'"):
        check_precision("16")
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "16-mixed") is None and grad_scaler(cpu, "bf16-mixed") is None
    x = torch.randn(4, 4)
    with autocast(cpu, "32"):
        assert (x @ x).dtype == torch.float32
    with autocast(cpu, "bf16-mixed"):
        assert (x @ x).dtype == torch.bfloat16


def test_device_and_precision_are_common_parameters_checked_at_construction():
    detector = MeanDetector()
    assert detector.get_params()["device"] == "auto" and detector.get_params()["precision"] == "32"
    with pytest.raises(InvalidInputError, match=r"MeanDetector: device must be a device: .*; got 'gpu0'"):
        MeanDetector(device="gpu0")
    with pytest.raises(InvalidInputError, match="MeanDetector: precision must be one of"):
        MeanDetector(precision="64")
    assert MeanDetector(device="cuda:1").get_params()["device"] == "cuda:1"  # well-formed: refused only when used


def test_fit_puts_inputs_and_state_on_the_device_and_predict_returns_cpu_tensors():
    detector = MeanDetector(device="cpu").fit(make_normal_images(4, (32, 32)))
    assert detector.device_ == torch.device("cpu") and detector.seen_device_ == "cpu"
    prediction = detector.predict(make_normal_images(2, (40, 40), seed=1))
    assert prediction.pred_score.device.type == "cpu" and prediction.anomaly_map.shape == (2, 40, 40)
    assert misplaced_tensors(detector, torch.device("cpu")) == []


def test_misplaced_tensors_finds_every_kind_of_holding():
    detector = MeanDetector().fit(make_normal_images(4, (32, 32)))
    meta = torch.device("meta")
    detector.bank_ = torch.zeros(2, device=meta)
    detector._cache = [{"k": torch.zeros(1, device=meta)}]

    class Helper:
        def __init__(self) -> None:
            self.index = torch.zeros(1, device=meta)

    detector._search = Helper()
    found = misplaced_tensors(detector, torch.device("cpu"))
    assert found == ["bank_ (meta)", "_cache[0]['k'] (meta)", "_search.index (meta)"]
    assert "head_.weight (cpu)" in misplaced_tensors(detector, meta)


@no_accelerator
def test_an_absent_device_fails_at_fit_before_any_work_and_set_params_keeps_a_fitted_model():
    detector = MeanDetector(device="cuda")
    with pytest.raises(DeviceUnavailableError, match="Available here: cpu"):
        detector.fit(make_normal_images(4, (32, 32)))
    fitted = MeanDetector(device="cpu").fit(make_normal_images(4, (32, 32)))
    with pytest.raises(DeviceUnavailableError):
        fitted.set_params(device="cuda")
    assert fitted.get_params()["device"] == "cpu" and fitted.device_ == torch.device("cpu")


def test_the_model_file_keeps_no_device_and_loads_with_another(tmp_path):
    from adcore import persistence

    detector = MeanDetector(device="cpu", precision="bf16-mixed").fit(make_normal_images(4, (32, 32)))
    path = detector.save(tmp_path / "mean.safetensors")
    params = persistence.read_header(path)["params"]
    assert "device" not in params and params["precision"] == "bf16-mixed"  # precision is part of the model
    images = make_normal_images(2, (32, 32), seed=3)
    for spec in ("auto", "cpu", torch.device("cpu")):
        loaded = MeanDetector.load(path, device=spec)
        assert loaded.get_params()["device"] == spec
        assert torch.equal(loaded.predict(images).pred_score, detector.predict(images).pred_score)


@no_accelerator
def test_loading_onto_an_absent_device_is_the_callers_error_not_the_files(tmp_path):
    path = MeanDetector().fit(make_normal_images(4, (32, 32))).save(tmp_path / "mean.safetensors")
    with pytest.raises(DeviceUnavailableError, match="Available here: cpu"):
        MeanDetector.load(path, device="cuda")


def test_factory_load_passes_the_device_and_refuses_it_for_a_load_without_one(tmp_path, monkeypatch):
    import adcore
    from adcore import factory
    from adcore.errors import InvalidArgumentError

    detector = adcore.get_model("padim", input_size=32, backbone="resnet18", weights=None, layers=("layer1",),
                                num_features=8)
    path = detector.fit(make_normal_images(4, (32, 32))).save(tmp_path / "padim.safetensors")
    assert adcore.load(path, device="cpu").device_ == torch.device("cpu")

    class NoDevice:
        @classmethod
        def load(cls, path):
            return cls()

    entry = factory.entry_for_file(path, __import__("adcore.persistence").persistence.read_header(path))
    monkeypatch.setattr(type(entry), "load", lambda self: NoDevice)
    assert isinstance(adcore.load(path), NoDevice)
    with pytest.raises(InvalidArgumentError, match="takes no device"):
        adcore.load(path, device="cpu")


def test_the_shared_extractor_is_one_per_device_and_precision():
    from adcore.backbones import shared_extractor

    plain = shared_extractor("resnet18", ("layer1",), weights=None)
    assert shared_extractor("resnet18", ("layer1",), weights=None, device=torch.device("cpu")) is plain
    half = shared_extractor("resnet18", ("layer1",), weights=None, precision="bf16-mixed")
    assert half is not plain and half.precision == "bf16-mixed" and plain.precision == "32"
    assert shared_extractor("resnet18", ("layer1",), weights=None, precision="bf16-mixed") is half
    images = make_normal_images(2, (32, 32))
    with torch.no_grad():
        exact, reduced = plain(images)["layer1"], half(images)["layer1"]
    assert reduced.dtype == torch.float32  # features leave the autocast region as float32
    assert not torch.equal(exact, reduced)
    assert torch.allclose(exact, reduced, rtol=0.1, atol=0.1)


def test_train_epochs_under_bf16_autocast_learns_and_32_is_unchanged():
    from adcore.training import train_epochs

    def run(precision: str | None) -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        data = torch.randn(32, 4)
        target = data.sum(1, keepdim=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        extra = {} if precision is None else {"precision": precision}
        history = train_epochs(lambda b: (model(b) - b.sum(1, keepdim=True)).pow(2).mean(), data, optimizer,
                               epochs=5, batch_size=8, seed=0, modules=[model], **extra)
        return history.loss, model.weight.detach().clone()

    default, weights = run(None)
    explicit, same = run("32")
    assert default == explicit and torch.equal(weights, same)
    reduced, _ = run("bf16-mixed")
    assert reduced[-1] < reduced[0] / 4  # it still learns
    assert reduced != default  # and autocast really ran
    with pytest.raises(InvalidInputError):
        run("fp8")


def test_make_loader_pins_only_for_cuda_and_checks_workers():
    from adcore.data import make_loader

    items = [{"image": torch.zeros(3, 8, 8), "label": 0, "mask": torch.zeros(8, 8), "path": "x"}] * 4
    loader = make_loader(items, 2)
    assert loader.num_workers == 0 and loader.pin_memory is False
    assert make_loader(items, 2, num_workers=2, device="cpu").num_workers == 2
    assert make_loader(items, 2, device=torch.device("cpu")).pin_memory is False
    with pytest.raises(InvalidInputError, match="num_workers"):
        make_loader(items, 2, num_workers=-1)
