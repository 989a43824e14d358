"""A plain, loop-by-loop transcription of the released scoring, written from its description.

It is deliberately naive (Python lists, one segment at a time, ``round`` on
numpy scalars), so that the vectorised ``vera.scoring.steps`` can be checked against
it bit for bit. It is not used by the package.
"""

from __future__ import annotations

import numpy as np


def _softmax(row: np.ndarray) -> np.ndarray:
    exp_row = np.exp(row - np.max(row))
    return exp_row / np.sum(exp_row)


def reference_video(centres: list[int], ends: list[float], scores: list, features: np.ndarray,
                    dataset: str, metric: str) -> list:
    """Frame scores of one video, as the released scripts compute them."""
    h = len(centres)
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = np.dot(normalised, normalised.T)
    if dataset == "xd" and metric == "auc":
        k = int(0.15 * h) if h > 10 else h
    elif dataset == "xd" and metric == "ap":
        k = int(0.15 * h) if h > 4 else h
    else:
        k = int(0.15 * h)
    neighbours = np.argsort(similarity, axis=1)[:, -k:]
    top_values = np.take_along_axis(similarity, neighbours, axis=1)
    context = []
    for i in range(h):
        neighbour_scores = np.array([scores[j] for j in neighbours[i].tolist()])
        context.append(np.dot(_softmax(top_values[i] * 10), neighbour_scores))
    kernel = np.exp(-np.linspace(-15 // 2, 15 // 2, 15) ** 2 / (2 * 10**2))
    kernel = kernel / kernel.sum()
    smoothed = np.convolve(np.array(context), kernel, mode="same")
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
    n = len(frames)
    x = np.arange(n)
    centre = int(n / 2)
    sigma = int(n / 2)
    return list(np.exp(-0.5 * ((x - centre) / sigma) ** 2) * np.array(frames))


def reference_labels(length: int, temporal_label: list[int]) -> list[float]:
    labels = [0.0] * length
    for i in range(0, len(temporal_label), 2):
        if temporal_label[i] != -1:
            start = temporal_label[i]
            end = min(temporal_label[i + 1], length)
            labels[start:end] = [1.0] * (end - start)
    return labels
