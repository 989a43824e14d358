"""``--protocol paper`` against hand-computed values and the loop-based reference in reference/paper.py."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from reference import paper as reference
from vera.scoring.steps import ScoringOptions, frame_scores
from fixtures.scripts import load_script

compute_auc = load_script("compute_auc")

RTOL = 1e-12


def _paper(dataset: str, **skips) -> ScoringOptions:
    return ScoringOptions(dataset=dataset, metric="auc", protocol="paper", **skips)


def _softmax_mean(neighbours: list[tuple[float, float]]) -> float:
    """Σ exp(s/0.1)·y / Σ exp(s/0.1) over (similarity s, score y) pairs."""
    weights = [math.exp(10 * s) for s, _ in neighbours]
    return sum(w * y for w, (_, y) in zip(weights, neighbours)) / sum(weights)


# ------------------------------------------------------------------ hand-computed cases

# 20 segments: groups of identical axis directions (cosines exactly 0 or 1, in any summation order),
# one segment at (3, 4, 0, 0, 0) (cosine 0.6 with e0, 0.8 with e1) and one lone direction e4.
_GROUPS = {0: [0, 2, 6, 10, 12, 14, 15, 17, 19], 1: [1, 5], 2: [3, 8, 13, 16], 3: [4, 11, 18], 4: [9]}
_Y = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 0]


def _hand_features() -> np.ndarray:
    features = np.zeros((20, 5))
    for axis, members in _GROUPS.items():
        features[members, axis] = 2.0 if axis == 2 else 1.0  # length does not matter, direction does
    features[7, :2] = (3.0, 4.0)
    return features


def _expected_step2(dataset: str) -> list[float]:
    y = _Y
    expected = []
    for i in range(20):
        group = next((members for members in _GROUPS.values() if i in members), None)
        if dataset == "ucf":  # K = max(1, ⌊0.10·20⌋) = 2
            if i == 7:  # itself, then the first of the two segments at cosine 0.8
                pairs = [(1.0, y[7]), (0.8, y[1])]
            elif i == 9:  # itself, then the lowest index among all the segments at cosine 0
                pairs = [(1.0, y[9]), (0.0, y[0])]
            else:  # the first two segments of its group (ties go to the lower index, not to itself)
                pairs = [(1.0, y[group[0]]), (1.0, y[group[1]])]
        else:  # K = ⌊0.15·20⌋ = 3
            if i == 7:
                pairs = [(1.0, y[7]), (0.8, y[1]), (0.8, y[5])]
            elif i == 9:
                pairs = [(1.0, y[9]), (0.0, y[0]), (0.0, y[1])]
            elif group == _GROUPS[1]:  # only two segments share e1; the third is segment 7
                pairs = [(1.0, y[1]), (1.0, y[5]), (0.8, y[7])]
            else:
                pairs = [(1.0, y[m]) for m in group[:3]]
        expected.append(_softmax_mean(pairs))
    return expected


@pytest.mark.parametrize("dataset", ["ucf", "xd"])
def test_step2_neighbours_and_temperature_by_hand(dataset):
    expected = _expected_step2(dataset)
    options = _paper(dataset, skip_smoothing=True, skip_position_weighting=True)
    got = frame_scores(np.array(_Y), _hand_features(), 16, options)[::16]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0)
    ref = reference.frame_scores(_Y, _hand_features().tolist(), 320, dataset, skip_smoothing=True,
                                 skip_position_weighting=True)[::16]
    np.testing.assert_allclose(ref, expected, rtol=RTOL, atol=0)
    # Segment 9 (score 0) is alone in its direction: its other neighbours, at cosine 0, weigh e⁻¹⁰ as much.
    assert expected[9] == pytest.approx(1 / (math.exp(10) + 1) if dataset == "ucf" else 1 / (math.exp(10) + 2))


def test_small_videos_take_one_neighbour_itself():
    # h < 10 (UCF) or h < 7 (XD): K = 1, so the only neighbour is the segment itself: no change.
    rng = np.random.default_rng(0)
    for dataset, h in (("ucf", 9), ("xd", 6)):
        scores = rng.random(h)
        got = frame_scores(scores, rng.standard_normal((h, 4)), 16, _paper(dataset, skip_smoothing=True,
                                                                            skip_position_weighting=True))
        np.testing.assert_array_equal(got[::16], scores)


def _gauss(d: int, sigma: float) -> float:
    return math.exp(-d * d / (2 * sigma * sigma))


def test_ucf_smoothing_by_hand_renormalised_at_the_ends():
    # An impulse at segment 0 of 3: every tap of ω = 15 (±7) that falls outside the video is left out.
    g1, g2 = _gauss(1, 10), _gauss(2, 10)
    expected = [1 / (1 + g1 + g2), g1 / (g1 + 1 + g1), g2 / (g2 + g1 + 1)]
    options = _paper("ucf", skip_step2=True, skip_position_weighting=True)
    np.testing.assert_allclose(frame_scores(np.array([1.0, 0, 0]), None, 5, options)[::16], expected, rtol=RTOL)
    # 30 segments, impulse at 12: taps reach 7 segments each way and no further.
    impulse = np.zeros(30)
    impulse[12] = 1.0
    got = frame_scores(impulse, None, 16, options)[::16]
    full = sum(_gauss(d, 10) for d in range(-7, 8))
    assert got[12] == pytest.approx(1 / full, rel=RTOL)  # all 15 taps inside
    assert got[19] == pytest.approx(_gauss(7, 10) / full, rel=RTOL)
    assert got[20] == 0.0 and got[4] == 0.0
    assert got[5] == pytest.approx(_gauss(7, 10) / sum(_gauss(d, 10) for d in range(-5, 8)), rel=RTOL)  # taps -5 … 7
    assert got[25] == 0.0
    # A constant stays constant at the ends too (zero padding would pull the ends down).
    np.testing.assert_allclose(frame_scores(np.full(12, 0.3), None, 16, options), 0.3, rtol=RTOL)


def test_xd_smoothing_by_hand():
    # ω = 30 → taps -15 … 15, σ = 30.
    impulse = np.zeros(40)
    impulse[20] = 1.0
    options = _paper("xd", skip_step2=True, skip_position_weighting=True)
    got = frame_scores(impulse, None, 16, options)[::16]
    full = sum(_gauss(d, 30) for d in range(-15, 16))
    assert got[20] == pytest.approx(1 / full, rel=RTOL)
    # Segment 5 sees taps -5 … 15 (0 is the first segment).
    assert got[5] == pytest.approx(_gauss(15, 30) / sum(_gauss(d, 30) for d in range(-5, 16)), rel=RTOL)
    assert got[4] == 0.0 and got[36] == 0.0
    # Segment 35 sees taps -15 … +4 (39 is the last segment).
    assert got[35] == pytest.approx(_gauss(15, 30) / sum(_gauss(d, 30) for d in range(-15, 5)), rel=RTOL)
    ref = reference.frame_scores(impulse.tolist(), None, 640, "xd", skip_step2=True, skip_position_weighting=True)
    np.testing.assert_allclose(got, ref[::16], rtol=RTOL)


def test_position_weights_by_hand():
    options = _paper("ucf", skip_step2=True, skip_smoothing=True)
    # 37 frames (3 segments, the last with 5): c = 18, σ = 18.
    got = frame_scores(np.ones(3), None, 5, options)
    np.testing.assert_allclose(got, [math.exp(-((t - 18) ** 2) / (2 * 18**2)) for t in range(37)], rtol=RTOL)
    # 20 frames: c = 9.5 (between frames 9 and 10), σ = 10; symmetric.
    got = frame_scores(np.ones(2), None, 4, options)
    np.testing.assert_allclose(got, [math.exp(-((t - 9.5) ** 2) / 200) for t in range(20)], rtol=RTOL)
    assert got[9] == got[10] and got[0] == got[19]


def test_all_steps_on_two_segments_by_hand():
    # Two orthogonal segments, 20 frames: K = 1 keeps the scores; taps ±1 only; then position weights.
    g1 = _gauss(1, 10)
    z = [1 / (1 + g1), g1 / (1 + g1)]
    values = [z[0]] * 16 + [z[1]] * 4
    expected = [v * math.exp(-((t - 9.5) ** 2) / 200) for t, v in enumerate(values)]
    got = frame_scores(np.array([1.0, 0.0]), np.eye(2), 4, _paper("ucf"))
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    np.testing.assert_allclose(reference.frame_scores([1, 0], np.eye(2).tolist(), 20, "ucf"), expected, rtol=RTOL)


def test_reference_metrics_by_hand():
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    # Pairs (positive, negative) with the positive higher: 0.35>0.1; 0.8>all 3; 0.4>0.1 and ties with 0.4, 0.4.
    assert reference.roc_auc(labels, scores) == pytest.approx((1 + 3 + 1 + 0.5 + 0.5) / 9, rel=1e-15)
    # Thresholds 0.8: (r 1/3, p 1); 0.4: (2/3, 2/4); 0.35: (1, 3/5); 0.1: (1, 3/6).
    area = (1 / 3) * (1 + 1) / 2 + (1 / 3) * (1 + 0.5) / 2 + (1 / 3) * (0.5 + 0.6) / 2
    assert reference.pr_auc(labels, scores) == pytest.approx(area, rel=1e-15)


# ------------------------------------------------------------------ synthetic videos through compute_auc.py

_ABLATIONS = [(), ("--skip-step2",), ("--skip-smoothing",), ("--skip-position-weighting",),
              ("--skip-step2", "--skip-smoothing", "--skip-position-weighting")]


def _write_videos(root: Path, dataset: str, seed: int) -> dict:
    """Videos of 1 … 40 segments with ties: repeated feature rows whose scores differ.

    Returns key → (length, intervals, score entries, features).
    """
    rng = np.random.default_rng(seed)
    (root / "scores").mkdir()
    (root / "features").mkdir()
    entries, videos = [], {}
    classes = ["Fighting", "Arson", "Normal"]
    for h in range(1, 41):
        length = 16 * (h - 1) + int(rng.integers(2 if h == 1 else 1, 17))
        video_class = classes[h % 3]
        intervals = []
        if video_class != "Normal":
            start = int(rng.integers(0, length - 1))
            intervals = [(start, int(rng.integers(start + 1, length + 1)))]
        flat = [v for pair in intervals for v in pair] or [-1, -1]
        if dataset == "ucf":
            key = f"{video_class}{h:03d}_x264"
            entries.append({"video": f"frames/{video_class}/{key}.mp4", "temporal_label": flat, "length": length})
        else:
            key = f"v{h:02d}__label_{'A' if video_class == 'Normal' else 'B1-0-0'}"
            entries.append({"video": key, "temporal_label": flat, "length": length,
                            "label": "0" if video_class == "Normal" else "1"})
        width = int(rng.integers(3, 13))
        features = rng.standard_normal((h, width)).astype(np.float32 if h % 2 else np.float64)
        copies = rng.integers(0, h, size=(h // 3 + 1, 2))  # exact repeats, wherever they fall
        for source, target in copies:
            features[target] = features[source]
        if h >= 20:  # a block of one repeated scene: ties cross the K boundary
            features[h // 2 : h // 2 + 6] = features[h // 2]
        binary = rng.integers(0, 2, size=h)
        soft = rng.random(h)
        segments = {}
        for i, centre in enumerate(range(0, length, 16)):
            prob = None if rng.random() < 0.1 else float(soft[i])  # null label_prob: the 0/1 answer stands in
            segments[str(centre)] = {"start": float(max(centre - 150, 0)), "end": float(min(centre + 150, length)),
                                     "score": int(binary[i]), "label_prob": prob}
        (root / "scores" / f"{key}.json").write_text(json.dumps(segments))
        np.save(root / "features" / f"{key}.npy", features)
        videos[key] = (length, intervals, list(segments.values()), features)
    (root / "annotations.json").write_text(json.dumps(entries))
    return videos


@pytest.fixture(scope="module", params=["ucf", "xd"])
def synthetic_set(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"paper-{request.param}")
    return request.param, root, _write_videos(root, request.param, seed=17 if request.param == "ucf" else 23)


@pytest.mark.parametrize("score_field", ["score", "label_prob"])
@pytest.mark.parametrize("ablation", _ABLATIONS, ids=lambda skips: "+".join(s[7:] for s in skips) or "full")
def test_compute_auc_paper_protocol_matches_the_reference(synthetic_set, tmp_path, ablation, score_field):
    dataset, root, videos = synthetic_set
    metric = "auc" if dataset == "ucf" else "ap"
    code = compute_auc.main([
        "--dataset", dataset, "--metric", metric, "--protocol", "paper", "--score-field", score_field,
        "--annotations", str(root / "annotations.json"), "--scores", str(root / "scores"),
        "--features", str(root / "features"), "--output", str(tmp_path / "out"), "--no-curves", *ablation,
    ])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    skips = {"skip_step2": "--skip-step2" in ablation, "skip_smoothing": "--skip-smoothing" in ablation,
             "skip_position_weighting": "--skip-position-weighting" in ablation}
    all_labels, all_scores, normal_scores, nulls = [], [], [], 0
    for key, (length, intervals, segments, features) in videos.items():
        if score_field == "score":
            scores = [s["score"] for s in segments]
        else:
            scores = [s["score"] if s["label_prob"] is None else s["label_prob"] for s in segments]
            nulls += sum(s["label_prob"] is None for s in segments)
        expected = reference.frame_scores(scores, features.tolist(), length, dataset, **skips)
        saved = np.load(tmp_path / "out" / "frame_scores" / f"{key}.npy")
        assert saved.dtype == np.float64 and saved.shape == (length,), key
        np.testing.assert_allclose(saved, expected, rtol=RTOL, atol=0, err_msg=key)
        # The metrics are checked on the saved frame scores: the frame scores above carry the protocol.
        all_scores.extend(saved.tolist())
        all_labels.extend(reference.frame_labels(length, intervals))
        if not intervals:
            normal_scores.extend(saved.tolist())
    assert metrics["num_videos"] == 40 and metrics["num_frames"] == len(all_labels)
    assert metrics["score_fallbacks"] == nulls and (nulls > 0) == (score_field == "label_prob")
    expected_auc, expected_ap = reference.roc_auc(all_labels, all_scores), reference.pr_auc(all_labels, all_scores)
    assert metrics["auc"] == pytest.approx(expected_auc, rel=RTOL)
    assert metrics["ap"] == pytest.approx(expected_ap, rel=RTOL)
    assert metrics["value"] == (metrics["auc"] if metric == "auc" else metrics["ap"])
    assert metrics["false_alarm_rate_normal"] == sum(s >= 0.5 for s in normal_scores) / len(normal_scores)
    assert (metrics["protocol"], metrics["score_field"], metrics["options"]["skip_step2"]) == (
        "paper", score_field, skips["skip_step2"])
