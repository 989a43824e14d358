"""The backend interface shared by Step 1 (``vera.vlm.step1``) and training (``vera.learning.algorithm1``).

A backend turns a batch of requests (prompt text plus RGB frames) into
answers. Prompts are written with the literal placeholder ``<image>`` where
frames go; each backend maps that placeholder to its model's own image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class VLMRequest:
    """One generation: a prompt and the frames its ``<image>`` placeholders stand for.

    ``images`` are RGB ``uint8`` arrays of shape (H, W, 3), in prompt order.
    ``key`` names the video (and segment) for error messages.
    ``image_block`` reproduces how the released code fed InternVL2: all images
    go at the first placeholder and any later ``<image>`` stays literal text.
    ``video`` reproduces how the authors' scripts fed Qwen2-VL: the images are
    the frames of one video at the prompt's video slot (``vera.vlm.qwen_video``).
    ``dump_name`` names the files ``--dump-inputs`` writes (default: from ``key``).
    """

    prompt: str
    images: list[np.ndarray]
    key: str = ""
    image_block: bool = False
    video: bool = False
    dump_name: str = ""


@dataclass
class VLMAnswer:
    """The generated text, and where the backend exposes it the probability of label "1"."""

    text: str
    label_prob: float | None = None
    extra: dict = field(default_factory=dict)


@runtime_checkable
class VLMBackend(Protocol):
    """Greedy generation for a batch of requests; answers come back in request order."""

    name: str

    def generate(self, requests: list[VLMRequest], max_new_tokens: int = 1024) -> list[VLMAnswer]:
        ...

    def describe(self) -> dict:
        """Model id, dtype, device, versions: what ``run.json`` records."""
        ...
