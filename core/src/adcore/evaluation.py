"""Fit → calibrate → evaluate one detector on one dataset, with timings and memory.

This is what ``adcore eval`` prints and what ``adcore benchmark`` runs for every pair.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from adcore.data import make_loader
from adcore.metrics import evaluate
from adcore.progress import progress

__all__ = ["EvaluationResult", "split_calibration", "collect_predictions", "evaluate_detector", "evaluate_fitted",
           "score_test_set", "measure_latency", "peak_rss_mb",
           "masks_given", "NO_MASKS_NOTE", "NO_MAPS_NOTE"]

#: the reason given for pixel AUROC and AUPRO when the test set has no ground-truth masks
NO_MASKS_NOTE = ("not available: no masks given for the test set's defect images, so it is evaluated image-level "
                 "only (give masks=DIR in a folder: dataset, or CATEGORY/ground_truth/)")


#: the reason given for pixel AUROC and AUPRO of a score-only exported artefact
NO_MAPS_NOTE = ("not available: a score-only export (its detector's map cannot be an inference graph) has no maps; "
                "evaluate the .safetensors model for pixel metrics")


def split_calibration(dataset: Any, fraction: float, seed: int = 0) -> tuple[Any, Any]:
    """Hold out ``fraction`` of good training images for calibration (at least one when fraction > 0).

    Memory-bank detectors score their own training images near zero, so a threshold set on them
    would flag almost everything; held-out good images give an honest one.
    """
    from torch.utils.data import Subset

    count = len(dataset)
    held = 0 if fraction <= 0 or count < 4 else max(1, int(round(fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[held:])), Subset(dataset, sorted(order[:held]))


def masks_given(dataset: Any) -> bool:
    """Whether ``dataset`` has ground-truth masks for pixel metrics.

    adcore's datasets say so in ``masks_given``; a ``Subset`` or ``ConcatDataset`` asks what it wraps;
    any other dataset is taken to have masks (its items carry them).
    """
    flag = getattr(dataset, "masks_given", None)
    if flag is not None:
        return bool(flag)
    if hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        return masks_given(dataset.dataset)
    if hasattr(dataset, "datasets"):  # torch.utils.data.ConcatDataset
        return any(masks_given(part) for part in dataset.datasets)
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


@dataclass
class EvaluationResult:
    """Metrics (``None`` when undefined, with the reason in ``notes``) and costs of one run."""

    image_auroc: float | None = None
    pixel_auroc: float | None = None
    aupro: float | None = None
    image_f1_max: float | None = None
    image_f1_threshold: float | None = None
    threshold: float | None = None
    threshold_f1: float | None = None
    fit_seconds: float | None = None
    ms_per_image_batch1: float | None = None
    ms_per_image_batched: float | None = None
    peak_rss_mb: float | None = None
    train_images: int = 0
    test_images: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_predictions(detector: Any, loader: Any, *, desc: str = "predict") -> dict[str, Any]:
    """Run ``predict`` over a loader of dataset dicts; returns scores, labels, masks, maps, paths.

    When the loader knows its dataset's length, maps and masks are written batch by batch into one
    tensor each, allocated at the first batch (lists and a concatenation would hold both copies at the
    end: 2 × 27 MB for MVTec bottle at 256 px); the heap pages the batches' activations left behind
    are handed back afterwards (:func:`adcore.memory.release_free_memory`), so the metrics and
    whatever follows do not sit on top of them.
    """
    from adcore.memory import release_free_memory

    total = len(loader.dataset) if hasattr(loader, "dataset") and hasattr(loader.dataset, "__len__") else None
    scores, labels, masks, maps, paths = [], [], [], [], []
    all_masks = all_maps = None
    filled = 0
    for batch in progress(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None):
        prediction = detector.predict(batch["image"])
        scores.append(prediction.pred_score)
        labels.append(torch.as_tensor(batch["label"]))
        paths.extend(batch["path"])
        # float32, not float16: half precision overflowed to Inf on maps with large raw values
        # (DifferNet's input gradients) and its 11-bit mantissa ties neighbouring pixel scores
        amap, mask = prediction.anomaly_map, batch["mask"]
        if total is not None and all_maps is None:
            all_maps = torch.empty((total, *amap.shape[1:]), dtype=torch.float32)
            all_masks = torch.empty((total, *mask.shape[1:]), dtype=torch.bool)
        if all_maps is not None and filled + amap.shape[0] <= total and amap.shape[1:] == all_maps.shape[1:] \
                and mask.shape[1:] == all_masks.shape[1:]:
            all_maps[filled:filled + amap.shape[0]] = amap
            all_masks[filled:filled + mask.shape[0]] = mask
        else:  # a loader whose length or shapes were not what it said: collect the rest as a list
            if all_maps is not None:
                maps, masks, all_maps, all_masks = [all_maps[:filled]], [all_masks[:filled]], None, None
                total = None
            maps.append(amap.float())
            masks.append(mask.to(torch.bool))
        filled += amap.shape[0]
    if all_maps is not None:
        maps, masks = all_maps[:filled], all_masks[:filled]
    else:
        maps, masks = torch.cat(maps), torch.cat(masks)
    release_free_memory()
    return {"scores": torch.cat(scores), "labels": torch.cat(labels), "masks": masks, "maps": maps, "paths": paths}


def measure_latency(detector: Any, images: torch.Tensor, *, batch_size: int = 8, repeats: int = 3) -> tuple[float, float]:
    """Milliseconds per image at batch 1 and at ``batch_size`` (median of ``repeats``, after a warm-up)."""
    def timed(batch: torch.Tensor) -> float:
        detector.predict(batch)  # warm-up: lazy backbones, faiss index, allocator
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            detector.predict(batch)
            runs.append(time.perf_counter() - started)
        return sorted(runs)[len(runs) // 2] * 1000.0 / batch.shape[0]

    batch1 = timed(images[:1])
    batched = timed(images[:batch_size]) if images.shape[0] >= 2 else batch1
    return batch1, batched


def evaluate_detector(detector: Any, train_set: Any, test_set: Any, *, batch_size: int = 8,
                      calibration_set: Any | None = None, target_fpr: float = 0.01,
                      latency: bool = True, workers: int = 0) -> tuple[EvaluationResult, dict[str, Any]]:
    """Fit on ``train_set`` (good images), calibrate, predict ``test_set`` and compute every metric.

    The threshold comes from ``calibration_set`` (held-out good images; when omitted, a fifth of
    ``train_set`` is held out), so the test set never chooses it; its F1 on the test set is reported.
    A test set without masks (:func:`masks_given` False) gets image-level metrics only; pixel AUROC
    and AUPRO are ``None`` with :data:`NO_MASKS_NOTE` as their note. ``workers``: decoding processes of
    the data loaders (pinned batches when the detector runs on CUDA).
    """
    device = getattr(detector, "device_", None)

    def loader(dataset: Any) -> Any:
        return make_loader(dataset, batch_size, num_workers=workers, device=device)

    if calibration_set is None:
        train_set, calibration_set = split_calibration(train_set, 0.2)
    result = EvaluationResult(train_images=len(train_set), test_images=len(test_set))
    started = time.perf_counter()
    detector.fit(loader(train_set))
    result.fit_seconds = time.perf_counter() - started
    if hasattr(detector, "calibrate") and len(calibration_set):
        detector.calibrate(loader(calibration_set), target_fpr=target_fpr)
        result.threshold = getattr(detector, "threshold_", None)
    outputs = score_test_set(detector, test_set, result, batch_size=batch_size, latency=latency, workers=workers)
    return result, outputs


def evaluate_fitted(model: Any, test_set: Any, *, batch_size: int = 8,
                    latency: bool = True, workers: int = 0) -> tuple[EvaluationResult, dict[str, Any]]:
    """Every metric of an already fitted (and calibrated) model on ``test_set``, nothing fitted:
    what ``adcore eval`` does for a model file or an exported artefact
    (:func:`adcore.deployed.open_model`); ``threshold`` is the model's own."""
    result = EvaluationResult(test_images=len(test_set), threshold=getattr(model, "threshold_", None))
    outputs = score_test_set(model, test_set, result, batch_size=batch_size, latency=latency, workers=workers)
    return result, outputs


def score_test_set(detector: Any, test_set: Any, result: EvaluationResult, *, batch_size: int = 8,
                   latency: bool = True, workers: int = 0) -> dict[str, Any]:
    """Predict ``test_set`` and fill ``result``'s metrics (and latency, peak RSS); returns the outputs."""
    loader = make_loader(test_set, batch_size, num_workers=workers, device=getattr(detector, "device_", None))
    outputs = collect_predictions(detector, loader)
    if not getattr(detector, "has_maps", True):  # a score-only exported artefact (adcore.deployed)
        metrics = {**evaluate(outputs["labels"], outputs["scores"]), "pixel_auroc": None, "aupro": None}
        metrics["notes"].update(pixel_auroc=NO_MAPS_NOTE, aupro=NO_MAPS_NOTE)
    elif masks_given(test_set):
        metrics = evaluate(outputs["labels"], outputs["scores"], outputs["masks"], outputs["maps"])
    else:
        metrics = {**evaluate(outputs["labels"], outputs["scores"]), "pixel_auroc": None, "aupro": None}
        metrics["notes"].update(pixel_auroc=NO_MASKS_NOTE, aupro=NO_MASKS_NOTE)
    result.notes.update(metrics.pop("notes"))
    for key, value in metrics.items():
        setattr(result, key, value)
    if result.threshold is not None and result.image_auroc is not None:
        from adcore.metrics import _as_numpy

        predicted = _as_numpy(outputs["scores"]) >= result.threshold
        truth = _as_numpy(outputs["labels"]) > 0
        tp = float((predicted & truth).sum())
        denominator = float(predicted.sum() + truth.sum())
        result.threshold_f1 = 2 * tp / denominator if denominator else 0.0
    if latency:
        sample = torch.stack([test_set[i]["image"] for i in range(min(batch_size, len(test_set)))])
        result.ms_per_image_batch1, result.ms_per_image_batched = measure_latency(detector, sample, batch_size=batch_size)
    result.peak_rss_mb = peak_rss_mb()
    return outputs
