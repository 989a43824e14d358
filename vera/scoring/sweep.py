"""Many scoring settings over one test set in one pass: each video is read and compared once.

For every video, one ``VideoSteps`` serves every setting, so the similarity
matrix, the neighbours of each K and the Step 2 values of each (K, τ) are
computed once and reused; only the per-segment values of each setting are
kept (a few hundred KB per setting for UCF-Crime), and the frame scores and
the metric of a setting are made from them at the end. The numbers are those
of separate ``compute_auc.py`` runs bit for bit: the same methods compute the
same arrays, and the same ``Ranking`` makes the metric.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vera.data.annotations import TestVideo
from vera.errors import VeraError
from vera.scoring.evaluate import read_inputs, select_videos
from vera.scoring.metrics import Ranking
from vera.scoring.steps import ScoringOptions
from vera.scoring.video import VideoSteps, frames_from_segments


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


def _neighbour_order(options: ScoringOptions) -> tuple:
    """Settings that share neighbours run one after another (``VideoSteps`` keeps one set of neighbours), the
    largest K first (its partition of the rows serves every smaller K)."""
    random = -1 if options.random_k is None else options.random_k
    return options.protocol, random, -(options.k_ratio if options.retrieval else 0.0)


def metric_value(labels: np.ndarray, scores: np.ndarray, metric: str) -> float | None:
    """The run's main metric, as ``vera.scoring.evaluate.compute_metrics`` computes it."""
    ranking = Ranking.of(labels, scores)
    return ranking.roc_auc() if metric == "auc" else ranking.pr_auc()


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
        steps = VideoSteps(item.segments.scores, item.features, item.segments.last_segment_frames, key)
        needed = sorted(dict.fromkeys(part for part, keys in zip(parts, chosen) if key in keys), key=_neighbour_order)
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
