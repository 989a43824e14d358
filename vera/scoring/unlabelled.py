"""Steps 2–3 for videos that may have no labels (``detect.py``): frame scores and stages, no metric.

The same checks and arithmetic as ``compute_auc.py`` (``read_inputs``,
``score_input``), and the same files (``frame_scores/<key>.npy``,
``stages.npz``), so that a report reads either folder alike. Without labels
there is nothing to measure: ``summary.json`` gives each video's maximum and
mean frame score instead.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from vera.data.annotations import TestVideo
from vera.errors import VeraError
from vera.io import save_npy_atomic, write_json_atomic
from vera.runs import RunFolder
from vera.scoring.evaluate import FRAME_SCORES_DIR, VideoResult, check_window, read_inputs, score_input
from vera.scoring.stages import STAGES_FILE, write_stages
from vera.scoring.steps import ScoringOptions

KIND = "frame-scores"
SUMMARY_FILE = "summary.json"


def score_videos(videos: list[TestVideo], scores_dir: Path, features_dir: Path | None,
                 options: ScoringOptions) -> list[VideoResult]:
    """Every video's frame scores and stages (each needs its Step 1 file, and features unless Step 2 is off)."""
    inputs, _ = read_inputs(videos, scores_dir, features_dir, options)
    results = [score_input(item, options) for item in inputs]
    if not results:
        raise VeraError("no video to score")
    check_window(options, max(video.stages["answers"].size for video in results))
    return results


def frame_scores_folder(output_dir: Path, options: ScoringOptions, *, annotations: Path, scores_dir: Path,
                        features_dir: Path | None, overwrite: bool = False) -> RunFolder:
    """The output folder; its identity is the options and the inputs (absolute paths)."""
    identity = {**asdict(options), "annotations": str(Path(annotations).resolve()),
                "scores": str(Path(scores_dir).resolve()),
                "features": str(Path(features_dir).resolve()) if options.retrieval else None}

    def outputs(folder: Path) -> list[Path]:
        return [folder / FRAME_SCORES_DIR, folder / STAGES_FILE, folder / SUMMARY_FILE]

    return RunFolder(output_dir, KIND, identity, overwrite=overwrite, outputs=outputs)


def write_frame_scores(results: list[VideoResult], options: ScoringOptions, folder: RunFolder) -> None:
    """Replace the folder's outputs: ``frame_scores/<key>.npy`` (float64), ``stages.npz``, ``summary.json``."""

    def write(staging: Path) -> None:
        for video in results:
            save_npy_atomic(staging / FRAME_SCORES_DIR / f"{video.key}.npy", video.scores.astype(np.float64))
        write_stages(results, staging)
        write_json_atomic(staging / SUMMARY_FILE, {
            "options": asdict(options.resolved()),
            "videos": {video.key: {"frames": int(video.scores.size), "max": float(video.scores.max()),
                                   "mean": float(video.scores.mean())} for video in results},
        })

    folder.replace_outputs(write, last=SUMMARY_FILE)
