"""Steps 2 and 3: hand-computed cases, and bit-for-bit equality with the released loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference.released_steps import released_scene_context
from reference.released import reference_video
from vera.scoring.steps import (
    ScoringOptions,
    frame_scores,
    ground_truth,
    paper_neighbour_count,
    paper_position_weights,
    paper_smoothing,
    released_ap_trim,
    released_neighbour_count,
    released_position_weights,
    released_smoothing,
)


def test_released_neighbour_counts():
    assert [released_neighbour_count(h, "ucf", "auc") for h in (1, 6, 7, 13, 14, 100)] == [0, 0, 1, 1, 2, 15]
    assert [released_neighbour_count(h, "xd", "auc") for h in (3, 10, 11, 20)] == [3, 10, 1, 3]
    assert [released_neighbour_count(h, "xd", "ap") for h in (4, 5, 6, 7, 20)] == [4, 0, 0, 1, 3]
    assert [paper_neighbour_count(h, "ucf") for h in (5, 10, 99)] == [1, 1, 9]
    assert paper_neighbour_count(20, "xd") == 3


def test_scene_context_by_hand():
    # Three unit features: a, a rotated by 60°, and b ⟂ a. h = 3 → k = int(0.45) = 0 → all columns.
    features = np.array([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [0.0, 2.0]])
    scores = np.array([1, 0, 1])
    similarity = np.array([[1, 0.5, 0], [0.5, 1, math.sqrt(3) / 2], [0, math.sqrt(3) / 2, 1]])
    expected = []
    for row in similarity:
        weights = np.exp(10 * row) / np.exp(10 * row).sum()
        expected.append(float(weights @ scores))
    got = released_scene_context(features, scores, k=0)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # k = 1: each segment's nearest neighbour is itself, so the scores come back unchanged.
    np.testing.assert_array_equal(released_scene_context(features, scores, k=1), [1.0, 0.0, 1.0])


def test_released_kernel_is_off_centre_and_short_videos_take_the_first_values():
    taps = np.array([-8 + i * 15 / 14 for i in range(15)])  # 15 points from -8 to 7: step 15/14
    kernel = np.exp(-(taps**2) / 200.0)
    kernel /= kernel.sum()
    # An impulse at segment 0 of a 3-segment video: 'same' keeps full[1:16], so z = g[1], g[2], g[3].
    np.testing.assert_allclose(released_smoothing(np.array([1.0, 0.0, 0.0])), kernel[1:4], rtol=1e-15)
    # A long video: the impulse response is the kernel, centred on index 7 of 15.
    impulse = np.zeros(40)
    impulse[20] = 1.0
    np.testing.assert_allclose(released_smoothing(impulse)[13:28], kernel, rtol=1e-15)
    # -8 … 7 is not symmetric: the response leans right, with its peak on the impulse (tap 7 is -0.5).
    response = released_smoothing(impulse)
    assert response[13] < response[27] and np.argmax(response) == 20


def test_position_weights_by_hand():
    np.testing.assert_allclose(
        released_position_weights(4), [math.exp(-0.5), math.exp(-0.125), 1.0, math.exp(-0.125)], rtol=1e-15
    )
    weights = released_position_weights(7)  # m = 3, σ = 3
    np.testing.assert_allclose(weights, [math.exp(-0.5 * ((t - 3) / 3) ** 2) for t in range(7)], rtol=1e-15)
    paper = paper_position_weights(5)  # centre 2, σ = 2
    np.testing.assert_allclose(paper, [math.exp(-((t - 2) ** 2) / 8) for t in range(5)], rtol=1e-15)


def test_ap_trim_and_ground_truth():
    assert [released_ap_trim(n) for n in (17, 33, 40, 41)] == [16, 32, 32, 32]
    np.testing.assert_array_equal(ground_truth(10, ((2, 4), (8, 20))), [0, 0, 1, 1, 0, 0, 0, 0, 1, 1])


def test_paper_smoothing_is_symmetric_and_keeps_constants():
    np.testing.assert_allclose(paper_smoothing(np.full(9, 0.7), 15, 10.0), 0.7, rtol=1e-14)
    impulse = np.zeros(41)
    impulse[20] = 1.0
    response = paper_smoothing(impulse, 30, 30.0)
    np.testing.assert_allclose(response[5:20], response[21:36][::-1], rtol=1e-14)
    assert np.count_nonzero(response) == 31  # taps -15 … 15


def test_frame_expansion_by_hand():
    options = ScoringOptions(skip_step2=True, skip_smoothing=True, skip_position_weighting=True)
    frames = frame_scores(np.array([0, 1, 1]), None, 5, options)
    np.testing.assert_array_equal(frames, [0.0] * 16 + [1.0] * 21)


def _random_video(rng: np.random.Generator, h: int, width: int, ties: bool, dtype=np.float32):
    length = 16 * (h - 1) + int(rng.integers(1, 17))
    centres = list(range(0, length, 16))
    ends = [float(min(c + 150, length)) for c in centres]
    scores = rng.integers(0, 2, size=h).tolist()
    features = rng.standard_normal((h, width))
    if ties:  # exact repeats, some with the same score and some not
        copies = rng.integers(0, h, size=max(h // 3, 1))
        features[copies] = features[0]
    return centres, ends, scores, features.astype(dtype)


@pytest.mark.parametrize("dataset,metric", [("ucf", "auc"), ("xd", "auc"), ("xd", "ap")])
def test_released_protocol_matches_reference_bit_for_bit(dataset, metric):
    rng = np.random.default_rng(7)
    options = ScoringOptions(dataset=dataset, metric=metric)
    sizes = [1, 2, 3, 4, 5, 6, 7, 10, 11, 14, 15, 16, 40, 65, 130, 300]
    for trial, h in enumerate(sizes * 2):
        width = int(rng.integers(2, 40))
        dtype = np.float64 if trial % 5 == 4 else np.float32
        centres, ends, scores, features = _random_video(rng, h, width, ties=trial % 2 == 1, dtype=dtype)
        expected = np.array(reference_video(centres, ends, scores, features, dataset, metric))
        got = frame_scores(np.array(scores), features, int(ends[-1] - centres[-1]), options)
        assert got.dtype == np.float64
        assert np.array_equal(got, expected), f"h={h} trial={trial}"


def test_heavy_ties_with_mixed_scores_fall_back_to_numpy_argsort():
    rng = np.random.default_rng(11)
    h = 120
    base = rng.standard_normal((4, 8)).astype(np.float32)
    features = base[rng.integers(0, 4, size=h)]  # only four distinct rows: ties everywhere
    scores = rng.integers(0, 2, size=h)
    centres = list(range(0, 16 * h, 16))
    ends = [float(min(c + 150, 16 * h)) for c in centres]
    expected = reference_video(centres, ends, scores.tolist(), features, "ucf", "auc")
    got = frame_scores(scores, features, 16, ScoringOptions())
    assert np.array_equal(got, np.array(expected))
