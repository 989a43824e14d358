"""Training's frame reader: worker threads read the next videos' frames while the model answers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vera.data.annotations import TrainVideo
from vera.data.frames import open_frames
from vera.errors import VeraError
from vera.learning.sampling import training_frame_indices
from vera.learning.settings import TrainingOptions
from vera.vlm.prompts import learner_frames


@dataclass
class Loaded:
    """A video's frames, or why they could not be read."""

    video: TrainVideo
    indices: list[int]
    frames: list[np.ndarray] | None = None
    error: str | None = None


class FrameSource:
    """Reads each video's frames in worker threads: at a training step ``(epoch, step)`` those of
    ``--frame-sampling``; for validation (no step) always the released ``np.arange(0, length, length/8)``,
    so that every validation scores the questions on the same frames."""

    def __init__(self, options: TrainingOptions, workers: int = 4):
        self.options = options
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def _load(self, video: TrainVideo, at: tuple[int, int] | None) -> Loaded:
        epoch, step = at if at is not None else (0, 0)
        indices = training_frame_indices(video.length, self.options.num_frames,
                                         self.options.frame_sampling if at is not None else "uniform",
                                         seed=self.options.seed, epoch=epoch, step=step, key=video.key)
        try:
            with open_frames(video.key, frames_dir=self.options.frames_dir,
                             videos_dir=self.options.videos_dir) as source:
                # 448×448 as Step 1, or the frames as qwen-vl-utils resizes them in the qwen-video layout
                frames = learner_frames(source, indices, self.options.frame_layout, self.options.image_size)
        except VeraError as error:
            message = str(error) if video.key in str(error) else f"video {video.key}: {error}"
            if not self.options.skip_bad_videos:
                raise VeraError(f"{message} (--skip-bad-videos skips such videos)") from None
            return Loaded(video, indices.tolist(), error=message)
        return Loaded(video, indices.tolist(), frames=frames)

    def submit(self, videos: list[TrainVideo], at: tuple[int, int] | None = None) -> list[Future]:
        return [self.pool.submit(self._load, video, at) for video in videos]

    def load(self, videos: list[TrainVideo], at: tuple[int, int] | None = None) -> list[Loaded]:
        """``videos`` read for training step ``at = (epoch, step)``, or for validation (``None``)."""
        return [future.result() for future in self.submit(videos, at)]

    def chunks(self, videos: list[TrainVideo], size: int) -> Iterator[list[Loaded]]:
        """``videos`` in chunks of ``size``, reading the next chunk while the caller works on this one."""
        pending = self.submit(videos[:size])
        for start in range(0, len(videos), size):
            ahead = self.submit(videos[start + size : start + 2 * size])
            yield [future.result() for future in pending]
            pending = ahead

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
