"""Per-video segment score files: ``<key>.json`` mapping centre frame → segment.

Each entry is ``{"start": float, "end": float, "score": 0|1, ...}``; keys are
the centres ``"0"``, ``"16"``, … Step 1 adds the VLM's answer and parse status
as extra fields, which scoring ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vera.errors import VeraError
from vera.io import read_json
from vera.constants import SEGMENT_STRIDE


@dataclass(frozen=True)
class SegmentScores:
    """One video's segments ordered by centre."""

    centres: np.ndarray  # int64, 0, 16, 32, …
    ends: np.ndarray  # float64, window ends
    scores: np.ndarray  # float64
    fallbacks: int = 0  # segments whose score field was null, so their 0/1 "score" stood in

    @property
    def num_segments(self) -> int:
        return len(self.centres)

    @property
    def last_segment_frames(self) -> int:
        """Frames the last segment stands for, ``int(end − centre)`` as released."""
        return int(self.ends[-1] - self.centres[-1])

    @property
    def num_frames(self) -> int:
        """Frames covered: 16 per segment, then the last segment's share."""
        return SEGMENT_STRIDE * (self.num_segments - 1) + self.last_segment_frames


def _number(segment: dict, name: str, path: Path, centre: int) -> float:
    """A segment's value ``name``: a JSON number. ``"1"`` or ``true`` is refused, not coerced: a file that
    says so was written by something else than Step 1, and its other values cannot be trusted either."""
    if name not in segment:
        raise VeraError(f"score file {path}: segment {centre} has no '{name}'")
    value = segment[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VeraError(f"score file {path}: segment {centre}: '{name}' must be a number, got {value!r}")
    return float(value)


def read_segment_scores(path: Path, *, binary: bool = True, field: str = "score") -> SegmentScores:
    """Read and check one score file; ``binary`` demands scores in {0, 1} (released protocol).

    ``field`` picks the value to score by: the 0/1 ``score``, or a soft score
    such as Step 1's ``label_prob``; where that is null (a malformed answer),
    the segment's 0/1 ``score`` stands in and is counted in ``fallbacks``.
    """
    path = Path(path)
    content = read_json(path, "score file")
    if not isinstance(content, dict) or not content:
        raise VeraError(f"score file {path} must hold a non-empty JSON object of segments")
    try:
        centres = np.array([int(key) for key in content], dtype=np.int64)
    except ValueError:
        bad = next(key for key in content if not key.lstrip("-").isdigit())
        raise VeraError(f"score file {path}: segment key {bad!r} is not a frame number") from None
    order = np.argsort(centres, kind="stable")
    centres = centres[order]
    expected = np.arange(0, SEGMENT_STRIDE * len(centres), SEGMENT_STRIDE)
    if not np.array_equal(centres, expected):
        off = centres[np.flatnonzero(centres != expected)[0]]
        raise VeraError(
            f"score file {path}: segment centres must be 0, 16, 32, … without gaps; centre {off} is off the grid"
        )
    segments = list(content.values())
    ends, scores, fallbacks = [], [], 0
    for centre, index in zip(centres.tolist(), order.tolist()):
        segment = segments[index]
        if not isinstance(segment, dict):
            raise VeraError(f"score file {path}: segment {centre} must be an object with 'end' and '{field}'")
        ends.append(_number(segment, "end", path, centre))
        if field != "score" and segment.get(field, None) is None:
            fallbacks += 1  # a malformed answer has no soft score: its 0/1 answer stands in
            scores.append(_number(segment, "score", path, centre))
        else:
            scores.append(_number(segment, field, path, centre))
    ends, scores = np.array(ends), np.array(scores)
    if binary and not np.all((scores == 0) | (scores == 1)):
        bad = centres[np.flatnonzero((scores != 0) & (scores != 1))[0]]
        raise VeraError(
            f"score file {path}: segment {bad} has score {scores[centres == bad][0]}; "
            "the released protocol takes 0/1 answers (use --protocol paper for soft scores)"
        )
    outside = ~((scores >= 0) & (scores <= 1))  # NaN included
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise VeraError(f"score file {path}: segment {centres[bad]} has score {scores[bad]}; scores must lie in [0, 1]")
    if ends[-1] <= centres[-1]:
        raise VeraError(f"score file {path}: the last segment ends at {ends[-1]}, before its centre {centres[-1]}")
    return SegmentScores(centres, ends, scores, fallbacks)
