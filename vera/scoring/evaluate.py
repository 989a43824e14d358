"""The evaluation of ``Inference/compute_auc.py``: files in, frame scores and metrics out.

The output folder is a ``vera.runs.RunFolder`` whose identity is the scoring
options and the input files. Each run recomputes everything and replaces all
outputs of the previous one (``metrics.json`` last), so no frame score of a
video the previous run had and this one has not survives beside new metrics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vera.data.annotations import NORMAL_CLASS, TestVideo, check_intervals
from vera.errors import VeraError
from vera.io import read_json, save_npy_atomic, write_json_atomic
from vera.runs import RunFolder
from vera.figures import save_curves
from vera.scoring.metrics import FALSE_ALARM_THRESHOLD, SortedFrames, false_alarm_rate
from vera.scoring.score_files import SegmentScores, read_segment_scores
from vera.scoring.stages import STAGES_FILE, write_stages
from vera.scoring.steps import ScoringOptions, VideoSteps, frames_from_segments, ground_truth, released_ap_trim
from vera.data.segments import num_segments

_MISSING_SHOWN = 20
KIND = "evaluation"
METRICS_FILE = "metrics.json"
FRAME_SCORES_DIR = "frame_scores"
CURVE_FILES = ("roc.png", "pr.png")


@dataclass
class VideoResult:
    """One video's frame scores and frame labels, exactly as they entered the metric."""

    key: str
    video_class: str
    scores: np.ndarray
    labels: np.ndarray
    stages: dict[str, np.ndarray] | None = None  # per segment: answers, context, smoothed, values


@dataclass
class VideoInput:
    """One video's checked inputs: segment scores, features (None without Step 2) and frame labels."""

    video: TestVideo
    segments: SegmentScores
    features: np.ndarray | None
    labels: np.ndarray


@dataclass
class Evaluation:
    options: ScoringOptions
    videos: list[VideoResult]
    skipped: list[str] = field(default_factory=list)
    score_fallbacks: int = 0  # segments without a soft score, scored by their 0/1 answer
    metrics: dict = field(default_factory=dict)


def _missing_files(videos: list[TestVideo], scores_dir: Path, features_dir: Path | None) -> dict[str, list[Path]]:
    missing: dict[str, list[Path]] = {}
    for video in videos:
        paths = [scores_dir / f"{video.key}.json"]
        if features_dir is not None:
            paths.append(features_dir / f"{video.key}.npy")
        absent = [path for path in paths if not path.is_file()]
        if absent:
            missing[video.key] = absent
    return missing


def load_features(path: Path, key: str, expected_rows: int) -> np.ndarray:
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise VeraError(f"video {key}: cannot read feature file {path} ({error})") from None
    if features.ndim != 2 or features.shape[0] != expected_rows:
        raise VeraError(
            f"video {key}: feature file {path} has shape {features.shape}; "
            f"expected one row per segment ({expected_rows} rows)"
        )
    if not np.issubdtype(features.dtype, np.floating) or not np.all(np.isfinite(features)):
        raise VeraError(f"video {key}: feature file {path} must hold finite floating-point numbers")
    zero_rows = np.flatnonzero(~features.any(axis=1))
    if zero_rows.size:
        raise VeraError(f"video {key}: feature file {path} row {zero_rows[0]} is all zeros (no direction to compare)")
    # Step 2 divides each row by its norm in the stored dtype: a norm that overflows (values near 1e38 in
    # float32) or underflows to 0 would make every similarity 0 or NaN, and Step 2 silently uniform.
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(features, axis=1)
    bad_rows = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad_rows.size:
        row = bad_rows[0]
        raise VeraError(f"video {key}: feature file {path} row {row} has norm {norms[row]} in {features.dtype}: "
                        "its values are too large or too small to compare (cosine similarities would not be finite)")
    return features


def check_window(options: ScoringOptions, longest: int) -> None:
    """Refuse a ``--window`` ω longer than every scored video (``longest`` segments) in the released protocol.

    The released smoothing keeps the first h outputs of numpy's "same"
    convolution, which for ω > h lie on the kernel's left tail: far beyond the
    video, every score becomes 0 and the AUC 50. The protocol's own ω (15)
    keeps the released behaviour on short videos; the paper protocol's kernel
    is renormalised over the video and takes any ω.
    """
    window = options.window
    if options.released and not options.skip_smoothing and window is not None and window > longest:
        raise VeraError(f"--window {window} is longer than every scored video (the longest has {longest} segments): "
                        "the released smoothing would score every frame about 0; give a window up to "
                        f"{longest}, or --protocol paper, whose kernel is renormalised over the video")


def check_length(video: TestVideo, segments: SegmentScores, path: Path) -> int:
    length = video.length if video.length is not None else segments.num_frames
    if segments.num_segments != num_segments(length) or segments.num_frames != length:
        raise VeraError(
            f"video {video.key}: score file {path} has {segments.num_segments} segments covering "
            f"{segments.num_frames} frames, but the annotation length is {length} frames "
            f"({num_segments(length)} segments)"
        )
    if length < 2:
        raise VeraError(f"video {video.key}: {length} frame(s) is too short to score")
    if video.length is None:  # the official txt gives no length: check its intervals against the scores'
        check_intervals(video, length, f"video length from score file {path}")
    return length


def select_videos(videos: list[TestVideo], options: ScoringOptions) -> list[TestVideo]:
    """The videos of ``options.classes`` (plus the normal ones with ``with_normal``), or all."""
    if not options.classes:
        return videos
    known = sorted({video.video_class for video in videos} - {NORMAL_CLASS})
    if NORMAL_CLASS in options.classes:
        raise VeraError(f"--classes names anomaly classes; the {NORMAL_CLASS} videos come with --with-normal")
    unknown = [name for name in options.classes if name not in known]
    if unknown:
        raise VeraError(f"--classes: no test video of class {', '.join(unknown)} in the annotations "
                        f"(classes: {', '.join(known)})")
    return [video for video in videos if video.video_class in options.classes
            or (options.with_normal and video.video_class == NORMAL_CLASS)]


def _read_gt_frames(path: Path, videos: list[TestVideo]) -> dict[str, np.ndarray]:
    """The ``--gt-frames`` labels of ``videos``, checked before any scoring: a list of 0/1 numbers each."""
    content = read_json(path, "--gt-frames file")
    if not isinstance(content, dict):
        raise VeraError(f"--gt-frames file {path} must map video keys to frame label lists")
    labels = {}
    for video in videos:
        if video.key not in content:
            raise VeraError(f"--gt-frames file {path}: video {video.key} is missing")
        values = content[video.key]
        if not isinstance(values, list) or not values:
            raise VeraError(f"--gt-frames file {path}: video {video.key} must have a non-empty list of 0/1 labels")
        for frame, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
                raise VeraError(f"--gt-frames file {path}: video {video.key}: frame {frame} has label {value!r}; "
                                "labels must be 0 or 1")
        labels[video.key] = np.asarray(values, dtype=np.float64)
    return labels


def _labels(video: TestVideo, length: int, gt_frames: dict[str, np.ndarray] | None, gt_path: Path | None,
            num_scores: int, options: ScoringOptions) -> np.ndarray:
    if gt_frames is None:
        labels = ground_truth(length, video.intervals)
        return labels[: released_ap_trim(length)] if options.released_xd_ap else labels
    labels = gt_frames[video.key]
    if labels.size > num_scores or (options.released_xd_ap and labels.size != num_scores):
        raise VeraError(f"--gt-frames file {gt_path}: video {video.key} has {labels.size} frame labels, but "
                        f"scoring gives {num_scores} frames")
    return labels


def read_inputs(
    videos: list[TestVideo],
    scores_dir: Path,
    features_dir: Path | None,
    options: ScoringOptions,
    gt_frames_path: Path | None = None,
    allow_missing: bool = False,
) -> tuple[Iterator[VideoInput], list[str]]:
    """Check the folders and list missing files at once; then read and check each video when iterated.

    Returns the videos' inputs in annotation order (read one at a time, so
    that one video's features are in memory at a time) and the keys skipped
    for missing files.
    """
    scores_dir = Path(scores_dir)
    if not scores_dir.is_dir():
        raise VeraError(f"score folder not found: {scores_dir}")
    if features_dir is None and options.retrieval:
        raise VeraError("--features is required unless --skip-step2")
    features_dir = None if not options.retrieval else Path(features_dir)
    if options.score_field != "score" and options.protocol == "released":
        raise VeraError(f"--score-field {options.score_field} gives soft scores; the released protocol takes 0/1 "
                        "answers (use --protocol paper)")
    if features_dir is not None and not features_dir.is_dir():
        raise VeraError(f"feature folder not found: {features_dir}")
    missing = _missing_files(videos, scores_dir, features_dir)
    if missing and not allow_missing:
        lines = [f"  {key}: {', '.join(str(path) for path in paths)}" for key, paths in list(missing.items())[:_MISSING_SHOWN]]
        more = len(missing) - _MISSING_SHOWN
        raise VeraError(
            f"{len(missing)} of {len(videos)} videos lack files (--allow-missing skips them):\n"
            + "\n".join(lines)
            + (f"\n  … and {more} more" if more > 0 else "")
        )
    scored = [video for video in videos if video.key not in missing]
    gt_frames = _read_gt_frames(gt_frames_path, scored) if gt_frames_path else None

    def inputs() -> Iterator[VideoInput]:
        for video in videos:
            if video.key in missing:
                continue
            score_path = scores_dir / f"{video.key}.json"
            segments = read_segment_scores(score_path, binary=options.protocol == "released", field=options.score_field)
            length = check_length(video, segments, score_path)
            features = (
                None
                if features_dir is None
                else load_features(features_dir / f"{video.key}.npy", video.key, segments.num_segments)
            )
            num_scores = released_ap_trim(length) if options.released_xd_ap else length
            yield VideoInput(video, segments, features,
                             _labels(video, length, gt_frames, gt_frames_path, num_scores, options))

    return inputs(), list(missing)


def score_input(item: VideoInput, options: ScoringOptions) -> VideoResult:
    """Steps 2–3 of one video's checked inputs: its frame scores (as many as its labels) and its stages."""
    segments = item.segments
    stages = VideoSteps(segments.scores, item.features, segments.last_segment_frames, item.video.key).stages(options)
    scores = frames_from_segments(stages["values"], segments.last_segment_frames, options)
    return VideoResult(item.video.key, item.video.video_class, scores[: item.labels.size], item.labels, stages)


def evaluate(
    videos: list[TestVideo],
    scores_dir: Path,
    features_dir: Path | None,
    options: ScoringOptions,
    gt_frames_path: Path | None = None,
    allow_missing: bool = False,
) -> Evaluation:
    """Score every video in annotation order and compute the metrics."""
    videos = select_videos(videos, options)
    inputs, skipped = read_inputs(videos, scores_dir, features_dir, options, gt_frames_path, allow_missing)
    results, fallbacks = [], 0
    for item in inputs:
        fallbacks += item.segments.fallbacks
        results.append(score_input(item, options))
    if not results:
        raise VeraError("no video could be scored")
    check_window(options, max(video.stages["answers"].size for video in results))
    evaluation = Evaluation(options, results, skipped=skipped, score_fallbacks=fallbacks)
    evaluation.metrics = compute_metrics(evaluation)
    return evaluation


def compute_metrics(evaluation: Evaluation) -> dict:
    """The main metric and the extra views: per class, anomalous videos only, AP/AUC, false alarms."""
    options, videos = evaluation.options, evaluation.videos
    labels = np.concatenate([video.labels for video in videos])
    scores = np.concatenate([video.scores for video in videos])
    ranking = SortedFrames(labels, scores)  # one sort for every curve below
    overall_auc, overall_ap = ranking.roc_auc(), ranking.pr_auc()
    value = overall_auc if options.metric == "auc" else overall_ap
    if value is None:
        raise VeraError("the ground truth of the scored videos holds one class only; the metric is undefined")

    classes = sorted({video.video_class for video in videos} - {NORMAL_CLASS})
    number = {name: index for index, name in enumerate(classes)}  # normal: -1
    frame_class = np.repeat([number.get(video.video_class, -1) for video in videos],
                            [video.scores.size for video in videos])
    ranked_class = ranking.ranked(frame_class)  # the subsets' masks in ranked order: no re-sorting
    ranked_normal = ranked_class == -1
    auc_anomalous = ranking.roc_auc(~ranked_normal)
    auc_per_class = [ranking.roc_auc(ranked_normal | (ranked_class == index)) for index in range(len(classes))]
    normal_scores = scores[frame_class == -1]
    return {
        "dataset": options.dataset,
        "metric": options.metric,
        "protocol": options.protocol,
        "value": value,
        "num_videos": len(videos),
        "num_frames": int(labels.size),
        "num_skipped": len(evaluation.skipped),
        "skipped": evaluation.skipped,
        "score_field": options.score_field,
        "score_fallbacks": evaluation.score_fallbacks,
        "options": asdict(options),
        "hyperparameters": options.hyperparameters(),
        "auc": overall_auc,
        "ap": overall_ap,
        "auc_anomalous_videos": auc_anomalous,
        "auc_per_class": dict(zip(classes, auc_per_class)),
        "false_alarm_rate_normal": false_alarm_rate(normal_scores),
        "false_alarm_threshold": FALSE_ALARM_THRESHOLD,
    }


def evaluation_folder(output_dir: Path, options: ScoringOptions, *, annotations: Path, scores_dir: Path,
                      features_dir: Path | None, gt_frames: Path | None = None, merge_xd_duplicates: bool = False,
                      overwrite: bool = False) -> RunFolder:
    """The output folder of an evaluation; its identity is the options and the inputs (as absolute paths)."""
    def where(path: Path | None) -> str | None:
        return None if path is None else str(Path(path).resolve())

    identity = {**asdict(options), "annotations": where(annotations), "scores": where(scores_dir),
                "features": None if not options.retrieval else where(features_dir), "gt_frames": where(gt_frames),
                "merge_xd_duplicates": merge_xd_duplicates}

    def outputs(folder: Path) -> list[Path]:
        return [folder / METRICS_FILE, folder / FRAME_SCORES_DIR, *(folder / name for name in CURVE_FILES),
                folder / STAGES_FILE]

    return RunFolder(output_dir, KIND, identity, overwrite=overwrite, outputs=outputs)


def write_outputs(evaluation: Evaluation, folder: RunFolder, curves: bool = True) -> None:
    """Replace the folder's outputs: ``metrics.json``, ``frame_scores/<key>.npy`` (float64), ROC/PR curves,
    ``stages.npz`` (``vera.scoring.stages``)."""

    def write(staging: Path) -> None:
        for video in evaluation.videos:
            save_npy_atomic(staging / FRAME_SCORES_DIR / f"{video.key}.npy", video.scores.astype(np.float64))
        if curves:
            labels = np.concatenate([video.labels for video in evaluation.videos])
            scores = np.concatenate([video.scores for video in evaluation.videos])
            options = evaluation.options
            save_curves(labels, scores, staging, f"{options.dataset.upper()} ({options.protocol} protocol)")
        write_stages(evaluation.videos, staging)
        write_json_atomic(staging / METRICS_FILE, evaluation.metrics)

    folder.replace_outputs(write, last=METRICS_FILE)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def summary(evaluation: Evaluation) -> str:
    """A few readable lines for the terminal."""
    m = evaluation.metrics
    options = evaluation.options
    skipped = [name for name, on in (("step2", options.skip_step2), ("smoothing", options.skip_smoothing),
                                     ("position weighting", options.skip_position_weighting)) if on]
    changed = [f"{name} {getattr(options, name)}" for name in ("k_ratio", "random_k", "tau", "window", "sigma1",
                                                                "sigma2") if getattr(options, name) is not None]
    if options.classes:
        changed.append(f"classes {','.join(options.classes)}" + (" with normal videos" if options.with_normal else ""))
    lines = [
        f"{m['dataset'].upper()} {m['metric'].upper()} ({m['protocol']} protocol"
        + (f", without {', '.join(skipped)}" if skipped else "") + "".join(f", {c}" for c in changed)
        + f"): {_fmt(m['value'])}  [{m['value']!r}]",
        f"  videos {m['num_videos']}, frames {m['num_frames']}"
        + (f", skipped {m['num_skipped']} with missing files" if m["num_skipped"] else "")
        + (f", {m['score_fallbacks']} segments without {m['score_field']} scored 0/1" if m["score_fallbacks"] else ""),
        f"  AUC {_fmt(m['auc'])} | AP {_fmt(m['ap'])} | AUC anomalous videos {_fmt(m['auc_anomalous_videos'])}"
        f" | false alarms on normal videos (≥{m['false_alarm_threshold']}) {_fmt(m['false_alarm_rate_normal'])}%",
        "  AUC per class: " + ", ".join(f"{name} {_fmt(value)}" for name, value in m["auc_per_class"].items()),
    ]
    return "\n".join(lines)
