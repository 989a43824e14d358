"""A learner prompt longer than the model's context is refused before the model runs, in every command that
runs the learner (Step 1, detect.py, training), naming where the questions came from, the count and the limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt
from vera.constants import INITIAL_QUESTIONS, PRESET_QUESTIONS
from fixtures.videos import write_index_video
from fixtures.scripts import run

LIMIT = 8192  # the tiny models' max_position_embeddings (vera.vlm.tiny_model)
CONTEXT_TOKENS_PER_FRAME = 4  # the tiny InternVL: (32 / 8)² patches, merged 2×2


def expected_tokens(model: Path, questions: list[str]) -> int:
    """The tokens the tiny InternVL is fed for one request of the released layout, counted by hand: the chat
    turn of its template around the prompt, all 8 frames' image tokens in one <img>…</img> at the first
    placeholder, tokenized by the checkpoint's own tokenizer."""
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, questions, 8, "released")
    first, rest = prompt.split("<image>", 1)
    text = first + "<img>" + "<IMG_CONTEXT>" * (8 * CONTEXT_TOKENS_PER_FRAME) + "</img>" + rest
    chat = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return len(AutoTokenizer.from_pretrained(model)(chat, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 20-frame video with its Step 1 annotation and training list, and a 200,000-character question file."""
    root = tmp_path_factory.mktemp("context")
    write_index_video(root / "videos" / "Fighting001_x264.mp4", 20, size=(64, 48))
    (root / "ann.json").write_text(json.dumps([{"video": "frames/Fighting/Fighting001_x264.mp4",
                                                "temporal_label": [2, 10, -1, -1], "length": 20}]))
    (root / "train.json").write_text(json.dumps([{"video": "frames/Fighting/Fighting001_x264.mp4", "length": 20}]))
    question = "1. Is anyone in the scene fighting, stealing, running away or setting something on fire? "
    (root / "long.txt").write_text(question * (200_000 // len(question)) + "\n")
    return root


def errors(captured: str) -> list[str]:
    """The error lines of a command's stderr (model loading draws progress bars there too)."""
    return [line for line in captured.splitlines() if line.startswith("error:")]


def _step1(inputs: Path, model: Path, output: Path, *extra: str) -> int:
    return run("generate_initial_score", [
        "--dataset", "ucf", "--annotations", str(inputs / "ann.json"), "--videos", str(inputs / "videos"),
        "--model", str(model), "--device", "cpu", "--no-progress", "--output", str(output), *extra])


def test_step1_refuses_a_question_file_beyond_the_context(inputs, tiny_models, tmp_path, capsys):
    model = tiny_models.path("internvl")
    questions = inputs / "long.txt"
    count = expected_tokens(model, [questions.read_text().strip()])
    assert count > LIMIT
    started = time.monotonic()
    assert _step1(inputs, model, tmp_path / "out", "--questions", str(questions)) == 2
    assert time.monotonic() - started < 60  # no answer is generated
    assert errors(capsys.readouterr().err) == [
        f"error: the learner prompt (--questions {questions}, the default template) is {count} tokens with its 8 "
        f"frames, more than model {model}'s context of {LIMIT} tokens (max_position_embeddings); shorten the "
        "questions"]
    assert not list((tmp_path / "out").glob("*.json"))  # nothing computed, no run record


def test_step1_refuses_an_answer_budget_beyond_the_context(inputs, tiny_models, tmp_path, capsys):
    model = tiny_models.path("internvl")
    count = expected_tokens(model, PRESET_QUESTIONS["ucf"])
    fits = LIMIT - count
    assert _step1(inputs, model, tmp_path / "out", "--preset", "ucf", "--max-new-tokens", str(fits + 1)) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: the learner prompt (--preset ucf, the default template) is {count} tokens with its 8 frames, and "
        f"--max-new-tokens {fits + 1} would let the answer run past model {model}'s context of {LIMIT} tokens "
        f"(max_position_embeddings); use --max-new-tokens {fits} or fewer, or shorter questions"]
    # The label-only mode generates no answer: its prompt alone must fit.
    assert _step1(inputs, model, tmp_path / "ok", "--preset", "ucf", "--max-new-tokens", str(fits + 1),
                  "--score-mode", "label") == 0
    assert (tmp_path / "ok" / "Fighting001_x264.json").is_file()
    # The largest budget that fits is accepted (checked on the backend: generating 7800 tokens would take long).
    from vera.errors import VeraError
    from vera.vlm.context import check_context

    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], 8, "released")
    backend = tiny_models.backend("internvl")
    assert check_context(backend, prompt, "released", 8, 448, fits, "preset") == count
    with pytest.raises(VeraError, match=f"use --max-new-tokens {fits} or fewer"):
        check_context(backend, prompt, "released", 8, 448, fits + 1, "preset")


def test_detect_refuses_a_question_file_beyond_the_context(inputs, tiny_models, tmp_path, capsys):
    model = tiny_models.path("internvl")
    questions = inputs / "long.txt"
    assert run("detect", [str(inputs / "videos"), "--model", str(model), "--questions", str(questions),
                          "--skip-step2", "--device", "cpu", "--no-progress", "--workers", "1",
                          "--output", str(tmp_path / "out")]) == 2
    error = errors(capsys.readouterr().err)
    assert len(error) == 1 and error[0].startswith(
        f"error: the learner prompt (--questions {questions}, the default template) is "
                            f"{expected_tokens(model, [questions.read_text().strip()])} tokens with its 8 frames, "
                            f"more than model {model}'s context of {LIMIT} tokens")
    assert not list((tmp_path / "out" / "step1").glob("*.json"))


def test_training_refuses_a_question_file_beyond_the_context(inputs, tiny_models, tmp_path, capsys):
    model = tiny_models.path("internvl")
    questions = inputs / "long.txt"
    base = ["--dataset", "ucf", "--train", str(inputs / "train.json"), "--val", str(inputs / "train.json"),
            "--videos", str(inputs / "videos"), "--model", str(model), "--accelerator", "cpu"]
    assert run("training", base + ["--questions", str(questions), "--output", str(tmp_path / "out")]) == 2
    assert errors(capsys.readouterr().err) == [
        f"error: the learner prompt (--questions {questions}, the default template) is "
        f"{expected_tokens(model, [questions.read_text().strip()])} tokens with its 8 frames, more than model "
        f"{model}'s context of {LIMIT} tokens (max_position_embeddings); shorten the questions"]
    assert not (tmp_path / "out" / "history.jsonl").exists()
    # Without --questions the released two are counted, and the message says so.
    assert run("training", base + ["--max-new-tokens", "8000", "--output", str(tmp_path / "budget")]) == 2
    count = expected_tokens(model, INITIAL_QUESTIONS)
    assert errors(capsys.readouterr().err)[0].startswith(
        f"error: the learner prompt (the two initial questions, the default template) is {count} tokens")
