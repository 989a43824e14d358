"""Step 2's segment features: one ImageBind embedding per 16-frame segment, one ``.npy`` per video.

For every segment centre ``c = 0, 16, 32, … < length`` (``length`` from the
annotation) the views of LAVAD's recipe (``vera.features.imagebind``) are embedded
and averaged; ``<output>/<key>.npy`` holds the ``(num_segments, 1024)``
float32 rows. Views of many segments go through the model together.

The output folder is a ``vera.runs.RunFolder``: ``<output>/run.json`` records
the model and recipe, so a rerun with other settings cannot mix features of two
models in one folder (it is refused unless ``overwrite``). A long run is safe
to kill: finished videos are written atomically and skipped on the next run; a
video in progress saves its finished rows to ``<output>/.partial/<key>.npy``
now and then, and a rerun continues from there.

Several processes (``vera.distributed``: ``--devices N --num-nodes M``) split
the videos, rank ``r`` of ``W`` taking every ``W``-th from the ``r``-th: each
writes its own ``.npy`` files and ``summary.rank-R-of-W.json``; rank 0 alone
opens the folder before the others start, and merges the summaries into
``summary.json`` at the end. A video's features are computed in batches of
that video's own segments, so they do not depend on the split.

Frames come from ``vera.data.frames`` (JPEG folders or video files), decoded by
``input_workers`` processes ahead of the model (``vera.data.loading``; 0:
in this process, when the model needs them): the same reads either way, so
the same features. A video with other frames than its annotated length is an
error, as in every stage (``vera.data.annotations.check_frame_count``: frames
and annotation disagree, so the segment grid would be wrong). With
``allow_length_mismatch`` a longer video is read up to the annotated length;
with ``clamp_short`` a shorter one reads its last frame in place of the
missing ones. Either warns.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vera.data.annotations import TestVideo, check_frame_count
from vera.distributed import Ranks
from vera.errors import VeraError
from vera.data.frames import VideoFrames, open_frames
from vera.data.loading import FramesInfo, ReadJob, read_ahead
from vera.features.imagebind import CLIPS_PER_VIDEO, NUM_CROPS, VisionEncoder, crop_views, prepare_frames, segment_clips
from vera.features.reading import read_clip_frames
from vera.io import save_npy_atomic
from vera.progress import progress
from vera.runs import RunFolder
from vera.data.segments import num_segments, segment_centres
from vera.constants import HALF_WINDOW

RECIPE = "lavad-imagebind: 10 frames/window, FrameVideo 30 fps, 5 clips x 2 s, 2 frames/clip, short side 224, 3 crops"
KIND = "features"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class FeatureSettings:
    """What decides the numbers in a feature folder; a folder holds features of one setting only."""

    model: str  # e.g. "imagebind_huge.pth (4803176772 bytes)" or "random-tiny"
    dtype: str = "float32"
    half_window: int = HALF_WINDOW
    recipe: str = RECIPE


@dataclass
class FeatureReport:
    """Outcome of a run: keys written, keys already complete, and per-video errors."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    segments: int = 0  # segments computed in this run
    seconds: float = 0.0
    videos: int = 0  # videos this run was given
    processes: int = 1

    def as_dict(self) -> dict:
        return {"videos": self.videos, "written": self.written, "skipped": self.skipped, "failed": self.failed,
                "segments": self.segments, "seconds": round(self.seconds, 3), "processes": self.processes}


def feature_folder(output_dir: Path, settings: FeatureSettings, overwrite: bool = False) -> RunFolder:
    """The run folder of a feature extraction: ``<key>.npy`` files and the summary, under ``settings``."""
    def outputs(folder: Path) -> list[Path]:
        return [*folder.glob("*.npy"), folder / SUMMARY_FILE, *folder.glob("summary.rank-*.json")]

    return RunFolder(output_dir, KIND, asdict(settings), overwrite=overwrite, outputs=outputs)


@dataclass(frozen=True)
class _Batch:
    rows: np.ndarray  # (V,) output row of each clip
    clip_frames: np.ndarray  # (V, 2) absolute frame indices
    clip_weights: np.ndarray  # (V,) share of the segment's 5 clips
    end_row: int  # rows below this are complete after the batch


def _batches(length: int, first_row: int, half_window: int, batch_views: int) -> list[_Batch]:
    """Group the distinct clips of segments ``first_row…`` so that each batch holds about ``batch_views`` views."""
    centres = segment_centres(length)
    batches, rows, frames, weights = [], [], [], []
    for row in range(first_row, len(centres)):
        for clip in segment_clips(int(centres[row]), length, half_window):
            rows.append(row)
            frames.append(clip.frames)
            weights.append(clip.count / CLIPS_PER_VIDEO)
        if len(rows) * NUM_CROPS >= batch_views or row == len(centres) - 1:
            batches.append(_Batch(np.array(rows), np.array(frames, dtype=np.int64), np.array(weights), row + 1))
            rows, frames, weights = [], [], []
    return batches


def feature_job(key: str, length: int, *, first_row: int = 0, half_window: int = HALF_WINDOW, batch_size: int = 48,
                frames_dir: Path | None = None, videos_dir: Path | None = None) -> ReadJob:
    """One video's frame reads for ``vera.data.loading``: one item per batch of ``video_features`` given the
    same ``length``, ``half_window`` and ``batch_size`` and ``first_row`` rows of ``partial``."""
    items = [batch.clip_frames for batch in _batches(length, first_row, half_window, batch_size)]
    return ReadJob(key, functools.partial(open_frames, key, frames_dir=frames_dir, videos_dir=videos_dir),
                   functools.partial(read_clip_frames, length=length), items)


def video_features(
    encoder: VisionEncoder,
    frames: VideoFrames | FramesInfo,
    length: int,
    *,
    half_window: int = HALF_WINDOW,
    batch_size: int = 48,
    clamp_short: bool = False,
    allow_length_mismatch: bool = False,
    partial: np.ndarray | None = None,
    on_rows: Callable[[np.ndarray], None] | None = None,
    reads: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """The ``(num_segments(length), out_dim)`` float32 features of one video.

    ``batch_size`` counts views per forward pass. ``partial`` holds rows finished
    before (they are kept and not recomputed); ``on_rows`` is called with all
    finished rows after each batch, for saving progress. The frames are read
    from the open ``frames``, a batch at a time before its forward pass, or
    come as ``reads``: the values of ``feature_job`` for this video (same
    arguments) from ``vera.data.loading``, ``frames`` being its ``FramesInfo``.
    """
    parameter = next(encoder.parameters())
    device, dtype = parameter.device, parameter.dtype
    features = np.zeros((num_segments(length), encoder.config.out_dim), dtype=np.float32)
    first_row = 0 if partial is None else len(partial)
    if first_row:
        features[:first_row] = partial
    if length > frames.num_frames and not clamp_short:
        raise VeraError(
            f"video {frames.key}: the annotation gives {length} frames but {frames.source} has {frames.num_frames}"
            " (use --clamp-short to read its last frame in place of the missing ones)"
        )
    if length < frames.num_frames:
        check_frame_count(frames.key, length, frames.num_frames, frames.source, allow_length_mismatch)
    batches = _batches(length, first_row, half_window, batch_size)
    if reads is None:
        reads = (read_clip_frames(frames, batch.clip_frames, length) for batch in batches)
    for batch, (pixels, positions) in zip(batches, reads, strict=True):
        _embed_batch(encoder, batch, pixels, positions, features, device, dtype)
        if on_rows is not None:
            on_rows(features[:batch.end_row])
    return features


@torch.inference_mode()
def _embed_batch(encoder: VisionEncoder, batch: _Batch, pixels: np.ndarray, positions: np.ndarray,
                 features: np.ndarray, device: torch.device, dtype: torch.dtype) -> None:
    # The views are made here, on the model's device, not in the input workers: on a GPU resizing and cropping
    # are much faster than on the workers' CPU cores, and the workers then send uint8 frames, not float32 views.
    prepared = prepare_frames(torch.from_numpy(pixels).to(device))
    views, crop_counts = crop_views(prepared, torch.from_numpy(positions).to(device))
    embeddings = encoder(views.to(dtype)).float().cpu()  # (V * K, D), clip-major
    # Each distinct view stands for (clip count x crop count) of the segment's 15 views.
    weights = torch.from_numpy(batch.clip_weights[:, None] * crop_counts[None, :] / NUM_CROPS).float().flatten()
    rows, local = np.unique(batch.rows, return_inverse=True)
    sums = torch.zeros(len(rows), features.shape[1])
    sums.index_add_(0, torch.from_numpy(np.repeat(local, len(crop_counts))), embeddings * weights[:, None])
    features[rows] = sums.numpy()


def _is_finished(path: Path, key: str, rows: int, width: int) -> bool:
    """Whether ``path`` holds this video's complete features; an incompatible file is an error."""
    if not path.exists():
        return False
    try:
        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, EOFError) as error:
        raise VeraError(f"video {key}: cannot read existing feature file {path} ({error}); delete it to recompute") from None
    if shape != (rows, width):
        raise VeraError(f"video {key}: existing {path} has shape {shape}, expected {(rows, width)}; delete it to recompute")
    return True


def _partial_rows(path: Path, rows: int, width: int) -> np.ndarray | None:
    """Rows saved by an interrupted run, if they fit this video.

    They need no fingerprint: the folder's ``run.json`` admits only runs of the
    same settings, and ``overwrite`` removes the partial rows with the rest.
    """
    if not path.exists():
        return None
    try:
        partial = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # only a cache: a damaged one is recomputed
    if partial.ndim != 2 or partial.shape[1] != width or not 0 < len(partial) < rows:
        return None
    return partial.astype(np.float32, copy=False)


class _PartialSaver:
    """Keeps the finished rows of the video in progress and saves them every ``every_s`` seconds."""

    def __init__(self, path: Path, rows: int, every_s: float, saved_rows: int) -> None:
        self.path, self.rows, self.every_s = path, rows, every_s
        self.saved_rows = saved_rows
        self.done: np.ndarray | None = None
        self.last_save = time.monotonic()

    def __call__(self, done: np.ndarray) -> None:
        self.done = done
        if time.monotonic() - self.last_save >= self.every_s:
            self.save()

    def save(self) -> None:
        if self.done is not None and self.saved_rows < len(self.done) < self.rows:
            save_npy_atomic(self.path, self.done)
            self.saved_rows = len(self.done)
        self.last_save = time.monotonic()


def extract_features(
    videos: Sequence[TestVideo],
    encoder: VisionEncoder,
    output_dir: Path,
    settings: FeatureSettings,
    *,
    frames_dir: Path | None = None,
    videos_dir: Path | None = None,
    batch_size: int = 48,
    clamp_short: bool = False,
    allow_length_mismatch: bool = False,
    partial_every_s: float = 60.0,
    show_progress: bool = True,
    overwrite: bool = False,
    ranks: Ranks | None = None,
    input_workers: int = 0,
) -> FeatureReport:
    """Write ``<output_dir>/<key>.npy`` for every video not done yet; per-video errors are collected, not raised.

    With several processes (``ranks``) each does its share of ``videos``, and
    every process returns the merged report of all. ``input_workers``
    processes (per process) read the frames ahead of the model; 0 reads them
    in this process.
    """
    if batch_size < 1:
        raise VeraError(f"--batch-size must be at least 1, got {batch_size}")
    ranks = ranks or Ranks()
    started = time.perf_counter()
    folder = ranks.open_folder(feature_folder(output_dir, settings, overwrite))
    mine = ranks.share(list(videos))

    def run_share() -> FeatureReport:
        # Bars of several processes on one terminal would overwrite each other: there only rank 0 shows one.
        show = show_progress and (ranks.is_main or not sys.stderr.isatty())
        desc = f"features [rank {ranks.rank}/{ranks.world_size}]" if ranks.active else "features"
        report = _extract_share(mine, encoder, folder, settings, frames_dir=frames_dir, videos_dir=videos_dir,
                                batch_size=batch_size, clamp_short=clamp_short,
                                allow_length_mismatch=allow_length_mismatch, partial_every_s=partial_every_s,
                                input_workers=input_workers, show=show, desc=desc)
        report.seconds = time.perf_counter() - started
        if ranks.active:
            folder.write_summary(ranks.summary_name(SUMMARY_FILE),
                                 {**report.as_dict(), "rank": ranks.rank, "processes": ranks.world_size})
        return report

    report = ranks.merged_summary(FeatureReport, run_share)
    order = {video.key: position for position, video in enumerate(videos)}
    report.written.sort(key=order.__getitem__)  # the annotation order, whatever the split
    report.skipped.sort(key=order.__getitem__)
    if ranks.is_main:
        folder.write_summary(SUMMARY_FILE, report.as_dict())
        folder.tidy()  # only now: other processes may still have had work in progress
    return report


def _extract_share(videos: list[TestVideo], encoder: VisionEncoder, folder: RunFolder, settings: FeatureSettings, *,
                   frames_dir: Path | None, videos_dir: Path | None, batch_size: int, clamp_short: bool,
                   allow_length_mismatch: bool, partial_every_s: float, input_workers: int, show: bool,
                   desc: str) -> FeatureReport:
    """The videos of one process, into an opened folder."""
    width = encoder.config.out_dim
    report = FeatureReport(videos=len(videos))
    # First what each video needs, so that the frames of the videos to compute can be read ahead; the videos are
    # then reported in order, as they come.
    finished: dict[str, VeraError | None] = {}  # None: complete already; an error: its feature file is unusable
    todo: dict[str, np.ndarray | None] = {}  # the rows saved by an interrupted run, if any
    for video in videos:
        if video.length is None:
            raise VeraError(f"video {video.key}: the annotation gives no length "
                            "(use a VERA JSON annotation file)")
        rows = num_segments(video.length)
        try:
            if _is_finished(folder.path / f"{video.key}.npy", video.key, rows, width):
                finished[video.key] = None
            else:
                todo[video.key] = _partial_rows(folder.partial_path(f"{video.key}.npy"), rows, width)
        except VeraError as error:
            finished[video.key] = error
    jobs = [feature_job(video.key, video.length, first_row=0 if todo[video.key] is None else len(todo[video.key]),
                        half_window=settings.half_window, batch_size=batch_size, frames_dir=frames_dir,
                        videos_dir=videos_dir) for video in videos if video.key in todo]
    # A worker reads one batch at a time, a few batches ahead of the model; page-locked for a model on a GPU.
    pin_memory = next(encoder.parameters()).device.type == "cuda"
    with read_ahead(jobs, input_workers, chunk=1, pin_memory=pin_memory) as video_reads, \
            progress(videos, desc=desc, unit="video", enabled=show) as bar:
        for video in bar:
            if video.key in finished:
                if finished[video.key] is None:
                    report.skipped.append(video.key)
                else:
                    report.failed[video.key] = str(finished[video.key])
                    bar.write(f"error: {finished[video.key]}")
                continue
            reads, partial = next(video_reads), todo[video.key]
            name = f"{video.key}.npy"
            rows = num_segments(video.length)
            saver = _PartialSaver(folder.partial_path(name), rows, partial_every_s,
                                  0 if partial is None else len(partial))
            try:
                with reads as frames:  # the open video, or what a worker reports of it
                    if clamp_short and video.length > frames.num_frames:
                        bar.write(f"warning: video {video.key}: annotation gives {video.length} frames, "
                                  f"{frames.source} has {frames.num_frames}; reading its last frame for the rest")
                    if allow_length_mismatch and video.length < frames.num_frames:
                        bar.write("warning: " + check_frame_count(video.key, video.length, frames.num_frames,
                                                                  frames.source, allow_mismatch=True))
                    try:
                        features = video_features(
                            encoder, frames, video.length, half_window=settings.half_window, batch_size=batch_size,
                            clamp_short=clamp_short, allow_length_mismatch=allow_length_mismatch,
                            partial=partial, on_rows=saver, reads=reads,
                        )
                    except KeyboardInterrupt:
                        saver.save()
                        raise
                folder.finish_npy(name, features)
                report.written.append(video.key)
                report.segments += rows - (0 if partial is None else len(partial))
            except VeraError as error:
                report.failed[video.key] = str(error)
                bar.write(f"error: {error}")
    return report
