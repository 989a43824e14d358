"""The segment grid shared by every stage.

VERA scores a video every ``SEGMENT_STRIDE`` frames. The segment with centre
``c`` looks at the window ``[max(c - 150, 0), min(c + 150, length))``: 10 s at
the 30 fps the released code assumes for every dataset.
"""

from __future__ import annotations

import math

import numpy as np

from vera.constants import HALF_WINDOW, SEGMENT_STRIDE



def num_segments(length: int) -> int:
    """Number of segment centres 0, 16, 32, … below ``length``."""
    return math.ceil(length / SEGMENT_STRIDE) if length > 0 else 0


def segment_centres(length: int) -> np.ndarray:
    """Segment centres ``0, 16, 32, … < length`` (int64)."""
    return np.arange(0, length, SEGMENT_STRIDE, dtype=np.int64)


def half_window(fps: float | None = None) -> int:
    """Frames on each side of a centre: 150 as released, or 5 s at a true ``fps``."""
    return HALF_WINDOW if fps is None else int(round(5.0 * fps))


def segment_window(centre: int, length: int, half: int = HALF_WINDOW) -> tuple[int, int]:
    """The window ``[start, end)`` of the segment centred on ``centre``."""
    return max(centre - half, 0), min(centre + half, length)


def window_frame_indices(start: int, end: int, num_frames: int = 8) -> np.ndarray:
    """The frames Step 1 shows the VLM for one window, exactly as released.

    ``np.arange(start, end, (end - start) / num_frames).astype(int)``. For 8
    frames the step divides the window exactly and arange gives 8 indices; for
    other counts a float step can give one more, which is dropped so that every
    window shows ``num_frames`` frames.
    """
    if end <= start:
        raise ValueError(f"empty window [{start}, {end})")
    indices = np.arange(start, end, (end - start) / num_frames).astype(np.int64)
    return indices[:num_frames]


def video_frame_indices(length: int, num_frames: int = 8) -> np.ndarray:
    """The frames training shows for a whole video: ``np.arange(0, length, length / 8)``."""
    return window_frame_indices(0, length, num_frames)
