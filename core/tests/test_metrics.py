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


# -- the lean pixel metrics against the curves they integrate and against scikit-learn ----------------------
def _trapezoid_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """The curve-based AUPRO (what aupro computed before it stopped building the curve)."""
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < limit:
        after = int(np.searchsorted(fpr, limit))
        x0, x1, y0, y1 = fpr[after - 1], fpr[after], pro[after - 1], pro[after]
        x, y = np.r_[x, limit], np.r_[y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)]
    return float(np.trapezoid(y, x) / limit)


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = (int(v) for v in (rng.integers(1, 5), rng.integers(3, 20), rng.integers(3, 20)))
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        for _ in range(int(rng.integers(1, 3))):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[i, y0:y0 + rng.integers(1, 5), x0:x0 + rng.integers(1, 5)] = True
    levels = int(rng.choice([0, 3, 10, 1000]))  # coarse levels: many ties, within and across classes
    maps = rng.random((n, h, w))
    if levels:
        maps = np.round(maps * levels) / levels
    maps = (maps + masks * rng.random() * 0.5).astype(rng.choice([np.float32, np.float64]))
    return masks, maps


def test_pixel_auroc_equals_the_roc_trapezoid_and_sklearn():
    from sklearn.metrics import roc_auc_score

    from adcore.metrics import roc_curve

    rng = np.random.default_rng(0)
    for _ in range(100):
        masks, maps = _random_case(rng)
        if masks.all():
            continue
        fpr, tpr, _ = roc_curve(masks, maps)
        value = auroc(masks, maps)
        assert value == pytest.approx(float(np.trapezoid(tpr, fpr)), abs=1e-12)
        assert value == pytest.approx(roc_auc_score(masks.reshape(-1), maps.reshape(-1)), abs=1e-12)


def test_aupro_equals_the_pro_curve_trapezoid_at_every_limit():
    from adcore.metrics import pro_curve

    rng = np.random.default_rng(1)
    for _ in range(100):
        masks, maps = _random_case(rng)
        if masks.all():
            continue
        fpr, pro = pro_curve(masks, maps)
        for limit in (0.3, 0.05, 0.5, 1.0):
            assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_trapezoid_up_to(fpr, pro, limit), abs=1e-12)


def test_pixel_metrics_keep_float32_and_accept_tensors():
    import torch

    rng = np.random.default_rng(2)
    masks, maps = _random_case(rng)
    maps32 = maps.astype(np.float32)
    as_tensors = evaluate(torch.tensor([0, 1]), torch.tensor([0.1, 0.9]), torch.from_numpy(masks), torch.from_numpy(maps32))
    assert as_tensors["pixel_auroc"] == pytest.approx(auroc(masks, maps32.astype(np.float64)), abs=1e-12)
    assert as_tensors["aupro"] == pytest.approx(aupro(masks, maps32.astype(np.float64)), abs=1e-12)
    half = torch.from_numpy(maps32).half()  # widened exactly to float32, not refused
    assert auroc(masks, half) == pytest.approx(auroc(masks, half.float().numpy()), abs=1e-15)


def test_aupro_refuses_nan_maps_and_full_masks():
    from adcore.errors import InvalidInputError

    maps = np.random.default_rng(3).random((1, 4, 4))
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0] = 1
    maps[0, 1, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        aupro(masks, maps)
    with pytest.raises(UndefinedMetricError, match="every pixel"):
        aupro(np.ones((1, 4, 4)), np.random.rand(1, 4, 4))
