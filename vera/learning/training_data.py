"""The training and validation lists, which training videos form the batch of each step, and their frames.

Epoch ``e`` visits the training videos in the order ``permutation(seed, e)``:
the batch of a step is a pure function of (seed, step), so resuming needs the
step count only. The frames are read ahead of the model by
``vera.data.loading.read_ahead``: in this process, or by worker processes that
each read whole videos, with the same calls either way (``frame_reads``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from vera.data.annotations import TrainVideo, load_train_annotations
from vera.data.frames import find_video, open_frames
from vera.data.loading import ReadJob, VideoReads, read_ahead
from vera.errors import VeraError
from vera.learning.sampling import check_num_frames, training_frame_indices
from vera.learning.settings import TrainingOptions
from vera.vlm.prompts import learner_frames


def load_lists(options: TrainingOptions) -> tuple[list[TrainVideo], list[TrainVideo]]:
    """The training list and the (``--limit-val``-cut) validation list, checked for what a run needs."""
    train = load_train_annotations(options.train, options.dataset)
    val = load_train_annotations(options.val, options.dataset)[: options.limit_val]
    if not train or not val:
        raise VeraError("the training and validation lists must each name at least one video")
    check_num_frames(options.num_frames, {f"--train {options.train}": train, f"--val {options.val}": val})
    if options.select_by == "auc" and len({video.label for video in val}) < 2:
        raise VeraError("--select-by auc needs normal and anomalous videos in the validation list "
                        "(check --limit-val)")
    return train, val


def check_sources(options: TrainingOptions, train: list[TrainVideo], val: list[TrainVideo], *,
                  warn: bool) -> None:
    """Every listed video must have a frame folder or video file: better said now than in epoch 9.
    With ``--skip-bad-videos`` the missing ones are named once (where ``warn``) and skipped."""
    missing = set()
    for video in {video.key: video for video in train + val}.values():
        if options.frames_dir is not None:
            if not (Path(options.frames_dir) / video.key).is_dir():
                missing.add(video.key)
        else:
            try:
                find_video(Path(options.videos_dir), video.key)
            except VeraError:
                missing.add(video.key)
    where = options.frames_dir or options.videos_dir
    names = sorted(missing)
    listed = f"{', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
    if missing and not options.skip_bad_videos:
        raise VeraError(f"{len(missing)} listed videos have no frames in {where}: {listed} "
                        "(--skip-bad-videos skips them)")
    for split, videos in (("training", train), ("validation", val)):
        if all(video.key in missing for video in videos):
            raise VeraError(f"no readable {split} videos left: none of the {len(videos)} has frames in {where}")
    if missing and warn:
        print(f"warning: {len(missing)} listed videos have no frames and will be skipped: {listed}",
              file=sys.stderr)


def epoch_order(num_videos: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so resume replays it."""
    return np.random.default_rng([seed, epoch]).permutation(num_videos)


def steps_per_epoch(num_videos: int, batch_size: int) -> int:
    return -(-num_videos // batch_size)  # the last batch may be short, as released (drop_last=False)


def step_limit_note(epochs: int, per_epoch: int, max_steps: int | None) -> str | None:
    """One line where ``--epochs`` and ``--max-steps`` disagree, naming the limit that ends the run."""
    if not max_steps or max_steps == epochs * per_epoch:
        return None
    if max_steps > epochs * per_epoch:
        return (f"--max-steps {max_steps} is cut short by --epochs {epochs}: {epochs} epochs of {per_epoch} steps "
                f"end the run after {epochs * per_epoch} steps (raise --epochs to train longer)")
    return (f"--max-steps {max_steps} ends the run before --epochs {epochs} does "
            f"({epochs} epochs of {per_epoch} steps would be {epochs * per_epoch})")


def batch_at(videos: list[TrainVideo], step: int, batch_size: int, seed: int) -> tuple[int, list[TrainVideo]]:
    """Epoch and videos of global step ``step`` (0-based)."""
    per_epoch = steps_per_epoch(len(videos), batch_size)
    epoch, position = divmod(step, per_epoch)
    order = epoch_order(len(videos), seed, epoch)
    picked = order[position * batch_size : (position + 1) * batch_size]
    return epoch, [videos[i] for i in picked]


# --------------------------------------------------------------------------- frames

Step = tuple[int, int] | None  # a training step (epoch, step), or None for validation


@dataclass
class Loaded:
    """A video's frames, or why they could not be read."""

    video: TrainVideo
    indices: list[int]
    frames: list[np.ndarray] | None = None
    error: str | None = None


def frame_indices(options: TrainingOptions, video: TrainVideo, at: Step) -> np.ndarray:
    """The frames of ``video`` the learner sees: at a training step ``at = (epoch, step)`` those of
    ``--frame-sampling``; for validation (``None``) always the released ``np.arange(0, length, length/8)``,
    so that every validation scores the questions on the same frames."""
    epoch, step = at if at is not None else (0, 0)
    return training_frame_indices(video.length, options.num_frames,
                                  options.frame_sampling if at is not None else "uniform",
                                  seed=options.seed, epoch=epoch, step=step, key=video.key)


class FrameReads:
    """The frames of planned videos, taken in plan order (``frame_reads``)."""

    def __init__(self, options: TrainingOptions, plan: list[tuple[Step, TrainVideo, np.ndarray]],
                 reads: Iterator[VideoReads]):
        self.options, self.plan, self.reads = options, plan, reads
        self.position = 0

    def take(self, videos: Sequence[TrainVideo], at: Step) -> list[Loaded]:
        """``videos``' frames for ``at``: the next planned ones; planned videos passed over are not used."""
        return [self._take(video, at) for video in videos]

    def _take(self, video: TrainVideo, at: Step) -> Loaded:
        while True:
            if self.position == len(self.plan):
                raise RuntimeError(f"video {video.key} at {at} was not planned, or not in plan order")
            planned_at, planned, indices = self.plan[self.position]
            reads = next(self.reads)
            self.position += 1
            if planned_at == at and planned.key == video.key:
                break
        try:
            with reads:
                [frames] = reads  # one item: the frames at ``indices``
        except VeraError as error:
            message = str(error) if video.key in str(error) else f"video {video.key}: {error}"
            if not self.options.skip_bad_videos:
                raise VeraError(f"{message} (--skip-bad-videos skips such videos)") from None
            return Loaded(video, indices.tolist(), error=message)
        return Loaded(video, indices.tolist(), frames=frames)


@contextmanager
def frame_reads(options: TrainingOptions, plan: Sequence[tuple[Step, TrainVideo]], workers: int,
                ahead: int = 2) -> Iterator[FrameReads]:
    """Reads the videos of ``plan`` (each ``(at, video)``) ahead of the model, at most max(2, ``workers``,
    ``ahead``) videos beyond the one taken: in this process when ``workers`` is 0 (lazily, when taken), else by
    ``workers`` processes.
    Each video is one job of one item, 448×448 as Step 1 or as qwen-vl-utils resizes them (qwen-video)."""
    planned = [(at, video, frame_indices(options, video, at)) for at, video in plan]
    read = partial(learner_frames, frame_layout=options.frame_layout, image_size=options.image_size)
    jobs = [ReadJob(video.key, partial(open_frames, video.key, frames_dir=options.frames_dir,
                                       videos_dir=options.videos_dir), read, [indices])
            for _, video, indices in planned]
    with read_ahead(jobs, workers, chunk=1, prefetch=max(2, workers, ahead)) as reads:
        yield FrameReads(options, planned, reads)
