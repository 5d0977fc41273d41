"""What runs inside each pair's subprocess: build, load, fit → calibrate → evaluate, extras, record.

``python -m adcore.benchmark --worker SPEC`` reads the spec the runner wrote, writes the current
stage to ``<slug>.stage`` (so a killed run can say where it was) and its record to the spec's
``result_path``. An exception is recorded with its type, message, stage (fit / calibrate /
predict / latency / ...) and the traceback's tail; it is data for the table, never a crash.

Besides :func:`adcore.evaluation.evaluate_detector`'s metrics and costs every record holds the fit's
CPU seconds, the peak RSS right after the fit and a log of every training loop (loss and seconds
per epoch, through :func:`adcore.training.on_epoch`); the run's options add a learning curve
(``curve``: the test set evaluated every N epochs, that time taken out of ``fit_seconds``),
re-scorings of the fitted detector with other settings (``variants``), fitted attributes
(``record_attributes``), import times (``preimport``) and CPU-time latency (``cpu_latency``).
"""

from __future__ import annotations

import importlib
import io
import json
import random
import time
import traceback
from pathlib import Path
from typing import Any

from adcore.benchmark.plan import RUNS_DIR, DatasetSpec, load_detector_class
from adcore.benchmark.store import clean_float, json_default
from adcore.errors import ConfigurationError
from adcore.files import atomic_write_bytes, atomic_write_text

__all__ = ["run_worker", "calibration_seed", "SAMPLE_IMAGES", "SAMPLE_SIDE", "CURVE_METRICS"]

#: test images kept per run for the heatmap grid, and the side of the stored thumbnails
SAMPLE_IMAGES = 4
SAMPLE_SIDE = 128
#: the metrics a learning-curve point and a variant record
CURVE_METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")


def _stage_from_traceback(tb: Any, tracked: str = "evaluate") -> str:
    names = [frame.name for frame in traceback.extract_tb(tb)]
    files = [Path(frame.filename).name for frame in traceback.extract_tb(tb)]
    for marker, stage in (("measure_latency", "latency"), ("collect_predictions", "predict"), ("calibrate", "calibrate"),
                          ("fit", "fit")):
        if marker in names:
            return stage
    if "metrics.py" in files:
        return "metrics"
    return tracked or "evaluate"


def calibration_seed(seed: Any) -> int:
    """The seed of a run's calibration split: the run's own (``--seeds``), 0 for a detector without one."""
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


def _build_detector(name: str, params: dict[str, Any], *, allow_import: bool = False) -> Any:
    from adcore.factory import find_entry, get_model

    if find_entry(name) is not None:
        return get_model(name, **params)
    if not allow_import:
        raise ConfigurationError(f"detector {name!r} is not registered and importing module:Class targets was not "
                                 "allowed (--allow-import)")
    return load_detector_class(name)(**params)


def _sample_indices(test_set: Any) -> list[int]:
    """The same few test images for every detector: first of each defect type (round-robin), then one good."""
    samples = getattr(test_set, "samples", None)
    labels = [int(s[1]) for s in samples] if samples is not None else [int(test_set[i]["label"]) for i in range(len(test_set))]
    types = [str(s[3]) for s in samples] if samples is not None else ["defect" if v else "good" for v in labels]
    by_type: dict[str, list[int]] = {}
    for index, (label, kind) in enumerate(zip(labels, types, strict=True)):
        if label:
            by_type.setdefault(kind, []).append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < SAMPLE_IMAGES - 1 and any(depth < len(v) for v in by_type.values()):
        for kind in sorted(by_type):
            if depth < len(by_type[kind]) and len(chosen) < SAMPLE_IMAGES - 1:
                chosen.append(by_type[kind][depth])
        depth += 1
    good = [i for i, label in enumerate(labels) if not label]
    if good:
        chosen.append(good[0])
    return chosen


def _save_artifacts(path: Path, test_set: Any, outputs: dict[str, Any], threshold: float | None) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    indices = _sample_indices(test_set)
    side = SAMPLE_SIDE
    images, masks, maps = [], [], []
    for index in indices:
        item = test_set[index]
        images.append(F.interpolate(item["image"][None], size=(side, side), mode="bilinear", antialias=True,
                                    align_corners=False)[0])
        masks.append(F.interpolate(item["mask"][None, None].float(), size=(side, side), mode="nearest")[0, 0])
        maps.append(F.interpolate(outputs["maps"][index][None, None].float(), size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0])
    samples = getattr(test_set, "samples", None)
    defect_types = [str(s[3]) for s in samples] if samples is not None else ["" for _ in range(len(test_set))]
    stack = lambda items, shape: torch.stack(items).numpy() if items else np.zeros(shape)  # noqa: E731
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        scores=outputs["scores"].float().numpy(), labels=outputs["labels"].numpy().astype(np.int8),
        defect_types=np.array(defect_types), paths=np.array([str(p) for p in outputs["paths"]]),
        threshold=np.array(np.nan if threshold is None else threshold, dtype=np.float64),
        sample_index=np.array(indices, dtype=np.int64),
        sample_images=(stack(images, (0, 3, side, side)).transpose(0, 2, 3, 1) * 255).round().clip(0, 255).astype(np.uint8),
        sample_masks=stack(masks, (0, side, side)) > 0.5,
        sample_maps=stack(maps, (0, side, side)).astype(np.float32),
    )
    atomic_write_bytes(path, buffer.getvalue())


def _track_stages(detector: Any, stage_path: Path) -> dict[str, float]:
    """Write the current stage (fit → calibrate → evaluate) to ``stage_path`` so a killed run can say where it was.

    Returns a dict that the wrapped ``fit`` fills with its CPU seconds and the peak RSS right after it.
    """
    from adcore.evaluation import peak_rss_mb

    measured: dict[str, float] = {}

    def mark(stage: str) -> None:
        try:
            atomic_write_text(stage_path, stage)
        except OSError:
            pass

    for name, after in (("fit", None), ("calibrate", "evaluate")):
        original = getattr(detector, name, None)
        if original is None:
            continue

        def wrapped(*args: Any, _original: Any = original, _name: str = name, _after: str | None = after,
                    **kwargs: Any) -> Any:
            mark(_name)
            cpu = time.process_time()
            result = _original(*args, **kwargs)
            if _name == "fit":
                measured["fit_cpu_seconds"] = time.process_time() - cpu
                measured["peak_rss_mb_fit"] = round(peak_rss_mb(), 1)
            if _after:
                mark(_after)
            return result

        try:
            setattr(detector, name, wrapped)
        except AttributeError:
            return measured
    return measured


def _score(detector: Any, test: Any, batch_size: int) -> dict[str, Any]:
    """The test-set metrics of ``detector`` as it stands (no fit)."""
    from adcore.data import make_loader
    from adcore.evaluation import collect_predictions
    from adcore.metrics import evaluate

    outputs = collect_predictions(detector, make_loader(test, batch_size), desc="score")
    metrics = evaluate(outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"])
    return {key: clean_float(metrics.get(key)) for key in CURVE_METRICS}


class TrainingLog:
    """The :func:`adcore.training.on_epoch` callback of a run: loss and seconds per epoch of every
    training loop and, every ``curve`` epochs, the test-set metrics of the partially trained detector."""

    def __init__(self, detector: Any, test: Any, batch_size: int, curve: int | None) -> None:
        self.detector, self.test, self.batch_size, self.curve = detector, test, batch_size, curve
        self.loops: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = []
        self.curve_seconds = 0.0
        self.curve_cpu_seconds = 0.0
        self._current: Any = None

    def __call__(self, event: Any) -> None:
        if event.history is not self._current:  # a new train_epochs call (another loop of the same fit)
            self._current = event.history
            self.loops.append({"description": event.description, "epochs_planned": event.epochs, "loss": [],
                               "validation": [], "seconds": []})
        loop = self.loops[-1]
        loop["loss"].append(clean_float(float(event.history.loss[-1])))
        if len(event.history.validation) > len(loop["validation"]):
            loop["validation"].append(clean_float(float(event.history.validation[-1])))
        loop["seconds"].append(round(event.seconds, 4))
        done = event.epoch + 1
        if self.curve and done % self.curve == 0 and done < event.epochs:
            self.points.append({"loop": event.description, "epoch": done, "loss": loop["loss"][-1],
                                **self._evaluate_now(event.modules)})

    def _evaluate_now(self, modules: tuple[Any, ...]) -> dict[str, Any]:
        """Score the detector mid-fit: modules in eval mode and the detector marked fitted for the
        moment, every RNG state put back afterwards so the training continues exactly as without it."""
        import numpy as np
        import torch

        started, cpu = time.perf_counter(), time.process_time()
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        modes = [module.training for module in modules]
        fitted = self.detector.__dict__.get("fitted_", False)
        try:
            for module in modules:
                module.eval()
            self.detector.fitted_ = True
            point: dict[str, Any] = _score(self.detector, self.test, self.batch_size)
        except Exception as exc:  # noqa: BLE001 - a detector that cannot predict mid-fit: say so in the point
            point = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        finally:
            self.detector.fitted_ = fitted
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
        point["eval_seconds"] = round(time.perf_counter() - started, 3)
        self.curve_seconds += time.perf_counter() - started
        self.curve_cpu_seconds += time.process_time() - cpu
        return point


def _score_variants(detector: Any, test: Any, batch_size: int, variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The fitted detector re-scored with other map/score/search settings, no refit.

    Each variant starts from the fitted state as saved (``save`` → :func:`adcore.factory.load`), so
    nothing a first prediction cached (a search index, say) leaks from one setting into another; a
    detector that cannot be saved and reloaded is changed in place and set back afterwards.
    """
    import tempfile

    import torch

    from adcore.evaluation import measure_latency

    sample = torch.stack([test[i]["image"] for i in range(min(batch_size, len(test)))])
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="adcore-variants-") as folder:
        saved = None
        try:
            saved = Path(detector.save(Path(folder) / "fitted.safetensors"))
        except Exception:  # noqa: BLE001 - not every detector can be saved: fall back to changing it in place
            saved = None
        for variant in variants:
            label = ",".join(f"{key}={json.dumps(value)}" for key, value in variant.items())
            target, original = detector, {key: getattr(detector, key) for key in variant if hasattr(detector, key)}
            try:
                if saved is not None:
                    from adcore.factory import load

                    target, original = load(saved), {}
                target.set_params(**variant)
                found[label] = _score(target, test, batch_size)
                batch1, batched = measure_latency(target, sample, batch_size=batch_size)
                found[label].update(ms_per_image_batch1=batch1, ms_per_image_batched=batched)
            except Exception as exc:  # noqa: BLE001 - a variant the detector refuses is recorded, the run goes on
                found[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            finally:
                if original:
                    detector.set_params(**original)
    return found


def _plain(value: Any, depth: int = 0) -> Any:
    """A fitted attribute as JSON: tensors and arrays by shape and dtype, containers recursively."""
    if depth > 6:
        return str(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "ndim", 0) > 0:
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if hasattr(value, "as_dict") and callable(value.as_dict):
        value = value.as_dict()
    if isinstance(value, dict):
        return {str(key): _plain(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, depth + 1) for item in value]
    if isinstance(value, float):
        return clean_float(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return clean_float(json_default(value))


def _cpu_ms_per_image(detector: Any, images: Any, repeats: int = 3) -> float:
    """CPU time (all threads) per image: robust to other jobs sharing the machine, unlike wall time."""
    detector.predict(images)
    cpu = time.process_time()
    for _ in range(repeats):
        detector.predict(images)
    return (time.process_time() - cpu) * 1000 / repeats / images.shape[0]


def _history_summary(detector: Any) -> dict[str, Any]:
    history = getattr(detector, "history_", None)
    loss = history.get("loss") if isinstance(history, dict) else None
    if not loss:
        return {}
    return {"epochs_run": len(loss), "final_loss": clean_float(float(loss[-1]))}


def run_worker(spec_path: str) -> int:
    """Run the pair described by ``spec_path`` and write its record; returns the process exit code."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    record: dict[str, Any] = dict(spec["record"])
    run = spec["run"]
    options: dict[str, Any] = run.get("options") or {}
    stage = "setup"
    stage_path = Path(spec["result_path"]).with_suffix(".stage")
    atomic_write_text(stage_path, "startup")
    started = time.perf_counter()
    try:
        import torch

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        record["torch_threads"] = torch.get_num_threads()
        record["torch_version"] = torch.__version__
        if options.get("preimport"):
            # e.g. timm: a reference whose fit time starts after its imports is compared with a fit that does too
            stage = "import"
            record["import_seconds"] = {}
            for name in options["preimport"]:
                began = time.perf_counter()
                importlib.import_module(name)
                record["import_seconds"][name] = round(time.perf_counter() - began, 3)
        stage = "build"
        detector = _build_detector(run["detector"], run["params"], allow_import=bool(run.get("allow_import")))
        effective = detector.get_params() if hasattr(detector, "get_params") else dict(run["params"])
        record["effective_params"] = json.loads(json.dumps(effective, default=json_default))
        record["seed"] = effective.get("seed", record.get("seed"))
        record["backbone"] = effective.get("backbone", record.get("backbone"))
        from adcore.devices import device_name

        device = getattr(detector, "device_", None) or torch.device("cpu")  # without the base class: where torch runs
        record.update(device=str(device), device_name=device_name(device), precision=str(effective.get("precision", "32")))
        from adcore.inputs import to_size

        size = to_size(effective.get("input_size", record.get("input_size") or 256))
        record["input_size"] = size[0] if size[0] == size[1] else list(size)
        if options.get("image_size") is not None:  # the data (and the masks the maps are scored on) at another size
            size = to_size(options["image_size"])
            record["image_size"] = size[0] if size[0] == size[1] else list(size)
        stage = "data"
        atomic_write_text(stage_path, stage)
        dataset = DatasetSpec(**{**run["dataset"], "defects": tuple(run["dataset"].get("defects", ()))})
        if getattr(detector, "load_size", size) is None and options.get("image_size") is None:
            size = None  # a tiling detector cuts its tiles from the full-resolution images
            record["image_size"] = "native"
        train, test = dataset.load(size)
        stage = "evaluate"
        measured = _track_stages(detector, stage_path)
        from adcore.evaluation import evaluate_detector, split_calibration
        from adcore.training import on_epoch

        batch_size = int(run["batch_size"]) if size is not None else 1  # full-size images may differ in size
        extra: dict[str, Any] = {}
        available = len(train)
        # the held-out calibration share follows the run's seed (#23): each --seeds run draws its own split
        # (seed 0, and a detector without a seed, keep the split every earlier run used)
        fraction = float(options.get("calibration_fraction", 0.2))  # 0.2: evaluate_detector's own default
        train, extra["calibration_set"] = split_calibration(train, fraction, seed=calibration_seed(record.get("seed")))
        log = TrainingLog(detector, test, batch_size, options.get("curve"))
        with on_epoch(log):
            result, outputs = evaluate_detector(detector, train, test, batch_size=batch_size,
                                                workers=int(options.get("workers", 0)), **extra)
        record.update({key: clean_float(value) for key, value in result.as_dict().items()})
        record["calibration_images"] = available - result.train_images  # held out of train for the threshold
        record["calibration_seed"] = calibration_seed(record.get("seed"))
        if "fit_cpu_seconds" in measured:
            record["fit_cpu_seconds"] = round(measured["fit_cpu_seconds"] - log.curve_cpu_seconds, 3)
            record["peak_rss_mb_fit"] = measured["peak_rss_mb_fit"]
        record.update(_history_summary(detector))
        if log.loops:
            record["training"] = log.loops
        if options.get("curve"):
            record["curve"] = log.points
            record["curve_seconds"] = round(log.curve_seconds, 3)
            if record.get("fit_seconds") is not None:  # the fit's own time, without the evaluations between epochs
                record["fit_seconds"] = record["fit_seconds"] - log.curve_seconds
        if options.get("cpu_latency"):
            stage = "latency"
            sample = torch.stack([test[i]["image"] for i in range(min(batch_size, len(test)))])
            record["cpu_ms_per_image_batch1"] = _cpu_ms_per_image(detector, sample[:1])
            record["cpu_ms_per_image_batched"] = _cpu_ms_per_image(detector, sample)
        if options.get("variants"):
            stage = "variants"
            record["variants"] = _score_variants(detector, test, batch_size, options["variants"])
        if options.get("record_attributes"):
            record["attributes"] = {name: _plain(getattr(detector, name)) for name in options["record_attributes"]
                                    if hasattr(detector, name)}
        stage = "artifacts"
        _save_artifacts(Path(spec["artifacts_path"]), test, outputs, result.threshold)
        record["artifacts"] = str(Path(RUNS_DIR) / Path(spec["artifacts_path"]).name)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure of a detector is data for the table
        if stage == "evaluate":
            stage = _stage_from_traceback(exc.__traceback__, stage_path.read_text().strip())
        record["status"] = "error"
        record["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000], "stage": stage,
                           "traceback": "".join(traceback.format_exception(exc))[-4000:]}
    from adcore.evaluation import peak_rss_mb

    record["peak_rss_mb"] = round(peak_rss_mb(), 1)
    record["worker_seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_text(Path(spec["result_path"]), json.dumps(record, default=json_default))
    return 0
