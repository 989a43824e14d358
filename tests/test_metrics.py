"""The metrics are scikit-learn's, as the released scripts call it; one sort of a run serves every subset."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

from vera.scoring.metrics import SortedFrames, pr_auc, roc_auc


def _sklearn(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return auc(fpr, tpr), auc(recall, precision)


def _cases():
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(2, 3000))
        levels = int(rng.integers(1, 40))
        scores = np.round(rng.random(n) * levels) / levels  # many ties, as rounded segment scores give
        if trial % 3 == 0:
            scores = scores * rng.random(n)  # position-weighted: few ties
        if trial % 7 == 0:
            scores = np.zeros(n)  # a single threshold
        labels = (rng.random(n) < rng.uniform(0.02, 0.9)).astype(np.float64)
        if 0 < labels.sum() < n:
            yield labels, scores


def test_areas_equal_sklearn_bit_for_bit():
    count = 0
    for labels, scores in _cases():
        assert (roc_auc(labels, scores), pr_auc(labels, scores)) == _sklearn(labels, scores)
        count += 1
    assert count > 100


def test_one_sort_gives_the_areas_of_the_unsorted_frames():
    for labels, scores in list(_cases())[:30]:
        ranking = SortedFrames(labels, scores)
        assert (ranking.roc_auc(), ranking.pr_auc()) == _sklearn(labels, scores)
        assert ranking.roc_auc() == roc_auc_score(labels, scores)


def test_subsets_of_one_sort_equal_their_own_curves():
    rng = np.random.default_rng(1)
    for labels, scores in list(_cases())[:40]:
        ranking = SortedFrames(labels, scores)
        mask = rng.random(labels.size) < 0.4
        if 0 < labels[mask].sum() < mask.sum():
            assert ranking.roc_auc(ranking.ranked(mask)) == _sklearn(labels[mask], scores[mask])[0]
        else:
            assert ranking.roc_auc(ranking.ranked(mask)) is None


@pytest.mark.parametrize("labels", [np.zeros(5), np.ones(5), np.empty(0)])
def test_one_class_has_no_area(labels):
    assert roc_auc(labels, np.arange(labels.size, dtype=float)) is None
    assert pr_auc(labels, np.arange(labels.size, dtype=float)) is None


def test_hand_computed():
    # Scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): one inversion among 4 pairs → AUC 3/4.
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert roc_auc(labels, scores) == 0.75
    # PR points (recall, precision): (0, 1), (.5, 1), (.5, .5), (1, 2/3), (1, .5): trapezoids .5 + 0 + .2917 + 0.
    assert pr_auc(labels, scores) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2, rel=1e-15)
