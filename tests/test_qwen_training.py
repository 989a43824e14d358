"""Training in the qwen-video frame layout against the authors' Qwen2-VL training script (``vera_qwen_train.py``).

The references are written here from the description of that script: per batch, the optimizer
template's prediction and target lists replaced by Python list strings, Qwen2-VL's video slot inserted before
"** Model Descriptions: **" by the released slice (the character before the marker repeated after the slot), the
questions inserted before "Based on the analysis above", the authors' chat string around it all, and ONE video
item holding every frame of the batch in order, through ``qwen_vl_utils.process_vision_info`` and the processor of
their era (which resized every frame of a video to its first frame's size, bicubic); 50 epochs; validation labels
read from the answer's last character.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_optimizer import expected_authors_prompt
from test_qwen_video import FIGHTING, SYS_END, SYS_START, VIDEO_PREFIX, authors_frames, era_pixels, write_jpegs
from test_training import (  # noqa: F401 - ucf is a fixture
    GOOD,
    Script,
    _jsonl,
    _options,
    _proposal,
    _run,
    ucf,
)

from vera.errors import VeraError
from vera.learning.run_state import HISTORY_FILE, VALIDATION_FILE
from vera.learning.settings import TrainingOptions
from vera.vlm.backends.base import VLMAnswer, VLMRequest
from vera.vlm.backends.scripted import ScriptedBackend
from vera.vlm.parsing import last_character_label
from vera.constants import INITIAL_QUESTIONS
from vera.vlm.qwen_video import chat_text
from fixtures.scripts import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BEAUTIFUL_MIND = "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101"  # an XD clip, 640×346


def authors_optimizer_text(authors: str, questions: list[str], predictions: list[int], labels: list[int],
                           with_video: bool = True) -> str:
    """The optimizer's full text, as the script built it, line by line from the template file: the slot then the
    repeated newline on a line of their own before the "** Model Descriptions: **" line."""
    assert authors[authors.find("** Model Descriptions: **") - 1] == "\n"  # what the released slice repeats
    body = expected_authors_prompt(authors, questions, str(predictions), str(labels),
                                   VIDEO_PREFIX + "\n" if with_video else None)
    return SYS_START + body + SYS_END


def sliced_optimizer_text(authors: str, questions: list[str], predictions: list[int], labels: list[int]) -> str:
    """The same text by the script's own string operations, as described (a second, literal reading)."""
    text = authors.replace("[" + " ".join(["[$Prediction]"] * 10) + "]", str(predictions))
    text = text.replace("[" + " ".join(["[$GroundTruth]"] * 10) + "]", str(labels))
    i = text.find("** Model Descriptions: **")
    text = text[:i] + VIDEO_PREFIX + text[i - 1:]
    q = text.find("Based on the analysis above")
    text = text[:q] + "".join(question + "\n" for question in questions) + text[q:]
    return SYS_START + text + SYS_END


def optimizer_reference(processor, paths: list[Path], text: str) -> dict[str, np.ndarray]:
    """input_ids, video_grid_thw and pixel_values_videos of the script's optimizer call: one video of all frame
    files; the era's processor resized every frame to the first frame's size (bicubic)."""
    frames = authors_frames(paths)
    first = frames[0].size
    frames = [frame if frame.size == first else frame.resize(first, Image.Resampling.BICUBIC) for frame in frames]
    width, height = first
    grid = [len(frames) // 2, height // 14, width // 14]
    expanded = text.replace("<|video_pad|>", "<|video_pad|>" * (grid[0] * grid[1] * grid[2] // 4))
    return {"input_ids": np.array(processor.tokenizer.encode(expanded, add_special_tokens=False), np.int64),
            "video_grid_thw": np.array([grid], np.int64), "pixel_values_videos": era_pixels(frames)}


@pytest.fixture(scope="module")
def prompt_files(shared_data) -> tuple[Path, Path]:
    return shared_data / "prompts" / "VERA_learner_instruct.txt", shared_data / "prompts" / "VERA_optimizer_instruct.txt"


# -- the optimizer's request ----------------------------------------------------------------------

def test_optimizer_text_and_frames_are_the_scripts(ucf: dict, tmp_path: Path, prompt_files) -> None:
    learner_file, optimizer_file = prompt_files
    _, backend = _run(ucf, tmp_path / "run", Script({}), frame_layout="qwen-video", prompt_file=learner_file,
                      optimizer_prompt_file=optimizer_file, max_steps=1)
    step = _jsonl(tmp_path / "run" / HISTORY_FILE)[0]
    [optimizer] = [r for r in backend.requests if r.key == "optimizer step 1"]
    authors = optimizer_file.read_text(encoding="utf-8")
    expected = authors_optimizer_text(authors, INITIAL_QUESTIONS, step["predictions"], step["labels"])
    assert expected == sliced_optimizer_text(authors, INITIAL_QUESTIONS, step["predictions"], step["labels"])
    assert chat_text(optimizer.prompt) == expected
    assert ("** Inputs (a batch of i.i.d. video frames): **\n" + VIDEO_PREFIX + "\n** Model Descriptions: **\n"
            in expected)
    assert optimizer.video and not optimizer.image_block and "<image>" not in optimizer.prompt
    # One video: video 1's 8 frames, then video 2's, unresized, as the learner got them.
    learner = {r.key: r for r in backend.requests if r.key in step["videos"]}
    batch = [frame for record in step["learner"] for frame in learner[record["key"]].images]
    assert len(optimizer.images) == 16 and all(
        np.array_equal(got, want) for got, want in zip(optimizer.images, batch, strict=True))
    assert {image.shape for image in optimizer.images} == {(8, 8, 3)}


def test_optimizer_without_frames_is_text_only_in_the_authors_chat(ucf: dict, tmp_path: Path, prompt_files,
                                                                   tiny_models) -> None:
    learner_file, optimizer_file = prompt_files
    _, backend = _run(ucf, tmp_path / "run", Script({}), frame_layout="qwen-video", prompt_file=learner_file,
                      optimizer_prompt_file=optimizer_file, max_steps=1, optimizer_frames=False)
    step = _jsonl(tmp_path / "run" / HISTORY_FILE)[0]
    [optimizer] = [r for r in backend.requests if r.key == "optimizer step 1"]
    expected = authors_optimizer_text(optimizer_file.read_text(encoding="utf-8"), INITIAL_QUESTIONS,
                                      step["predictions"], step["labels"], with_video=False)
    assert chat_text(optimizer.prompt) == expected and optimizer.video and optimizer.images == []
    assert "** Inputs (a batch of i.i.d. video frames): **\n** Model Descriptions: **\n" in expected
    inputs = tiny_models.backend("qwen2_vl")._batch([optimizer]).inputs
    processor = tiny_models.backend("qwen2_vl").processor
    assert inputs["input_ids"][0].tolist() == processor.tokenizer.encode(expected, add_special_tokens=False)
    assert not any(name.startswith("pixel_values") for name in inputs)
    frames_without_slot = VLMRequest(optimizer.prompt, [np.zeros((28, 28, 3), np.uint8)] * 2, "o", video=True)
    with pytest.raises(VeraError, match="o: a qwen-video request needs one .* slot and its frames"):
        tiny_models.backend("qwen2_vl")._batch([frames_without_slot])


# -- epochs and the validation rule -----------------------------------------------------------------

def test_epochs_default_to_the_authors_per_layout(ucf: dict, tmp_path: Path, tiny_models,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def options(**overrides) -> TrainingOptions:
        values = dict(dataset="ucf", train=ucf["train"], val=ucf["val"], frames_dir=ucf["frames"], output=tmp_path)
        return TrainingOptions(**{**values, **overrides})

    assert options(frame_layout="qwen-video").epochs == 50
    assert options().epochs == 10 and options(frame_layout="per-frame").epochs == 10
    assert options(frame_layout="qwen-video", epochs=7).epochs == 7
    # Through training.py: resolved from the model's layout, recorded in run.json.
    backend = ScriptedBackend(Script({}))
    monkeypatch.setattr(importlib.import_module("vera.vlm.backends"), "load_backend", lambda *a, **k: backend)
    cli = load_script("training")
    base = ["--dataset", "ucf", "--train", str(ucf["train"]), "--val", str(ucf["val"]), "--frames", str(ucf["frames"]),
            "--max-steps", "1", "--limit-val", "1", "--accelerator", "cpu"]
    for arch, extra, epochs in (("qwen2_vl", [], 50), ("qwen2_vl", ["--epochs", "7"], 7), ("internvl", [], 10)):
        out = tmp_path / f"{arch}{extra}"
        assert cli.main(base + ["--model", str(tiny_models.path(arch)), "--output", str(out)] + extra) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["options"]["epochs"] == epochs
        assert run["identity"]["frame_layout"] == ("qwen-video" if arch == "qwen2_vl" else "released")


def _answers_ending_in_a_full_stop(request: VLMRequest) -> str:
    """Right by the Output rule; by the last character, a normal video's answer is unreadable."""
    if request.key.startswith("optimizer step "):
        return "Reasoning: keep them."
    return "Output: 0 (normal)." if request.key.startswith("Normal") else "Output:\n1"


@pytest.mark.parametrize(("layout", "accuracy", "rule"), [("released", 1.0, "output"),
                                                         ("qwen-video", 0.5, "last-character")])
def test_validation_reads_the_last_character_in_the_qwen_video_layout(ucf: dict, tmp_path: Path, layout: str,
                                                                      accuracy: float, rule: str) -> None:
    _run(ucf, tmp_path / "run", _answers_ending_in_a_full_stop, frame_layout=layout, max_steps=1)
    history = _jsonl(tmp_path / "run" / HISTORY_FILE)
    assert history[0]["train_accuracy"] == 1.0  # training answers: the Output rule in every layout, as released
    validation = _jsonl(tmp_path / "run" / VALIDATION_FILE)
    assert [record["accuracy"] for record in validation] == [accuracy, accuracy]
    assert all(record["rule"] == rule for record in validation)
    predictions = {record["key"]: record["prediction"] for record in validation[0]["predictions"]}
    assert predictions == {key: (1 if not key.startswith("Normal") else 0 if rule == "output" else 2)
                           for key in predictions}
    # Unreadable answers are wrong in the AUC too: every video then scores 1.
    assert validation[0]["auc"] == (1.0 if rule == "output" else 0.5)
    identity = json.loads((tmp_path / "run" / "run.json").read_text())["identity"]
    assert identity.get("validation_rule") == (rule if layout == "qwen-video" else None)


# -- a real run with the tiny Qwen2-VL ------------------------------------------------------------

NEW_QUESTIONS = ["1. Is anyone fighting? (new)", "2. Is anything burning?"]


def test_tiny_qwen2_vl_training_feeds_the_optimizer_as_the_script_and_resumes(
        shared_data: Path, tmp_path: Path, prompt_files, tiny_models, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two videos of different sizes; the optimizer's dumped inputs equal the reference; its answer is scripted
    (the tiny model's is gibberish) so that step 2, after a resume, asks the new questions."""
    frames = tmp_path / "frames"
    write_jpegs(shared_data / "clips" / f"{FIGHTING}.mp4", frames / "Fighting033_x264", 16, size=(96, 72))
    write_jpegs(shared_data / "clips" / f"{BEAUTIFUL_MIND}.mp4", frames / "Normal_Videos001_x264", 16, size=(140, 56))
    listing = tmp_path / "train.json"
    listing.write_text(json.dumps([{"video": "frames/Fighting/Fighting033_x264.mp4", "length": 16},
                                   {"video": "frames/Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4",
                                    "length": 16}]))
    backend = tiny_models.backend("qwen2_vl")
    monkeypatch.setattr(backend, "dump_inputs", None)  # the shared backend is left as found
    generate = backend.generate

    def scripted_optimizer(requests: list[VLMRequest], max_new_tokens: int = 1024) -> list[VLMAnswer]:
        answers = generate(requests, max_new_tokens)  # the real call: inputs built, dumped and generated
        return [VLMAnswer(_proposal(NEW_QUESTIONS), extra=answer.extra) if request.key.startswith("optimizer")
                else answer for request, answer in zip(requests, answers, strict=True)]

    monkeypatch.setattr(backend, "generate", scripted_optimizer)
    monkeypatch.setattr(importlib.import_module("vera.vlm.backends"), "load_backend", lambda *a, **k: backend)
    learner_file, optimizer_file = prompt_files
    out, dumps = tmp_path / "run", tmp_path / "dumps"
    argv = ["--dataset", "ucf", "--train", str(listing), "--val", str(listing), "--frames", str(frames),
            "--model", str(tiny_models.path("qwen2_vl")), "--prompt-file", str(learner_file),
            "--optimizer-prompt-file", str(optimizer_file), "--limit-val", "1", "--max-new-tokens", "2",
            "--accelerator", "cpu", "--output", str(out), "--dump-inputs", str(dumps)]
    cli = load_script("training")
    assert cli.main(argv + ["--max-steps", "1"]) == 0
    assert cli.main(argv + ["--max-steps", "2"]) == 0

    history = _jsonl(out / HISTORY_FILE)
    assert [r["step"] for r in history] == [1, 2] and [r["update_accepted"] for r in history] == [True, True]
    assert history[0]["questions_before"] == INITIAL_QUESTIONS and history[1]["questions_before"] == NEW_QUESTIONS
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["epochs"] == 50 and run["identity"]["frame_layout"] == "qwen-video"
    assert run["identity"]["optimizer_input"] == "one video"

    # Step 2's optimizer (after the resume): its inputs as the script built them, frame for frame.
    step = history[1]
    paths = [frames / record["key"] / f"{index:06d}.jpg" for record in step["learner"] for index in record["frames"]]
    assert len(paths) == 16
    text = authors_optimizer_text(optimizer_file.read_text(encoding="utf-8"), NEW_QUESTIONS, step["predictions"],
                                  step["labels"])
    processor = backend.processor
    reference = optimizer_reference(processor, paths, text)
    with np.load(dumps / "optimizer_step_2.npz") as arrays:
        dumped = {key: arrays[key] for key in arrays.files}
    assert set(dumped) == {"input_ids", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw"}
    sizes = {Image.open(path).size for path in paths}
    assert sizes == {(96, 72), (140, 56)}  # qwen-vl-utils: 84×84 and 140×56, so one video resizes to the other
    first = (84, 84) if step["learner"][0]["key"].startswith("Fighting") else (140, 56)
    assert reference["video_grid_thw"].tolist() == [[8, first[1] // 14, first[0] // 14]]
    for key, value in reference.items():
        assert dumped[key].dtype == value.dtype and np.array_equal(dumped[key], value), key
    decoded = (dumps / "optimizer_step_2.txt").read_text()
    assert decoded == processor.tokenizer.decode(reference["input_ids"].tolist(), skip_special_tokens=False)
    assert (dumps / "optimizer_step_1.npz").is_file()


@pytest.mark.parametrize(("answer", "label"), [("Output:\n1", 1), ("Output: 0", 0), ("Output: 0 ", 2), ("Output: 1\n", 2),
                                              ("Output: 0.", 2), ("", 2), ("1", 1)])
def test_last_character_rule(answer: str, label: int) -> None:
    """``response[-1]`` '1' → 1, '0' → 0, anything else 2 (an empty answer too, where the script would fail)."""
    assert last_character_label(answer) == label


def test_a_qwen_video_run_from_before_is_not_continued(ucf: dict, tmp_path: Path) -> None:
    """A run folder whose identity lacks the qwen-video training settings (made before they existed) is refused."""
    out = tmp_path / "run"
    _run(ucf, out, Script({}), frame_layout="qwen-video", max_steps=1)
    record = json.loads((out / "run.json").read_text())
    for key in ("optimizer_input", "validation_rule"):
        del record["identity"][key]
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(VeraError, match=r"other settings \(optimizer_input, validation_rule differ"):
        _run(ucf, out, Script({}), frame_layout="qwen-video", max_steps=2)
