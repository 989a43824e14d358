"""Steps 2 and 3 of VERA's inference, as the paper names them, for one video: answers in, frame scores out.

Step 2 (scene context) replaces each segment's answer ỹᵤ by the
softmax(S/τ)-weighted mean of the answers of its K most similar segments;
Step 3 (temporal context) smooths that sequence with a Gaussian (ω, σ₁),
gives each segment's value to its frames, and weights the frames by a
Gaussian centred on the middle of the video (σ₂).

Each step exists in two protocols, side by side:

* ``released`` (default) reproduces the authors' released scoring scripts bit
  for bit, quirks included, because the paper's tables were made with them;
* ``paper`` follows the paper's text (README, "Scoring protocols").

The paper's symbols: h segments, F frames, answers ỹᵤ, features eᵤ,
similarity sim(u, w) = cos(eᵤ, e_w) (S here), neighbours κᵤ (K of them),
temperature τ, ȳᵤ after Step 2, γ̄ᵤ after smoothing (filter size ω, standard
deviation σ₁ in segments), ρᵢ per frame, weights w(i) (σ₂ in frames), ŷᵢ.

Equation and section numbers in the comments are the CVPR version's (arXiv
v3); v1 numbers Eqs. (1)–(5) and Secs. 3.2–3.3 the same way. Step 2 is
Eq. (4), Step 3 ends in Eq. (5); the similarity, the Gaussian G(p), the
smoothing and w(i) are unnumbered, in the text of Sec. 3.3. The values of K,
τ, ω, σ₁, σ₂ are in App. B.4 (v1: B.3).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from vera.errors import VeraError
from vera.constants import (METRICS, PAPER_KERNEL, PAPER_NEIGHBOUR_FRACTION, POSITION_SIGMA_FRACTION, PROTOCOLS,
                            RELEASED_KERNEL_SIGMA, RELEASED_KERNEL_SIZE, RELEASED_NEIGHBOUR_FRACTION, SEGMENT_STRIDE,
                            TEMPERATURE)

Protocol = Literal["released", "paper"]
Metric = Literal["auc", "ap"]



# ================================================================ Step 2: scene context
# Eq. (4), Sec. 3.3:
# ȳᵤ = Σ_{w ∈ κᵤ} softmax_w(S(u, w)/τ) · ỹ_w, κᵤ the K segments most similar to u (itself included).


# K of Eq. (4), Sec. 3.3 (its value: App. B.4)
def released_neighbour_count(num_segments: int, dataset: str, metric: Metric,
                             ratio: float = RELEASED_NEIGHBOUR_FRACTION) -> int:
    """K as released: int(ratio·h), ratio 0.15; XD keeps all h for short videos (h ≤ 10 for AUC, h ≤ 4 for AP).

    Released quirk: K = 0 means *all* columns, because the released code slices ``[:, -0:]``.
    """
    if dataset == "xd":
        short = 4 if metric == "ap" else 10
        if num_segments <= short:
            return num_segments
    return int(ratio * num_segments)


# K of Eq. (4), Sec. 3.3 (its value: App. B.4)
def paper_neighbour_count(num_segments: int, dataset: str, ratio: float | None = None) -> int:
    """K from the paper: 10 % of the segments (UCF) or 15 % (XD), or ``ratio``, at least one."""
    return max(1, int((PAPER_NEIGHBOUR_FRACTION[dataset] if ratio is None else ratio) * num_segments))


# sim(u, w) (unnumbered, Sec. 3.3, Step 2)
def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """S = ê êᵀ with unit rows ê = e/‖e‖, computed as released (the stored dtype, the same BLAS call)."""
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.dot(normalised, normalised.T)


# sim(u, w) (unnumbered, Sec. 3.3, Step 2)
def paper_similarity(features: np.ndarray) -> np.ndarray:
    """S in float64, *exactly* equal wherever two feature rows are equal (so that ties go by index).

    One BLAS product can round S[i, a] and S[i, b] differently although rows a
    and b are identical (its blocking depends on where they sit); the product
    of the distinct rows, indexed back, cannot.
    """
    rows = np.asarray(features, dtype=np.float64) + 0.0  # a contiguous copy; -0.0 becomes 0.0
    group: dict[bytes, int] = {}
    inverse = np.array([group.setdefault(row.tobytes(), len(group)) for row in rows], dtype=np.int64)
    if len(group) == len(rows):
        return cosine_similarity(rows)
    first = np.unique(inverse, return_index=True)[1]
    return cosine_similarity(rows[first])[np.ix_(inverse, inverse)]


# κᵤ, the top-K indices of Eq. (4), Sec. 3.3
def released_neighbours(similarity: np.ndarray, k: int) -> np.ndarray:
    """κ as released: ``np.argsort(similarity, axis=1)[:, -k:]``, ascending similarity.

    The same call on the same float32 matrix, so that among equal
    similarities numpy's own tie order picks the neighbours and orders the
    sum, as in the released script. Released quirk: K = 0 takes all columns.
    """
    return np.argsort(similarity, axis=1)[:, -k:]


# κᵤ, the top-K indices of Eq. (4), Sec. 3.3
def paper_neighbours(similarity: np.ndarray, k: int | None) -> np.ndarray:
    """κ from the paper: the K most similar segments, most similar first, ties to the lower index (None: all)."""
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def video_rng(seed: int, key: str) -> np.random.Generator:
    """The random-K draw of one video: fixed by the seed and the video key, whatever else is evaluated."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


# Table 13's random κᵤ for Eq. (4) (App. B.4)
def random_neighbours(num_segments: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Table 13's "random" control: for every segment, K distinct segments drawn uniformly (in the order drawn).

    Floyd's sampling, all rows at once: for j = h−K … h−1, draw t in [0, j]
    and take t, or j if t is already taken. Each row gets a uniform K-subset.
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


# Eq. (4), Sec. 3.3
def scene_context(neighbour_similarity: np.ndarray, neighbour_scores: np.ndarray, tau: float,
                  released: bool) -> np.ndarray:
    """ȳᵤ = softmax(S(u, κᵤ)/τ) · ỹ(κᵤ), one row per segment (rows: S[u, κᵤ] and ỹ[κᵤ]).

    S/τ is computed as S·(1/τ), which is the released ``S * 10`` exactly for τ = 0.1.
    Released: the softmax stays in the similarity's dtype (float32 as stored)
    and each row's weighted sum is a float64 BLAS dot (``matmul`` of 1×K by K×1
    stacks dispatches to the same dot as the released per-segment loop).
    """
    logits = neighbour_similarity * float(1.0 / tau)  # a Python float, which numpy does not let widen float32
    logits -= np.max(logits, axis=1, keepdims=True)
    weights = np.exp(logits, out=logits)
    weights /= np.sum(weights, axis=1, keepdims=True)
    if released:
        weighted = np.matmul(weights.astype(np.float64)[:, None, :], neighbour_scores[:, :, None])
        return weighted[:, 0, 0]
    return np.sum(weights * neighbour_scores, axis=1)


# ================================================================ Step 3: temporal context
# Sec. 3.3: γ̄ = ȳ ∗ G (unnumbered); each segment's value to its frames, ρᵢ; Eq. (5): ŷᵢ = w(i) · ρᵢ,
# w(i) = exp(−(i − c)²/(2σ₂²)) (unnumbered).


# γ̄ = ȳ ∗ G, G(p) = exp(−p²/(2σ₁²)) (unnumbered, Sec. 3.3, Step 3)
def released_smoothing(values: np.ndarray, window: int = RELEASED_KERNEL_SIZE,
                       sigma: float = RELEASED_KERNEL_SIGMA) -> np.ndarray:
    """γ̄ as released: a 15-tap Gaussian (σ₁ = 10) on t = linspace(-8, 7, 15), "same" mode.

    Released quirks: ``-15 // 2`` is -8 (the minus applies first, then floor
    division rounds -7.5 down), so the 15 taps run from -8 to 7 in steps of
    15/14 and the peak sits half a step left of centre; the ends are zero
    padded; for fewer than 15 segments numpy's "same" output has 15 values and
    the released code used the first h of them. Another ω or σ₁ keeps that
    formula: ω taps on linspace(-ω // 2, ω // 2, ω).
    """
    size = window
    kernel = np.exp(-np.linspace(-size // 2, size // 2, size) ** 2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return np.convolve(np.asarray(values, dtype=np.float64), kernel, mode="same")[: len(values)]


# γ̄ = ȳ ∗ G, G(p) = exp(−p²/(2σ₁²)) (unnumbered, Sec. 3.3, Step 3)
def paper_smoothing(values: np.ndarray, window: int, sigma: float) -> np.ndarray:
    """γ̄ from the paper: a symmetric Gaussian over taps -⌊ω/2⌋ … ⌊ω/2⌋, renormalised where it overhangs the video.

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


# the flattening of γ̄ into ρ₁ … ρ_F (unnumbered, Sec. 3.3, Step 3)
def frames_per_segment(num_segments: int, last_segment_frames: int) -> np.ndarray:
    """Frames each segment's value goes to: 16 each (the stride d), the last one ``last_segment_frames``."""
    counts = np.full(num_segments, SEGMENT_STRIDE, dtype=np.int64)
    counts[-1] = last_segment_frames
    return counts


# w(i), the weight of Eq. (5) (defined unnumbered, Sec. 3.3)
def released_position_weights(num_frames: int, fraction: float = POSITION_SIGMA_FRACTION) -> np.ndarray:
    """exp(-½((t − c)/σ₂)²) with c = int(F/2), σ₂ = int(fraction·F), as the released code computes it.

    The released code has σ₂ = c = int(F/2), which is fraction 0.5 (``int(0.5·F)`` equals ``int(F/2)``).
    """
    frame = np.arange(num_frames)
    centre, sigma = int(num_frames / 2), max(int(fraction * num_frames), 1)
    return np.exp(-0.5 * ((frame - centre) / sigma) ** 2)


# w(i), the weight of Eq. (5) (defined unnumbered, Sec. 3.3)
def paper_position_weights(num_frames: int, fraction: float = POSITION_SIGMA_FRACTION) -> np.ndarray:
    """exp(-(t − c)²/(2σ₂²)) centred on the middle of the video, c = (F − 1)/2, σ₂ = ⌊fraction·F⌋ (⌊F/2⌋)."""
    frame = np.arange(num_frames, dtype=np.float64)
    centre, sigma = (num_frames - 1) / 2.0, max(int(fraction * num_frames), 1)
    return np.exp(-((frame - centre) ** 2) / (2.0 * sigma**2))


def released_ap_trim(num_frames: int) -> int:
    """Frames the released XD-AP script keeps: it drops the last frame, then (F−1) mod 16 more."""
    return num_frames - 1 - (num_frames - 1) % SEGMENT_STRIDE


# Y = [y₁, …, y_F] (unnumbered, Sec. 3.1)
def ground_truth(length: int, intervals: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Frame labels: ones on [s, min(e, length)) for every annotated interval."""
    labels = np.zeros(length, dtype=np.float64)
    for start, end in intervals:
        labels[start : min(end, length)] = 1.0
    return labels


# ================================================================ settings


# K and τ of Eq. (4), ω, σ₁, σ₂ of Step 3 (values: App. B.4; sweeps: Tables 13–17)
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


# ================================================================ one video, any settings


# Eq. (4) and Step 3 up to Eq. (5), Sec. 3.3
class VideoSteps:
    """Steps 2–3 of one video (segment scores ỹᵤ, segment features eᵤ) under any ``ScoringOptions``.

    It keeps what a setting does not change: the similarity matrix, Step 2's
    values of each (K, τ) and, with ``keep_order`` (a sweep over many K), each
    row's full argsort, from which every K is a slice. ``compute_auc.py`` asks a fresh one for one setting,
    ``reproduce_tables.py`` one per video for every setting: the same methods
    compute the same arrays, so a sweep's numbers are those of separate runs.
    """

    def __init__(self, scores: np.ndarray, features: np.ndarray | None, last_segment_frames: int, key: str = "",
                 keep_order: bool = False):
        self.scores = np.asarray(scores, dtype=np.float64)
        self.features = features
        self.last_segment_frames = last_segment_frames
        self.key = key
        self.keep_order = keep_order
        self._similarity: dict[bool, np.ndarray] = {}
        self._order: dict[bool, np.ndarray] = {}
        self._context: dict[tuple, np.ndarray] = {}

    @property
    def num_segments(self) -> int:
        return len(self.scores)

    # sim(u, w) (unnumbered, Sec. 3.3, Step 2)
    def similarity(self, released: bool) -> np.ndarray:
        """S: float32 as stored (released), or float64 with exact ties for equal rows (paper)."""
        if released not in self._similarity:
            compute = cosine_similarity if released else paper_similarity
            self._similarity[released] = compute(self.features)
        return self._similarity[released]

    # κᵤ of Eq. (4), Sec. 3.3
    def neighbours(self, options: ScoringOptions) -> np.ndarray:
        """κᵤ of every segment under ``options`` (K, random or most similar, protocol), one row per segment."""
        k = options.neighbour_count(self.num_segments)
        released = options.released
        if options.random_k is not None:  # K = 0 is the released "all segments"
            return random_neighbours(self.num_segments, k or self.num_segments, video_rng(options.random_k, self.key))
        similarity = self.similarity(released)
        if not self.keep_order:
            return released_neighbours(similarity, k) if released else paper_neighbours(similarity, k)
        if released not in self._order:  # every K of a sweep is a slice of one full sort
            self._order[released] = (released_neighbours(similarity, 0) if released
                                     else paper_neighbours(similarity, None))
        order = self._order[released]
        return order[:, -k:] if released else order[:, :k]

    # Eq. (4), Sec. 3.3
    def context(self, options: ScoringOptions) -> np.ndarray:
        """ȳ: Step 2's value of every segment (the answers themselves without retrieval)."""
        if not options.retrieval:
            return self.scores
        tau = options.hyperparameters()["tau"]
        key = (options.released, options.neighbour_count(self.num_segments), options.random_k, tau)
        if key not in self._context:  # settings that differ in Step 3 only share Step 2
            neighbours = self.neighbours(options)
            similarity = np.take_along_axis(self.similarity(options.released), neighbours, axis=1)
            self._context[key] = scene_context(similarity, self.scores[neighbours], tau, options.released)
        return self._context[key]

    # γ̄ = ȳ ∗ G (unnumbered, Sec. 3.3, Step 3)
    def smoothed(self, context: np.ndarray, options: ScoringOptions) -> np.ndarray:
        """γ̄: Step 3's Gaussian smoothing of ȳ over the segments."""
        if options.skip_smoothing:
            return np.asarray(context, dtype=np.float64)
        parameters = options.hyperparameters()
        smoothing = released_smoothing if options.released else paper_smoothing
        return smoothing(context, parameters["window"], parameters["sigma1"])

    # ỹ, ȳ (Eq. (4)) and γ̄ (unnumbered) per segment, Sec. 3.3
    def stages(self, options: ScoringOptions) -> dict[str, np.ndarray]:
        """Per segment: the answers, after Step 2, after smoothing, and the values the frames repeat."""
        context = self.context(options)
        smoothed = self.smoothed(context, options)
        if options.released_xd_ap:  # released quirk: the XD-AP script applies a sigmoid, then rounds
            values = np.round(1 / (1 + np.exp(-smoothed)), 1)
        elif options.released:  # released quirk: each segment's value rounded to 0.1
            values = np.round(smoothed, 1)
        else:
            values = smoothed
        return {"answers": self.scores, "context": np.asarray(context, dtype=np.float64), "smoothed": smoothed,
                "values": values}

    # ŷ, Eq. (5), Sec. 3.3
    def frame_scores(self, options: ScoringOptions) -> np.ndarray:
        return frames_from_segments(self.stages(options)["values"], self.last_segment_frames, options)


# ρᵢ, then ŷᵢ = w(i) · ρᵢ: Eq. (5), Sec. 3.3
def frames_from_segments(values: np.ndarray, last_segment_frames: int, options: ScoringOptions) -> np.ndarray:
    """ŷ: each segment's value over its frames, then the position weights (none for the released XD-AP)."""
    frames = np.repeat(values, frames_per_segment(len(values), last_segment_frames))
    if options.released_xd_ap:
        return frames[: released_ap_trim(len(frames))]
    if options.skip_position_weighting:
        return frames
    fraction = options.hyperparameters()["sigma2"]
    weights = (released_position_weights if options.released else paper_position_weights)(len(frames), fraction)
    return weights * frames


# Steps 2–3 of one video: Eq. (4), smoothing, Eq. (5) (Sec. 3.3)
def frame_scores(scores: np.ndarray, features: np.ndarray | None, last_segment_frames: int,
                 options: ScoringOptions, key: str = "") -> np.ndarray:
    """Frame-level scores of one video from its segment scores and segment features (``key`` seeds --random-k)."""
    return VideoSteps(scores, features, last_segment_frames, key).frame_scores(options)
