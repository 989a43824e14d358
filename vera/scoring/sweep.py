"""Many scoring settings over one test set in one pass: each video is read and compared once.

For every video, one ``VideoSteps`` serves every setting: its similarity
matrix and one full argsort of each row are computed once, every K is a
slice of that order, and Step 2's values of each (K, τ) are reused by the
settings that differ in Step 3 only. Only the per-segment values of each
setting are kept (a few hundred KB per setting for UCF-Crime); the frame
scores and the metric of a setting are made from them at the end. The
numbers are those of separate ``compute_auc.py`` runs bit for bit: the same
neighbours, the same arithmetic, the same metric function.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vera.data.annotations import TestVideo
from vera.errors import VeraError
from vera.scoring.evaluate import read_inputs, select_videos
from vera.scoring.metrics import pr_auc, roc_auc
from vera.scoring.steps import ScoringOptions, VideoSteps, frames_from_segments


@dataclass
class _Kept:
    """What the metric of any setting needs of one video, once its features are gone."""

    key: str
    last_segment_frames: int
    labels: np.ndarray
    values: dict[ScoringOptions, np.ndarray]  # per-segment values by setting (classes aside)


def _scoring_part(options: ScoringOptions) -> ScoringOptions:
    """The options that decide a video's scores, written out (the class selection only decides which videos count)."""
    return replace(options.resolved(), classes=None, with_normal=False)


def metric_value(labels: np.ndarray, scores: np.ndarray, metric: str) -> float | None:
    """The run's main metric, as ``vera.scoring.evaluate.compute_metrics`` computes it."""
    return roc_auc(labels, scores) if metric == "auc" else pr_auc(labels, scores)


def sweep(
    videos: list[TestVideo],
    scores_dir: Path,
    features_dir: Path | None,
    settings: list[ScoringOptions],
    gt_frames_path: Path | None = None,
    allow_missing: bool = False,
) -> list[float | None]:
    """The main metric of each setting (None where the evaluated frames hold one class only).

    Every setting must share dataset, metric, protocol and score field (they
    decide how the files are read and checked).
    """
    if not settings:
        return []
    first = settings[0]
    shared = {(s.dataset, s.metric, s.protocol, s.score_field) for s in settings}
    if len(shared) != 1:
        raise VeraError("one sweep reads one dataset, metric, protocol and score field")
    chosen = [frozenset(video.key for video in select_videos(videos, s)) for s in settings]
    parts = [_scoring_part(s) for s in settings]
    reading = ScoringOptions(first.dataset, first.metric, first.protocol, first.score_field,
                             skip_step2=not any(part.retrieval for part in parts))
    inputs, _ = read_inputs(videos, scores_dir, features_dir, reading, gt_frames_path, allow_missing)
    kept: list[_Kept] = []
    for item in inputs:
        key = item.video.key
        steps = VideoSteps(item.segments.scores, item.features, item.segments.last_segment_frames, key, keep_order=True)
        needed = dict.fromkeys(part for part, keys in zip(parts, chosen) if key in keys)
        kept.append(_Kept(key, item.segments.last_segment_frames, item.labels,
                          {part: steps.stages(part)["values"] for part in needed}))
    results: dict[tuple, float | None] = {}  # a setting given twice (e.g. every table's default) is measured once
    for options, part, keys in zip(settings, parts, chosen):
        if (part, keys) in results:
            continue
        videos_in = [video for video in kept if video.key in keys]
        if not videos_in:
            raise VeraError("no video of this setting could be scored")
        scores = [frames_from_segments(video.values[part], video.last_segment_frames, part)[: video.labels.size]
                  for video in videos_in]
        results[part, keys] = metric_value(np.concatenate([video.labels for video in videos_in]),
                                           np.concatenate(scores), options.metric)
    return [results[part, keys] for part, keys in zip(parts, chosen)]
