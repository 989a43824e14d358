"""The learner prompt: the authors' file, our default template, questions and frame layouts."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from vera.errors import VeraError
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, frame_lines, insert_questions, learner_request, load_questions, load_template, preset_questions
from vera.constants import FRAME_LAYOUTS, PRESET_QUESTIONS

ANCHOR = "Based on the analysis above"
EIGHT_LINES = "".join(f"Frame{n}: <image>\n" for n in range(1, 9))

# sha256 and length of the prompt that a private run of the released
# string-building code produced from the authors' file and the UCF questions.
RELEASED_UCF_PROMPT_SHA256 = "f3d5e7c9894c852f761251cb9451786ee0a5464dc600a66c0587c375dd120924"
RELEASED_UCF_PROMPT_LENGTH = 1754


@pytest.fixture(scope="module")
def authors_file(shared_data):
    return shared_data / "prompts" / "VERA_learner_instruct.txt"


def test_frame_lines():
    assert frame_lines(8) == EIGHT_LINES
    assert frame_lines(2) == "Frame1: <image>\nFrame2: <image>\n"
    assert frame_lines(0) == ""


def test_authors_prompt_matches_the_issue_description(authors_file):
    raw = authors_file.read_text(encoding="utf-8")
    questions = PRESET_QUESTIONS["ucf"]
    prompt = build_learner_prompt(load_template(authors_file), questions)

    head, tail = raw.split(ANCHOR, 1)
    # Questions, each with its newline, sit just before the anchor sentence.
    expected_head = head + "".join(q + "\n" for q in questions)
    assert prompt.startswith(expected_head + ANCHOR)
    # $Data became the 8 frame lines; the brackets around it stayed.
    assert "[$Data]" in tail
    assert prompt[len(expected_head):] == ANCHOR + tail.replace("$Data", EIGHT_LINES)
    assert "[Frame1: <image>\nFrame2: <image>\n" in prompt and "Frame8: <image>\n]\n" in prompt
    assert prompt.count("<image>") == 8
    assert len(prompt) == len(raw) - len("$Data") + len(EIGHT_LINES) + sum(len(q) + 1 for q in questions)


def test_authors_prompt_is_identical_to_the_released_build(authors_file):
    prompt = build_learner_prompt(load_template(authors_file), PRESET_QUESTIONS["ucf"])
    assert len(prompt) == RELEASED_UCF_PROMPT_LENGTH
    assert hashlib.sha256(prompt.encode("utf-8")).hexdigest() == RELEASED_UCF_PROMPT_SHA256


def test_default_template_has_the_released_structure():
    prompt = build_learner_prompt(load_template(None), PRESET_QUESTIONS["xd"])
    assert load_template(None) == DEFAULT_LEARNER_TEMPLATE
    assert "[" + EIGHT_LINES + "]" in prompt
    questions_block = "".join(q + "\n" for q in PRESET_QUESTIONS["xd"])
    assert questions_block + ANCHOR in prompt
    assert prompt.index(ANCHOR) < prompt.index("Frame1: <image>")
    assert "Answers to Prompt Questions:" in prompt and "\nOutput: [0 or 1]\n" in prompt
    # The answer format comes last, so the model's reply mirrors it.
    assert prompt.rindex("Output") > prompt.rindex("<image>")


def test_insert_questions_places_each_with_a_newline():
    template = "intro\nBased on the analysis above, say.\nBased on the analysis above again"
    assert insert_questions(template, ["q1?", "q2?"]) == (
        "intro\nq1?\nq2?\nBased on the analysis above, say.\nBased on the analysis above again")
    with pytest.raises(VeraError, match="Based on the analysis above"):
        insert_questions("no anchor here", ["q"])


def test_presets_are_the_published_questions():
    assert set(PRESET_QUESTIONS) == {"ucf", "xd", "ucf-qwen"}
    for questions in PRESET_QUESTIONS.values():
        assert [q.split(". ", 1)[0] for q in questions] == ["1", "2", "3", "4", "5"]
        assert all(q.endswith("?") and "\n" not in q for q in questions)
    assert PRESET_QUESTIONS["ucf"][3] == ("4. Is there any visible damage or unusual movement in the video "
                                         "that indicates an anomaly?")
    assert PRESET_QUESTIONS["xd"][4].endswith("such as a sudden change in the camera angle or a loss of video quality?")
    assert PRESET_QUESTIONS["ucf-qwen"][0] == ("1. Are there any unusual movements or positions of the vehicles "
                                              "in the video frames?")
    # The released training script's two hand-written starting questions (the paper's Q0).
    assert preset_questions("initial") == [
        "1. Is there any suspicious person or object that looks unusual in this scene?",
        "2. Is there any behavior that looks unusual in this scene?",
    ]
    assert preset_questions("xd") == PRESET_QUESTIONS["xd"]
    with pytest.raises(VeraError, match="ucf-qwen"):
        preset_questions("nope")


def test_load_questions(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("1. First?\n\n   \n2. Second?  \n", encoding="utf-8")
    assert load_questions(path) == ["1. First?", "2. Second?"]
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(VeraError, match="no questions"):
        load_questions(path)
    with pytest.raises(VeraError, match="not found"):
        load_questions(tmp_path / "absent.txt")
    path.write_text("Look at <image> here?\n", encoding="utf-8")
    with pytest.raises(VeraError, match="question 1"):
        load_questions(path)


def test_load_template_errors(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("no slots at all", encoding="utf-8")
    with pytest.raises(VeraError, match=r"\$Data.*Based on the analysis above"):
        load_template(path)
    with pytest.raises(VeraError, match="not found"):
        load_template(tmp_path / "absent.txt")


def test_learner_request_layouts():
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"])
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(8)]
    assert FRAME_LAYOUTS == ("released", "per-frame", "qwen-video")
    released = learner_request(prompt, frames, "vid", "released")
    per_frame = learner_request(prompt, frames, "vid", "per-frame")
    assert released.image_block and not per_frame.image_block
    assert released.prompt == per_frame.prompt == prompt
    assert [int(f[0, 0, 0]) for f in per_frame.images] == list(range(8))
    with pytest.raises(VeraError, match="vid: the prompt has 8"):
        learner_request(prompt, frames[:3], "vid", "per-frame")
    video = learner_request(build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"], 8, "qwen-video"), frames,
                            "vid", "qwen-video")
    assert video.video and not video.image_block and video.images == frames
    with pytest.raises(VeraError, match="vid: the qwen-video layout needs the prompt built for it"):
        learner_request(prompt, frames, "vid", "qwen-video")
    with pytest.raises(VeraError, match="unknown frame layout"):
        learner_request(prompt, frames, "vid", "tiles")
