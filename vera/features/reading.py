"""The frames of one batch of segment clips: the part of feature extraction that runs in the input workers.

Kept apart from ``vera.features.feature_extraction`` so that a worker, which imports
the module of the function it runs (``vera.data.loading``), imports the frame
readers and not the model's code.
"""

from __future__ import annotations

import numpy as np

from vera.data.frames import VideoFrames


def read_clip_frames(frames: VideoFrames, clip_frames: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct frames of a batch's clips, and where each clip's frames are among them.

    ``clip_frames`` (V, 2) holds absolute frame indices; ``length`` is the
    annotated length. Indices past the video's last frame (only where the
    caller allows a video shorter than annotated) read that last frame.
    Each frame is decoded once however many clips share it.
    """
    last_frame = min(length, frames.num_frames) - 1
    wanted, positions = np.unique(np.minimum(clip_frames, last_frame), return_inverse=True)
    return frames.read(wanted), positions.reshape(clip_frames.shape)
