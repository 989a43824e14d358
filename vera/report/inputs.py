"""What a report shows, read and checked: Step 1's answers, the frame scores and curves, the ground truth.

The videos are those of the frame scores (``--frame-scores``: a
``compute_auc.py`` or ``detect.py`` scoring folder) or, without them, every
Step 1 file; each must agree with the others it meets (segment counts, the
annotated length, the answers the run scored), or the report stops naming
the video and the file. Annotations other than those a ``compute_auc.py``
run scored with (its run.json names them) are refused: the page would put a
second, different AUC beside the run's. Without frame scores a video's "frame
scores" are its Step 1 answers, each over its segment's frames (no Steps 2-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vera.data.annotations import TestVideo, infer_dataset, load_test_annotations
from vera.data.segments import window_frame_indices
from vera.errors import VeraError
from vera.io import read_json
from vera.runs import RUN_FILE
from vera.scoring.evaluate import FRAME_SCORES_DIR, KIND as EVALUATION_KIND, METRICS_FILE
from vera.scoring.metrics import roc_auc
from vera.scoring.score_files import read_segment_scores
from vera.scoring.stages import STAGES_FILE, read_stages
from vera.scoring.steps import frames_per_segment, ground_truth
from vera.scoring.unlabelled import SUMMARY_FILE

FLAG_THRESHOLD = 0.5  # a Step 1 answer at or above it says "anomalous" (the answers are 0/1)
DEFAULT_FRAMES_SHOWN = 8  # Step 1's frames per segment, where its run.json does not say


@dataclass(frozen=True)
class Segment:
    """One segment: its window, the frames the VLM saw, its answer and explanation, its final score."""

    index: int
    centre: int
    start: int
    end: int
    frames: tuple[int, ...]
    answer: float
    response: str | None
    status: str | None
    score: float  # mean final frame score over the frames it stands for (NaN where none was scored)

    @property
    def flagged(self) -> bool:
        return self.answer >= FLAG_THRESHOLD


@dataclass
class VideoReport:
    """Everything one video's page shows."""

    key: str
    length: int
    segments: list[Segment]
    frame_scores: np.ndarray
    curves: dict[str, np.ndarray]  # per segment: answers, and context / smoothed where a run gave them
    truth: TestVideo | None = None  # the annotation, where given
    labels: np.ndarray | None = None  # frame labels, as many as frame_scores

    @property
    def flagged(self) -> list[Segment]:
        return [segment for segment in self.segments if segment.flagged]

    def top(self, k: int) -> list[Segment]:
        """The ``k`` segments of highest final score (earlier first among equals)."""
        scored = [segment for segment in self.segments if not np.isnan(segment.score)]
        return sorted(scored, key=lambda segment: (-segment.score, segment.index))[:k]

    def explained(self, k: int, limit: int) -> tuple[list[Segment], int]:
        """The segments explained with their frames, in time order, and how many flagged ones the limit left out."""
        wanted = {segment.index for segment in self.flagged} | {segment.index for segment in self.top(k)}
        ranked = sorted((self.segments[index] for index in wanted),
                        key=lambda segment: (-np.nan_to_num(segment.score, nan=-1.0), segment.index))
        shown = sorted(ranked[:limit], key=lambda segment: segment.index)
        return shown, sum(1 for segment in ranked[limit:] if segment.flagged)

    @property
    def auc(self) -> float | None:
        """Frame-level ROC AUC of this video alone, where its frames hold both classes."""
        return None if self.labels is None else roc_auc(self.labels, self.frame_scores)


@dataclass
class ReportInputs:
    videos: list[VideoReport]
    questions: list[str] = field(default_factory=list)
    step1: dict = field(default_factory=dict)  # Step 1's run.json identity, where present
    scoring: dict | None = None  # the scoring run's options, where frame scores were given
    metrics: dict | None = None  # compute_auc.py's metrics.json, where present
    steps_run: bool = False  # whether the frame scores went through Steps 2-3
    left_out: list[str] = field(default_factory=list)  # detect.py --skip-bad-videos: why each was left out

    def overall_auc(self) -> float | None:
        labelled = [video for video in self.videos if video.labels is not None]
        if not labelled:
            return None
        return roc_auc(np.concatenate([video.labels for video in labelled]),
                       np.concatenate([video.frame_scores for video in labelled]))


def _score_folder(path: Path) -> tuple[Path, Path]:
    """(folder of ``<key>.npy``, the run folder holding stages.npz and the run's records)."""
    if (path / FRAME_SCORES_DIR).is_dir():
        return path / FRAME_SCORES_DIR, path
    if any(path.glob("*.npy")):
        return path, path.parent
    raise VeraError(f"--frame-scores {path} holds neither {FRAME_SCORES_DIR}/ nor <key>.npy files "
                    "(give a compute_auc.py or detect.py scoring output)")


def _run_options(run: Path) -> tuple[dict | None, dict | None]:
    """(the scoring options, compute_auc.py's metrics) recorded in a scoring folder, where present."""
    if (run / METRICS_FILE).is_file():
        metrics = read_json(run / METRICS_FILE, "metrics file")
        return (metrics.get("options") if isinstance(metrics, dict) else None), metrics
    if (run / SUMMARY_FILE).is_file():
        summary = read_json(run / SUMMARY_FILE, "scoring summary")
        return (summary.get("options") if isinstance(summary, dict) else None), None
    return None, None


def _evaluation_identity(run: Path) -> dict:
    """The identity in a ``compute_auc.py`` folder's run.json; {} for any other folder."""
    path = run / RUN_FILE
    if not path.is_file():
        return {}
    record = read_json(path, "scoring run record")
    identity = record.get("identity") if isinstance(record, dict) else None
    return identity if isinstance(identity, dict) and identity.get("kind") == EVALUATION_KIND else {}


def _same_file(given: Path, recorded: Path) -> bool:
    """The same file, or a byte-identical copy of it."""
    if given.resolve() == recorded.resolve():
        return True
    try:
        return recorded.is_file() and recorded.read_bytes() == given.read_bytes()
    except OSError:
        return False


def _check_annotations(annotations: Path, run: Path, identity: dict) -> None:
    """Labels other than those the run scored with would put a second, different AUC beside the run's."""
    recorded = identity.get("annotations")
    if recorded is not None and not _same_file(annotations, Path(recorded)):
        raise VeraError(f"--annotations {annotations} is not the annotation file the frame scores in {run} were "
                        f"computed with ({recorded}, per {run / RUN_FILE}); give that file or rerun compute_auc.py")


def step1_files(scores_dir: Path) -> list[str]:
    """The keys of the Step 1 files in ``scores_dir`` (its run.json and summaries are not videos)."""
    return sorted(path.stem for path in scores_dir.glob("*.json")
                  if path.name != RUN_FILE and not path.name.startswith("summary"))


def _segments(key: str, path: Path, frame_scores: np.ndarray, counts: np.ndarray, frames_shown: int) -> list[Segment]:
    content = read_json(path, "score file")
    edges = np.r_[0, np.cumsum(counts)]
    segments = []
    for index, centre in enumerate(sorted(int(centre) for centre in content)):
        entry = content[str(centre)]
        if not isinstance(entry.get("start"), (int, float)) or isinstance(entry.get("start"), bool):
            raise VeraError(f"video {key}: score file {path}: segment {centre} has no numeric 'start'")
        start, end = int(entry["start"]), int(entry["end"])
        if not 0 <= start <= centre < end:
            raise VeraError(f"video {key}: score file {path}: segment {centre} has the window [{start}, {end}), "
                            "which does not hold its centre")
        scored = frame_scores[edges[index]:min(edges[index + 1], frame_scores.size)]
        response = entry.get("response")
        segments.append(Segment(
            index, centre, start, end, tuple(window_frame_indices(start, end, frames_shown).tolist()),
            float(entry["score"]), response if isinstance(response, str) else None, entry.get("parse_status"),
            float(scored.mean()) if scored.size else float("nan")))
    return segments


def _video(key: str, scores_dir: Path, truth: TestVideo | None, frames_dir: Path | None, run: Path | None,
           score_field: str, frames_shown: int) -> VideoReport:
    path = scores_dir / f"{key}.json"
    if not path.is_file():
        raise VeraError(f"video {key}: no Step 1 file {path}")
    scores = read_segment_scores(path, binary=False)
    counts = frames_per_segment(scores.num_segments, scores.last_segment_frames)
    length = scores.num_frames
    if truth is not None and truth.length is not None and truth.length != length:
        raise VeraError(f"video {key}: score file {path} covers {length} frames, but the annotation gives "
                        f"{truth.length}")
    curves = {"answers": scores.scores}
    if frames_dir is None:
        frame_scores = np.repeat(scores.scores, counts)
    else:
        frame_file = frames_dir / f"{key}.npy"
        try:
            frame_scores = np.load(frame_file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            raise VeraError(f"video {key}: cannot read frame scores {frame_file} ({error})") from None
        if frame_scores.ndim != 1 or not 0 < frame_scores.size <= length or not np.all(np.isfinite(frame_scores)):
            raise VeraError(f"video {key}: frame scores {frame_file} must be up to {length} finite numbers "
                            f"(the frames of {path}), got shape {frame_scores.shape}")
        if (run / STAGES_FILE).is_file():
            stages = read_stages(run, key)
            answers = read_segment_scores(path, binary=False, field=score_field).scores
            if stages["answers"].shape != answers.shape or not np.array_equal(stages["answers"], answers):
                raise VeraError(f"video {key}: {run / STAGES_FILE} holds other Step 1 answers than {path} "
                                "(the run scored another Step 1 folder)")
            curves = {name: stages[name] for name in ("answers", "context", "smoothed")}
    labels = None
    if truth is not None:
        labels = ground_truth(length, truth.intervals)[: frame_scores.size]
    return VideoReport(key, length, _segments(key, path, frame_scores, counts, frames_shown), frame_scores,
                       curves, truth, labels)


def load_report_inputs(scores_dir: Path, frame_scores: Path | None = None, annotations: Path | None = None,
                       dataset: str | None = None) -> ReportInputs:
    """Read and check everything the report shows; see the module docstring."""
    scores_dir = Path(scores_dir)
    frames_dir = run = None
    scoring = metrics = None
    if frame_scores is not None:
        frames_dir, run = _score_folder(Path(frame_scores))
        scoring, metrics = _run_options(run)
        keys = sorted(path.stem for path in frames_dir.glob("*.npy"))
    else:
        keys = step1_files(scores_dir)
    if not keys:
        raise VeraError(f"no video to report: {frames_dir or scores_dir} holds no "
                        f"{'<key>.npy' if frames_dir else '<key>.json'} file")
    truths: dict[str, TestVideo] = {}
    identity: dict = {}
    if annotations is not None:
        identity = _evaluation_identity(run) if run is not None else {}
        listed = load_test_annotations(annotations, dataset or identity.get("dataset") or infer_dataset(annotations),
                                       merge_xd_duplicates=bool(identity.get("merge_xd_duplicates")))
        truths = {video.key: video for video in listed}
        unknown = [key for key in keys if key not in truths]
        if unknown:
            raise VeraError(f"{len(unknown)} videos are not in {annotations}: {', '.join(unknown[:5])}")
    step1 = {}
    if (scores_dir / RUN_FILE).is_file():
        record = read_json(scores_dir / RUN_FILE, "Step 1 run record")
        step1 = record.get("identity", {}) if isinstance(record, dict) else {}
    frames_shown = int(step1.get("num_frames") or DEFAULT_FRAMES_SHOWN)
    score_field = (scoring or {}).get("score_field") or "score"
    videos = [_video(key, scores_dir, truths.get(key), frames_dir, run, score_field, frames_shown) for key in keys]
    if annotations is not None and identity:  # after the per-video checks, which name the video that disagrees
        _check_annotations(Path(annotations), run, identity)
    return ReportInputs(videos, list(step1.get("questions") or []), step1, scoring, metrics,
                        steps_run=frames_dir is not None)

