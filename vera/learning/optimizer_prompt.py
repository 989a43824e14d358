"""The optimizer role of verbalized learning: its prompt, and reading new questions from its answer.

The optimizer sees a batch's frames, the current guiding questions, the
learner's predictions and the true labels, reasons, and proposes at most m
"New Prompt Questions" (the paper's m, ``--num-questions``, 5 by default). A
template (ours by default, or the authors' file) holds four anchors that the
prompt is built around:

- the placeholder list of ten ``[$Prediction]``, replaced by the predictions as
  a Python list string (``[1, 0]``), and the same for ``[$GroundTruth]``;
- ``** Model Descriptions: **``: the frame lines of every video go just before
  it, as ``[[Frame1: <image>\\n … ] [ … ] ]\\n``. The released code slices the
  tail from one character too early, so the character before the anchor (a
  newline in both templates) appears twice; we keep that so the authors' file
  gives the released text exactly;
- ``Based on the analysis above``: the current questions go just before it,
  one per line.

The template states m in words, as "at most five" or "no more than five
(questions)": both templates say it twice, in those words. For another m the
number word in each such phrase is replaced ("no more than seven questions",
"at most one question"); at m = 5 the text is left exactly as it is, so the
authors' file gives the released prompt character for character. A template
that does not state the limit so can be used only with m = 5.

In the ``qwen-video`` frame layout (``vera_qwen_train.py``) the frame block
is Qwen2-VL's video slot ``<|vision_start|><|video_pad|><|vision_end|>``
alone, inserted with the same slice (the character before the anchor still
repeated after it), and the frames are one video of every frame of the batch
(``vera.vlm.qwen_video``). A template must not open with the anchor (the
released slice would then copy the template's last character), so the slice is
always well defined.

Without frames (``--no-optimizer-frames``, the paper's optimizer without
V_batch) no frame block is inserted, in any layout: the template's text at
the anchor stays as it is (in ``qwen-video``, then, no video slot either).

The questions are inserted one per line, each ending with a newline. The
InternVL2 script inserted an accepted answer's text as it came; its Qwen2-VL
twin added a newline, so its last question too ends in one, as here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vera.errors import VeraError
from vera.constants import DEFAULT_NUM_QUESTIONS
from vera.vlm.prompts import QUESTIONS_ANCHOR, check_questions, frame_lines
from vera.vlm.qwen_video import VIDEO_SLOT

PREDICTION_PLACEHOLDER = "[" + " ".join(["[$Prediction]"] * 10) + "]"
TARGET_PLACEHOLDER = "[" + " ".join(["[$GroundTruth]"] * 10) + "]"
FRAMES_ANCHOR = "** Model Descriptions: **"
NEW_QUESTIONS_MARKER = "New Prompt Questions"
# How both templates state the paper's m = 5: "at most five", "no more than five questions".
LIMIT_PHRASE = re.compile(r"\b(at most|no more than) five( questions)?\b")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")
# A longer "question" is a runaway generation, not a question worth keeping.
MAX_QUESTION_CHARS = 1000

DEFAULT_OPTIMIZER_TEMPLATE = f"""\
You improve the guiding questions that a video anomaly detector answers before it decides. \
The detector read the Current Prompt Questions below, looked at each input video and \
predicted a label; the targets are the correct labels. Rewrite the questions so that the \
detector's predictions match the targets on this batch and on new videos of the same kind.
** Inputs (video frames, one bracketed list per video): **
{FRAMES_ANCHOR}
The detector is a binary classifier of videos. From a sequence of frames it outputs 0 for a \
normal video and 1 for an anomalous video, after answering the prompt questions.
** Current Prompt Questions:**
Guiding questions: answer each question below in one sentence, using only what you see in the frames.
{QUESTIONS_ANCHOR}, decide: 'Is there any anomaly in the video?'
** The detector's predictions: **
{PREDICTION_PLACEHOLDER}
** The targets: **
{TARGET_PLACEHOLDER}
If the predictions already match the targets, you may keep the current questions. Otherwise \
write better ones, grounded in what the frames show, that would lower the error on this batch \
and on the next. Write at most five questions, each ending with a question mark. Think step by \
step, then reply in exactly this format and nothing else:
```
Reasoning:
[your reasoning about the videos, the predictions and the current questions]
{NEW_QUESTIONS_MARKER}:
[the new questions, one per line, at most five]
```
"""


def check_optimizer_template(template: str, source: str = "optimizer prompt") -> str:
    """Return ``template`` if it holds every anchor exactly as needed, else raise ``VeraError``."""
    for anchor in (PREDICTION_PLACEHOLDER, TARGET_PLACEHOLDER, FRAMES_ANCHOR, QUESTIONS_ANCHOR):
        if anchor not in template:
            raise VeraError(f"{source} lacks {anchor!r}, which the optimizer prompt is built around")
    if template.find(FRAMES_ANCHOR) == 0:
        raise VeraError(f"{source}: {FRAMES_ANCHOR!r} must not open the file (text must precede it)")
    return template


def load_optimizer_template(path: Path | None) -> str:
    """Our default template, or the text of ``path`` (e.g. the authors' ``VERA_optimizer_instruct.txt``)."""
    if path is None:
        return DEFAULT_OPTIMIZER_TEMPLATE
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise VeraError(f"cannot read optimizer prompt file {path}: {error}") from None
    return check_optimizer_template(text, f"optimizer prompt file {path}")


def state_question_limit(template: str, num_questions: int, source: str = "optimizer prompt") -> str:
    """``template`` stating the limit ``num_questions`` (see the module docstring); unchanged for 5."""
    if num_questions == DEFAULT_NUM_QUESTIONS:
        return template
    if not LIMIT_PHRASE.search(template):
        raise VeraError(f"{source} does not state the question limit as 'at most five' or 'no more than five', "
                        f"so it cannot be told --num-questions {num_questions}")
    word = NUMBER_WORDS[num_questions] if num_questions < len(NUMBER_WORDS) else str(num_questions)
    noun = " question" if num_questions == 1 else " questions"
    return LIMIT_PHRASE.sub(lambda match: f"{match[1]} {word}{noun if match[2] else ''}", template)


def batch_frame_block(num_videos: int, num_frames: int) -> str:
    """``[`` + ``[Frame1: <image>\\n…FrameN: <image>\\n] `` once per video + ``]\\n``."""
    return "[" + f"[{frame_lines(num_frames)}] " * num_videos + "]\n"


def build_optimizer_prompt(template: str, questions: list[str], predictions: list[int],
                           targets: list[int], num_frames: int = 8, with_frames: bool = True,
                           frame_layout: str = "released") -> str:
    """The optimizer's prompt for one batch (``len(predictions)`` videos of ``num_frames`` frames, or no frame
    block at all without frames); in the ``qwen-video`` layout the block is the one video slot."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    text = template.replace(PREDICTION_PLACEHOLDER, str([int(p) for p in predictions]))
    text = text.replace(TARGET_PLACEHOLDER, str([int(t) for t in targets]))
    if with_frames:
        at = text.find(FRAMES_ANCHOR)  # > 0: check_optimizer_template refuses a template without it or opening with it
        block = VIDEO_SLOT if frame_layout == "qwen-video" else batch_frame_block(len(predictions), num_frames)
        # ``at - 1``: the released slice, which repeats the character before the anchor.
        text = text[:at] + block + text[at - 1:]
    at = text.find(QUESTIONS_ANCHOR)
    return text[:at] + "".join(question + "\n" for question in questions) + text[at:]


@dataclass(frozen=True)
class Proposal:
    """What the optimizer's answer yields: new questions, or why the old ones stay."""

    questions: list[str] | None
    status: str  # "accepted" or the reason for rejecting the answer

    @property
    def accepted(self) -> bool:
        return self.questions is not None


def question_problem(questions: list[str], max_questions: int = DEFAULT_NUM_QUESTIONS) -> str | None:
    """Why ``questions`` cannot replace the current ones (at most ``max_questions``), or None if they can."""
    if not questions:
        return "empty"
    if len(questions) > max_questions:
        return f"too_many_questions ({len(questions)} > {max_questions})"
    for question in questions:
        if "?" not in question:
            return f"not_a_question: {question[:80]!r}"
        if len(question) > MAX_QUESTION_CHARS:
            return f"question_too_long ({len(question)} characters)"
    try:
        check_questions(questions)  # what the learner prompt refuses, e.g. an image placeholder
    except VeraError as error:
        return f"breaks_the_prompt: {error}"
    return None


def _lines_after(text: str, at: int) -> list[str]:
    """The non-blank lines after the marker at ``at``, up to a closing code fence."""
    rest = text[at + len(NEW_QUESTIONS_MARKER):]
    first, _, tail = rest.partition("\n")
    # The header line's own decoration (":", "**"); anything else on it is content.
    lines = [first.strip().lstrip(":*").strip()] + tail.split("\n")
    kept = []
    for line in (line.strip() for line in lines):
        if line.startswith("```"):
            if kept:
                break
            continue
        if line:
            kept.append(line)
    return kept


def extract_new_questions(response: str, max_questions: int = DEFAULT_NUM_QUESTIONS) -> Proposal:
    """Read the new questions (at most ``max_questions``) from the optimizer's answer.

    The questions are the non-blank lines after "New Prompt Questions" (up to
    a closing code fence). An answer may mention the phrase in its reasoning
    too, so the occurrences are tried from the last one back and the first
    usable list wins. Nothing usable leaves the questions unchanged: the
    ``status`` says why.
    """
    if not response.strip():
        return Proposal(None, "empty_response")
    starts = []
    at = response.find(NEW_QUESTIONS_MARKER)
    while at != -1:
        starts.append(at)
        at = response.find(NEW_QUESTIONS_MARKER, at + 1)
    if not starts:
        return Proposal(None, "no_marker")
    problem = "empty"
    for at in reversed(starts):
        questions = _lines_after(response, at)
        found = question_problem(questions, max_questions)
        if found is None:
            return Proposal(questions, "accepted")
        if at == starts[-1]:
            problem = found  # report what was wrong with the answer's actual list
    return Proposal(None, problem)
