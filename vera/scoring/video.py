"""One video's Steps 2–3 under any number of settings, each per-video quantity computed once.

``VideoSteps`` keeps what a setting does not change: the similarity matrix,
the neighbours for each K, the Step 2 values for each (K, τ). A sweep over the
paper's hyper-parameters (``vera.scoring.tables``) asks one ``VideoSteps`` for
every setting, and ``compute_auc.py`` asks a fresh one for one setting:
both run the same methods, so a sweep's numbers are those of separate runs.

The released protocol rounds each segment's value to 0.1. Rows whose
neighbours tie *inside* the K (equal similarities, different scores) are
summed in the partition's order instead of numpy's argsort order, which moves
Step 2's value by float rounding only; where that could move a value across a
rounding boundary, those rows are redone in argsort order, so the rounded
values, and the frame scores, are the released ones bit for bit.
"""

from __future__ import annotations

import zlib

import numpy as np

from vera.scoring.steps import (
    FULL_SORT_MAX_SEGMENTS,
    Neighbourhood,
    ScoringOptions,
    cosine_similarity,
    frames_per_segment,
    paper_neighbours,
    paper_position_weights,
    paper_similarity,
    paper_smoothing,
    rank_largest,
    released_ap_trim,
    released_neighbours_fast,
    released_position_weights,
    released_smoothing,
    softmax_mean,
    weighted_context,
)

# How far a reordered row can move Step 2's value. Equal similarities are equal
# floats, so the row's softmax weights come out the same, position by position,
# in either order; only which score each of two equal weights multiplies
# changes, i.e. the order in which the float64 dot adds the same k products:
# at most about 2·k·2⁻⁵³ (< 3e-11 for k up to 10⁵) on a value in [0, 1].
# Smoothing (weights summing to at most 1) and the sigmoid (slope ≤ 1/4) do
# not enlarge it. 1e-9 leaves a wide margin.
_ROUNDING_MARGIN = 1e-9
_NO_ROWS = np.empty(0, dtype=np.intp)


def video_rng(seed: int, key: str) -> np.random.Generator:
    """The random-K draw of one video: fixed by the seed and the video key, whatever else is evaluated."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def random_neighbours(num_segments: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """For every segment, k distinct segments drawn uniformly at random (in the order drawn).

    Floyd's sampling, all rows at once: for j = h−k … h−1, draw t in [0, j]
    and take t, or j if t is already taken. Each row gets a uniform k-subset.
    """
    h = num_segments
    rows = np.arange(h)
    taken = np.zeros((h, h), dtype=bool)
    picks = np.empty((h, k), dtype=np.intp)
    for column, j in enumerate(range(h - k, h)):
        draw = rng.integers(0, j + 1, size=h)
        picks[:, column] = np.where(taken[rows, draw], j, draw)
        taken[rows, picks[:, column]] = True
    return picks


def _near_rounding_boundary(values: np.ndarray) -> np.ndarray:
    """Where ``np.round(values, 1)`` could change if ``values`` moved by ``_ROUNDING_MARGIN``."""
    tenths = values * 10
    return np.abs(tenths - np.floor(tenths) - 0.5) < 10 * _ROUNDING_MARGIN


def frames_from_segments(values: np.ndarray, last_segment_frames: int, options: ScoringOptions) -> np.ndarray:
    """Frame scores from per-segment values: each segment's value over its frames, then position weights."""
    frames = np.repeat(values, frames_per_segment(len(values), last_segment_frames))
    if options.released_xd_ap:
        return frames[: released_ap_trim(len(frames))]
    if options.skip_position_weighting:
        return frames
    fraction = options.hyperparameters()["sigma2"]
    weights = (released_position_weights if options.released else paper_position_weights)(len(frames), fraction)
    return weights * frames


class VideoSteps:
    """Steps 2–3 of one video (segment scores, segment features) for any ``ScoringOptions``."""

    def __init__(self, scores: np.ndarray, features: np.ndarray | None, last_segment_frames: int, key: str = ""):
        self.scores = np.asarray(scores, dtype=np.float64)
        self.features = features
        self.last_segment_frames = last_segment_frames
        self.key = key
        self._similarity: dict[bool, np.ndarray] = {}
        self._neighbours: dict[tuple, Neighbourhood] = {}  # the latest only: each holds h·K values
        self._context: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self._largest: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def num_segments(self) -> int:
        return len(self.scores)

    def similarity(self, released: bool) -> np.ndarray:
        """Cosine similarities: float32 as stored (released), or float64 with exact ties for equal rows (paper)."""
        if released not in self._similarity:
            self._similarity[released] = cosine_similarity(self.features) if released else paper_similarity(self.features)
        return self._similarity[released]

    def neighbours(self, options: ScoringOptions) -> Neighbourhood:
        """Each segment's neighbours under ``options`` (K, random or most similar, protocol)."""
        k = options.neighbour_count(self.num_segments)
        key = (options.released, k, options.random_k)
        if key not in self._neighbours:
            similarity = self.similarity(options.released)
            if options.random_k is not None:  # k = 0 is the released "all segments"
                rng = video_rng(options.random_k, self.key)
                found = Neighbourhood.of(similarity, random_neighbours(self.num_segments, k or self.num_segments, rng),
                                         self.scores)
            elif options.released:
                found = released_neighbours_fast(similarity, k, self.scores, ranked=self._ranked(k))
            else:
                found = Neighbourhood.of(similarity, paper_neighbours(similarity, k), self.scores)
            self._neighbours.clear()
            self._neighbours[key] = found
        return self._neighbours[key]

    def _ranked(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Each row's K > k largest similarities, in order (released protocol): one partition serves every k < K."""
        h = self.num_segments
        if k == 0 or k >= h or h <= FULL_SORT_MAX_SEGMENTS:  # these take a full argsort
            return None
        if self._largest is None or self._largest[0].shape[1] <= k:
            self._largest = rank_largest(self.similarity(True), k + 1)
        return self._largest

    def context(self, options: ScoringOptions) -> tuple[np.ndarray, np.ndarray]:
        """Step 2's values, and the rows summed in the partition's order instead of numpy's argsort order."""
        if not options.retrieval:
            return self.scores, _NO_ROWS
        tau = options.hyperparameters()["tau"]
        key = (options.released, options.neighbour_count(self.num_segments), options.random_k, tau)
        if key not in self._context:
            neighbours = self.neighbours(options)
            values = softmax_mean(neighbours.similarity, neighbours.scores, 1.0 / tau, options.released)
            self._context[key] = values, neighbours.reordered
        return self._context[key]

    def _exact_rows(self, options: ScoringOptions, rows: np.ndarray) -> np.ndarray:
        """Step 2's values of ``rows`` with numpy's argsort order, as released (each row is computed on its own)."""
        similarity = self.similarity(True)[rows]
        k = self.neighbours(options).indices.shape[1]
        neighbours = np.argsort(similarity, axis=1)[:, -k:]
        return weighted_context(similarity, neighbours, self.scores, 1.0 / options.hyperparameters()["tau"], True)

    def _rows_to_redo(self, reordered: np.ndarray, uncertain: np.ndarray, options: ScoringOptions) -> np.ndarray:
        """The reordered rows that reach a segment whose rounding is uncertain (through the smoothing window)."""
        if not uncertain.any():
            return _NO_ROWS
        reach = 0 if options.skip_smoothing else options.hyperparameters()["window"]
        if 2 * reach + 1 >= self.num_segments:
            return reordered
        near = np.convolve(uncertain.astype(np.float64), np.ones(2 * reach + 1), mode="same") > 0
        return reordered[near[reordered]]

    def _smoothed(self, context: np.ndarray, options: ScoringOptions) -> np.ndarray:
        if options.skip_smoothing:
            return np.asarray(context, dtype=np.float64)
        parameters = options.hyperparameters()
        smoothing = released_smoothing if options.released else paper_smoothing
        return smoothing(context, parameters["window"], parameters["sigma1"])

    def stages(self, options: ScoringOptions) -> dict[str, np.ndarray]:
        """Per segment: the answers, after Step 2, after smoothing, and the values the frames repeat."""
        context, reordered = self.context(options)
        smoothed = self._smoothed(context, options)
        if options.released:
            rounded = 1 / (1 + np.exp(-smoothed)) if options.released_xd_ap else smoothed
            redo = self._rows_to_redo(reordered, _near_rounding_boundary(rounded), options) if reordered.size else _NO_ROWS
            if redo.size:
                context = context.copy()
                context[redo] = self._exact_rows(options, redo)
                smoothed = self._smoothed(context, options)
                rounded = 1 / (1 + np.exp(-smoothed)) if options.released_xd_ap else smoothed
            values = np.round(rounded, 1)
        else:
            values = smoothed
        return {"answers": self.scores, "context": np.asarray(context, dtype=np.float64), "smoothed": smoothed,
                "values": values}

    def frame_scores(self, options: ScoringOptions) -> np.ndarray:
        return frames_from_segments(self.stages(options)["values"], self.last_segment_frames, options)
