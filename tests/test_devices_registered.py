"""Every registered detector keeps the device contract on this machine's CPU, and (marked ``cuda``,
skipped without a GPU) passes the whole conformance kit on CUDA."""

from __future__ import annotations

import os

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace, which must be chosen before CUDA starts
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from adcore.testing import build_registered, check_detector, check_devices, registered_detector_params

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible to torch (torch.cuda.is_available() is false)")


@pytest.mark.parametrize("name", registered_detector_params())
def test_registered_detector_keeps_the_device_contract(name: str):
    report = check_devices(lambda: build_registered(name), name=name)
    assert report.ok
    assert "a saved model keeps no device and loads on another" in report.passed
    assert "device='cpu' fits and predicts on the CPU" in report.passed


@pytest.fixture
def deterministic_cuda():
    """The kit asks two fits under one seed for the same predictions: on CUDA that needs deterministic
    kernels (cuDNN's, and torch's where it has them; warn_only: an op without one warns instead of failing)."""
    previous = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[0], previous[1]
    torch.use_deterministic_algorithms(previous[2], warn_only=previous[3])


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", registered_detector_params())
def test_registered_detector_conforms_on_cuda(name: str, deterministic_cuda):
    report = check_detector(lambda: build_registered(name, device="cuda"), name=f"{name} on cuda")
    assert report.ok
    assert "fitted state lives on its device" in report.passed
    detector = build_registered(name, device="cuda")
    assert detector.device_.type == "cuda"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("name", registered_detector_params())
def test_registered_detector_moves_between_cuda_and_cpu(name: str, tmp_path):
    """Trained on the GPU, loaded on the CPU (and back): the same scores up to float rounding."""
    from adcore.testing import make_normal_images

    detector = build_registered(name, device="cuda").fit(make_normal_images(8, (64, 64), seed=0))
    images = make_normal_images(2, (64, 64), seed=100)
    on_gpu = detector.predict(images)
    path = detector.save(tmp_path / "model.safetensors")
    on_cpu = type(detector).load(path, device="cpu").predict(images)
    assert torch.allclose(on_gpu.pred_score, on_cpu.pred_score, rtol=1e-2, atol=1e-3)
    back = type(detector).load(path, device="cuda").predict(images)
    assert torch.equal(back.pred_score, on_gpu.pred_score)
