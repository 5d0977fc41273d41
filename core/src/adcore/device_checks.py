"""The conformance kit's device checks (see :mod:`adcore.devices`), runnable on any machine.

:func:`check_devices` builds detectors from a factory and checks, on the CPU: an explicit
``device="cpu"`` fits and predicts there; ``"auto"`` resolves to what :func:`resolve_device` says
(the CPU on a machine without an accelerator); a saved model keeps no device and loads with another
spec, predicting the same; nothing of a fitted detector (parameters, buffers, tensors held as
attributes, also private ones and those inside lists, dicts or helper objects) lives on a device it
was not asked for; a device that is not there (``"cuda"`` without a GPU) is a
:class:`~adcore.errors.DeviceUnavailableError` naming what is available, at ``fit`` and at ``load``,
never a torch assertion; a malformed spec (``"gpu0"``) is refused at construction.

:func:`misplaced_tensors` is the walk the placement check uses; ``check_detector`` runs it too, on
whatever device its detectors were built for (``tests/test_devices_cuda.py`` runs the whole kit
with ``device="cuda"``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adcore.devices import resolve_device
from adcore.errors import DeviceUnavailableError, InvalidInputError
from adcore.prediction import AnomalyDetector

__all__ = ["check_devices", "misplaced_tensors"]


def misplaced_tensors(detector: Any, device: torch.device, *, depth: int = 4) -> list[str]:
    """Where ``detector`` holds a tensor off ``device``: ``["memory_bank_ (cpu)", "network_.fc.weight (cuda:0)"]``.

    Walks every attribute (public and private), into ``nn.Module`` parameters and buffers, lists,
    tuples, dicts and the attributes of helper objects, ``depth`` levels deep.
    """
    found: list[str] = []
    seen: set[int] = set()

    def visit(value: Any, where: str, level: int) -> None:
        if id(value) in seen or level > depth:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.device != device:
                found.append(f"{where} ({value.device})")
        elif isinstance(value, nn.Module):
            for name, tensor in [*value.named_parameters(), *value.named_buffers()]:
                if tensor.device != device:
                    found.append(f"{where}.{name} ({tensor.device})")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]", level + 1)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]", level + 1)
        elif hasattr(value, "__dict__") and not isinstance(value, type) and type(value).__module__ != "builtins":
            for name, item in vars(value).items():
                visit(item, f"{where}.{name}", level + 1)

    for name, value in vars(detector).items():
        visit(value, name, 0)
    return found


def check_devices(factory: Callable[[], AnomalyDetector], *, image_size: tuple[int, int] = (64, 64),
                  train_images: int = 8, name: str | None = None, raise_on_failure: bool = True) -> Any:
    """Run the device checks on detectors built by ``factory()``; returns a ``ConformanceReport``.

    A detector without a ``device`` parameter (not built on ``BaseDetector``) passes with nothing checked.
    """
    from adcore.testing import ConformanceError, ConformanceReport, _finish, make_normal_images, paste_defects

    probe = factory()
    report = ConformanceReport(name or type(probe).__name__)
    if "device" not in probe.get_params():
        return _finish(report, raise_on_failure)
    train = make_normal_images(train_images, image_size, seed=0)
    clean = make_normal_images(2, image_size, seed=100)
    images = torch.cat([clean, paste_defects(clean, seed=7)[0]])
    cpu = torch.device("cpu")

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ConformanceError(message)

    def check(label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure goes into the report
            report.failed[label] = f"{type(exc).__name__}: {exc}"
            return
        report.passed.append(label)

    fitted: dict[str, Any] = {}

    def explicit_cpu() -> None:
        detector = factory().set_params(device="cpu")
        require(detector.device_ == cpu, f"device='cpu' resolved to {detector.device_}")
        detector.fit(train)
        prediction = detector.predict(images)
        require(prediction.pred_score.device == cpu and prediction.anomaly_map.device == cpu,
                "predict must return CPU tensors")
        misplaced = misplaced_tensors(detector, cpu)
        require(not misplaced, f"device='cpu', yet the fitted detector holds tensors elsewhere: {misplaced[:5]}")
        fitted["detector"], fitted["prediction"] = detector, prediction

    check("device='cpu' fits and predicts on the CPU", explicit_cpu)

    def auto() -> None:
        detector = factory().set_params(device="auto")
        expected = resolve_device("auto")
        require(detector.device_ == expected, f"device='auto' resolved to {detector.device_}, not {expected}")
        if not torch.cuda.is_available() and expected.type != "mps":
            require(detector.device_ == cpu, "device='auto' must be the CPU on a machine without an accelerator")

    check("device='auto' resolves to this machine's best device", auto)

    def load_elsewhere() -> None:
        from adcore import persistence

        detector = fitted["detector"]
        with tempfile.TemporaryDirectory() as folder:
            path = detector.save(Path(folder) / "model.safetensors")
            require("device" not in persistence.read_header(path)["params"], "the model file must not keep the device")
            for spec in ("auto", torch.device("cpu")):
                loaded = type(detector).load(path, device=spec)
                require(loaded.device_ == resolve_device(spec), f"load(device={spec!r}) runs on {loaded.device_}")
                misplaced = misplaced_tensors(loaded, loaded.device_)
                require(not misplaced, f"load(device={spec!r}) left tensors elsewhere: {misplaced[:5]}")
                if loaded.device_ == cpu:
                    after = loaded.predict(images)
                    require(torch.equal(after.pred_score, fitted["prediction"].pred_score)
                            and torch.equal(after.anomaly_map, fitted["prediction"].anomaly_map),
                            f"load(device={spec!r}) predicts differently from the saved detector")
            if not torch.cuda.is_available():
                try:
                    type(detector).load(path, device="cuda")
                except DeviceUnavailableError as exc:
                    require("cpu" in str(exc), f"the message must name the available devices: {exc}")
                else:
                    raise ConformanceError("load(device='cuda') without a GPU must raise DeviceUnavailableError")

    if "detector" in fitted:
        check("a saved model keeps no device and loads on another", load_elsewhere)

    def unavailable() -> None:
        if torch.cuda.is_available():
            return
        detector = factory().set_params(device="cuda")  # well-formed: refused when used, not when described
        try:
            detector.fit(train)
        except DeviceUnavailableError as exc:
            require("cpu" in str(exc) and "cuda" in str(exc), f"the message must say what is available: {exc}")
        else:
            raise ConformanceError("fit with device='cuda' on a machine without a GPU must raise DeviceUnavailableError")

    check("an unavailable device is a DeviceUnavailableError naming what is there", unavailable)

    def malformed() -> None:
        params = {**probe.get_params(), "device": "gpu0"}
        try:
            type(probe)(**params)
        except InvalidInputError as exc:
            require("device" in str(exc), f"the message must name the parameter: {exc}")
        else:
            raise ConformanceError("device='gpu0' must be refused at construction with InvalidInputError")

    check("a malformed device is refused at construction", malformed)
    return _finish(report, raise_on_failure)
