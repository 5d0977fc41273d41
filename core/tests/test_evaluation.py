"""Evaluation helpers keep what detectors return: values, precision, order."""

from __future__ import annotations

import torch

from adcore.evaluation import collect_predictions
from adcore.prediction import Prediction


class _LargeMapDetector:
    """Maps with raw values beyond float16's range (DifferNet's input gradients reach them)."""

    def predict(self, images: torch.Tensor) -> Prediction:
        count = images.shape[0]
        maps = torch.linspace(1e5, 1e5 + 1.0, images.shape[-2] * images.shape[-1]).view(1, *images.shape[-2:])
        return Prediction(pred_score=torch.full((count,), 7.0), anomaly_map=maps.repeat(count, 1, 1))


def test_collected_maps_stay_finite_and_keep_full_precision() -> None:
    batch = {"image": torch.rand(2, 3, 8, 8), "label": torch.tensor([0, 1]), "mask": torch.zeros(2, 8, 8),
             "path": ["a.png", "b.png"]}
    outputs = collect_predictions(_LargeMapDetector(), [batch])
    maps = outputs["maps"]
    assert torch.isfinite(maps).all()
    # neighbouring pixels differ by 1/63 at 1e5: float16 (spacing 64 there) would make them all equal
    assert maps[0].unique().numel() == 64
