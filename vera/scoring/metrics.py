"""Frame-level metrics: ROC AUC (UCF-Crime), AP (XD-Violence) and the extra views of a run.

AP is the area under the precision-recall curve by the trapezoidal rule
(``precision_recall_curve`` then ``auc(recall, precision)``), as the released
XD-Violence script computes it; it differs slightly from sklearn's
``average_precision_score`` (a step sum).

``Ranking`` sorts the frames once and draws every curve of a run from that
order (the whole set, anomalous videos only, each class with the normal
videos): a subset of a sorted sequence is sorted. Its curves and areas are
sklearn's (``roc_curve`` with ``drop_intermediate``, ``precision_recall_curve``,
``auc``) bit for bit: the counts at each threshold are integers, whatever the
order among equal scores, and the areas are computed with sklearn's
operations in sklearn's order (tests/test_metrics.py checks both against sklearn).
"""

from __future__ import annotations

import importlib
import threading
from io import BytesIO
from pathlib import Path

import numpy as np

from vera.io import write_bytes_atomic

FALSE_ALARM_THRESHOLD = 0.5
_PLOT_POINTS = 2000  # a curve drawn 450 pixels wide needs no more


def _two_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < np.count_nonzero(labels) < labels.size


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """sklearn's ``auc``: the trapezoid rule as scipy writes it, negated for a decreasing x."""
    dx = x[1:] - x[:-1]
    area = np.sum(dx * (y[1:] + y[:-1]) / 2.0, dtype=np.float64)
    return float(-1 * area if np.any(dx < 0) else area)


class Ranking:
    """Frames in decreasing score order, with their labels: the curves of the set and of any subset."""

    def __init__(self, order: np.ndarray, scores: np.ndarray, labels: np.ndarray):
        self.order, self.scores, self.labels = order, scores, labels  # original indices, sorted scores, bool labels

    @classmethod
    def of(cls, labels: np.ndarray, scores: np.ndarray) -> Ranking:
        scores = np.asarray(scores, dtype=np.float64)
        # Any order among equal scores gives the same counts; numpy's default sort is the fastest.
        order = np.argsort(scores)[::-1]
        return cls(order, scores[order], np.asarray(labels)[order] != 0)

    def subset(self, mask: np.ndarray) -> Ranking:
        """The ranking of the frames where ``mask`` (in the original frame order) is true."""
        keep = np.asarray(mask, dtype=bool)[self.order]
        return Ranking(np.compress(keep, self.order), np.compress(keep, self.scores), np.compress(keep, self.labels))

    def ranked(self, values: np.ndarray) -> np.ndarray:
        """Per-frame ``values`` (original order) in this ranking's order, e.g. to build many masks for ``where``."""
        return np.asarray(values)[self.order]

    def where(self, keep: np.ndarray) -> Ranking:
        """The ranking of the frames where ``keep``, given in ranked order, is true (its scores and labels only)."""
        # np.compress: the same elements as boolean indexing, several times faster on large arrays.
        return Ranking(np.empty(0, dtype=np.intp), np.compress(keep, self.scores), np.compress(keep, self.labels))

    @property
    def defined(self) -> bool:
        return _two_classes(self.labels)

    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives at each distinct threshold, as sklearn counts them (float64 integers)."""
        # Where the next score differs (sklearn: np.diff(scores) != 0), then the last frame.
        thresholds = np.r_[np.flatnonzero(self.scores[1:] != self.scores[:-1]), self.scores.size - 1]
        # Integer counts, exactly the float64 values of sklearn's cumulative sum.
        true_positives = np.cumsum(self.labels, dtype=np.int64)[thresholds].astype(np.float64)
        return true_positives, 1 + thresholds.astype(np.float64) - true_positives

    def roc(self) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rate, true positive rate), sklearn's ``roc_curve`` with ``drop_intermediate``."""
        tps, fps = self._counts()
        if fps.size > 2:  # drop points on a straight line between their neighbours
            keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
            tps, fps = np.compress(keep, tps), np.compress(keep, fps)
        tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
        return fps / fps[-1], tps / tps[-1]

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """(precision, recall), sklearn's ``precision_recall_curve`` (recall decreasing, ending at 0)."""
        tps, fps = self._counts()
        precision = tps / (tps + fps)  # every threshold holds a frame: never 0/0
        recall = tps / tps[-1]
        return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]

    def roc_auc(self) -> float | None:
        return _trapezoid(*self.roc()) if self.defined else None

    def pr_auc(self) -> float | None:
        precision, recall = self.precision_recall()
        return _trapezoid(recall, precision) if self.defined else None


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or None where the labels hold one class only."""
    return Ranking.of(labels, scores).roc_auc() if _two_classes(np.asarray(labels)) else None


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve (trapezoidal), or None without positives."""
    return Ranking.of(labels, scores).pr_auc() if _two_classes(np.asarray(labels)) else None


def false_alarm_rate(scores: np.ndarray, threshold: float = FALSE_ALARM_THRESHOLD) -> float | None:
    """Fraction of frames scored at or above ``threshold`` (callers pass normal videos' frames)."""
    return float(np.count_nonzero(scores >= threshold) / scores.size) if scores.size else None


def _thinned(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``_PLOT_POINTS`` points of a curve, its ends kept (for drawing only)."""
    if x.size <= _PLOT_POINTS:
        return x, y
    keep = np.unique(np.r_[np.linspace(0, x.size - 1, _PLOT_POINTS).astype(np.int64), x.size - 1])
    return x[keep], y[keep]


def preload_plotting() -> None:
    """Import matplotlib in a background thread, while the scoring works (numpy releases the GIL)."""
    threading.Thread(target=importlib.import_module, args=("matplotlib.figure",), daemon=True).start()


def save_curves(labels: np.ndarray, scores: np.ndarray, output_dir: Path, title: str) -> list[Path]:
    """Write ``roc.png`` and ``pr.png``; returns the paths written."""
    # matplotlib's Figure without pyplot: the slowest import of a scoring run, and only this needs it.
    from matplotlib.figure import Figure

    ranking = Ranking.of(labels, scores)
    fpr, tpr = ranking.roc()
    precision, recall = ranking.precision_recall()
    written = []
    for name, x, y, xlabel, ylabel, value in (
        ("roc.png", fpr, tpr, "false positive rate", "true positive rate", f"AUC {_trapezoid(fpr, tpr):.4f}"),
        ("pr.png", recall, precision, "recall", "precision", f"AP {_trapezoid(recall, precision):.4f}"),
    ):
        figure = Figure(figsize=(4.5, 4.5), dpi=100)
        axes = figure.subplots()
        axes.plot(*_thinned(x, y), lw=1.5)
        if name == "roc.png":
            axes.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        axes.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{title}, {value}")
        figure.tight_layout()
        buffer = BytesIO()
        figure.savefig(buffer, format="png")
        path = Path(output_dir) / name
        write_bytes_atomic(path, buffer.getvalue())
        written.append(path)
    return written
