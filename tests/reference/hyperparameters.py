"""A loop-by-loop transcription of the released scoring with the paper's hyper-parameters as arguments.

Written from the descriptions (docs/paper.md) in the
style of reference/released.py, not from the package: the released script's
operations, one segment at a time, with 0.15 → ``k_ratio``, ``* 10`` →
``* (1 / tau)``, the 15-tap / σ = 10 kernel → ``window`` / ``sigma1``, and
σ = int(n/2) → int(sigma2 · n). ``neighbours`` replaces the most similar
segments (the random-K control passes its draw). Not used by the package.
"""

from __future__ import annotations

import numpy as np


def _softmax(row: np.ndarray) -> np.ndarray:
    exp_row = np.exp(row - np.max(row))
    return exp_row / np.sum(exp_row)


def reference_video_with(centres: list[int], ends: list[float], scores: list, features: np.ndarray | None,
                         dataset: str = "ucf", metric: str = "auc", *, k_ratio: float = 0.15, tau: float = 0.1,
                         window: int = 15, sigma1: float = 10.0, sigma2: float | None = 0.5,
                         smoothing: bool = True, neighbours: np.ndarray | None = None) -> list:
    """Frame scores of one video; ``k_ratio=0`` is no retrieval, ``sigma2=None`` no position weighting."""
    h = len(centres)
    if k_ratio == 0:
        context = [float(s) for s in scores]
    else:
        normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
        similarity = np.dot(normalised, normalised.T)
        if dataset == "xd" and metric == "auc" and h <= 10:
            k = h
        elif dataset == "xd" and metric == "ap" and h <= 4:
            k = h
        else:
            k = int(k_ratio * h)
        if neighbours is None:
            neighbours = np.argsort(similarity, axis=1)[:, -k:]
        context = []
        for i in range(h):
            chosen = neighbours[i].tolist()
            top_values = np.array([similarity[i][j] for j in chosen])
            neighbour_scores = np.array([scores[j] for j in chosen], dtype=np.float64)
            context.append(np.dot(_softmax(top_values * (1.0 / tau)), neighbour_scores))
    if smoothing:
        kernel = np.exp(-np.linspace(-window // 2, window // 2, window) ** 2 / (2 * sigma1**2))
        kernel = kernel / kernel.sum()
        smoothed = np.convolve(np.array(context), kernel, mode="same")
    else:
        smoothed = np.array(context, dtype=np.float64)
    frames: list = []
    for i in range(h):
        value = smoothed[i] if (dataset == "xd" and metric == "ap") else round(smoothed[i], 1)
        count = 16 if i != h - 1 else int(ends[i] - int(centres[i]))
        frames.extend([value] * count)
    if dataset == "xd" and metric == "ap":
        frames = [round(x, 1) for x in 1 / (1 + np.exp(-np.array(frames)))]
        mod = (len(frames) - 1) % 16
        frames = frames[:-1]
        if mod:
            frames = frames[:-mod]
        return frames
    if sigma2 is None:
        return frames
    n = len(frames)
    x = np.arange(n)
    centre = int(n / 2)
    sigma = int(sigma2 * n)
    return list(np.exp(-0.5 * ((x - centre) / sigma) ** 2) * np.array(frames))
