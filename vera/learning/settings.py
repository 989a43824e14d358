"""The settings of a training run: everything that decides its outputs, as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vera.data.frames import VLM_IMAGE_SIZE
from vera.errors import VeraError
from vera.constants import DEFAULT_EPOCHS, DEFAULT_NUM_QUESTIONS, FRAME_SAMPLINGS, QWEN_VIDEO_EPOCHS, SELECT_BY
from vera.constants import DEFAULT_FRAME_LAYOUT, FRAME_LAYOUTS, INITIAL_QUESTIONS


@dataclass
class TrainingOptions:
    """Everything that decides a run. Defaults are the released ones."""

    dataset: str
    train: Path
    val: Path
    output: Path
    frames_dir: Path | None = None
    videos_dir: Path | None = None
    model: str = ""
    epochs: int | None = None  # None: default_epochs(frame_layout)
    batch_size: int = 2
    num_frames: int = 8
    image_size: int = VLM_IMAGE_SIZE
    val_every: int = 100
    max_steps: int | None = None
    limit_val: int | None = None
    val_batch_size: int = 8
    select_by: str = "accuracy"
    prompt_file: Path | None = None
    optimizer_prompt_file: Path | None = None
    frame_layout: str = DEFAULT_FRAME_LAYOUT
    max_new_tokens: int = 1024
    seed: int = 0
    skip_bad_videos: bool = False
    overwrite: bool = False
    initial_questions: list[str] = field(default_factory=lambda: list(INITIAL_QUESTIONS))
    # The paper's training studies; the defaults are the released method.
    frame_sampling: str = "uniform"
    num_questions: int = DEFAULT_NUM_QUESTIONS
    optimizer_frames: bool = True

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = default_epochs(self.frame_layout)

    def check(self) -> None:
        if (self.frames_dir is None) == (self.videos_dir is None):
            raise VeraError("give exactly one of --frames DIR or --videos DIR")
        if self.frame_layout not in FRAME_LAYOUTS:
            raise VeraError(f"--frame-layout must be one of {', '.join(FRAME_LAYOUTS)}, got {self.frame_layout!r}")
        if self.select_by not in SELECT_BY:
            raise VeraError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.frame_sampling not in FRAME_SAMPLINGS:
            raise VeraError(f"--frame-sampling must be one of {', '.join(FRAME_SAMPLINGS)}, "
                            f"got {self.frame_sampling!r}")
        for name in ("epochs", "batch_size", "num_frames", "val_every", "val_batch_size", "max_new_tokens",
                     "num_questions"):
            if getattr(self, name) < 1:
                raise VeraError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "limit_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VeraError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def default_epochs(frame_layout: str) -> int:
    """The epochs of the authors' run for this layout: their Qwen2-VL script trained for 50
    (``vera_qwen_train.py``), their InternVL2 script for 10. The one place ``--epochs`` gets its default."""
    return QWEN_VIDEO_EPOCHS if frame_layout == "qwen-video" else DEFAULT_EPOCHS


def validation_rule(frame_layout: str) -> str:
    """How validation reads a label from an answer: the authors' Qwen2-VL script looked at the answer's last
    character (``last-character``); their InternVL2 script, at its published commit, used Step 1's ``output``
    rule, as the learner's training answers are read in every layout."""
    return "last-character" if frame_layout == "qwen-video" else "output"
