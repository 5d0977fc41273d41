"""Thresholds from held-out data: what ``BaseDetector.calibrate`` does, in one function.

It reads a fitted detector only through ``predict`` (CPU outputs, whatever its device) and sets
the fitted attributes the model file keeps: ``threshold_``, ``score_scale_``, ``pixel_threshold_``,
``pixel_scale_`` and ``calibration_`` (see :mod:`adcore.scoring` for the rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from adcore.errors import InvalidInputError
from adcore.inputs import ImageStream

if TYPE_CHECKING:
    from adcore.base import BaseDetector

__all__ = ["calibrate"]


def calibrate(detector: BaseDetector, data: Any, *, target_fpr: float = 0.01,
              pixel_target_fpr: float = 0.001) -> BaseDetector:
    """Set ``detector.threshold_`` (and the readable-score scales) from held-out data; returns ``detector``.

    Good-only data (no labels, or labels all 0): the smallest threshold that flags at most
    ``target_fpr`` of these good images, so a validation set without defects gives an honest
    threshold instead of one that flags everything. Labelled data with both classes: the
    threshold with the best F1.

    Also sets (see :mod:`adcore.scoring`): ``score_scale_``, the spread of the good images'
    scores, so that ``Prediction.normalized_score`` is 0.5 at the threshold; ``pixel_threshold_``,
    the smallest per-pixel threshold that flags at most ``pixel_target_fpr`` of the good images'
    pixels (on a bounded uniform sample of them), and ``pixel_scale_``, their spread. With no good
    image in ``data`` the pixel values stay ``None``.
    """
    detector._check_fitted("calibrate")
    if not 0.0 <= target_fpr < 1.0:
        raise InvalidInputError(f"target_fpr must be in [0, 1), got {target_fpr}")
    if not 0.0 <= pixel_target_fpr < 1.0:
        raise InvalidInputError(f"pixel_target_fpr must be in [0, 1), got {pixel_target_fpr}")
    from adcore.metrics import f1_max
    from adcore.scoring import PixelSample, fpr_threshold, spread

    scores, labels = [], []
    good_pixels = PixelSample(seed=0)
    # full images: predict() tiles them itself when tiling is on
    stream = ImageStream(data, detector.load_size, batch_size=getattr(detector, "batch_size", 8), where="calibrate")
    for batch, found in stream.with_labels():
        prediction = detector.predict(batch)
        found = found if found is not None else torch.zeros(batch.shape[0], dtype=torch.long)
        scores.append(prediction.pred_score)
        labels.append(found)
        if bool((found == 0).any()):
            good_pixels.add(prediction.anomaly_map[found.to(prediction.anomaly_map.device) == 0])
    score = torch.cat(scores)
    label = torch.cat(labels)
    if bool((label == 1).any()) and bool((label == 0).any()):
        best_f1, threshold = f1_max(label, score)
        detector.calibration_ = {"method": "f1", "f1": best_f1, "images": int(score.numel())}
    else:
        threshold, achieved = fpr_threshold(score[label == 0], target_fpr)
        detector.calibration_ = {"method": "fpr", "target_fpr": target_fpr, "achieved_fpr": achieved,
                                 "images": int((label == 0).sum())}
    detector.threshold_ = float(threshold)
    good_scores = score[label == 0]
    detector.score_scale_ = spread(good_scores if good_scores.numel() else score, detector.threshold_)
    detector.pixel_threshold_ = None
    detector.pixel_scale_ = None
    if len(good_pixels):
        pixels = good_pixels.values
        detector.pixel_threshold_, pixel_achieved = fpr_threshold(pixels, pixel_target_fpr)
        detector.pixel_scale_ = spread(pixels, detector.pixel_threshold_)
        detector.calibration_.update({"pixel_target_fpr": pixel_target_fpr, "pixel_achieved_fpr": pixel_achieved,
                                      "pixels_sampled": len(good_pixels), "pixels_seen": good_pixels.offered})
    return detector
