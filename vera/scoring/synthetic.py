"""Synthetic Step 1 scores and Step 2 features for smoke runs, tests and benchmarks.

Scores follow the annotation (anomalous frames answer 1 more often) and
features come from a few scenes per video, some segments repeating exactly,
so that the scoring sees the exact ties that frozen stretches of real videos produce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vera.data.annotations import TestVideo
from vera.io import save_npy_atomic, write_json_atomic
from vera.scoring.steps import ground_truth
from vera.data.segments import half_window, segment_centres


def segment_file(length: int, scores: np.ndarray) -> dict:
    """A score file's content: centre → window and score, in the Step 1 format."""
    half = half_window()
    return {
        str(int(c)): {"start": float(max(c - half, 0)), "end": float(min(c + half, length)), "score": int(s)}
        for c, s in zip(segment_centres(length), scores)
    }


def synthetic_video(video: TestVideo, rng: np.random.Generator, width: int) -> tuple[dict, np.ndarray]:
    """One video's score file content and feature matrix."""
    centres = segment_centres(video.length)
    anomalous = ground_truth(video.length, video.intervals)[centres] > 0
    scores = (rng.random(len(centres)) < np.where(anomalous, 0.7, 0.15)).astype(int)
    num_scenes = int(rng.integers(1, 6))
    scenes = rng.standard_normal((num_scenes, width))
    scene = np.minimum((np.arange(len(centres)) * num_scenes) // max(len(centres), 1), num_scenes - 1)
    features = scenes[scene] + 0.3 * rng.standard_normal((len(centres), width))
    # Frozen stretches: a segment that repeats the previous one's frames exactly
    # gets the same features and, from a deterministic VLM, the same answer.
    static = rng.random(len(centres)) < 0.1
    for row in np.flatnonzero(static[1:]) + 1:
        features[row] = features[row - 1]
        scores[row] = scores[row - 1]
    return segment_file(video.length, scores), features.astype(np.float32)


def write_synthetic_inputs(
    videos: list[TestVideo], scores_dir: Path, features_dir: Path, width: int = 1024, seed: int = 0
) -> None:
    """Write ``<key>.json`` scores and ``<key>.npy`` features for every video."""
    rng = np.random.default_rng(seed)
    for video in videos:
        content, features = synthetic_video(video, rng, width)
        write_json_atomic(Path(scores_dir) / f"{video.key}.json", content, indent=None)
        save_npy_atomic(Path(features_dir) / f"{video.key}.npy", features)
