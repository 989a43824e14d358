"""The segment grid: centres, windows and the frames each stage samples."""

from __future__ import annotations

import numpy as np

from vera.data.segments import num_segments, segment_centres, segment_window, video_frame_indices, window_frame_indices


def test_grid_and_windows():
    assert [num_segments(n) for n in (0, 1, 16, 17, 1412)] == [0, 1, 1, 2, 89]
    np.testing.assert_array_equal(segment_centres(40), [0, 16, 32])
    assert segment_window(0, 1000) == (0, 150) and segment_window(496, 1000) == (346, 646)
    assert segment_window(992, 1000) == (842, 1000)


def test_sampled_frames():
    np.testing.assert_array_equal(window_frame_indices(346, 646), [346, 383, 421, 458, 496, 533, 571, 608])
    np.testing.assert_array_equal(video_frame_indices(328), [0, 41, 82, 123, 164, 205, 246, 287])
    np.testing.assert_array_equal(window_frame_indices(0, 5), [0, 0, 1, 1, 2, 3, 3, 4])  # shorter than 8 frames
    # 7 frames of a 17-frame window: arange's float step (17/7) yields an 8th index, 17 (past the window),
    # which is dropped.
    np.testing.assert_array_equal(window_frame_indices(0, 17, 7), [0, 2, 4, 7, 9, 12, 14])
