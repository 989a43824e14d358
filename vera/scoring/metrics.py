"""Frame-level metrics: ROC AUC (UCF-Crime), AP (XD-Violence) and the extra views of a run, by scikit-learn.

ROC AUC is ``auc(*roc_curve(labels, scores)[:2])``, the released UCF script's
call (equal to ``roc_auc_score``). AP is the area under the precision-recall
curve by the trapezoidal rule (``precision_recall_curve`` then
``auc(recall, precision)``), as the released XD-Violence script computes it;
it differs slightly from ``average_precision_score`` (a step sum), so the
released number needs this one.

``SortedFrames`` sorts a run's frames once, highest score first, and hands
scikit-learn each subset (anomalous videos only, each class with the normal
videos) already in that order, where its own stable sort has nothing left to
do. The curves count positives and negatives at each distinct score, which no
order among equal scores changes: the areas are those of the unsorted frames
bit for bit (tests/test_metrics.py).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

FALSE_ALARM_THRESHOLD = 0.5


def _two_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < np.count_nonzero(labels) < labels.size


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or None where the labels hold one class only."""
    labels = np.asarray(labels)
    if not _two_classes(labels):
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(auc(fpr, tpr))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve (trapezoidal), or None where the labels hold one class only."""
    labels = np.asarray(labels)
    if not _two_classes(labels):
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(recall, precision))


class SortedFrames:
    """A run's frames in decreasing score order: the metrics of the whole run and of any subset, one sort."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        self.order = np.argsort(np.asarray(scores, dtype=np.float64))[::-1]
        self.scores = np.asarray(scores, dtype=np.float64)[self.order]
        self.labels = np.asarray(labels)[self.order]

    def ranked(self, values: np.ndarray) -> np.ndarray:
        """Per-frame ``values`` (in the original frame order) in this order, e.g. to build subset masks."""
        return np.asarray(values)[self.order]

    def roc_auc(self, keep: np.ndarray | None = None) -> float | None:
        """ROC AUC of all frames, or of those where ``keep`` (in this order) is true."""
        if keep is None:
            return roc_auc(self.labels, self.scores)
        return roc_auc(np.compress(keep, self.labels), np.compress(keep, self.scores))

    def pr_auc(self) -> float | None:
        return pr_auc(self.labels, self.scores)


def false_alarm_rate(scores: np.ndarray, threshold: float = FALSE_ALARM_THRESHOLD) -> float | None:
    """Fraction of frames scored at or above ``threshold`` (callers pass normal videos' frames)."""
    return float(np.count_nonzero(scores >= threshold) / scores.size) if scores.size else None
