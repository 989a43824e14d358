"""The optimizer's prompt (ours and the authors') and reading its proposed questions."""

from __future__ import annotations

from pathlib import Path

import pytest

from vera.errors import VeraError
from vera.learning.optimizer_prompt import (
    DEFAULT_OPTIMIZER_TEMPLATE,
    build_optimizer_prompt,
    extract_new_questions,
    load_optimizer_template,
    question_problem,
)

QUESTIONS = [
    "1. Is there any suspicious person or object that looks unusual in this scene?",
    "2. Is there any behavior that looks unusual in this scene?",
]


def _frames_text(num_videos: int, num_frames: int) -> str:
    one_video = "".join(f"Frame{i}: <image>\n" for i in range(1, num_frames + 1))
    return "[" + "".join("[" + one_video + "] " for _ in range(num_videos)) + "]\n"


def expected_authors_prompt(authors: str, questions: list[str], predictions: str, targets: str,
                            frame_block: str | None) -> str:
    """The authors' optimizer prompt assembled line by line from their file: ``frame_block`` (if any) before
    "** Model Descriptions: **", the questions before "Based on the analysis above", the lists replaced."""
    expected = []
    for line in authors.splitlines(keepends=True):
        if frame_block is not None and line.startswith("** Model Descriptions: **"):
            expected.append(frame_block)
        if line.startswith("Based on the analysis above"):
            expected.extend(question + "\n" for question in questions)
        if line.startswith("[[$Prediction]"):
            line = predictions + "\n"
        if line.startswith("[[$GroundTruth]"):
            line = targets + "\n"
        expected.append(line)
    return "".join(expected)


def test_authors_prompt_is_built_as_released(shared_data: Path) -> None:
    """From the issue: lists replace the placeholder lists, the frame block goes before
    "** Model Descriptions: **" with the newline before it repeated, the questions before
    "Based on the analysis above"."""
    path = shared_data / "prompts" / "VERA_optimizer_instruct.txt"
    authors = path.read_text(encoding="utf-8")
    built = build_optimizer_prompt(load_optimizer_template(path), QUESTIONS, [1, 0], [1, 1], num_frames=8)

    # The expected text, assembled line by line from the file.
    assert built == expected_authors_prompt(authors, QUESTIONS, "[1, 0]", "[1, 1]", _frames_text(2, 8) + "\n")

    assert "** Inputs (a batch of i.i.d. video frames): **\n[[Frame1: <image>\nFrame2: <image>\n" in built
    assert "Frame8: <image>\n] [Frame1: <image>\n" in built
    assert "Frame8: <image>\n] ]\n\n** Model Descriptions: **\n" in built
    assert "** The model predictions: **\n[1, 0]\n** The targets: **\n[1, 1]\n" in built
    assert built.count("<image>") == 16
    assert "$Prediction" not in built and "$GroundTruth" not in built
    assert (
        "provide an explanation in one sentence. \n" + QUESTIONS[0] + "\n" + QUESTIONS[1] + "\nBased on the analysis above"
    ) in built


def test_default_template_builds_a_complete_prompt() -> None:
    built = build_optimizer_prompt(DEFAULT_OPTIMIZER_TEMPLATE, QUESTIONS, [0, 1, 1], [1, 1, 0], num_frames=4)
    assert "[0, 1, 1]" in built and "[1, 1, 0]" in built
    assert _frames_text(3, 4) + "\n** Model Descriptions: **" in built
    assert built.count("<image>") == 12
    assert "\n".join(QUESTIONS) + "\nBased on the analysis above" in built
    assert "New Prompt Questions:" in built
    assert "[$" not in built


def test_one_video_batch() -> None:
    built = build_optimizer_prompt(DEFAULT_OPTIMIZER_TEMPLATE, QUESTIONS[:1], [1], [0], num_frames=8)
    assert "[[Frame1: <image>\n" in built and "Frame8: <image>\n] ]\n" in built
    assert built.count("<image>") == 8


def test_optimizer_file_without_anchors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text(DEFAULT_OPTIMIZER_TEMPLATE.replace("** Model Descriptions: **", "Model:"), encoding="utf-8")
    with pytest.raises(VeraError, match=r"mine\.txt.*Model Descriptions"):
        load_optimizer_template(path)
    with pytest.raises(VeraError, match="cannot read"):
        load_optimizer_template(tmp_path / "absent.txt")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Reasoning:\nThe model missed the fight.\nNew Prompt Questions:\n1. Are people hitting each other?\n"
         "2. Is anyone lying on the ground?\n", ["1. Are people hitting each other?", "2. Is anyone lying on the ground?"]),
        # the format block of the prompt, fenced, with bold header and blank lines
        ("```\nReasoning:\nok\n**New Prompt Questions:**\n\n1. Is a car on fire?\n\n2. Is there smoke?\n```\nDone.",
         ["1. Is a car on fire?", "2. Is there smoke?"]),
        # the phrase in the reasoning too: the last header's list wins
        ("Reasoning:\nMy New Prompt Questions focus on motion.\nNew Prompt Questions:\n1. Is anything moving fast?",
         ["1. Is anything moving fast?"]),
        # content on the header's line
        ("New Prompt Questions: 1. Is a person falling?", ["1. Is a person falling?"]),
        # a trailing mention after the list: the earlier, usable list is taken
        ("New Prompt Questions:\n1. Is there a weapon?\n```\nThese New Prompt Questions are better.",
         ["1. Is there a weapon?"]),
    ],
)
def test_new_questions_are_extracted(response: str, expected: list[str]) -> None:
    proposal = extract_new_questions(response)
    assert proposal.accepted and proposal.status == "accepted"
    assert proposal.questions == expected


@pytest.mark.parametrize(
    ("response", "status"),
    [
        ("", "empty_response"),
        ("   \n", "empty_response"),
        ("Reasoning: the questions are fine.", "no_marker"),
        ("Reasoning:\nx\nNew Prompt Questions:\n", "empty"),
        ("New Prompt Questions:\n" + "".join(f"{i}. Is {i} odd?\n" for i in range(1, 7)), "too_many_questions"),
        ("New Prompt Questions:\n1. Is there a fight?\nLook at the hands.", "not_a_question"),
        ("New Prompt Questions:\n[put your new prompt questions here]", "not_a_question"),
        ("New Prompt Questions:\n1. Is there <image> anything odd?", "breaks_the_prompt"),
        ("New Prompt Questions:\n1. Is $Data odd?", "breaks_the_prompt"),
        ("New Prompt Questions:\n1. Is " + "very " * 300 + "odd?", "question_too_long"),
    ],
)
def test_unusable_answers_are_rejected(response: str, status: str) -> None:
    proposal = extract_new_questions(response)
    assert not proposal.accepted and proposal.questions is None
    assert proposal.status.startswith(status)


def test_question_problem_limits() -> None:
    assert question_problem([f"{i}. Why?" for i in range(5)]) is None  # the paper's m = 5 by default
    assert question_problem([f"{i}. Why?" for i in range(6)]) == "too_many_questions (6 > 5)"
    assert question_problem([f"{i}. Why?" for i in range(7)], max_questions=7) is None
    assert question_problem([f"{i}. Why?" for i in range(2)], max_questions=1) == "too_many_questions (2 > 1)"
    assert question_problem([]) == "empty"
