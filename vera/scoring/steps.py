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
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from vera.data.segments import SEGMENT_STRIDE
from vera.errors import VeraError
from vera.options import METRICS, PROTOCOLS

Protocol = Literal["released", "paper"]
Metric = Literal["auc", "ap"]

SIMILARITY_SCALE = 10.0  # softmax(10·S): the paper's temperature 0.1
TEMPERATURE = 0.1  # τ; 1/τ is exactly SIMILARITY_SCALE in floating point
RELEASED_NEIGHBOUR_FRACTION = 0.15  # the released scripts' int(0.15·h), on both datasets
RELEASED_KERNEL_SIZE, RELEASED_KERNEL_SIGMA = 15, 10.0
POSITION_SIGMA_FRACTION = 0.5  # σ₂ = ⌊F/2⌋
# The paper's smoothing windows (ω, σ) and neighbour fractions per dataset.
PAPER_KERNEL = {"ucf": (15, 10.0), "xd": (30, 30.0)}
PAPER_NEIGHBOUR_FRACTION = {"ucf": 0.10, "xd": 0.15}
# Below this many segments a full argsort is as cheap as the top-k search.
FULL_SORT_MAX_SEGMENTS = 64
# Similarity entries per block of rows: 1 MiB of float32 (2 MiB of argpartition's int64 output), temporaries
# small enough for the allocator to reuse instead of mapping and zeroing fresh pages for each block.
_BLOCK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class ScoringOptions:
    """How one evaluation turns segment scores into frame scores.

    The hyper-parameters the paper varies (``k_ratio`` … ``sigma2``) are None
    for "the protocol's value" (see ``hyperparameters``), so that the default
    options of each protocol compute exactly what they always computed.
    """

    dataset: str = "ucf"
    metric: Metric = "auc"
    protocol: Protocol = "released"
    score_field: str = "score"
    skip_step2: bool = False
    skip_smoothing: bool = False
    skip_position_weighting: bool = False
    k_ratio: float | None = None  # K/h; 0 = no retrieval
    random_k: int | None = None  # seed: K random segments instead of the K most similar
    tau: float | None = None  # softmax temperature; weights softmax(S/τ)
    window: int | None = None  # ω, smoothing filter size in segments
    sigma1: float | None = None  # σ₁, in segments
    sigma2: float | None = None  # σ₂ as a fraction of the video's frames
    classes: tuple[str, ...] | None = None  # evaluate only these classes' videos
    with_normal: bool = False  # … plus every normal video

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS or self.metric not in METRICS or self.dataset not in PAPER_KERNEL:
            raise VeraError(f"unknown scoring setting: {self.dataset}/{self.metric}/{self.protocol}")
        if self.random_k is not None and not self.retrieval:
            raise VeraError("--random-k draws K > 0 segments: it needs Step 2 (no --skip-step2, --k-ratio above 0)")
        if self.sigma2 is not None and (self.released_xd_ap or self.skip_position_weighting):
            raise VeraError("--sigma2 sets the position weighting, which this run does not apply "
                            "(--skip-position-weighting, or the released XD-Violence AP script, which has none)")
        if self.with_normal and not self.classes:
            raise VeraError("--with-normal adds the normal videos to --classes; give --classes too")

    @classmethod
    def from_args(cls, args) -> ScoringOptions:
        """The options of a parsed command line (``vera.options`` names); absent flags mean the defaults."""
        given = vars(args)
        fields = ("protocol", "score_field", "skip_step2", "skip_smoothing", "skip_position_weighting", "k_ratio",
                  "random_k", "tau", "window", "sigma1", "sigma2", "classes", "with_normal")
        return cls(dataset=args.dataset, metric=given.get("metric") or ("auc" if args.dataset == "ucf" else "ap"),
                   **{name: given[name] for name in fields if given.get(name) is not None})

    @property
    def released(self) -> bool:
        return self.protocol == "released"

    @property
    def released_xd_ap(self) -> bool:
        return self.protocol == "released" and self.dataset == "xd" and self.metric == "ap"

    @property
    def retrieval(self) -> bool:
        """Whether Step 2 retrieves neighbours (``--k-ratio 0`` is the paper's "0 %": no retrieval)."""
        return not self.skip_step2 and self.k_ratio != 0.0

    def hyperparameters(self) -> dict:
        """The values in effect: the options given, else the protocol's (README, "Scoring protocols")."""
        released = self.released
        window, sigma1 = (RELEASED_KERNEL_SIZE, RELEASED_KERNEL_SIGMA) if released else PAPER_KERNEL[self.dataset]
        return {
            "k_ratio": self.k_ratio if self.k_ratio is not None else (
                RELEASED_NEIGHBOUR_FRACTION if released else PAPER_NEIGHBOUR_FRACTION[self.dataset]),
            "random_k": self.random_k,
            "tau": self.tau if self.tau is not None else TEMPERATURE,
            "window": self.window if self.window is not None else window,
            "sigma1": self.sigma1 if self.sigma1 is not None else sigma1,
            "sigma2": None if self.released_xd_ap or self.skip_position_weighting else (
                self.sigma2 if self.sigma2 is not None else POSITION_SIGMA_FRACTION),
        }

    def resolved(self) -> ScoringOptions:
        """The same options with every hyper-parameter written out (they compute exactly the same scores)."""
        values = self.hyperparameters()
        return replace(self, **{name: values[name] for name in ("k_ratio", "tau", "window", "sigma1", "sigma2")})

    def neighbour_count(self, num_segments: int) -> int:
        """K for a video of ``num_segments`` segments, by the protocol's rule (0 → all, as released)."""
        ratio = self.hyperparameters()["k_ratio"]
        if self.released:
            return released_neighbour_count(num_segments, self.dataset, self.metric, ratio)
        return paper_neighbour_count(num_segments, self.dataset, ratio)


# ---------------------------------------------------------------- Step 2


def released_neighbour_count(num_segments: int, dataset: str, metric: Metric,
                             ratio: float = RELEASED_NEIGHBOUR_FRACTION) -> int:
    """k as released: int(ratio·h), ratio 0.15; XD keeps all h for short videos (h ≤ 10 for AUC, h ≤ 4 for AP).

    k = 0 means *all* columns, because the released code slices ``[:, -0:]``.
    """
    if dataset == "xd":
        short = 4 if metric == "ap" else 10
        if num_segments <= short:
            return num_segments
    return int(ratio * num_segments)


def paper_neighbour_count(num_segments: int, dataset: str, ratio: float | None = None) -> int:
    """k from the paper: 10 % of the segments (UCF) or 15 % (XD), or ``ratio``, at least one."""
    return max(1, int((PAPER_NEIGHBOUR_FRACTION[dataset] if ratio is None else ratio) * num_segments))


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
    return released_neighbours_fast(similarity, k, scores, exact_order=True).indices


@dataclass
class Neighbourhood:
    """Each segment's neighbours (a row per segment, ascending similarity) and what Step 2 reads through them."""

    indices: np.ndarray
    reordered: np.ndarray  # rows left in the partition's order among equal similarities (see below)
    similarity: np.ndarray  # S[i, Nᵢ]
    scores: np.ndarray  # y[Nᵢ]

    @classmethod
    def of(cls, similarity: np.ndarray, indices: np.ndarray, scores: np.ndarray) -> Neighbourhood:
        return cls(indices, np.empty(0, dtype=np.intp), np.take_along_axis(similarity, indices, axis=1),
                   np.asarray(scores)[indices])


def released_neighbours_fast(similarity: np.ndarray, k: int, scores: np.ndarray, exact_order: bool = False,
                             ranked: tuple[np.ndarray, np.ndarray] | None = None) -> Neighbourhood:
    """``released_neighbours``, except that rows whose only tie lies *inside* the k keep the partition's order.

    Such a row holds the same k segments as numpy's argsort, in another order
    among equal similarities: its softmax weights are the same, and only the
    order in which the weighted sum adds them differs, which moves Step 2's
    value by float rounding only (see ``vera.scoring.video._ROUNDING_MARGIN``).
    Ties across the k-th place change *which* segments are in, so those rows
    still get numpy's argsort. The reordered rows are listed for
    ``VideoSteps`` to fix where the released rounding to 0.1 could notice.
    ``ranked``: ``rank_largest(similarity, K)`` for some K > k, so that
    several k share one partition of the rows.
    """
    h = similarity.shape[0]
    if k == 0 or k >= h or h <= FULL_SORT_MAX_SEGMENTS:
        return Neighbourhood.of(similarity, np.argsort(similarity, axis=1)[:, -k:], scores)
    # One more than k: where the (k+1)-th value is below the k-th, no tie can cross the k-th place,
    # and only the other rows need a look at their whole row.
    indices, values = rank_largest(similarity, k + 1) if ranked is None else ranked
    scores = np.asarray(scores)

    # Each block writes its rows of the result (no concatenation of h·k arrays afterwards).
    found = Neighbourhood(np.empty((h, k), dtype=np.intp), np.empty(0, dtype=np.intp),
                          np.empty((h, k), dtype=similarity.dtype), np.empty((h, k), dtype=scores.dtype))

    def block(rows: slice) -> np.ndarray:
        out = Neighbourhood(found.indices[rows], found.reordered, found.similarity[rows], found.scores[rows])
        return _select_neighbours(similarity[rows], indices[rows], values[rows], k, scores, exact_order, out) + rows.start

    found.reordered = np.concatenate(_over_row_blocks(h, block))
    return found


def rank_largest(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest similarities and their columns, in ascending order (equal values in any order)."""
    h = similarity.shape[0]

    indices, values = np.empty((h, k), dtype=np.intp), np.empty((h, k), dtype=similarity.dtype)

    def block(rows: slice) -> None:
        part = similarity[rows]
        largest = np.argpartition(part, h - k, axis=1)[:, h - k :]
        found = np.take_along_axis(part, largest, axis=1)
        if found.dtype == np.float32:  # the usual case: one sort of packed keys instead of an argsort
            indices[rows] = _sorted_by_value(found, largest)
        else:
            indices[rows] = np.take_along_axis(largest, np.argsort(found, axis=1), axis=1)
        values[rows] = np.take_along_axis(part, indices[rows], axis=1)

    _over_row_blocks(h, block)
    return indices, values


def _sorted_by_value(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``columns`` of each row in ascending order of their float32 ``values`` (ties by column).

    Each pair becomes one uint64: the value's bits mapped to an order-preserving
    uint32 (sign bit flipped for positives, all bits for negatives) above the
    column, so that numpy's (vectorised) sort of plain integers orders them.
    """
    bits = values.view(np.uint32)
    ordered = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31)).astype(np.uint64)
    keys = (ordered << np.uint64(32)) | columns.astype(np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)


def _over_row_blocks(h: int, work) -> list:
    """``work(rows)`` over blocks of rows of an h×h matrix (bounded memory), on the CPU cores.

    numpy releases the GIL while it partitions and sorts, so threads run in parallel.
    """
    rows_per_block = max(1, _BLOCK_ELEMENTS // h)
    blocks = [slice(first, min(first + rows_per_block, h)) for first in range(0, h, rows_per_block)]
    workers = min(os.cpu_count() or 1, len(blocks))
    if workers < 2:
        return [work(rows) for rows in blocks]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, blocks))


def _select_neighbours(block: np.ndarray, ranked: np.ndarray, ranked_values: np.ndarray, k: int,
                       scores: np.ndarray, exact_order: bool, out: Neighbourhood) -> np.ndarray:
    """The k neighbours of a block of rows from their K ≥ k largest, written into ``out``; returns the rows
    left in the partition's order."""
    K = ranked.shape[1]
    neighbours, values, neighbour_scores = out.indices, out.similarity, out.scores
    neighbours[:] = ranked[:, K - k :]
    values[:] = ranked_values[:, K - k :]
    np.take(scores, neighbours, out=neighbour_scores)
    # Ties inside the k: adjacent equal similarities whose scores differ.
    inside = np.any((values[:, 1:] == values[:, :-1]) & (neighbour_scores[:, 1:] != neighbour_scores[:, :-1]), axis=1)
    # Ties across the boundary: the k-th largest value also occurs outside the k,
    # so which of its segments got in matters unless they all share one score.
    # Where the k-th value is above the K-th, all its ties are among the K.
    kth_largest = values[:, :1]
    tied_in = np.count_nonzero(values == kth_largest, axis=1)
    tied_all = np.count_nonzero(ranked_values == kth_largest, axis=1)
    edge = np.flatnonzero(ranked_values[:, 0] == kth_largest[:, 0])
    if edge.size:
        whole = block if edge.size == len(block) else block[edge]
        tied_all[edge] = np.count_nonzero(whole == kth_largest[edge], axis=1)
    crossing = np.flatnonzero(tied_all > tied_in)
    across = np.zeros(len(block), dtype=bool)
    if crossing.size:
        tied_scores = np.where(block[crossing] == kth_largest[crossing], scores[None, :], np.nan)
        across[crossing] = np.nanmin(tied_scores, axis=1) != np.nanmax(tied_scores, axis=1)
    fallback = np.flatnonzero(across | inside if exact_order else across)
    if fallback.size:
        neighbours[fallback] = np.argsort(block[fallback], axis=1)[:, -k:]
        values[fallback] = np.take_along_axis(block[fallback], neighbours[fallback], axis=1)
        neighbour_scores[fallback] = scores[neighbours[fallback]]
    return np.empty(0, dtype=np.intp) if exact_order else np.flatnonzero(inside & ~across)


def weighted_context(similarity: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, scale: float,
                     released: bool) -> np.ndarray:
    """ȳᵢ = softmax(scale·S[i, Nᵢ]) · y[Nᵢ], scale = 1/τ."""
    return softmax_mean(np.take_along_axis(similarity, neighbours, axis=1), scores[neighbours], scale, released)


def softmax_mean(neighbour_similarity: np.ndarray, neighbour_scores: np.ndarray, scale: float,
                 released: bool) -> np.ndarray:
    """Each row's softmax(scale·s)-weighted mean of its neighbours' scores (rows: S[i, Nᵢ] and y[Nᵢ]).

    Released: the softmax stays in the similarity's dtype (float32 as stored)
    and each row's weighted sum is a float64 BLAS dot (``matmul`` of 1×k by k×1
    stacks dispatches to the same dot as the released per-segment loop).
    ``scale`` must be a Python float, which numpy does not let widen float32.
    """
    logits = neighbour_similarity * float(scale)
    logits -= np.max(logits, axis=1, keepdims=True)
    weights = np.exp(logits, out=logits)
    weights /= np.sum(weights, axis=1, keepdims=True)
    if released:
        weighted = np.matmul(weights.astype(np.float64)[:, None, :], neighbour_scores[:, :, None])
        return weighted[:, 0, 0]
    return np.sum(weights * neighbour_scores, axis=1)


def released_scene_context(features: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Step 2 as released: ȳᵢ = softmax(10·S[i, Nᵢ]) · y[Nᵢ] over the k most similar segments."""
    scores = np.asarray(scores, dtype=np.float64)
    similarity = cosine_similarity(features)
    return weighted_context(similarity, released_neighbours(similarity, k, scores), scores, SIMILARITY_SCALE, True)


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


def paper_neighbours(similarity: np.ndarray, k: int) -> np.ndarray:
    """``np.argsort(-similarity, axis=1, kind="stable")[:, :k]`` (ties by index), without sorting whole rows.

    A partition finds the k largest; sorting them by index and then stably by
    value gives the stable order. Rows where the k-th value also occurs
    outside the k (which tied segment is in depends on the index) are sorted in full.
    """
    h = similarity.shape[0]
    if k >= h or h <= FULL_SORT_MAX_SEGMENTS:
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    rows = np.arange(h)[:, None]
    largest = np.sort(np.argpartition(similarity, h - k, axis=1)[:, h - k :], axis=1)
    values = similarity[rows, largest]
    neighbours = largest[rows, np.argsort(-values, axis=1, kind="stable")]
    kth = values.min(axis=1, keepdims=True)
    crossing = np.flatnonzero(np.count_nonzero(similarity >= kth, axis=1) > k)
    if crossing.size:
        neighbours[crossing] = np.argsort(-similarity[crossing], axis=1, kind="stable")[:, :k]
    return neighbours


# ---------------------------------------------------------------- Step 3


def released_smoothing(values: np.ndarray, window: int = RELEASED_KERNEL_SIZE,
                       sigma: float = RELEASED_KERNEL_SIGMA) -> np.ndarray:
    """Step 3a as released: a 15-tap Gaussian (σ = 10) on t = linspace(-8, 7, 15), "same" mode.

    ``-15 // 2`` is -8 (the minus applies first, then floor division rounds
    -7.5 down), so the 15 taps run from -8 to 7 in steps of 15/14 and the peak
    sits half a step left of centre. For fewer than 15 segments numpy's "same" output has 15 values;
    the released code used the first h of them. Another ``window`` ω or
    ``sigma`` keeps that formula: ω taps on linspace(-ω // 2, ω // 2, ω).
    """
    size = window
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


def released_position_weights(num_frames: int, fraction: float = POSITION_SIGMA_FRACTION) -> np.ndarray:
    """exp(-½((t − m)/σ)²) with m = int(n/2), σ = int(fraction·n), written as the released code computes it.

    The released code has σ = m = int(n/2), which is fraction 0.5 (``int(0.5·n)`` equals ``int(n/2)``).
    """
    frame = np.arange(num_frames)
    centre, sigma = int(num_frames / 2), max(int(fraction * num_frames), 1)
    return np.exp(-0.5 * ((frame - centre) / sigma) ** 2)


def paper_position_weights(num_frames: int, fraction: float = POSITION_SIGMA_FRACTION) -> np.ndarray:
    """exp(-(t − c)²/(2σ²)) centred on the middle of the video, σ = ⌊fraction·F⌋ (⌊F/2⌋ by default)."""
    frame = np.arange(num_frames, dtype=np.float64)
    centre, sigma = (num_frames - 1) / 2.0, max(int(fraction * num_frames), 1)
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
    key: str = "",
) -> np.ndarray:
    """Frame-level scores of one video from its segment scores and segment features (``key`` seeds --random-k)."""
    from vera.scoring.video import VideoSteps  # video.py builds on this module's steps

    return VideoSteps(scores, features, last_segment_frames, key).frame_scores(options)


def ground_truth(length: int, intervals: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Frame labels: ones on [s, min(e, length)) for every annotated interval."""
    labels = np.zeros(length, dtype=np.float64)
    for start, end in intervals:
        labels[start : min(end, length)] = 1.0
    return labels
