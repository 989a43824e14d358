"""The paper's Step 2/3 hyper-parameters as options: each changes exactly what it should.

Hand-computed small cases, and bit-for-bit equality with the loop reference
of tests/reference/hyperparameters.py (the released script's loops with the
parameter substituted).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference.hyperparameters import reference_video_with
from reference.released import reference_video
from vera.errors import VeraError
from vera.options import OPTIONS, build_parser
from vera.scoring.steps import (
    ScoringOptions,
    VideoSteps,
    frame_scores,
    paper_neighbours,
    paper_position_weights,
    random_neighbours,
    released_neighbours,
    released_position_weights,
    released_smoothing,
    video_rng,
)


def _video(rng: np.random.Generator, h: int, width: int = 12, ties: bool = True):
    """A video of h segments; with ``ties``, exact feature repeats, some with the same answer, some not."""
    length = 16 * (h - 1) + int(rng.integers(1, 17))
    centres = list(range(0, length, 16))
    ends = [float(min(c + 150, length)) for c in centres]
    scores = rng.integers(0, 2, size=h)
    features = rng.standard_normal((h, width))
    if ties:
        features[rng.integers(0, h, size=max(h // 3, 1))] = features[0]
    return centres, ends, scores, features.astype(np.float32)


def _ours(video, options: ScoringOptions, key: str = "") -> np.ndarray:
    centres, ends, scores, features = video
    return frame_scores(scores, features, int(ends[-1] - centres[-1]), options, key)


# ------------------------------------------------------------------ defaults


def test_defaults_are_the_protocols_values():
    assert ScoringOptions().hyperparameters() == {"k_ratio": 0.15, "random_k": None, "tau": 0.1, "window": 15,
                                                  "sigma1": 10.0, "sigma2": 0.5}
    assert ScoringOptions(protocol="paper").hyperparameters()["k_ratio"] == 0.10
    assert ScoringOptions("xd", protocol="paper").hyperparameters() | {} == {
        "k_ratio": 0.15, "random_k": None, "tau": 0.1, "window": 30, "sigma1": 30.0, "sigma2": 0.5}
    assert ScoringOptions("xd", "ap").hyperparameters()["sigma2"] is None  # the released AP script has no weighting
    assert 1.0 / 0.1 == 10.0  # τ = 0.1 multiplies by exactly the released 10


@pytest.mark.parametrize("dataset,metric", [("ucf", "auc"), ("xd", "auc"), ("xd", "ap")])
def test_giving_the_default_values_changes_nothing(dataset, metric):
    rng = np.random.default_rng(1)
    explicit = {"k_ratio": 0.15, "tau": 0.1, "window": 15, "sigma1": 10.0}
    if (dataset, metric) != ("xd", "ap"):
        explicit["sigma2"] = 0.5
    for h in (3, 20, 90):
        video = _video(rng, h)
        assert np.array_equal(_ours(video, ScoringOptions(dataset, metric)),
                              _ours(video, ScoringOptions(dataset, metric, **explicit)))


# ------------------------------------------------------------------ against the loop reference


SETTINGS = [
    {"k_ratio": 0.05}, {"k_ratio": 0.25}, {"k_ratio": 1.0}, {"k_ratio": 0.0},
    {"tau": 1e-7}, {"tau": 0.01}, {"tau": 1.0}, {"tau": 10.0}, {"tau": math.inf},
    {"window": 1}, {"window": 5}, {"window": 20}, {"window": 25},
    {"sigma1": 1.0}, {"sigma1": 20.0}, {"sigma2": 0.25}, {"sigma2": 0.75},
    {"k_ratio": 0.1, "tau": 1.0, "window": 10, "sigma1": 5.0, "sigma2": 0.25},
]


# The released XD-Violence AP script has no position weighting: no σ₂ there.
@pytest.mark.parametrize("dataset,metric,setting", [("ucf", "auc", s) for s in SETTINGS] + [
    ("xd", "ap", s) for s in SETTINGS if "sigma2" not in s])
def test_each_option_matches_the_loop_reference_bit_for_bit(dataset, metric, setting):
    rng = np.random.default_rng(len(str(setting)))
    options = ScoringOptions(dataset, metric, **setting)
    for h in (2, 5, 12, 40, 70, 150):
        centres, ends, scores, features = video = _video(rng, h)
        expected = reference_video_with(centres, ends, scores.tolist(), features, dataset, metric, **setting)
        assert np.array_equal(_ours(video, options), np.array(expected)), f"h={h}"


def test_ablations_with_options_match_the_reference():
    rng = np.random.default_rng(5)
    centres, ends, scores, features = video = _video(rng, 80)
    got = _ours(video, ScoringOptions(skip_smoothing=True, skip_position_weighting=True, k_ratio=0.2, tau=1.0))
    expected = reference_video_with(centres, ends, scores.tolist(), features, k_ratio=0.2, tau=1.0, smoothing=False,
                                    sigma2=None)
    assert np.array_equal(got, np.array(expected))


# ------------------------------------------------------------------ by hand


def test_k_ratio_sets_k_as_a_share_of_h():
    released = ScoringOptions(k_ratio=0.1)
    assert [released.neighbour_count(h) for h in (5, 10, 19, 20, 100)] == [0, 1, 1, 2, 10]  # 0 → all, as released
    assert [ScoringOptions("xd", k_ratio=0.1).neighbour_count(h) for h in (8, 30)] == [8, 3]  # XD keeps short videos
    paper = ScoringOptions(protocol="paper", k_ratio=0.05)
    assert [paper.neighbour_count(h) for h in (5, 40, 100)] == [1, 2, 5]


def test_k_ratio_zero_is_no_retrieval():
    rng = np.random.default_rng(2)
    centres, ends, scores, features = video = _video(rng, 30)
    no_retrieval = _ours(video, ScoringOptions(k_ratio=0.0))
    assert np.array_equal(no_retrieval, frame_scores(scores, None, int(ends[-1] - centres[-1]),
                                                     ScoringOptions(skip_step2=True)))
    assert not ScoringOptions(k_ratio=0.0).retrieval


def test_tau_by_hand():
    # Three unit features at 0°, 60° and 90°; k = all (h = 3 → int(0.45) = 0).
    features = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 1.0]])
    scores = np.array([1.0, 0.0, 1.0])
    steps = VideoSteps(scores, features, 16)
    # τ = ∞: plain mean of the three scores for every segment.
    context = steps.context(ScoringOptions(tau=math.inf))
    np.testing.assert_allclose(context, [2 / 3] * 3, rtol=1e-15)
    # τ = 1: weights ∝ exp(cos θ).
    similarity = np.array([[1, 0.5, 0], [0.5, 1, math.sqrt(3) / 2], [0, math.sqrt(3) / 2, 1]])
    expected = [float(np.exp(row) @ scores / np.exp(row).sum()) for row in similarity]
    np.testing.assert_allclose(steps.context(ScoringOptions(tau=1.0)), expected, rtol=1e-14)
    # τ → 0: all the weight on the most similar segment, itself.
    np.testing.assert_array_equal(steps.context(ScoringOptions(tau=1e-7)), scores)


def test_window_and_sigma1_by_hand():
    # ω = 3, σ₁ = 1: taps at linspace(-2, 1, 3) = -2, -0.5, 1 (the released formula, off-centre).
    taps = np.array([-2.0, -0.5, 1.0])
    kernel = np.exp(-(taps**2) / 2)
    kernel /= kernel.sum()
    impulse = np.zeros(9)
    impulse[4] = 1.0
    np.testing.assert_allclose(released_smoothing(impulse, 3, 1.0)[3:6], kernel, rtol=1e-15)
    np.testing.assert_array_equal(released_smoothing(impulse, 1, 10.0), impulse)  # ω = 1: no smoothing
    # A huge σ₁ makes the kernel flat: every value is the mean of its window.
    flat = released_smoothing(np.arange(9.0), 3, 1e6)
    np.testing.assert_allclose(flat[1:8], np.arange(1.0, 8.0), rtol=1e-9)


def test_sigma2_by_hand():
    # n = 8 frames, fraction 0.25: centre int(8/2) = 4, σ = int(0.25·8) = 2.
    np.testing.assert_allclose(released_position_weights(8, 0.25),
                               [math.exp(-0.5 * ((t - 4) / 2) ** 2) for t in range(8)], rtol=1e-15)
    # Paper: centre (n−1)/2 = 3.5, σ = ⌊0.75·8⌋ = 6.
    np.testing.assert_allclose(paper_position_weights(8, 0.75),
                               [math.exp(-((t - 3.5) ** 2) / 72) for t in range(8)], rtol=1e-15)
    # Only the frame weights change: the per-segment values are the same.
    rng = np.random.default_rng(3)
    video = _video(rng, 40)
    half = _ours(video, ScoringOptions(skip_position_weighting=True))
    quarter = _ours(video, ScoringOptions(sigma2=0.25))
    np.testing.assert_array_equal(quarter, released_position_weights(len(half), 0.25) * half)


def test_random_k_draws_distinct_segments_uniformly_and_reproducibly():
    picks = random_neighbours(50, 7, np.random.default_rng(0))
    assert picks.shape == (50, 7) and all(len(set(row)) == 7 for row in picks.tolist())
    assert picks.min() >= 0 and picks.max() < 50
    counts = np.bincount(random_neighbours(400, 40, np.random.default_rng(1)).ravel(), minlength=400)
    assert counts.sum() == 16000 and 15 < counts.min() and counts.max() < 70  # mean 40 per segment
    np.testing.assert_array_equal(random_neighbours(30, 3, video_rng(4, "a")), random_neighbours(30, 3, video_rng(4, "a")))
    assert not np.array_equal(random_neighbours(30, 3, video_rng(4, "a")), random_neighbours(30, 3, video_rng(5, "a")))
    assert not np.array_equal(random_neighbours(30, 3, video_rng(4, "a")), random_neighbours(30, 3, video_rng(4, "b")))


def test_random_k_weights_the_drawn_segments_as_the_loop_reference():
    rng = np.random.default_rng(6)
    centres, ends, scores, features = video = _video(rng, 60)
    options = ScoringOptions(k_ratio=0.1, random_k=3)
    drawn = random_neighbours(60, 6, video_rng(3, "Video_x"))
    expected = reference_video_with(centres, ends, scores.tolist(), features, k_ratio=0.1, neighbours=drawn)
    got = _ours(video, options, key="Video_x")
    assert np.array_equal(got, np.array(expected))
    assert np.array_equal(got, _ours(video, options, key="Video_x"))  # same seed and video: same scores
    assert not np.array_equal(got, _ours(video, ScoringOptions(k_ratio=0.1, random_k=4), key="Video_x"))
    assert not np.array_equal(got, _ours(video, ScoringOptions(k_ratio=0.1)))


def test_option_conflicts_are_one_line_errors():
    with pytest.raises(VeraError, match="--random-k draws K > 0 segments"):
        ScoringOptions(k_ratio=0.0, random_k=1)
    with pytest.raises(VeraError, match="--sigma2 sets the position weighting"):
        ScoringOptions("xd", "ap", sigma2=0.25)
    with pytest.raises(VeraError, match="--sigma2 sets the position weighting"):
        ScoringOptions(skip_position_weighting=True, sigma2=0.25)
    with pytest.raises(VeraError, match="give --classes too"):
        ScoringOptions(with_normal=True)


@pytest.mark.parametrize("flag,value,message", [
    ("--k-ratio", "1.5", "must be a fraction between 0 and 1"), ("--k-ratio", "nan", "must be a fraction"),
    ("--k-ratio", "10%", "must be a fraction"), ("--random-k", "-1", "must be at least 0"),
    ("--tau", "0", "must be at least 1e-30"), ("--tau", "-1", "must be at least"), ("--tau", "x", "positive number"),
    ("--window", "0", "must be at least 1"), ("--window", "2.5", "whole number"),
    ("--sigma1", "0", "positive finite"), ("--sigma1", "inf", "positive finite"),
    ("--sigma2", "0", "above 0"), ("--sigma2", "2", "between 0 and 1"),
    ("--classes", "A,,B", "class names separated by commas"), ("--classes", "A,A", "names a class twice"),
])
def test_bad_values_are_refused_with_the_option_named(flag, value, message):
    names = ["k_ratio", "random_k", "tau", "window", "sigma1", "sigma2", "classes"]
    parser = build_parser("test", names)
    with pytest.raises(VeraError, match=f"argument {flag}: .*{message}"):
        parser.parse_args([flag, value])
    assert all(OPTIONS[name].help for name in names)


def test_tau_inf_is_accepted():
    parser = build_parser("test", ["tau"])
    assert parser.parse_args(["--tau", "inf"]).tau == math.inf


# ------------------------------------------------------------------ the neighbour search


def _tie_rich_similarity(rng: np.random.Generator, h: int, distinct: int, width: int = 8):
    base = rng.standard_normal((distinct, width)).astype(np.float32)
    features = base[rng.integers(0, distinct, size=h)]  # each row repeated: ties inside and across the K
    normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
    return features, np.dot(normalised, normalised.T)


def test_heavy_ties_give_the_released_scores():
    rng = np.random.default_rng(9)
    for h in (70, 150, 260):
        base = rng.standard_normal((h // 3, 6)).astype(np.float32)
        features = base[rng.integers(0, h // 3, size=h)]
        scores = rng.integers(0, 2, size=h)
        centres = list(range(0, 16 * h, 16))
        ends = [float(min(c + 150, 16 * h)) for c in centres]
        for dataset, metric in (("ucf", "auc"), ("xd", "ap")):
            expected = reference_video(centres, ends, scores.tolist(), features, dataset, metric)
            got = frame_scores(scores, features, 16, ScoringOptions(dataset, metric))
            assert np.array_equal(got, np.array(expected)), (h, dataset)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paper_neighbours_equal_a_stable_argsort(dtype):
    rng = np.random.default_rng(10)
    for h, distinct in ((70, 4), (200, 50), (300, 300)):
        features = rng.standard_normal((distinct, 5))[rng.integers(0, distinct, size=h)].astype(dtype)
        normalised = features / np.linalg.norm(features, axis=1, keepdims=True)
        similarity = np.dot(normalised, normalised.T)
        for k in (1, 7, h // 3):
            assert np.array_equal(paper_neighbours(similarity, k),
                                  np.argsort(-similarity, axis=1, kind="stable")[:, :k]), (h, k)


@pytest.mark.parametrize("protocol", ["released", "paper"])
def test_slices_of_one_full_sort_give_each_k_its_own_values(protocol):
    """A sweep slices every K from one argsort per row (the Table 13 sweep): the same Step 2 as a run of its own."""
    rng = np.random.default_rng(12)
    h = 240
    for distinct in (12, 80, 240):
        features, similarity = _tie_rich_similarity(rng, h, distinct, width=6)
        scores = rng.integers(0, 2, size=h)
        swept = VideoSteps(scores, features, 16, keep_order=True)
        for ratio in (0.02, 0.1, 0.15, 0.25):
            options = ScoringOptions(protocol=protocol, k_ratio=ratio)
            k = options.neighbour_count(h)
            if protocol == "released":
                assert np.array_equal(swept.neighbours(options), np.argsort(similarity, axis=1)[:, -k:])
            assert np.array_equal(swept.context(options), VideoSteps(scores, features, 16).context(options))

