"""Metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from adcore.metrics import UndefinedMetricError, aupro, auroc, evaluate, f1_max


def test_auroc_hand_computed():
    # pairs (neg, pos): (0.1,0.35) ok, (0.1,0.8) ok, (0.4,0.35) wrong, (0.4,0.8) ok -> 3/4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_auroc_counts_ties_as_half():
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_auroc_perfect_and_inverted():
    assert auroc([0, 0, 1, 1], [1, 2, 3, 4]) == 1.0
    assert auroc([0, 0, 1, 1], [4, 3, 2, 1]) == 0.0


def test_f1_max_and_threshold():
    # scores 0.9(1) 0.8(0) 0.7(1) 0.1(0): threshold 0.7 -> tp 2, fp 1, fn 0 -> F1 = 0.8
    f1, threshold = f1_max([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.7)


def test_single_class_metrics_are_undefined_not_nan():
    with pytest.raises(UndefinedMetricError, match="no anomalous"):
        auroc([0, 0, 0], [0.1, 0.2, 0.3])
    result = evaluate(np.array([0, 0]), np.array([0.1, 0.2]))
    assert result["image_auroc"] is None and "no anomalous" in result["notes"]["image_auroc"]


def test_aupro_perfect_and_hand_computed():
    masks = np.zeros((1, 4, 4))
    masks[0, :2, :2] = 1
    perfect = masks * 2.0 + 0.0
    assert aupro(masks, perfect) == pytest.approx(1.0)
    # region pixels scored 0.5, 10 of the 12 background pixels scored 1.0, the rest 0.
    # At 1.0 the background FPR jumps 0 -> 10/12 with PRO 0, so the curve up to FPR 0.3 is PRO 0.
    maps = np.zeros((1, 4, 4))
    maps[0, :2, :2] = 0.5
    maps[0, 2:, :] = 1.0
    maps[0, :2, 3] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.0)


def test_aupro_averages_regions_not_pixels():
    # two regions of 1 and 3 pixels; only the small one is found first: (0, 0) -> (0, 0.5) -> (1, 1).
    # At FPR 0.3 the PRO is 0.65, so the area is (0.5 + 0.65) / 2 * 0.3, normalised by 0.3 -> 0.575
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0] = 1
    masks[0, 3, 1:] = 1
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.575)


def test_aupro_without_defects_is_undefined():
    with pytest.raises(UndefinedMetricError):
        aupro(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))
