"""A plain, loop-by-loop statement of the ``paper`` scoring protocol, for the tests only.

Written from the README's "Scoring protocols" table (the ``paper`` column) and
the paper's text (arXiv 2412.01095, §3 and App. B), not from
``vera.scoring.steps``: Python floats, one segment and one frame at a time.

* Step 2: the K = max(1, ⌊r·h⌋) segments most similar to segment i by cosine
  similarity (r = 10 % UCF, 15 % XD; the segment itself included, ties to the
  lower index), weighted by softmax(cos/τ) with τ = 0.1.
* Step 3: a Gaussian of taps −⌊ω/2⌋ … ⌊ω/2⌋ (ω = 15, σ₁ = 10 UCF; ω = 30,
  σ₁ = 30 XD), renormalised over the taps that fall inside the video; then
  every segment's value goes to its 16 frames (the last segment to the frames
  left), and frame t of F is weighted by exp(−(t − c)²/(2σ₂²)), c = (F − 1)/2,
  σ₂ = ⌊F/2⌋. No rounding, no sigmoid, every frame kept.
"""

from __future__ import annotations

import math

STRIDE = 16
TAU = 0.1
NEIGHBOUR_PERCENT = {"ucf": 10, "xd": 15}
KERNEL = {"ucf": (15, 10.0), "xd": (30, 30.0)}


def neighbour_count(h: int, dataset: str) -> int:
    return max(1, NEIGHBOUR_PERCENT[dataset] * h // 100)  # integer arithmetic: ⌊r·h⌋ exactly


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def scene_context(features: list[list[float]], scores: list[float], dataset: str) -> list[float]:
    """ȳᵢ = Σⱼ∈Nᵢ exp(cos(i, j)/τ) yⱼ / Σⱼ∈Nᵢ exp(cos(i, j)/τ)."""
    h = len(scores)
    k = neighbour_count(h, dataset)
    context = []
    for i in range(h):
        similarity = [cosine(features[i], features[j]) for j in range(h)]
        chosen = sorted(range(h), key=lambda j: (-similarity[j], j))[:k]
        weights = [math.exp(similarity[j] / TAU) for j in chosen]
        context.append(sum(w * scores[j] for w, j in zip(weights, chosen)) / sum(weights))
    return context


def smooth(values: list[float], dataset: str) -> list[float]:
    window, sigma = KERNEL[dataset]
    half = window // 2
    smoothed = []
    for i in range(len(values)):
        numerator = denominator = 0.0
        for offset in range(-half, half + 1):
            if 0 <= i + offset < len(values):
                weight = math.exp(-(offset**2) / (2 * sigma**2))
                numerator += weight * values[i + offset]
                denominator += weight
        smoothed.append(numerator / denominator)
    return smoothed


def position_weight(t: int, num_frames: int) -> float:
    centre, sigma = (num_frames - 1) / 2, num_frames // 2
    return math.exp(-((t - centre) ** 2) / (2 * sigma**2))


def frame_scores(scores: list[float], features: list[list[float]] | None, length: int, dataset: str,
                 skip_step2: bool = False, skip_smoothing: bool = False,
                 skip_position_weighting: bool = False) -> list[float]:
    """Frame scores of one video of ``length`` frames with segment centres 0, 16, 32, …"""
    values = [float(s) for s in scores]
    if not skip_step2:
        values = scene_context(features, values, dataset)
    if not skip_smoothing:
        values = smooth(values, dataset)
    frames = []
    for i, value in enumerate(values):
        frames.extend([value] * min(STRIDE, length - STRIDE * i))
    assert len(frames) == length
    if not skip_position_weighting:
        frames = [value * position_weight(t, length) for t, value in enumerate(frames)]
    return frames


def frame_labels(length: int, intervals: list[tuple[int, int]]) -> list[float]:
    return [1.0 if any(start <= t < end for start, end in intervals) else 0.0 for t in range(length)]


def roc_auc(labels: list[float], scores: list[float]) -> float:
    """The probability that a positive frame outscores a negative one, ties counting ½ (= the ROC's area)."""
    order = sorted(range(len(scores)), key=lambda t: scores[t])
    rank_sum, start = 0.0, 0
    while start < len(order):  # average ranks over runs of equal scores
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        average_rank = (start + end) / 2 + 1
        rank_sum += average_rank * sum(labels[order[t]] for t in range(start, end + 1))
        start = end + 1
    positives = sum(labels)
    negatives = len(labels) - positives
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def pr_auc(labels: list[float], scores: list[float]) -> float:
    """Trapezoid area under precision(recall), one point per distinct threshold plus (recall 0, precision 1)."""
    positives = sum(labels)
    points = [(0.0, 1.0)]
    true_pos = false_pos = 0
    order = sorted(range(len(scores)), key=lambda t: -scores[t])
    for n, t in enumerate(order):
        true_pos += labels[t]
        false_pos += 1 - labels[t]
        if n + 1 == len(order) or scores[order[n + 1]] != scores[t]:  # the last frame at this threshold
            points.append((true_pos / positives, true_pos / (true_pos + false_pos)))
    return sum((r1 - r0) * (p0 + p1) / 2 for (r0, p0), (r1, p1) in zip(points, points[1:]))
