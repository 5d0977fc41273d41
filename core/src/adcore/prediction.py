"""What every detector returns, and the protocol every detector satisfies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Prediction", "AnomalyDetector"]


@dataclass(frozen=True)
class Prediction:
    """Scores for a batch of ``B`` images of size ``H×W``. Field names follow anomalib's.

    Attributes:
        pred_score: ``(B,)`` float32, higher means more anomalous.
        anomaly_map: ``(B, H, W)`` float32 at the input images' own size.
        pred_label: ``(B,)`` bool, ``pred_score >= threshold``; ``None`` until the detector has a
            threshold (see :meth:`adcore.BaseDetector.calibrate`).
        normalized_score: ``(B,)`` float32 in (0, 1), 0.5 exactly at the threshold and monotone in
            ``pred_score`` (:func:`adcore.scoring.normalize_score`); ``None`` until calibrated.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor
    pred_label: torch.Tensor | None = None
    normalized_score: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.pred_score.shape[0])


@runtime_checkable
class AnomalyDetector(Protocol):
    """Anything that learns normality from good images and scores new ones.

    ``fit`` takes normal images only: a DataLoader or any iterable of ``(B,3,H,W)`` float tensors
    in [0, 1], ``(images, labels)`` tuples or ``{"image": ...}`` dicts. ``predict`` takes a
    ``(B,3,H,W)`` float tensor in [0, 1] of any H×W; the detector resizes and normalises itself.
    """

    def fit(self, data: Any) -> AnomalyDetector: ...

    def predict(self, images: torch.Tensor) -> Prediction: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...
