"""Which frames of a training video the learner (and the optimizer) see: the paper's sampling comparison.

- ``uniform`` (released, the paper's default): ``np.arange(0, length, length/S)``,
  the same frames every epoch.
- ``random``: S distinct frames drawn at random from the whole video, shown in
  video order (with repeats only when the video has fewer than S frames).
- ``tsn``: the video cut into S equal parts, part ``i`` covering frames
  ``[⌊i·L/S⌋, ⌊(i+1)·L/S⌋)`` (at least its first frame when L < S), and one
  frame drawn at random from each part, as Temporal Segment Networks sample.

The random draws come from a generator seeded by (seed, epoch, step, video
key), nothing else: every rank draws the same frames for a video (rank 0 reads
the other ranks' videos again for the optimizer), and a resumed run draws
exactly what the interrupted one did. A video met again in a later epoch gets
new frames.
"""

from __future__ import annotations

import hashlib

import numpy as np

from vera.data.segments import video_frame_indices
from vera.errors import VeraError
from vera.constants import FRAME_SAMPLINGS


def _key_number(key: str) -> int:
    """A number for the video key that is the same in every process and Python run (``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def draw_generator(seed: int, epoch: int, step: int, key: str) -> np.random.Generator:
    """The generator of one video's draw at one training step."""
    return np.random.default_rng([seed, epoch, step, _key_number(key)])


def training_frame_indices(length: int, num_frames: int, method: str, *, seed: int, epoch: int, step: int,
                           key: str) -> np.ndarray:
    """The ``num_frames`` frame indices (int64, ascending) the learner sees of a ``length``-frame video."""
    if method not in FRAME_SAMPLINGS:
        raise ValueError(f"unknown frame sampling {method!r}; choose one of {', '.join(FRAME_SAMPLINGS)}")
    if length < 1:
        raise ValueError(f"video {key} has no frames to sample")
    if method == "uniform":
        return video_frame_indices(length, num_frames)
    rng = draw_generator(seed, epoch, step, key)
    if method == "random":
        return np.sort(rng.choice(length, size=num_frames, replace=length < num_frames)).astype(np.int64)
    parts = np.arange(num_frames + 1, dtype=np.int64) * length // num_frames
    starts = parts[:-1]
    ends = np.maximum(parts[1:], starts + 1)
    return rng.integers(starts, ends).astype(np.int64)


def check_num_frames(num_frames: int, lists: dict[str, list]) -> None:
    """Refuse ``--num-frames`` above the length of any listed video (``lists``: where the list came from →
    its videos, each with ``key`` and ``length``): such a video would show its frames several times over, which
    no one asking for N frames means. Names the shortest video, its length and list."""
    short = sorted((video.length, video.key, where) for where, videos in lists.items() for video in videos
                   if video.length < num_frames)
    if short:
        length, key, where = short[0]
        count = len({key for _, key, _ in short})  # a video in both lists counts once
        others = f"; {count} listed videos are shorter" if count > 1 else ""
        raise VeraError(f"--num-frames {num_frames} is more than the {length} frames of video {key} ({where}), "
                        f"whose frames would repeat, {num_frames / max(length, 1):.1f} times each on average{others}; "
                        f"use --num-frames {length} or fewer")
