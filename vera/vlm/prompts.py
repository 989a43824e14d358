"""The learner prompt: a template, the guiding questions, and the frame placeholders.

A learner template has two slots. ``$Data`` (written ``[$Data]``) stands for
the frames: it becomes the lines ``Frame1: <image>`` … ``FrameN: <image>`` and
the brackets stay, as in the released code. The guiding questions go, one per
line, just before the sentence that starts ``Based on the analysis above``.
Built from the authors' ``VERA_learner_instruct.txt``, the text is character
for character what their Step 1 and training scripts build.

Frame layouts (how the ``<image>`` lines reach the model):

- ``released``: all frames at the first ``<image>``; the other placeholders
  stay literal text. This is how the released code fed InternVL2 (its chat
  helper replaces only the first ``<image>``), so the published questions were
  learned, and the published scores measured, with this input.
- ``per-frame``: one frame per ``<image>`` line, the layout the prompt reads as.
- ``qwen-video``: ``[$Data]`` (brackets included) becomes Qwen2-VL's video
  slot and the frames, unresized, one video there: how the authors' Qwen2-VL
  scripts fed it (``vera.vlm.qwen_video``). The default for Qwen2-VL models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from vera.data.frames import VideoFrames, read_resized
from vera.vlm import qwen_video
from vera.vlm.backends.base import IMAGE_PLACEHOLDER, VLMRequest
from vera.errors import VeraError
from vera.io import read_text
from vera.constants import DEFAULT_FRAME_LAYOUT, FRAME_LAYOUTS, NO_QUESTIONS, NUM_FRAMES, QUESTION_SETS

DATA_SLOT = "$Data"
QUESTIONS_ANCHOR = "Based on the analysis above"


# The project's own learner template: the same slots and answer format as the
# authors' file, in our own words.
DEFAULT_LEARNER_TEMPLATE = """\
Task: you are a video anomaly detector.
The input is a sequence of frames sampled from a short video. Decide whether the video shows an anomaly, \
that is an abnormal or unusual event, and give the class label as an integer: 0 for a normal video, \
1 for an anomalous video.
Guiding questions: answer each question below in one sentence, using only what you see in the frames.
Based on the analysis above, decide: 'Is there any anomaly in the video?'
Frames:
[$Data]
Reply strictly in this format and add nothing else:
Answers to Prompt Questions: [your one-sentence answer to each question, in order]
Output: [0 or 1]
"""


def load_questions(path: Path) -> list[str]:
    """Guiding questions from a text file, one per line, blank lines dropped.

    Lines are kept verbatim (numbering included), as the released code inserts
    them. Any number of questions is accepted: the count is a learning choice.
    """
    path = Path(path)
    lines = read_text(path, "questions file").splitlines()
    questions = [line.rstrip() for line in lines if line.strip()]
    if not questions:
        raise VeraError(f"questions file {path} holds no questions (one per line expected; "
                        f"--questions {NO_QUESTIONS} asks none)")
    check_questions(questions, str(path))
    return questions


def questions_from(source: Path | str) -> list[str]:
    """The questions of ``--questions``: a file's, or none at all for ``none``.

    No questions is the bare prompt of the paper's question-type table: the
    template with an empty list inserted, every other character as it is (with
    the authors' file the line asking to answer "the following questions" is
    then followed directly by "Based on the analysis above").
    """
    return [] if source == NO_QUESTIONS else load_questions(Path(source))


def check_questions(questions: list[str], where: str = "questions") -> None:
    """Refuse questions that would break the prompt (an image placeholder, a line break)."""
    for number, question in enumerate(questions, start=1):
        if IMAGE_PLACEHOLDER in question or DATA_SLOT in question:
            raise VeraError(f"{where}: question {number} contains {IMAGE_PLACEHOLDER!r} or {DATA_SLOT!r}")
        if "\n" in question or "\r" in question:
            raise VeraError(f"{where}: question {number} spans several lines")


def load_template(path: Path | None) -> str:
    """The learner template from ``path`` (e.g. the authors' file), or the project's default."""
    if path is None:
        return DEFAULT_LEARNER_TEMPLATE
    path = Path(path)
    template = read_text(path, "prompt file")
    check_template(template, str(path))
    return template


def check_template(template: str, where: str = "learner template") -> None:
    """A template needs the ``$Data`` slot and the ``Based on the analysis above`` sentence."""
    missing = [marker for marker in (DATA_SLOT, QUESTIONS_ANCHOR) if marker not in template]
    if missing:
        raise VeraError(f"{where}: the learner template lacks {' and '.join(repr(m) for m in missing)}")
    if IMAGE_PLACEHOLDER in template:
        raise VeraError(f"{where}: the learner template must not contain {IMAGE_PLACEHOLDER!r} itself; "
                        f"frames go in {DATA_SLOT}")


def insert_questions(template: str, questions: list[str]) -> str:
    """Each question plus a newline, inserted just before the first ``Based on the analysis above``."""
    position = template.find(QUESTIONS_ANCHOR)
    if position == -1:
        raise VeraError(f"the learner template lacks {QUESTIONS_ANCHOR!r}, where the questions go")
    return template[:position] + "".join(question + "\n" for question in questions) + template[position:]


def frame_lines(num_frames: int) -> str:
    """``Frame1: <image>\\n`` … ``FrameN: <image>\\n``."""
    return "".join(f"Frame{number}: {IMAGE_PLACEHOLDER}\n" for number in range(1, num_frames + 1))


def build_learner_prompt(template: str, questions: list[str], num_frames: int = NUM_FRAMES,
                         frame_layout: str = DEFAULT_FRAME_LAYOUT) -> str:
    """The full learner prompt: frames in ``$Data`` (brackets kept), then the questions inserted.

    In the ``qwen-video`` layout ``[$Data]`` itself becomes the video slot.
    """
    check_template(template)
    check_questions(questions)
    if frame_layout == "qwen-video":
        return insert_questions(qwen_video.video_template(template), questions)
    return insert_questions(template.replace(DATA_SLOT, frame_lines(num_frames)), questions)


def resolve_frame_layout(requested: str | None, model_type: str | None, template: str) -> str:
    """The layout given, or the default: ``qwen-video`` for Qwen2-VL with a ``[$Data]`` template, else ``released``.

    Both are how the authors fed those models, so the published questions
    (and scores) came from these inputs. ``model_type`` None (a backend
    without a checkpoint, e.g. in tests) leaves the choice unchecked.
    """
    if requested is None:
        if model_type in qwen_video.MODEL_TYPES and qwen_video.BRACKETED_DATA_SLOT in template:
            return "qwen-video"
        return DEFAULT_FRAME_LAYOUT
    if requested not in FRAME_LAYOUTS:
        raise VeraError(f"unknown frame layout {requested!r}; choose one of {', '.join(FRAME_LAYOUTS)}")
    if requested == "qwen-video" and model_type is not None and model_type not in qwen_video.MODEL_TYPES:
        raise VeraError(f"--frame-layout qwen-video feeds Qwen2-VL as the authors did; this model is {model_type!r}")
    return requested


def frame_reader(frame_layout: str, image_size: int) -> Callable[[VideoFrames, Sequence[int]], list[np.ndarray]]:
    """``reader(frames, indices)``: the frames of one request as the layout shows them, 448×448 bicubic or
    unresized for ``qwen-video``. A module-level function (or a partial of one), so that input worker
    processes (``vera.data.loading``) can run it."""
    if frame_layout == "qwen-video":
        return qwen_video.read_frames
    return partial(read_resized, size=image_size)


def learner_frames(frames: VideoFrames, indices, frame_layout: str, image_size: int) -> list[np.ndarray]:
    """The frames of one request as the layout shows them (``frame_reader``)."""
    return frame_reader(frame_layout, image_size)(frames, indices)


def learner_request(prompt: str, frames: list[np.ndarray], key: str, frame_layout: str,
                    dump_name: str = "") -> VLMRequest:
    """A backend request for one segment (or video) in the chosen frame layout."""
    if frame_layout not in FRAME_LAYOUTS:
        raise VeraError(f"unknown frame layout {frame_layout!r}; choose one of {', '.join(FRAME_LAYOUTS)}")
    if frame_layout == "qwen-video":
        if prompt.count(qwen_video.VIDEO_SLOT) != 1:
            raise VeraError(f"{key}: the qwen-video layout needs the prompt built for it (one video slot)")
        return VLMRequest(prompt=prompt, images=list(frames), key=key, video=True, dump_name=dump_name)
    placeholders = prompt.count(IMAGE_PLACEHOLDER)
    if frame_layout == "per-frame" and placeholders != len(frames):
        raise VeraError(f"{key}: the prompt has {placeholders} {IMAGE_PLACEHOLDER} lines for {len(frames)} frames")
    if frame_layout == "released" and placeholders == 0:
        raise VeraError(f"{key}: the prompt has no {IMAGE_PLACEHOLDER} placeholder for the frames")
    return VLMRequest(prompt=prompt, images=list(frames), key=key, image_block=frame_layout == "released",
                      dump_name=dump_name)


def preset_questions(name: str) -> list[str]:
    """The questions of a preset, or ``VeraError`` naming the known presets."""
    try:
        return list(QUESTION_SETS[name])
    except KeyError:
        raise VeraError(f"unknown question preset {name!r}; choose one of {', '.join(QUESTION_SETS)}") from None
