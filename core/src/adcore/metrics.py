"""Evaluation metrics, exact and dependency-light (NumPy + SciPy's connected components).

All functions take ``labels`` (1 = anomalous) and ``scores`` (higher = more anomalous) as tensors or
arrays. A metric that is undefined for the data (e.g. AUROC on a test set with only good images)
raises :class:`UndefinedMetricError` saying why, instead of returning NaN; :func:`evaluate` turns
that into ``None`` plus a note. NaN or Inf scores/maps raise :class:`~adcore.errors.InvalidInputError`
(a ``ValueError``; a detector bug, never averaged away). Defect regions for AUPRO are 8-connected, as in the MVTec AD evaluation code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adcore.errors import AdcoreError, InvalidInputError

__all__ = ["UndefinedMetricError", "auroc", "roc_curve", "f1_max", "aupro", "pro_curve", "evaluate"]


class UndefinedMetricError(AdcoreError, ValueError):
    """The metric has no value for this data (the message says why)."""


def _as_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


def _check(labels: np.ndarray, scores: np.ndarray, what: str) -> None:
    if labels.shape != scores.shape:
        raise InvalidInputError(f"{what}: {labels.size} labels but {scores.size} scores")
    if labels.size == 0:
        raise UndefinedMetricError(f"{what} is undefined: there are no samples")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise InvalidInputError(f"{what}: {bad.size} score(s) are NaN or Inf (e.g. at index {bad[:5].tolist()}); "
                         "the detector produced invalid output")
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        kind = "anomalous" if positives == 0 else "normal"
        raise UndefinedMetricError(f"{what} is undefined: the data has no {kind} samples")


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, from the highest down, starting at (0, 0)."""
    y = _as_numpy(labels) > 0
    s = _as_numpy(scores)
    _check(y, s, "ROC")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / y.sum()]
    fpr = np.r_[0.0, fps / (~y).sum()]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count half, as in scikit-learn)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.trapezoid(tpr, fpr))


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold (anomalous when ``score >= threshold``)."""
    y = _as_numpy(labels) > 0
    s = _as_numpy(scores)
    _check(y, s, "F1")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie].astype(np.float64)
    predicted = last_of_tie + 1.0
    precision = tps / predicted
    recall = tps / y.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(s[last_of_tie][best])


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)`` over all thresholds: per-region overlap averaged over connected defect regions."""
    from scipy import ndimage

    masks_np = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
    maps_np = maps.detach().cpu().numpy() if hasattr(maps, "detach") else np.asarray(maps)
    masks_np = masks_np.reshape(-1, *masks_np.shape[-2:]) > 0
    maps_np = maps_np.reshape(-1, *maps_np.shape[-2:]).astype(np.float64)
    if masks_np.shape != maps_np.shape:
        raise InvalidInputError(f"AUPRO: masks {masks_np.shape} and anomaly maps {maps_np.shape} differ in shape")
    if not np.isfinite(maps_np).all():
        raise InvalidInputError("AUPRO: anomaly maps contain NaN or Inf; the detector produced invalid output")
    region_ids = np.zeros(masks_np.shape, dtype=np.int64)
    next_id = 0
    eight_connected = np.ones((3, 3), dtype=bool)
    for index, mask in enumerate(masks_np):
        labelled, count = ndimage.label(mask, structure=eight_connected)
        region_ids[index] = np.where(labelled > 0, labelled + next_id, 0)
        next_id += count
    if next_id == 0:
        raise UndefinedMetricError("AUPRO is undefined: no defect region in any ground-truth mask")
    background = region_ids == 0
    if not background.any():
        raise UndefinedMetricError("AUPRO is undefined: the masks cover every pixel")
    region_sizes = np.bincount(region_ids.reshape(-1), minlength=next_id + 1).astype(np.float64)
    weights = np.where(background, 0.0, 1.0 / (next_id * region_sizes[region_ids])).reshape(-1)
    scores = maps_np.reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    scores, weights, bg = scores[order], weights[order], background.reshape(-1)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    fpr = np.cumsum(bg)[last_of_tie] / bg.sum()
    pro = np.cumsum(weights)[last_of_tie]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (1.0 is perfect)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise InvalidInputError(f"AUPRO: fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        after = int(np.searchsorted(fpr, fpr_limit))
        x0, x1, y0, y1 = fpr[after - 1], fpr[after], pro[after - 1], pro[after]
        y_end = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.r_[x, fpr_limit], np.r_[y, y_end]
    return float(np.trapezoid(y, x) / fpr_limit)


def evaluate(labels: Any, scores: Any, masks: Any | None = None, maps: Any | None = None) -> dict[str, Any]:
    """Every metric that is defined for the data; undefined ones are ``None`` with the reason in ``notes``."""
    results: dict[str, Any] = {"notes": {}}

    def attempt(name: str, fn: Any) -> None:
        try:
            results[name] = fn()
        except UndefinedMetricError as exc:
            results[name] = None
            results["notes"][name] = str(exc)

    attempt("image_auroc", lambda: auroc(labels, scores))
    attempt("image_f1_max", lambda: f1_max(labels, scores)[0])
    attempt("image_f1_threshold", lambda: f1_max(labels, scores)[1])
    if (masks is None) != (maps is None):
        raise InvalidInputError("evaluate: pass both masks and maps for pixel metrics, or neither")
    if masks is not None and maps is not None:
        masks_np = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
        maps_np = maps.detach().cpu().numpy() if hasattr(maps, "detach") else np.asarray(maps)
        if masks_np.shape != maps_np.shape:
            raise InvalidInputError(f"evaluate: masks {masks_np.shape} and anomaly maps {maps_np.shape} differ in shape")
        attempt("pixel_auroc", lambda: auroc(masks_np.reshape(-1) > 0, maps_np.reshape(-1)))
        attempt("aupro", lambda: aupro(masks_np, maps_np))
    return results
