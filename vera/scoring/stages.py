"""``stages.npz``: each video's per-segment curves at every step, for the score-curve figures.

One file for the whole run (one write, not one per video): for each video key,
``<key>/answers`` (Step 1's scores), ``<key>/context`` (after Step 2),
``<key>/smoothed`` (after the Gaussian smoothing) and ``<key>/values`` (what
each segment's frames carry before position weighting: rounded to 0.1 in the
released protocol, after the sigmoid for the released XD-Violence AP). The
final frame scores are ``frame_scores/<key>.npy``.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np

from vera.errors import VeraError
from vera.io import write_bytes_atomic

STAGES_FILE = "stages.npz"
STAGE_NAMES = ("answers", "context", "smoothed", "values")


def write_stages(videos, output_dir: Path) -> Path:
    """Write the stages of ``videos`` (``VideoResult`` with ``stages``) to ``output_dir/stages.npz``."""
    arrays = {f"{video.key}/{name}": np.asarray(video.stages[name], dtype=np.float64)
              for video in videos for name in STAGE_NAMES}
    buffer = BytesIO()
    np.savez(buffer, **arrays)
    path = Path(output_dir) / STAGES_FILE
    write_bytes_atomic(path, buffer.getvalue())
    return path


def read_stages(run_dir: Path, key: str) -> dict[str, np.ndarray]:
    """One video's stages from a ``compute_auc.py`` output folder, or a one-line error."""
    path = Path(run_dir) / STAGES_FILE
    if not path.is_file():
        raise VeraError(f"{path} not found: rerun Inference/compute_auc.py, which writes it")
    try:
        with np.load(path, allow_pickle=False) as content:
            if f"{key}/answers" not in content.files:
                raise VeraError(f"video {key} is not in {path}")
            return {name: content[f"{key}/{name}"] for name in STAGE_NAMES}
    except (OSError, ValueError, EOFError) as error:
        raise VeraError(f"cannot read {path} ({error})") from None
