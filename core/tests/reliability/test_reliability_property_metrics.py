"""Property tests for the metrics: AUROC against scikit-learn, F1-max against brute force, AUPRO
against hand-computed cases and a brute-force reference of the MVTec AD definition."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from adcore.metrics import aupro, auroc, f1_max, pro_curve, roc_curve  # noqa: E402

SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def labelled_scores(draw, max_size: int = 40):
    """Both classes present; scores from a small set so that ties are common."""
    size = draw(st.integers(2, max_size))
    labels = draw(st.lists(st.integers(0, 1), min_size=size, max_size=size).filter(lambda v: 0 < sum(v) < len(v)))
    scores = draw(st.lists(st.sampled_from([-1.5, 0.0, 0.1, 0.25, 0.5, 2.0, 7.0]) | st.floats(-5, 5),
                           min_size=size, max_size=size))
    return np.array(labels), np.array(scores, dtype=np.float64)


@SETTINGS
@given(labelled_scores())
def test_auroc_matches_scikit_learn(data):
    metrics = pytest.importorskip("sklearn.metrics")
    labels, scores = data
    assert auroc(labels, scores) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(labels, -scores) == pytest.approx(1.0 - auroc(labels, scores), abs=1e-12)


@SETTINGS
@given(labelled_scores())
def test_roc_curve_is_monotone_from_origin_to_one(data):
    labels, scores = data
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and np.all(np.diff(thresholds) < 0)


@SETTINGS
@given(labelled_scores())
def test_f1_max_matches_brute_force(data):
    labels, scores = data
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        tp = float((predicted & (labels == 1)).sum())
        precision = tp / predicted.sum()
        recall = tp / (labels == 1).sum()
        best = max(best, 0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    f1, threshold = f1_max(labels, scores)
    assert f1 == pytest.approx(best, abs=1e-12)
    predicted = scores >= threshold
    tp = float((predicted & (labels == 1)).sum())
    assert 2 * tp / (predicted.sum() + (labels == 1).sum()) == pytest.approx(f1, abs=1e-12)  # the threshold achieves it


# -- AUPRO ------------------------------------------------------------------------------------------------------
def test_aupro_perfect_and_inverted_maps():
    masks = np.zeros((2, 8, 8))
    masks[0, 1:3, 1:4] = 1
    masks[1, 5:7, 5:7] = 1
    assert aupro(masks, masks) == pytest.approx(1.0)
    assert aupro(masks, 1 - masks) == pytest.approx(0.0)


def test_aupro_hand_computed_two_regions():
    # region A: one pixel found at score 1; region B: three pixels at score 0, below the background's 0.5.
    # PRO curve: (fpr 0, pro 0) → (0, 0.5) at t=1 → (1, 0.5) at t=0.5 → (1, 1) at t=0.
    # Area up to fpr 0.3 is 0.3 × 0.5, normalised by 0.3: 0.5.
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0] = 1
    masks[0, 3, 1:4] = 1
    maps = np.full((1, 4, 4), 0.5)
    maps[0, 0, 0] = 1.0
    maps[0, 3, 1:4] = 0.0
    fpr, pro = pro_curve(masks, maps)
    assert fpr.tolist() == [0.0, 0.0, 1.0, 1.0] and pro == pytest.approx([0.0, 0.5, 0.5, 1.0])
    assert aupro(masks, maps) == pytest.approx(0.5)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(0.5)


def test_aupro_hand_computed_with_a_background_ramp():
    # one 2-pixel region scored 1.0; the 14 background pixels score 0.9, 0.8, ... so each threshold step adds
    # 1/14 FPR. One region pixel at 1.0 and the other at 0.0: PRO is 0.5 from FPR 0 until the very end.
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0:2] = 1
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    background = [(r, c) for r in range(4) for c in range(4) if masks[0, r, c] == 0]
    for rank, (r, c) in enumerate(background):
        maps[0, r, c] = 0.9 - 0.05 * rank
    maps[0, 0, 1] = -1.0
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5)
    maps[0, 0, 1] = 0.95  # now both pixels are found before any false positive
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(1.0)


def test_aupro_regions_are_eight_connected():
    # pixels (0,0),(0,1) and (1,2): one region under 8-connectivity (the MVTec AD definition), two under 4.
    masks = np.zeros((1, 5, 5))
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = 1
    maps = np.full((1, 5, 5), 0.5)
    maps[0, 0, 0] = maps[0, 0, 1] = 1.0
    maps[0, 1, 2] = 0.0
    assert aupro(masks, maps) == pytest.approx(2 / 3)  # 4-connectivity would give (1 + 0) / 2


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    """Brute force: every threshold, per-region overlap by scipy labelling, linear interpolation at the limit."""
    from scipy import ndimage

    regions = []
    for mask in masks:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions.append((labelled, count))
    background = masks == 0
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        fpr = (predicted & background).sum() / background.sum()
        overlaps = [(predicted[i][labelled == k]).mean() for i, (labelled, count) in enumerate(regions)
                    for k in range(1, count + 1)]
        points.append((fpr, float(np.mean(overlaps))))
    x, y = np.array(points).T
    keep = x <= limit
    xs, ys = x[keep], y[keep]
    if xs[-1] < limit:
        after = np.flatnonzero(x > limit)[0]
        before = after - 1
        y_end = y[before] + (y[after] - y[before]) * (limit - x[before]) / (x[after] - x[before])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_end]
    return float(np.trapezoid(ys, xs) / limit)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(3, 9), st.sampled_from([0.05, 0.3, 1.0]))
def test_aupro_matches_a_brute_force_reference(seed, count, side, limit):
    rng = np.random.default_rng(seed)
    masks = (rng.random((count, side, side)) < 0.25).astype(float)
    masks[0, 0, 0], masks[0, -1, -1] = 1.0, 0.0  # at least one region and one background pixel
    maps = np.round(rng.random((count, side, side)) + 0.5 * masks, 1)  # rounding: ties between pixels
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(_reference_aupro(masks, maps, limit), abs=1e-9)
