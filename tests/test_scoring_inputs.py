"""Inputs that would give a wrong number without a word: through Inference/compute_auc.py, one line and exit 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.scripts import ROOT
from fixtures.scoring import small_scoring_set


def _small_set(tmp_path: Path) -> Path:
    """Four UCF-style videos of 3 to 13 segments with synthetic answers and 8-wide float32 features."""
    return small_scoring_set(tmp_path)[0]


def _compute_auc(tmp_path: Path, annotation: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "Inference" / "compute_auc.py"), "--dataset", "ucf", "--annotations",
         str(annotation), "--scores", str(tmp_path / "scores"), "--features", str(tmp_path / "features"),
         "--output", str(tmp_path / "out"), "--no-curves", *extra],
        capture_output=True, text=True,
    )


@pytest.mark.parametrize("value", [1e37, 1e-30], ids=["overflow", "underflow"])
def test_features_whose_norm_is_not_finite_name_the_file_and_row(tmp_path, value):
    annotation = _small_set(tmp_path)
    path = tmp_path / "features" / "Arson002_x264.npy"
    features = np.load(path)
    features[4] = value  # finite float32 values whose squares overflow to inf, or underflow to 0
    np.save(path, features)
    result = _compute_auc(tmp_path, annotation)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: video Arson002_x264: feature file {path} row 4 has norm ")
    assert "float32" in lines[0] and "too large or too small" in lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_released_window_beyond_every_video_is_refused(tmp_path):
    annotation = _small_set(tmp_path)  # the longest video has 13 segments
    result = _compute_auc(tmp_path, annotation, "--window", "100000")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --window 100000 is longer than every scored video (the longest has 13 segments): the released "
        "smoothing would score every frame about 0; give a window up to 13, or --protocol paper, whose kernel is "
        "renormalised over the video")
    assert not (tmp_path / "out" / "metrics.json").exists()
    # A window as long as the longest video is the released arithmetic, as for the default 15 on short videos.
    assert _compute_auc(tmp_path, annotation, "--window", "13").returncode == 0


def test_a_paper_window_beyond_every_video_averages_the_whole_video(tmp_path):
    annotation = _small_set(tmp_path)
    result = _compute_auc(tmp_path, annotation, "--protocol", "paper", "--window", "100000", "--sigma1", "3",
                          "--skip-step2", "--skip-position-weighting")
    assert result.returncode == 0, result.stderr
    for path in sorted((tmp_path / "scores").glob("*.json")):
        content = json.loads(path.read_text())
        answers = [content[centre]["score"] for centre in sorted(content, key=int)]
        # Every segment sees every other one: the Gaussian-weighted mean over the whole video.
        expected = []
        for i in range(len(answers)):
            weights = [math.exp(-((i - j) ** 2) / (2 * 3.0**2)) for j in range(len(answers))]
            expected.append(sum(w * y for w, y in zip(weights, answers)) / sum(weights))
        saved = np.load(tmp_path / "out" / "frame_scores" / f"{path.stem}.npy")
        np.testing.assert_allclose(saved[::16], expected, rtol=1e-12, atol=1e-15, err_msg=path.stem)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["hyperparameters"]["window"] == 100000 and 0 < metrics["auc"] < 1
