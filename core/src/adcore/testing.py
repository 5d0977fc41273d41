"""Conformance kit: checks any detector against adcore's contract.

Third parties run it on their own detectors::

    from adcore.testing import check_detector
    check_detector(lambda: MyDetector(input_size=64))

and adcore's own test-suite runs it over every registered detector (with each card's
``quick_params``), via :func:`registered_detector_params`.

Checks: the protocol; ``get_params`` round-trips through the constructor; ``predict`` before
``fit`` fails; ``fit`` returns ``self``; shapes and dtypes at a non-square input size (and a batch
of one); finite scores; ``predict`` leaves the images it is given unchanged; a pasted defect scores higher than clean images and its map is higher
inside the defect; ``calibrate`` yields boolean labels; save/load gives bit-identical predictions;
two fits under the same seed give bit-identical predictions; a fit on the same images in another order
and other batches predicts the same, to float rounding (issue 23); and, for detectors with adcore's
common parameters, tiling (``tile_size``): fit on tiles of larger images, full-resolution maps,
the defect found, the tiling carried through save/load; and the device: outputs on the CPU, the
fitted state on the detector's ``device_``, save/load on that device. :func:`check_devices`
(:mod:`adcore.device_checks`) adds the device contract's own checks (explicit and ``"auto"``
devices, loading on another device, an unavailable device's error).

:func:`write_fake_distribution` writes an installed-looking distribution into a folder, so a test
can check how a plugin loads (``adcore.plugins.load_plugins``) without ``pip install``.
"""

from __future__ import annotations

import importlib
import math
import re
import tempfile
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from adcore.errors import AdcoreError, InvalidInputError
from adcore.hookspecs import ENTRY_POINT_GROUP
from adcore.prediction import AnomalyDetector, Prediction

__all__ = ["ConformanceError", "ConformanceReport", "check_detector", "check_devices", "check_export", "make_normal_images",
           "paste_defects",
           "registered_detector_params", "build_registered", "write_fake_distribution", "write_tiny_category"]


class ConformanceError(AdcoreError, AssertionError):
    """A detector broke the contract; the message lists every failed check."""


@dataclass
class ConformanceReport:
    detector: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def make_normal_images(count: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> torch.Tensor:
    """Smooth textured 'good' images: colour gradients and stripes with random phase, light noise."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    phase = torch.rand(count, 1, 1, 1, generator=generator) * 2 * math.pi
    base = torch.tensor([0.55, 0.45, 0.35]).view(1, 3, 1, 1)
    stripes = 0.08 * torch.sin(2 * math.pi * 6 * xs + phase) + 0.05 * torch.cos(2 * math.pi * 3 * ys + phase)
    gradient = 0.1 * (ys - 0.5) + 0.05 * (xs - 0.5)
    noise = 0.01 * torch.randn(count, 3, height, width, generator=generator)
    return (base + stripes + gradient + noise).clamp(0, 1)


def paste_defects(images: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a high-contrast noisy square (a quarter of the side) into each image; returns (images, masks)."""
    generator = torch.Generator().manual_seed(seed)
    out = images.clone()
    count, _, height, width = images.shape
    masks = torch.zeros(count, height, width)
    side_h, side_w = max(4, height // 4), max(4, width // 4)
    for index in range(count):
        top = int(torch.randint(height // 8, height - side_h - height // 8 + 1, (1,), generator=generator))
        left = int(torch.randint(width // 8, width - side_w - width // 8 + 1, (1,), generator=generator))
        patch = torch.rand(3, side_h, side_w, generator=generator)
        patch[1] = 1.0 - patch[0]
        out[index, :, top:top + side_h, left:left + side_w] = patch
        masks[index, top:top + side_h, left:left + side_w] = 1.0
    return out, masks


#: the largest change of scores or maps, relative to their largest value, that fitting the same images
#: in another order and other batches may cause (sums in another order round differently)
ORDER_TOLERANCE = 1e-4


def _batches(images: torch.Tensor, size: int = 8) -> list[torch.Tensor]:
    return [images[i:i + size] for i in range(0, images.shape[0], size)]


def check_detector(factory: Callable[[], AnomalyDetector], *, image_size: tuple[int, int] = (64, 64),
                   train_images: int = 16, name: str | None = None, raise_on_failure: bool = True) -> ConformanceReport:
    """Run every conformance check on detectors built by ``factory()`` (called up to five times)."""
    detector = factory()
    report = ConformanceReport(name or type(detector).__name__)
    train = make_normal_images(train_images, image_size, seed=0)
    clean = make_normal_images(6, (image_size[0] - 8, image_size[1] + 8), seed=100)
    defective, masks = paste_defects(clean, seed=7)

    def check(label: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - every failure goes into the report
            report.failed[label] = f"{type(exc).__name__}: {exc}"
            return False
        report.passed.append(label)
        return True

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ConformanceError(message)

    check("implements AnomalyDetector", lambda: require(isinstance(detector, AnomalyDetector),
                                                        "needs fit, predict and get_params"))

    def params_round_trip() -> None:
        params = detector.get_params()
        require(isinstance(params, dict), "get_params() must return a dict")
        rebuilt = type(detector)(**params).get_params()
        require(repr(rebuilt) == repr(params), f"type(det)(**get_params()) changed parameters: {params} -> {rebuilt}")

    check("get_params round-trips", params_round_trip)

    def predict_before_fit() -> None:
        try:
            factory().predict(clean[:1])
        except Exception:  # noqa: BLE001
            return
        raise ConformanceError("predict() before fit() must raise (e.g. adcore.NotFittedError)")

    check("predict before fit raises", predict_before_fit)

    fitted: dict[str, Any] = {}

    def fit_returns_self() -> None:
        result = detector.fit(_batches(train))
        require(result is detector, "fit() must return self")
        fitted["ok"] = True

    if not check("fit returns self", fit_returns_self):
        return _finish(report, raise_on_failure)

    outputs: dict[str, Prediction] = {}

    def shapes() -> None:
        both = torch.cat([clean, defective])
        untouched = both.clone()
        prediction = detector.predict(both)
        # predict gets the caller's own tensor (validate_images does not copy a valid batch)
        require(torch.equal(both, untouched), "predict() wrote into the images it was given; work on a copy")
        outputs["all"] = prediction
        count, height, width = both.shape[0], both.shape[2], both.shape[3]
        require(tuple(prediction.pred_score.shape) == (count,), f"pred_score shape {tuple(prediction.pred_score.shape)} != ({count},)")
        require(tuple(prediction.anomaly_map.shape) == (count, height, width),
                f"anomaly_map shape {tuple(prediction.anomaly_map.shape)} != {(count, height, width)} (the input's own H×W)")
        require(prediction.pred_score.dtype == torch.float32 and prediction.anomaly_map.dtype == torch.float32,
                "pred_score and anomaly_map must be float32")
        require(bool(torch.isfinite(prediction.pred_score).all()) and bool(torch.isfinite(prediction.anomaly_map).all()),
                "scores and maps must be finite")
        require(prediction.pred_score.device.type == "cpu" and prediction.anomaly_map.device.type == "cpu",
                f"predict must return CPU tensors, got {prediction.pred_score.device}")
        single = detector.predict(clean[:1])
        require(tuple(single.anomaly_map.shape) == (1, height, width), "a batch of one must work")

    check("output shapes, dtypes, finite, input unchanged", shapes)

    def placement() -> None:
        device = getattr(detector, "device_", None)
        if device is None:
            return  # not built on BaseDetector: no device contract
        from adcore.device_checks import misplaced_tensors

        misplaced = misplaced_tensors(detector, device)
        require(not misplaced, f"device={detector.get_params().get('device')!r} ({device}), yet the fitted detector "
                               f"holds tensors elsewhere: {misplaced[:5]}")

    check("fitted state lives on its device", placement)

    def defect_scores_higher() -> None:
        prediction = outputs["all"]
        count = clean.shape[0]
        good, bad = prediction.pred_score[:count], prediction.pred_score[count:]
        require(float(bad.mean()) > float(good.mean()),
                f"pasted defects should score higher: defective mean {float(bad.mean()):.4g} <= clean mean {float(good.mean()):.4g}")
        maps = prediction.anomaly_map[count:]
        inside, outside = float(maps[masks > 0].mean()), float(maps[masks == 0].mean())
        require(inside > outside, f"anomaly map should be higher inside the defect ({inside:.4g}) than outside ({outside:.4g})")

    check("pasted defect scores higher", defect_scores_higher)

    def calibration() -> None:
        if not hasattr(detector, "calibrate"):
            return
        detector.calibrate(_batches(make_normal_images(8, image_size, seed=55)))
        prediction = detector.predict(torch.cat([clean, defective]))
        require(prediction.pred_label is not None and prediction.pred_label.dtype == torch.bool,
                "after calibrate(), pred_label must be a bool tensor")

    check("calibrate gives labels", calibration)

    def save_load() -> None:
        if not hasattr(detector, "save"):
            return
        import adcore

        probe = torch.cat([clean[:2], defective[:2]])
        before = detector.predict(probe)
        # the file keeps no device: load where the detector ran
        where = {"device": detector.get_params()["device"]} if "device" in detector.get_params() else {}
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.safetensors"
            detector.save(path)
            loaded = type(detector).load(path, **where)
            try:
                via_registry = adcore.load(path, **where)
            except adcore.ModelFileError:
                via_registry = loaded  # not registered: class-level load is what users have
        for other, label in ((loaded, "Class.load"), (via_registry, "adcore.load")):
            after = other.predict(probe)
            require(torch.equal(before.pred_score, after.pred_score), f"{label}: scores differ after save/load")
            require(torch.equal(before.anomaly_map, after.anomaly_map), f"{label}: maps differ after save/load")
            require(repr(other.get_params()) == repr(detector.get_params()), f"{label}: parameters differ after save/load")

    check("save/load is bit-identical", save_load)

    def reproducible() -> None:
        probe = torch.cat([clean[:2], defective[:2]])
        first = detector.predict(probe)
        second = factory().fit(_batches(train)).predict(probe)
        require(torch.equal(first.pred_score, second.pred_score) and torch.equal(first.anomaly_map, second.anomaly_map),
                "two fits with the same parameters and seed gave different predictions")

    check("same seed, same predictions", reproducible)

    def order_and_batching() -> None:
        # the same images backwards, in batches of 5: a detector draws its own shuffles, so the model may
        # differ from the first only by the rounding of sums taken in another order (PaDiM's statistics)
        probe = torch.cat([clean[:2], defective[:2]])
        first = detector.predict(probe)
        second = factory().fit(_batches(train.flip(0), 5)).predict(probe)
        for label, a, b in (("scores", first.pred_score, second.pred_score), ("maps", first.anomaly_map, second.anomaly_map)):
            gap, scale = (a - b).abs().max().item(), a.abs().max().item()
            require(gap <= ORDER_TOLERANCE * scale + 1e-6,
                    f"fitting the same images in another order and other batches changed the {label} by {gap:.3g} "
                    f"(of {scale:.3g}): the model must not depend on how its stream is ordered or batched; "
                    "fit on adcore.training.training_images(stream) or key what you collect by image content")

    check("another order and batching, same predictions", order_and_batching)

    def tiling() -> None:
        tiled = factory()
        if "tile_size" not in tiled.get_params():
            return  # not built on BaseDetector: tiling is the base class's
        side = min(image_size)
        tiled.set_params(tile_size=side, tile_overlap=0.25)
        large = (image_size[0] * 3 // 2, image_size[1] * 3 // 2)
        tiled.fit(_batches(make_normal_images(max(4, train_images // 2), large, seed=0)))
        good = make_normal_images(3, large, seed=100)
        bad, bad_masks = paste_defects(good, seed=7)
        prediction = tiled.predict(torch.cat([good, bad]))
        require(tuple(prediction.anomaly_map.shape) == (6, *large), f"tiled maps {tuple(prediction.anomaly_map.shape)} are "
                f"not at the input's full resolution {large}")
        require(bool(torch.isfinite(prediction.anomaly_map).all()) and bool(torch.isfinite(prediction.pred_score).all()),
                "tiled scores and maps must be finite")
        maps = prediction.anomaly_map[3:]
        require(float(maps[bad_masks > 0].mean()) > float(maps[bad_masks == 0].mean()),
                "tiled: the anomaly map should be higher inside the pasted defect than outside")
        if hasattr(tiled, "save"):
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "tiled.safetensors"
                tiled.save(path)
                loaded = type(tiled).load(path)
            require(loaded.get_params()["tile_size"] == side, "tile_size was not kept by save/load")
            again = loaded.predict(bad[:1])
            require(torch.equal(again.anomaly_map, tiled.predict(bad[:1]).anomaly_map), "tiled maps differ after save/load")

    check("tiling at native resolution", tiling)
    return _finish(report, raise_on_failure)


def check_devices(factory: Callable[[], AnomalyDetector], **options: Any) -> ConformanceReport:
    """The device contract's checks (:func:`adcore.device_checks.check_devices`; options: ``image_size``,
    ``train_images``, ``name``, ``raise_on_failure``)."""
    from adcore.device_checks import check_devices as run

    return run(factory, **options)


def check_export(factory: Callable[[], AnomalyDetector], *, image_size: tuple[int, int] = (64, 64),
                 train_images: int = 8, formats: tuple[str, ...] = ("onnx",), name: str | None = None,
                 raise_on_failure: bool = True) -> ConformanceReport:
    """Fit a detector from ``factory()`` and export it to each of ``formats`` (``adcore.export``),
    which includes the parity check against torch on good and defective images (scores within 1e-4
    relative, maps within 1e-3 of their range). A detector that declares ``export_refusal`` passes
    when the export refuses with that reason instead. Needs ``adcore[export]`` (onnx, onnxruntime;
    openvino for ``"openvino"``)."""
    from adcore.export import NotExportableError, export_detector

    detector = factory()
    report = ConformanceReport(name or type(detector).__name__)
    detector.fit(make_normal_images(train_images, image_size, seed=0))
    refusal = getattr(detector, "export_refusal", None)
    for format in formats:
        label = f"exports to {format} with parity"
        try:
            with tempfile.TemporaryDirectory(prefix="adcore-check-export-") as out:
                try:
                    sidecar = export_detector(detector, out, format=format)
                except NotExportableError as exc:
                    if refusal and refusal in str(exc) and not any(Path(out).iterdir()):
                        report.passed.append(f"refuses {format} export with its reason")
                        continue
                    raise
                if refusal:
                    raise ConformanceError(f"declares export_refusal but exported to {format}")
                written = sorted(p.name for p in Path(out).iterdir())
                if sidecar["artefact"] not in written or "adcore-export.json" not in written:
                    raise ConformanceError(f"export wrote {written}, not the artefact and its sidecar")
        except Exception as exc:  # noqa: BLE001 - every failure goes into the report
            report.failed[label] = f"{type(exc).__name__}: {exc}"
            continue
        report.passed.append(label)
    return _finish(report, raise_on_failure)


def _finish(report: ConformanceReport, raise_on_failure: bool) -> ConformanceReport:
    if raise_on_failure and report.failed:
        lines = [f"{report.detector} failed {len(report.failed)} conformance check(s):"]
        lines += [f"  - {label}: {message}" for label, message in report.failed.items()]
        raise ConformanceError("\n".join(lines))
    return report


def build_registered(name: str, **overrides: Any) -> AnomalyDetector:
    """Build a registered detector with its card's ``quick_params`` (a fast smoke configuration)."""
    from adcore.factory import get_entry, get_model

    params = dict(get_entry(name).card.get("quick_params", {}))
    params.update(overrides)
    return get_model(name, **params)


def registered_detector_params(pattern: str = "*") -> list[Any]:
    """``pytest.param`` per registered detector, for ``@pytest.mark.parametrize("name", ...)``."""
    import pytest

    from adcore.factory import list_models

    return [pytest.param(name, id=name) for name in list_models(pattern)]


def write_fake_distribution(site: str | PathLike[str], name: str, version: str = "0.1.0", *,
                            modules: Mapping[str, str] | None = None,
                            entry_points: Mapping[str, str] | None = None,
                            entry_points_text: str | None = None) -> Path:
    """Write a minimal installed distribution into the folder ``site``; return its ``*.dist-info`` folder.

    With ``site`` on ``sys.path``, ``importlib.metadata`` finds the distribution exactly as it finds
    a pip-installed one, so :func:`adcore.plugins.load_plugins` discovers its entry points and
    imports its modules through the real loading path (discovery, import, hook registration,
    checks). Plugin authors can use it to test how their plugin loads, or how it fails::

        from adcore.plugins import load_plugins
        from adcore.testing import write_fake_distribution

        def test_hook_registers(tmp_path, monkeypatch):
            write_fake_distribution(tmp_path, "ad-mine-test", "1.0", modules={"ad_mine_test_hooks": '''
                from adcore import hookimpl

                @hookimpl
                def adcore_register_detectors(registry):
                    registry.add("mine_test", "ad_mine.model:MyDetector", category="example")
            '''}, entry_points={"ad_mine_test": "ad_mine_test_hooks"})
            monkeypatch.syspath_prepend(str(tmp_path))
            host = load_plugins()
            assert not [f for f in host.failures if f.distribution == "ad-mine-test"], host.failures
            assert "mine_test" in host.detectors

    What is written:

    * ``<name>-<version>.dist-info/METADATA`` with ``Name`` and ``Version`` (the distribution and
      version that :class:`adcore.plugins.PluginFailure` reports);
    * ``<name>-<version>.dist-info/entry_points.txt``: one line ``<key> = <value>`` per item of
      ``entry_points`` in adcore's group (``[adcore]``); a value is ``"module"`` (the hook module,
      as adcore expects) or ``"module:attr"``. ``entry_points_text`` instead writes the file
      verbatim, e.g. a malformed one or other groups. With neither, the group is empty.
    * one file per item of ``modules`` (``{import name: source}``, source dedented): ``mod`` →
      ``site/mod.py``; dotted names become packages (``pkg.sub`` → ``site/pkg/sub.py``, with an
      empty ``pkg/__init__.py`` unless ``pkg`` itself is given).

    Import caches are invalidated, so the new files are found even when ``site`` is already on
    ``sys.path``. Notes for tests: ``sys.modules`` is process-wide, so give the modules of each test
    names no other test imports (or remove them from ``sys.modules`` afterwards); use distribution
    and entry-point names that no installed package uses, or ``load_plugins`` reports the
    duplicate; ``adcore.plugins.reset_plugins()`` makes the process-wide host reload, for code
    under test that calls ``adcore.list_models``/``get_model``.

    Raises :class:`~adcore.errors.InvalidInputError` (a ``ValueError``) for an invalid module name
    or when both ``entry_points`` and ``entry_points_text`` are given, and ``FileExistsError`` when
    that distribution version is already in ``site``.
    """
    if entry_points is not None and entry_points_text is not None:
        raise InvalidInputError("give entry_points or entry_points_text, not both")
    modules = dict(modules or {})
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise InvalidInputError(f"not an importable module name: {module!r}")
    root = Path(site)
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    if entry_points_text is None:
        lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{key} = {value}" for key, value in (entry_points or {}).items()]
        entry_points_text = "\n".join(lines) + "\n"
    (info / "entry_points.txt").write_text(entry_points_text, encoding="utf-8")

    packages = {".".join(module.split(".")[:depth]) for module in modules for depth in range(1, module.count(".") + 1)}
    for module, source in modules.items():
        parts = module.split(".")
        path = root.joinpath(*parts, "__init__.py") if module in packages else root.joinpath(*parts[:-1], parts[-1] + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    for package in packages - set(modules):
        init = root.joinpath(*package.split("."), "__init__.py")
        if not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            init.write_text("", encoding="utf-8")
    importlib.invalidate_caches()
    return info


def write_tiny_category(root: str | PathLike[str], category: str, *, size: int = 48) -> Path:
    """Write a tiny MVTec-layout category under ``root`` and return its folder: 6 smooth training
    textures, 3 good and 3 defective test images (a red square, with its mask). Deterministic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = Path(root) / category
    xs = np.mgrid[0:size, 0:size][1] / size

    def save(array: Any, path: Path, mode: str = "RGB") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((array * 255).astype(np.uint8), mode=mode).save(path)

    def texture() -> Any:
        base = 0.5 + 0.15 * np.sin(2 * np.pi * 4 * xs + rng.uniform(0, 6.28)) + 0.02 * rng.standard_normal((size, size))
        return np.clip(np.stack([base, base * 0.9, base * 0.8], -1), 0, 1)

    for i in range(6):
        save(texture(), folder / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        save(texture(), folder / "test" / "good" / f"{i:03d}.png")
        image, mask = texture(), np.zeros((size, size))
        image[8:20, 8:20], mask[8:20, 8:20] = [1.0, 0.1, 0.1], 1.0
        save(image, folder / "test" / "scratch" / f"{i:03d}.png")
        save(mask, folder / "ground_truth" / "scratch" / f"{i:03d}_mask.png", mode="L")
    return folder
