"""Every plot of the project (PNG, matplotlib): the paper's figures and the evaluation's curves.

- Score curves (Figs. 8 and 13): for one test video, the Step 1 answers, the
  values after Step 2 and after smoothing, the final frame scores, and the
  ground truth shaded; from a ``compute_auc.py`` output (``stages.npz``,
  ``frame_scores/``) and the annotations.
- Training curves (Fig. 9): validation accuracy (and AUC where recorded)
  against the step, with a moving average, from ``validation.jsonl``.
- Question evolution (Fig. 10): which step changed which question, from
  ``history.jsonl``, as a timeline (PNG) and the texts (Markdown).
- ROC and precision-recall curves of an evaluation (``compute_auc.py``'s
  ``roc.png`` and ``pr.png``).

Only ``matplotlib.figure`` is used (no pyplot): no global state, no display.
"""

from __future__ import annotations

import importlib
import threading
from io import BytesIO
from pathlib import Path

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from vera.data.annotations import TestVideo
from vera.constants import SEGMENT_STRIDE
from vera.errors import VeraError
from vera.io import parse_json, read_text, write_bytes_atomic, write_text_atomic

_COLOURS = {"answers": "#9e9e9e", "context": "#1f77b4", "smoothed": "#ff7f0e", "final": "#000000",
            "truth": "#d62728"}


def _save(figure, path: Path) -> Path:
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a ``.jsonl`` file; a line that is not JSON is an error naming the file and line."""
    records = []
    for number, line in enumerate(read_text(path, "run record").splitlines(), start=1):
        if not line.strip():
            continue
        records.append(parse_json(line, f"{path} line {number}"))
    return records


# ---------------------------------------------------------------- score curves


def score_curve(video: TestVideo, stages: dict[str, np.ndarray], frames: np.ndarray, path: Path,
                answers: np.ndarray | None = None, title: str | None = None) -> Path:
    """One video's curves at every step (``stages`` from ``vera.scoring.stages``), ground truth shaded.

    ``stages`` may hold the answers alone (no Steps 2-3 run): then only they
    and the final frame scores are drawn.
    """
    from matplotlib.figure import Figure

    answers = stages["answers"] if answers is None else answers
    length = video.length if video.length is not None else len(frames)
    h = len(answers)
    edges = np.minimum(np.r_[np.arange(h) * SEGMENT_STRIDE, length], length)  # segment u stands for frames 16u …
    figure = Figure(figsize=(9, 3.6), dpi=110)
    axes = figure.subplots()
    for number, (start, end) in enumerate(video.intervals):
        axes.axvspan(start, min(end, length), color=_COLOURS["truth"], alpha=0.15, lw=0,
                     label="ground truth" if number == 0 else None)
    axes.stairs(answers, edges, color=_COLOURS["answers"], fill=True, alpha=0.35, lw=0, label="Step 1 answers (0/1)")
    for name, label in (("context", "after Step 2"), ("smoothed", "after smoothing")):
        if name in stages:
            axes.stairs(stages[name], edges, color=_COLOURS[name], lw=1.2, label=label)
    axes.plot(np.arange(len(frames)), frames, color=_COLOURS["final"], lw=1.8, label="final frame scores")
    axes.set(xlim=(0, length), ylim=(-0.03, 1.08), xlabel="frame", ylabel="anomaly score",
             title=title or f"{video.key} ({video.video_class}, {length} frames)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    return _save(figure, path)


# ---------------------------------------------------------------- training


def moving_average(values: np.ndarray, points: int) -> np.ndarray:
    """Mean of each value and the ``points − 1`` before it (fewer at the start), as Fig. 9 smooths."""
    sums = np.cumsum(np.r_[0.0, values])
    counts = np.minimum(np.arange(1, len(values) + 1), points)
    ends = np.arange(1, len(values) + 1)
    return (sums[ends] - sums[ends - counts]) / counts


def training_curves(validations: list[dict], path: Path, points: int = 5) -> Path:
    """Validation accuracy (and AUC where recorded) against the step; stars where the best questions changed."""
    from matplotlib.figure import Figure

    if not validations:
        raise VeraError("validation.jsonl holds no validation yet")
    steps = np.array([record["step"] for record in validations], dtype=float)
    figure = Figure(figsize=(7.5, 3.8), dpi=110)
    axes = figure.subplots()
    # AUC first, dashed: from 0/1 answers on a balanced set it equals the accuracy, which must stay visible.
    for name, label, colour, style in (("auc", "AUC", "#2ca02c", "--"), ("accuracy", "accuracy", "#1f77b4", "-")):
        known = [(s, r[name]) for s, r in zip(steps, validations) if r.get(name) is not None]
        if not known:
            continue
        x, y = np.array(known).T
        axes.plot(x, y, style, marker="o", ms=3, lw=0.8, alpha=0.5, color=colour, label=f"validation {label}")
        if points > 1:
            axes.plot(x, moving_average(y, points), style, lw=2.0, color=colour,
                      label=f"{label}, {points}-point moving average")
    selected = [(s, r["accuracy"]) for s, r in zip(steps, validations) if r.get("selected") and r.get("accuracy") is not None]
    if selected:
        axes.plot(*np.array(selected).T, "*", ms=11, color="#d62728", label="new best questions")
    axes.set(xlabel="training step (iteration)", ylabel="validation score", ylim=(-0.02, 1.02),
             title="Validation of the questions during training")
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return _save(figure, path)


def question_versions(history: list[dict]) -> list[list[tuple[int, int, str]]]:
    """For each question slot, its versions as (first step, last step, text), from the history's steps."""
    if not history:
        raise VeraError("history.jsonl holds no training step yet")
    current = list(history[0]["questions_before"])
    slots: list[list[list]] = [[[history[0]["step"] - 1, None, text]] for text in current]
    for record in history:
        after, step = list(record["questions_after"]), record["step"]
        for slot in range(max(len(current), len(after))):
            old = current[slot] if slot < len(current) else None
            new = after[slot] if slot < len(after) else None
            if old == new:
                continue
            if old is not None:
                slots[slot][-1][1] = step  # this version ends here
            if new is not None:
                if slot == len(slots):
                    slots.append([])
                slots[slot].append([step, None, new])
        current = after
    last = history[-1]["step"]
    return [[(start, last if end is None else end, text) for start, end, text in versions] for versions in slots]


def question_evolution(history: list[dict], validations: list[dict], path: Path) -> tuple[Path, Path]:
    """A timeline of every question slot (a bar per version, a mark per change) and the texts in Markdown."""
    from matplotlib.figure import Figure

    slots = question_versions(history)
    figure = Figure(figsize=(8, 0.55 * len(slots) + 1.6), dpi=110)
    axes = figure.subplots()
    colours = ("#1f77b4", "#aec7e8")
    for slot, versions in enumerate(slots):
        for number, (start, end, _) in enumerate(versions):
            axes.broken_barh([(start, max(end - start, 0.4))], (slot - 0.35, 0.7), color=colours[number % 2])
            if number:
                axes.plot(start, slot, "|", color="#d62728", ms=14, mew=2)
    best = [r["step"] for r in validations if r.get("selected")]
    for step in best:
        axes.axvline(step, color="#2ca02c", lw=0.8, ls="--")
    axes.set(yticks=range(len(slots)), yticklabels=[f"Q{slot + 1}" for slot in range(len(slots))],
             xlabel="training step (iteration)", ylim=(len(slots) - 0.5, -0.5),
             title="Question evolution (a bar per version; red: changed; green dashes: new best)")
    figure.tight_layout()
    markdown = ["# Question evolution", "", "| step | question | new text |", "|---|---|---|"]
    changes = sorted((start, slot, text) for slot, versions in enumerate(slots) for start, _, text in versions)
    markdown += [f"| {start} | Q{slot + 1} | {text.replace('|', '/')} |" for start, slot, text in changes]
    markdown += ["", "## Questions at each validation", ""]
    for record in validations:
        accuracy = record.get("accuracy")
        markdown.append(f"### step {record['step']}: accuracy {'n/a' if accuracy is None else f'{accuracy:.3f}'}"
                        + (" (new best)" if record.get("selected") else ""))
        markdown += [f"{number}. {question}" for number, question in enumerate(record["questions"], start=1)] + [""]
    text_path = path.with_suffix(".md")
    write_text_atomic(text_path, "\n".join(markdown) + "\n")
    return _save(figure, path), text_path


# ---------------------------------------------------------------- ROC and PR curves

_PLOT_POINTS = 2000  # a curve drawn 450 pixels wide needs no more


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

    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    written = []
    for name, x, y, xlabel, ylabel, value in (
        ("roc.png", fpr, tpr, "false positive rate", "true positive rate", f"AUC {auc(fpr, tpr):.4f}"),
        ("pr.png", recall, precision, "recall", "precision", f"AP {auc(recall, precision):.4f}"),
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
