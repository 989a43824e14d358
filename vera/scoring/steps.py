"""Steps 2 and 3: from segment-level 0/1 answers to frame-level anomaly scores.

Two protocols:

* ``released`` (default) reproduces the authors' released scoring scripts bit
  for bit, quirks included, because the paper's tables were made with them.
* ``paper`` follows the paper's text (see README, "Scoring protocols").

Every function works on one video; all are vectorised with numpy.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vera.data.segments import SEGMENT_STRIDE
from vera.options import METRICS, PROTOCOLS

Protocol = Literal["released", "paper"]
Metric = Literal["auc", "ap"]

SIMILARITY_SCALE = 10.0  # softmax(10·S): the paper's temperature 0.1
RELEASED_KERNEL_SIZE, RELEASED_KERNEL_SIGMA = 15, 10.0
# The paper's smoothing windows (ω, σ) and neighbour fractions per dataset.
PAPER_KERNEL = {"ucf": (15, 10.0), "xd": (30, 30.0)}
PAPER_NEIGHBOUR_FRACTION = {"ucf": 0.10, "xd": 0.15}
# Below this many segments a full argsort is as cheap as the top-k search.
_FULL_SORT_MAX_SEGMENTS = 64
_BLOCK_ELEMENTS = 1 << 21  # similarity entries per block of rows (8 MiB of float32)


@dataclass(frozen=True)
class ScoringOptions:
    """How one evaluation turns segment scores into frame scores."""

    dataset: str = "ucf"
    metric: Metric = "auc"
    protocol: Protocol = "released"
    score_field: str = "score"
    skip_step2: bool = False
    skip_smoothing: bool = False
    skip_position_weighting: bool = False

    @property
    def released_xd_ap(self) -> bool:
        return self.protocol == "released" and self.dataset == "xd" and self.metric == "ap"


# ---------------------------------------------------------------- Step 2


def released_neighbour_count(num_segments: int, dataset: str, metric: Metric) -> int:
    """k as released: int(0.15·h); XD keeps all h for short videos (h ≤ 10 for AUC, h ≤ 4 for AP).

    k = 0 means *all* columns, because the released code slices ``[:, -0:]``.
    """
    if dataset == "xd":
        short = 4 if metric == "ap" else 10
        if num_segments <= short:
            return num_segments
    return int(0.15 * num_segments)


def paper_neighbour_count(num_segments: int, dataset: str) -> int:
    """k from the paper: 10 % of the segments (UCF) or 15 % (XD), at least one."""
    return max(1, int(PAPER_NEIGHBOUR_FRACTION[dataset] * num_segments))


def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """S = X̂ X̂ᵀ with unit rows, computed exactly as released (same dtype, same BLAS call)."""
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.dot(normalised, normalised.T)


def released_neighbours(similarity: np.ndarray, k: int, scores: np.ndarray) -> np.ndarray:
    """The neighbours of ``np.argsort(similarity, axis=1)[:, -k:]``, without sorting whole rows.

    The last k columns of an argsort are the k largest values in ascending
    order: a partition finds them and a sort of k values orders them. That
    answer can differ from numpy's argsort only where similarities are *equal*
    (argsort orders ties by its own algorithm). Swapping two segments of equal
    similarity and equal score cannot change any sum the scoring makes, so only
    rows with a tie between segments of different scores need numpy's own
    argsort of the row, which is what the released code computes (the same
    algorithm on the same input). Rows go in blocks, which bounds memory, over
    the CPU cores (numpy releases the GIL while it sorts).
    """
    h = similarity.shape[0]
    if k == 0 or k >= h or h <= _FULL_SORT_MAX_SEGMENTS:
        return np.argsort(similarity, axis=1)[:, -k:]
    scores = np.asarray(scores)
    rows_per_block = max(1, _BLOCK_ELEMENTS // h)
    blocks = [similarity[first : first + rows_per_block] for first in range(0, h, rows_per_block)]
    workers = min(os.cpu_count() or 1, len(blocks))
    if workers < 2:
        return np.concatenate([_block_neighbours(block, k, scores) for block in blocks])
    with ThreadPoolExecutor(workers) as pool:
        return np.concatenate(list(pool.map(lambda block: _block_neighbours(block, k, scores), blocks)))


def _block_neighbours(block: np.ndarray, k: int, scores: np.ndarray) -> np.ndarray:
    """``released_neighbours`` for a block of rows of the similarity matrix."""
    h = block.shape[1]
    rows = np.arange(block.shape[0])[:, None]
    largest = np.argpartition(block, h - k, axis=1)[:, h - k :]
    values = block[rows, largest]
    order = np.argsort(values, axis=1)
    neighbours, values = largest[rows, order], values[rows, order]
    neighbour_scores = scores[neighbours]
    # Ties inside the k: adjacent equal similarities whose scores differ.
    unsafe = np.any((values[:, 1:] == values[:, :-1]) & (neighbour_scores[:, 1:] != neighbour_scores[:, :-1]), axis=1)
    # Ties across the boundary: the k-th largest value also occurs outside the k,
    # so which of its segments got in matters unless they all share one score.
    kth_largest = values[:, :1]
    at_boundary = block == kth_largest
    crossing = np.flatnonzero(np.count_nonzero(at_boundary, axis=1) > np.count_nonzero(values == kth_largest, axis=1))
    if crossing.size:
        tied_scores = np.where(at_boundary[crossing], scores[None, :], np.nan)
        unsafe[crossing] |= np.nanmin(tied_scores, axis=1) != np.nanmax(tied_scores, axis=1)
    fallback = np.flatnonzero(unsafe)
    if fallback.size:
        neighbours[fallback] = np.argsort(block[fallback], axis=1)[:, -k:]
    return neighbours


def released_scene_context(features: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Step 2 as released: ȳᵢ = softmax(10·S[i, Nᵢ]) · y[Nᵢ] over the k most similar segments.

    Mirrors the released per-segment loop operation for operation: the softmax
    stays in the features' dtype, and the dot product is a float64 BLAS dot per
    row (``matmul`` of 1×k by k×1 stacks dispatches to the same dot).
    """
    scores = np.asarray(scores, dtype=np.float64)
    similarity = cosine_similarity(features)
    neighbours = released_neighbours(similarity, k, scores)
    logits = np.take_along_axis(similarity, neighbours, axis=1) * SIMILARITY_SCALE
    weights = np.exp(logits - np.max(logits, axis=1, keepdims=True))
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    weighted = np.matmul(weights.astype(np.float64)[:, None, :], scores[neighbours][:, :, None])
    return weighted[:, 0, 0]


def paper_similarity(features: np.ndarray) -> np.ndarray:
    """Cosine similarities in float64 that are *exactly* equal wherever two feature rows are equal.

    One BLAS product can round S[i, a] and S[i, b] differently although rows a
    and b are identical (its blocking depends on where they sit; S[i, i] may be
    1.0 and S[i, a] one ulp less), which would break the rule that ties go to
    the lower index. The product of the distinct rows, indexed back, cannot.
    """
    rows = np.asarray(features, dtype=np.float64) + 0.0  # a contiguous copy; -0.0 becomes 0.0
    group: dict[bytes, int] = {}
    inverse = np.array([group.setdefault(row.tobytes(), len(group)) for row in rows], dtype=np.int64)
    if len(group) == len(rows):
        return cosine_similarity(rows)
    first = np.unique(inverse, return_index=True)[1]
    return cosine_similarity(rows[first])[np.ix_(inverse, inverse)]


def paper_scene_context(features: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Step 2 of the paper: the same softmax-weighted mean, in float64, ties broken by index."""
    similarity = paper_similarity(features)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    logits = np.take_along_axis(similarity, neighbours, axis=1) * SIMILARITY_SCALE
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return np.sum(weights * np.asarray(scores, dtype=np.float64)[neighbours], axis=1)


# ---------------------------------------------------------------- Step 3


def released_smoothing(values: np.ndarray) -> np.ndarray:
    """Step 3a as released: a 15-tap Gaussian (σ = 10) on t = linspace(-8, 7, 15), "same" mode.

    ``-15 // 2`` is -8 (the minus applies first, then floor division rounds
    -7.5 down), so the 15 taps run from -8 to 7 in steps of 15/14 and the peak
    sits half a step left of centre. For fewer than 15 segments numpy's "same" output has 15 values;
    the released code used the first h of them.
    """
    size, sigma = RELEASED_KERNEL_SIZE, RELEASED_KERNEL_SIGMA
    kernel = np.exp(-np.linspace(-size // 2, size // 2, size) ** 2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return np.convolve(np.asarray(values, dtype=np.float64), kernel, mode="same")[: len(values)]


def paper_smoothing(values: np.ndarray, window: int, sigma: float) -> np.ndarray:
    """A symmetric Gaussian over taps -⌊ω/2⌋ … ⌊ω/2⌋, renormalised where it overhangs the video.

    Renormalising at the edges keeps a constant input constant, instead of
    pulling the first and last segments towards zero as zero padding would.
    """
    values = np.asarray(values, dtype=np.float64)
    half = window // 2
    taps = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    smoothed = np.convolve(values, kernel, mode="full")[half : half + len(values)]
    coverage = np.convolve(np.ones_like(values), kernel, mode="full")[half : half + len(values)]
    return smoothed / coverage


def frames_per_segment(num_segments: int, last_segment_frames: int) -> np.ndarray:
    """Frames each segment stands for: 16 each, the last one ``last_segment_frames``."""
    counts = np.full(num_segments, SEGMENT_STRIDE, dtype=np.int64)
    counts[-1] = last_segment_frames
    return counts


def released_position_weights(num_frames: int) -> np.ndarray:
    """exp(-½((t − m)/m)²) with m = int(n/2), written as the released code computes it."""
    frame = np.arange(num_frames)
    centre = sigma = int(num_frames / 2)
    return np.exp(-0.5 * ((frame - centre) / sigma) ** 2)


def paper_position_weights(num_frames: int) -> np.ndarray:
    """exp(-(t − c)²/(2σ²)) centred on the middle of the video, σ = ⌊F/2⌋."""
    frame = np.arange(num_frames, dtype=np.float64)
    centre, sigma = (num_frames - 1) / 2.0, max(num_frames // 2, 1)
    return np.exp(-((frame - centre) ** 2) / (2.0 * sigma**2))


def released_ap_trim(num_frames: int) -> int:
    """Frames the released XD-AP script keeps: it drops the last frame, then (n−1) mod 16 more."""
    return num_frames - 1 - (num_frames - 1) % SEGMENT_STRIDE


# ---------------------------------------------------------------- one video


def frame_scores(
    scores: np.ndarray,
    features: np.ndarray | None,
    last_segment_frames: int,
    options: ScoringOptions,
) -> np.ndarray:
    """Frame-level scores of one video from its segment scores and segment features."""
    scores = np.asarray(scores, dtype=np.float64)
    h = len(scores)
    released = options.protocol == "released"
    if options.skip_step2:
        context = scores
    elif released:
        k = released_neighbour_count(h, options.dataset, options.metric)
        context = released_scene_context(features, scores, k)
    else:
        context = paper_scene_context(features, scores, paper_neighbour_count(h, options.dataset))

    if options.skip_smoothing:
        smoothed = np.asarray(context, dtype=np.float64)
    elif released:
        smoothed = released_smoothing(context)
    else:
        smoothed = paper_smoothing(context, *PAPER_KERNEL[options.dataset])

    if options.released_xd_ap:
        # Sigmoid and rounding act per frame; on repeated values they give the
        # same numbers computed once per segment.
        per_segment = np.round(1 / (1 + np.exp(-smoothed)), 1)
        frames = np.repeat(per_segment, frames_per_segment(h, last_segment_frames))
        return frames[: released_ap_trim(len(frames))]
    if released:
        smoothed = np.round(smoothed, 1)
    frames = np.repeat(smoothed, frames_per_segment(h, last_segment_frames))
    if not options.skip_position_weighting:
        weights = released_position_weights(len(frames)) if released else paper_position_weights(len(frames))
        frames = weights * frames
    return frames


def ground_truth(length: int, intervals: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Frame labels: ones on [s, min(e, length)) for every annotated interval."""
    labels = np.zeros(length, dtype=np.float64)
    for start, end in intervals:
        labels[start : min(end, length)] = 1.0
    return labels
