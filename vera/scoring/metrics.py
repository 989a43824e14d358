"""Frame-level metrics: ROC AUC (UCF-Crime), AP (XD-Violence) and the extra views of a run.

AP is the area under the precision-recall curve by the trapezoidal rule
(``precision_recall_curve`` then ``auc(recall, precision)``), as the released
XD-Violence script computes it; it differs slightly from sklearn's
``average_precision_score`` (a step sum).
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from vera.io import write_bytes_atomic

FALSE_ALARM_THRESHOLD = 0.5


def _two_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and 0 < np.count_nonzero(labels) < labels.size


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or None where the labels hold one class only."""
    if not _two_classes(labels):
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(auc(fpr, tpr))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the precision-recall curve (trapezoidal), or None without positives."""
    if not _two_classes(labels):
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(recall, precision))


def false_alarm_rate(scores: np.ndarray, threshold: float = FALSE_ALARM_THRESHOLD) -> float | None:
    """Fraction of frames scored at or above ``threshold`` (callers pass normal videos' frames)."""
    return float(np.count_nonzero(scores >= threshold) / scores.size) if scores.size else None


def save_curves(labels: np.ndarray, scores: np.ndarray, output_dir: Path, title: str) -> list[Path]:
    """Write ``roc.png`` and ``pr.png``; returns the paths written."""
    import matplotlib  # imported here: plotting is the slowest import and only this needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    written = []
    for name, x, y, xlabel, ylabel, value in (
        ("roc.png", fpr, tpr, "false positive rate", "true positive rate", f"AUC {auc(fpr, tpr):.4f}"),
        ("pr.png", recall, precision, "recall", "precision", f"AP {auc(recall, precision):.4f}"),
    ):
        figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
        axes.plot(x, y, lw=1.5)
        if name == "roc.png":
            axes.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        axes.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02), title=f"{title}, {value}")
        figure.tight_layout()
        buffer = BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        path = Path(output_dir) / name
        write_bytes_atomic(path, buffer.getvalue())
        written.append(path)
    return written
