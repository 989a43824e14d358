"""Verbalized learning driven by a scripted stand-in model: updates, selection, rejection, resume, DDP."""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vera.vlm.backends.base import VLMAnswer, VLMRequest
from vera.vlm.backends.scripted import ScriptedBackend
from vera.errors import VeraError
from vera.learning.launch import train
from vera.learning.run_state import BEST_FILE, CHECKPOINT_FILE, HISTORY_FILE, VALIDATION_FILE, load_checkpoint
from vera.learning.settings import TrainingOptions
from vera.learning.training_data import batch_at, epoch_order
from vera.constants import INITIAL_QUESTIONS
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
METRICS = "logs/version_0/metrics.csv"

# Question sets the scripted learner recognises by a word in them.
GOOD = ["1. Is anyone fighting or stealing? (good)", "2. Is something burning?"]
BAD = ["1. Is the sky blue? (bad)"]


def _write_frames(folder: Path, count: int = 16) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), np.full((8, 8, 3), index * 10, np.uint8))


@pytest.fixture
def ucf(tmp_path: Path) -> dict:
    """Four training and four validation videos as 16-frame JPEG folders, in the UCF list format."""
    frames = tmp_path / "frames"
    train = ["Abuse/Abuse001_x264", "Training_Normal_Videos_Anomaly/Normal_Videos001_x264",
             "Fighting/Fighting002_x264", "Training_Normal_Videos_Anomaly/Normal_Videos002_x264"]
    val = ["Arson/Arson010_x264", "Training_Normal_Videos_Anomaly/Normal_Videos010_x264",
           "Stealing/Stealing011_x264", "Training_Normal_Videos_Anomaly/Normal_Videos011_x264"]
    for name in train + val:
        _write_frames(frames / Path(name).name)
    for split, names in (("train", train), ("val", val)):
        entries = [{"video": f"frames/{name}.mp4", "length": 16} for name in names]
        (tmp_path / f"{split}.json").write_text(json.dumps(entries))
    return {"train": tmp_path / "train.json", "val": tmp_path / "val.json", "frames": frames}


def _label(key: str) -> int:
    return 0 if key.startswith("Normal") or "label_A" in key else 1


def _learner_text(request: VLMRequest) -> str:
    """Good questions answer right, bad ones wrong, anything else says "anomaly"."""
    label = _label(request.key)
    if "(good)" in request.prompt:
        prediction = label
    elif "(bad)" in request.prompt:
        prediction = 1 - label
    else:
        prediction = 1
    return f"Answers to Prompt Questions: looked at {request.key}.\nOutput:\n{prediction}"


def _proposal(questions: list[str]) -> str:
    return "Reasoning:\nscripted.\nNew Prompt Questions:\n" + "\n".join(questions) + "\n"


class Script:
    """A stand-in model: the learner as above; the optimizer answers ``answers[step]`` (1-based)."""

    def __init__(self, answers: dict[int, str], kill_at: str | None = None):
        self.answers = answers
        self.kill_at = kill_at  # a request key at which to simulate a kill
        self.optimizer_calls: list[int] = []

    def __call__(self, request: VLMRequest) -> str:
        if request.key == self.kill_at:
            raise KeyboardInterrupt
        if request.key.startswith("optimizer step "):
            step = int(request.key.rsplit(" ", 1)[1])
            self.optimizer_calls.append(step)
            return self.answers.get(step, "Reasoning: keep them.")
        return _learner_text(request)


def _options(data: dict, output: Path, **overrides) -> TrainingOptions:
    values = dict(dataset="ucf", train=data["train"], val=data["val"], frames_dir=data["frames"], output=output,
                  model="scripted", epochs=2, batch_size=2, val_every=1, val_batch_size=3)
    values.update(overrides)
    return TrainingOptions(**values)


def _run(data: dict, output: Path, script: Script, progress: bool = False, **overrides):
    backend = ScriptedBackend(script)
    state = train(_options(data, output, **overrides), lambda device: backend, accelerator="cpu", progress=progress)
    return state, backend


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


ANSWERS = {1: _proposal(BAD), 2: _proposal(GOOD), 3: "Reasoning: I would rather not.", 4: _proposal(GOOD)}


def test_update_selection_and_outputs(ucf: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = Script(ANSWERS)
    state, backend = _run(ucf, out, script)

    history = _jsonl(out / HISTORY_FILE)
    assert [record["step"] for record in history] == [1, 2, 3, 4]
    assert [record["epoch"] for record in history] == [0, 0, 1, 1]
    assert history[0]["questions_before"] == INITIAL_QUESTIONS
    assert [record["questions_after"] for record in history] == [BAD, GOOD, GOOD, GOOD]
    assert [record["update_accepted"] for record in history] == [True, True, False, True]
    assert history[2]["update_status"] == "no_marker"
    assert history[2]["optimizer_response"] == "Reasoning: I would rather not."
    # Each epoch visits every training video once, in a shuffled order.
    for epoch in (0, 1):
        keys = [key for record in history if record["epoch"] == epoch for key in record["videos"]]
        assert sorted(keys) == sorted(["Abuse001_x264", "Normal_Videos001_x264", "Fighting002_x264", "Normal_Videos002_x264"])
    # The learner of step 2 used BAD (an update takes effect at the next step): all wrong.
    assert history[1]["train_accuracy"] == 0.0 and history[2]["train_accuracy"] == 1.0
    assert history[1]["predictions"] == [1 - label for label in history[1]["labels"]]
    assert history[1]["learner"][0]["response"].startswith("Answers to Prompt Questions")

    validation = _jsonl(out / VALIDATION_FILE)
    assert [record["step"] for record in validation] == [0, 1, 2, 3, 4]
    assert [record["accuracy"] for record in validation] == [0.5, 0.0, 1.0, 1.0, 1.0]
    # Algorithm 1: initial questions first, then replace only on strictly higher accuracy.
    assert [record["selected"] for record in validation] == [True, False, True, False, False]
    assert validation[0]["questions"] == INITIAL_QUESTIONS
    assert validation[2]["auc"] == 1.0 and validation[0]["auc"] == 0.5
    assert len(validation[0]["predictions"]) == 4
    assert (out / BEST_FILE).read_text() == "".join(q + "\n" for q in GOOD)
    assert state.best.step == 2 and state.best.metric == 1.0
    assert state.rejected_updates == 1

    # Requests: learner prompts carry the current questions; the optimizer sees the whole batch.
    optimizer = [r for r in backend.requests if r.key.startswith("optimizer")]
    assert len(optimizer) == 4 and script.optimizer_calls == [1, 2, 3, 4]
    first = optimizer[0]
    assert len(first.images) == 16 and first.image_block
    assert first.prompt.count("<image>") == 16
    assert f"{history[0]['predictions']}" in first.prompt and f"{history[0]['labels']}" in first.prompt
    assert "\n".join(INITIAL_QUESTIONS) + "\nBased on the analysis above" in first.prompt
    learner = [r for r in backend.requests if not r.key.startswith("optimizer")]
    # Frames are resized to 448×448 (PIL bicubic), as Step 1 shows them: the 8×8 JPEGs come back enlarged.
    assert all(len(r.images) == 8 and {i.shape for i in r.images} == {(448, 448, 3)} for r in learner)
    assert {image.shape for image in first.images} == {(448, 448, 3)}
    # Validation is batched: 4 videos in chunks of val_batch_size=3; training batches of 2.
    assert backend.batch_sizes[:2] == [3, 1]
    assert sorted(set(backend.batch_sizes)) == [1, 2, 3]
    assert load_checkpoint(out / CHECKPOINT_FILE).step == 4


def test_checkpoint_is_json_text_and_counters(ucf: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(ucf, out, Script(ANSWERS))
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["kind"] == "training" and run["identity"]["batch_size"] == 2
    assert run["world_size"] == 1 and run["total_steps"] == 4 and run["backend"] == {"backend": "scripted"}
    assert json.loads((out / CHECKPOINT_FILE).read_text()) == {
        "format": "vera-training/2", "fingerprint": run["fingerprint"], "questions": GOOD, "step": 4,
        "last_validated_step": 4,
        "best": {"questions": GOOD, "metric": 1.0, "step": 2, "accuracy": 1.0, "auc": 1.0},
        "rejected_updates": 1, "skipped_videos": 0, "trained_videos": 8,
    }
    (out / CHECKPOINT_FILE).write_text("{\"format\": \"vera-training/2\", \"step\": ")
    with pytest.raises(VeraError, match="checkpoint .*last.ckpt is not valid JSON"):
        _run(ucf, out, Script(ANSWERS))


def test_progress_is_plain_lines_when_not_a_terminal(ucf: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    _run(ucf, tmp_path / "run", Script(ANSWERS), progress=True, max_steps=2, val_every=2)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith(("step ", "validation "))]
    assert [line.split(":")[0] for line in lines] == [
        "validation @ step 0", "step 1/2 (epoch 0)", "step 2/2 (epoch 0)", "validation @ step 2"]
    assert lines[0] == "validation @ step 0: accuracy 0.5, auc 0.5, selected"
    # vera.progress's lines: each step's results, then its rate and eta; the last line, the run's count and time.
    assert re.fullmatch(r"step 1/2 \(epoch 0\): train accuracy 1\.0, update accepted, best 0\.5, "
                        r"([0-9.]+/s|[0-9.]+ s/step), eta \d+ s", lines[1]), lines[1]
    assert re.fullmatch(r"training: 2/2 steps \(100\.0%\), ([0-9.]+/s|[0-9.]+ s/step), finished in \d+ s, "
                        r"best=1\.0, train_acc=0\.0", err.splitlines()[-1]), err


@pytest.mark.parametrize("max_steps, steps, line", [
    (10, 4, "--max-steps 10 is cut short by --epochs 2: 2 epochs of 2 steps end the run after 4 steps "
            "(raise --epochs to train longer)"),
    (3, 3, "--max-steps 3 ends the run before --epochs 2 does (2 epochs of 2 steps would be 4)"),
    (4, 4, None),
])
def test_a_limit_cut_short_by_the_other_is_said_in_one_line(ucf: dict, tmp_path: Path, capsys, max_steps, steps,
                                                            line) -> None:
    # 4 training videos in batches of 2: 2 steps per epoch, 2 epochs.
    state, _ = _run(ucf, tmp_path / "run", Script({}), max_steps=max_steps, val_every=100)
    assert state.step == steps
    said = [text for text in capsys.readouterr().err.splitlines() if text.startswith("--max-steps")]
    assert said == ([line] if line else [])


def test_frames_are_the_released_indices(ucf: dict, tmp_path: Path) -> None:
    """8 frames at np.arange(0, 16, 2): each JPEG holds its index * 10."""
    _, backend = _run(ucf, tmp_path / "run", Script({}), max_steps=1)
    request = next(r for r in backend.requests if not r.key.startswith("optimizer"))
    means = [float(image.mean()) for image in request.images]
    assert np.allclose(means, np.arange(0, 16, 2) * 10, atol=3)


def test_authors_prompt_files_are_used(ucf: dict, tmp_path: Path, shared_data: Path) -> None:
    prompts = shared_data / "prompts"
    _, backend = _run(ucf, tmp_path / "run", Script({}), max_steps=1, frame_layout="per-frame",
                      prompt_file=prompts / "VERA_learner_instruct.txt",
                      optimizer_prompt_file=prompts / "VERA_optimizer_instruct.txt")
    learner = next(r for r in backend.requests if not r.key.startswith("optimizer"))
    optimizer = next(r for r in backend.requests if r.key.startswith("optimizer"))
    assert learner.prompt.startswith("You are the model.") and not learner.image_block
    assert optimizer.prompt.startswith("You are the optimizer for a model.") and not optimizer.image_block
    assert optimizer.prompt.count("<image>") == len(optimizer.images) == 16


def test_data_order_is_a_function_of_seed_and_epoch(ucf: dict) -> None:
    assert not np.array_equal(epoch_order(50, 0, 0), epoch_order(50, 0, 1))
    assert np.array_equal(epoch_order(50, 3, 2), epoch_order(50, 3, 2))
    videos = list(range(5))
    steps = [batch_at(videos, step, 2, 0) for step in range(6)]
    assert [epoch for epoch, _ in steps] == [0, 0, 0, 1, 1, 1]
    assert [len(batch) for _, batch in steps] == [2, 2, 1, 2, 2, 1]  # the last batch is short, as released
    assert sorted(v for _, batch in steps[:3] for v in batch) == videos


@pytest.mark.parametrize(
    "answer",
    ["",
     "Reasoning: fine.\nNew Prompt Questions:\n" + "".join(f"{i}. Is it {i}?\n" for i in range(1, 7)),
     "Reasoning: fine.\nNew Prompt Questions:\n1. Look at the people.\n"],
)
def test_unusable_optimizer_answer_keeps_questions(ucf: dict, tmp_path: Path, answer: str) -> None:
    state, _ = _run(ucf, tmp_path / "run", Script({1: answer, 2: _proposal(GOOD)}), max_steps=2)
    history = _jsonl(tmp_path / "run" / HISTORY_FILE)
    assert history[0]["update_accepted"] is False
    assert history[0]["questions_after"] == INITIAL_QUESTIONS
    assert history[1]["questions_before"] == INITIAL_QUESTIONS
    assert state.questions == GOOD and state.rejected_updates == 1


def test_select_by_auc_uses_soft_scores(ucf: dict, tmp_path: Path) -> None:
    """Soft scores rank the videos perfectly under the initial questions (AUC 1, accuracy 0.5);
    GOOD scores accuracy 1 with AUC 1: not strictly higher, so the initial questions stay."""

    def respond(request: VLMRequest):
        if request.key.startswith("optimizer"):
            return _proposal(GOOD)
        return VLMAnswer(_learner_text(request), label_prob=0.9 if _label(request.key) else 0.6)

    backend = ScriptedBackend(respond)
    state = train(_options(ucf, tmp_path / "run", select_by="auc", max_steps=1), lambda device: backend,
                  accelerator="cpu", progress=False)
    validation = _jsonl(tmp_path / "run" / VALIDATION_FILE)
    assert [(r["accuracy"], r["auc"], r["auc_from"]) for r in validation] == [(0.5, 1.0, "label_prob"), (1.0, 1.0, "label_prob")]
    assert [r["selected"] for r in validation] == [True, False]
    assert state.best.questions == INITIAL_QUESTIONS


def test_resume_after_kills_matches_an_uninterrupted_run(ucf: dict, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _run(ucf, reference, Script(ANSWERS))

    out = tmp_path / "killed"
    # Killed in the optimizer call of step 3: steps 1-2 and the validations 0-2 are kept.
    with pytest.raises(KeyboardInterrupt):
        _run(ucf, out, Script(ANSWERS, kill_at="optimizer step 3"))
    assert [r["step"] for r in _jsonl(out / HISTORY_FILE)] == [1, 2]
    assert load_checkpoint(out / CHECKPOINT_FILE).step == 2
    # Killed again, now in the validation after step 3 (a learner call on a validation video).
    with pytest.raises(KeyboardInterrupt):
        _run(ucf, out, Script(ANSWERS, kill_at="Stealing011_x264"))
    checkpoint = load_checkpoint(out / CHECKPOINT_FILE)
    assert checkpoint.step == 3 and checkpoint.last_validated_step == 2 and checkpoint.questions == GOOD
    # A kill between the history line and the checkpoint leaves a line the checkpoint does not cover.
    with (out / HISTORY_FILE).open("a") as handle:
        handle.write(json.dumps({"step": 4, "stale": True}) + "\n{\"step\": 5, \"cut")
    # Likewise log rows past the checkpoint: a training row of step 4, a validation row of step 3, a cut row.
    fields = list(_csv(out / METRICS)[0])
    with (out / METRICS).open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writerows([{"step": 4, "epoch": 1.0, "train_accuracy": 0.25},
                          {"step": 3, "val_accuracy": 0.75, "val_skipped": 0.0}])
        handle.write("0.5,1.0,0")
    script = Script(ANSWERS)
    state, _ = _run(ucf, out, script)
    assert script.optimizer_calls == [4]  # only the unfinished step is redone
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE, METRICS):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert state.step == 4
    # One log version, continued: each step's training row and each validation's row exactly once.
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]
    rows = _csv(out / METRICS)
    assert [r["step"] for r in rows if r["epoch"]] == ["1", "2", "3", "4"]
    assert [r["step"] for r in rows if r["val_skipped"]] == ["0", "1", "2", "3", "4"]
    assert [r["val_accuracy"] for r in rows if r["val_skipped"]] == ["0.5", "0.0", "1.0", "1.0", "1.0"]
    # A finished run rerun does nothing more.
    script = Script(ANSWERS)
    _run(ucf, out, script)
    assert script.optimizer_calls == []
    # Continuing for more epochs resumes from step 4.
    script = Script(ANSWERS)
    state, _ = _run(ucf, out, script, epochs=3)
    assert script.optimizer_calls == [5, 6] and state.step == 6


def test_resume_refuses_other_options_unless_overwrite(ucf: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(ucf, out, Script(ANSWERS), max_steps=1)
    with pytest.raises(VeraError, match="batch_size"):
        _run(ucf, out, Script(ANSWERS), batch_size=1)
    state, _ = _run(ucf, out, Script(ANSWERS), batch_size=1, max_steps=1, overwrite=True)
    assert state.step == 1 and len(_jsonl(out / HISTORY_FILE)) == 1
    (out / CHECKPOINT_FILE).unlink()
    with pytest.raises(VeraError, match="no last.ckpt"):
        _run(ucf, out, Script(ANSWERS), batch_size=1, max_steps=1)
    state, _ = _run(ucf, out, Script(ANSWERS), batch_size=1, max_steps=1, overwrite=True)  # starts again
    assert state.step == 1 and [r["step"] for r in _jsonl(out / HISTORY_FILE)] == [1]


def test_missing_frames_error_or_skip(ucf: dict, tmp_path: Path) -> None:
    # One video without frames at all (found before training), one shorter than its annotated length
    # (found when read).
    _write_frames(ucf["frames"] / "Arson020_x264")
    entries = json.loads(ucf["train"].read_text()) + [{"video": "frames/Arrest/Arrest099_x264.mp4", "length": 16},
                                                      {"video": "frames/Arson/Arson020_x264.mp4", "length": 40}]
    ucf["train"].write_text(json.dumps(entries))
    with pytest.raises(VeraError, match="no frames in .*Arrest099_x264.*--skip-bad-videos"):
        _run(ucf, tmp_path / "a", Script(ANSWERS), epochs=1)
    entries.pop(-2)
    ucf["train"].write_text(json.dumps(entries))
    with pytest.raises(VeraError, match="video Arson020_x264: frame 20 is out of range.*--skip-bad-videos"):
        _run(ucf, tmp_path / "b", Script(ANSWERS), epochs=1)

    entries.insert(-1, {"video": "frames/Arrest/Arrest099_x264.mp4", "length": 16})
    ucf["train"].write_text(json.dumps(entries))
    state, _ = _run(ucf, tmp_path / "c", Script(ANSWERS), epochs=1, skip_bad_videos=True)
    history = _jsonl(tmp_path / "c" / HISTORY_FILE)
    skipped = {s["key"]: s["error"] for record in history for s in record["skipped"]}
    assert sorted(skipped) == ["Arrest099_x264", "Arson020_x264"]
    assert "not found" in skipped["Arrest099_x264"] and "out of range" in skipped["Arson020_x264"]
    assert state.skipped_videos == 2 and state.step == 3
    answered = [r["key"] for record in history for r in record["learner"]]
    assert sorted(answered) == sorted(["Abuse001_x264", "Normal_Videos001_x264", "Fighting002_x264", "Normal_Videos002_x264"])


def test_skip_bad_videos_with_nothing_readable_is_an_error(ucf: dict, tmp_path: Path) -> None:
    # No training video has frames at all: said before any model call.
    entries = [{"video": f"frames/Arrest/Arrest09{i}_x264.mp4", "length": 16} for i in range(3)]
    (tmp_path / "none.json").write_text(json.dumps(entries))
    script = Script(ANSWERS)
    with pytest.raises(VeraError, match="^no readable training videos left: none of the 3 has frames in"):
        _run({**ucf, "train": tmp_path / "none.json"}, tmp_path / "a", script, skip_bad_videos=True)
    assert script.optimizer_calls == [] and not (tmp_path / "a" / HISTORY_FILE).exists()
    # Every training video is shorter than its annotated length: found when read, at the end of the first epoch.
    entries = [dict(entry, length=40) for entry in json.loads(ucf["train"].read_text())]
    (tmp_path / "short.json").write_text(json.dumps(entries))
    with pytest.raises(VeraError, match="^no readable training videos left: every training video of the first 2 "
                                        "steps was unreadable and skipped"):
        _run({**ucf, "train": tmp_path / "short.json"}, tmp_path / "b", Script(ANSWERS), skip_bad_videos=True)
    assert [len(r["skipped"]) for r in _jsonl(tmp_path / "b" / HISTORY_FILE)] == [2, 2]
    # The same for the validation list.
    entries = [dict(entry, length=40) for entry in json.loads(ucf["val"].read_text())]
    (tmp_path / "short_val.json").write_text(json.dumps(entries))
    with pytest.raises(VeraError, match="^no readable validation videos left: all 4 were unreadable and skipped$"):
        _run({**ucf, "val": tmp_path / "short_val.json"}, tmp_path / "c", Script(ANSWERS), skip_bad_videos=True)


def test_xd_training(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    names = {"v=aaa__#1_label_A": 0, "v=bbb__#1_label_B1-0-0": 1, "Movie.X__#00-01_label_A": 0, "v=ccc__#1_label_G-0-0": 1}
    for name in names:
        _write_frames(frames / name)
    entries = [{"video_name": name, "path": "/elsewhere/" + name, "video_label": label, "length": 16}
               for name, label in names.items()]
    (tmp_path / "xd_train.json").write_text(json.dumps(entries))
    (tmp_path / "xd_val.json").write_text(json.dumps(entries[::-1]))
    data = {"train": tmp_path / "xd_train.json", "val": tmp_path / "xd_val.json", "frames": frames}
    state, _ = _run(data, tmp_path / "run", Script({1: _proposal(GOOD)}), dataset="xd", max_steps=2)
    history = _jsonl(tmp_path / "run" / HISTORY_FILE)
    for record in history:
        assert record["labels"] == [names[key] for key in record["videos"]]
    validation = _jsonl(tmp_path / "run" / VALIDATION_FILE)
    assert [r["accuracy"] for r in validation] == [0.5, 1.0, 1.0]
    assert state.best.questions == GOOD


class _FrameDigests(Script):
    """The scripted model, each answer starting with a digest of the frames it was shown: the outputs record
    exactly which pixels every learner and optimizer call saw."""

    def __call__(self, request: VLMRequest) -> str:
        pixels = hashlib.sha256(b"".join(np.ascontiguousarray(image).tobytes() for image in request.images))
        return f"frames {pixels.hexdigest()[:16]}\n{super().__call__(request)}"


def test_input_workers_give_byte_identical_outputs(ucf: dict, tmp_path: Path) -> None:
    """Frames read by 2 worker processes (and bad videos failing in them) give the outputs of reading in process;
    an unskipped bad video stops the run with the same one line."""
    _write_frames(ucf["frames"] / "Arson020_x264")  # 16 frames, annotated 40: fails when read
    listed = json.loads(ucf["train"].read_text())
    ucf["train"].write_text(json.dumps(listed + [{"video": "frames/Arson/Arson020_x264.mp4", "length": 40},
                                                {"video": "frames/Arrest/Arrest099_x264.mp4", "length": 16}]))
    val = json.loads(ucf["val"].read_text())
    ucf["val"].write_text(json.dumps(val[:2] + [{"video": "frames/Arson/Arson020_x264.mp4", "length": 40}] + val[2:]))
    outputs = {}
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        # 3 steps (two validations, one pass of training reads between them: worker processes start 3 times).
        state = train(_options(ucf, out, epochs=1, val_every=3, frame_sampling="random", skip_bad_videos=True),
                      lambda device: ScriptedBackend(_FrameDigests({1: _proposal(GOOD)})), accelerator="cpu",
                      input_workers=workers, progress=False)
        assert state.step == 3 and state.skipped_videos == 2 + 2 and state.best.questions == GOOD
        outputs[workers] = {path.relative_to(out): path.read_bytes() for path in sorted(out.rglob("*"))
                            if path.is_file()}
    assert sorted(map(str, outputs[0])) == sorted([".lock", BEST_FILE, CHECKPOINT_FILE, HISTORY_FILE, METRICS, "run.json",
                                                   VALIDATION_FILE])
    for files in outputs.values():  # run.json names its folder and when it was made: the rest must match
        record = json.loads(files.pop(Path("run.json")))
        del record["created"], record["options"]["output"]
        files["run.json"] = record
    assert outputs[2] == outputs[0]
    history = _jsonl(tmp_path / "workers2" / HISTORY_FILE)
    learner = [answer["response"].split("\n")[0] for record in history for answer in record["learner"]]
    assert len(learner) == 4 and len(set(learner)) == 4  # the digests see the frames: each draw differs
    ucf["train"].write_text(json.dumps(listed + [{"video": "frames/Arson/Arson020_x264.mp4", "length": 40}]))
    messages = []
    for workers in (0, 2):
        with pytest.raises(VeraError) as failure:
            train(_options(ucf, tmp_path / f"stopped{workers}"), lambda device: ScriptedBackend(Script(ANSWERS)),
                  accelerator="cpu", input_workers=workers, progress=False)
        messages.append(str(failure.value))
    assert messages[0] == messages[1]
    assert re.fullmatch(r"video Arson020_x264: frame \d+ is out of range.* \(--skip-bad-videos skips such videos\)",
                        messages[0])


# --------------------------------------------------------------------------- two processes


class _RankRecorder(ScriptedBackend):
    """The scripted model of one rank, noting every request's key in ``<folder>/rank<N>.txt``
    (forked processes share no memory with the test)."""

    def __init__(self, folder: Path):
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        self.rank = rank_zero_only.rank
        # Rank 1's optimizer would propose BAD: if it were ever asked, the ranks would disagree.
        super().__init__(Script(ANSWERS if self.rank == 0 else {step: _proposal(BAD) for step in range(1, 5)}))
        self.log = folder / f"rank{self.rank}.txt"

    def generate(self, requests: list[VLMRequest], max_new_tokens: int = 1024) -> list[VLMAnswer]:
        with self.log.open("a") as handle:
            handle.writelines(request.key + "\n" for request in requests)
        return super().generate(requests, max_new_tokens)


def test_ranks_share_the_work_and_only_rank_0_optimizes(ucf: dict, tmp_path: Path) -> None:
    """A one-process run stopped after step 2, resumed by two DDP ranks (Fabric's fork launcher): each rank
    reads and answers its share, the optimizer runs on rank 0, and the outputs equal an uninterrupted one-process
    run's."""
    reference = tmp_path / "single"
    _run(ucf, reference, Script(ANSWERS))
    out = tmp_path / "ddp"
    _run(ucf, out, Script(ANSWERS), max_steps=2)
    seen = tmp_path / "seen"
    seen.mkdir()
    # Each rank reads its own share in a worker process of its own.
    state = train(_options(ucf, out), lambda device: _RankRecorder(seen), accelerator="cpu",
                  devices=2, start_method="fork", input_workers=1, progress=False)
    assert state.questions == GOOD and state.best.questions == GOOD and state.step == 4
    keys = [(seen / f"rank{rank}.txt").read_text().splitlines() for rank in (0, 1)]
    assert [k for k in keys[0] if k.startswith("optimizer")] == ["optimizer step 3", "optimizer step 4"]
    assert not [k for k in keys[1] if k.startswith("optimizer")]
    # Steps 3 and 4: each training batch of 2 split one-one; each validation of 4 videos split two-two.
    history = _jsonl(out / HISTORY_FILE)
    train_keys = {key for record in history for key in record["videos"]}
    for rank in (0, 1):
        learner = [k for k in keys[rank] if not k.startswith("optimizer")]
        assert [k for k in learner if k in train_keys] == [record["videos"][rank] for record in history[2:]]
        assert len(learner) == 2 * 2 + 2
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE, METRICS):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


# --------------------------------------------------------------------------- the CLI with the tiny random model


def _cli():
    return load_script("training")


@pytest.fixture(scope="module")
def tiny_internvl(tiny_models) -> Path:
    return tiny_models.path("internvl")


def test_cli_end_to_end_with_tiny_model_and_resume(shared_data: Path, tiny_internvl: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """UCF lists naming two real clips; step 1, then a rerun that resumes and does step 2 only."""
    train_list = tmp_path / "train.json"
    train_list.write_text(json.dumps([
        {"video": "frames/Fighting/Fighting033_x264_570_841.mp4", "length": 271},
        {"video": "frames/RoadAccidents/RoadAccidents133_x264_270_451.mp4", "length": 181},
    ]))
    out = tmp_path / "run"
    argv = ["--dataset", "ucf", "--train", str(train_list), "--val", str(train_list),
            "--videos", str(shared_data / "clips"), "--model", str(tiny_internvl), "--val-every", "1",
            "--limit-val", "1", "--max-new-tokens", "8", "--num-frames", "2", "--accelerator", "cpu", "--output", str(out)]
    cli = _cli()
    assert cli.main(argv + ["--max-steps", "1"]) == 0
    assert [r["step"] for r in _jsonl(out / HISTORY_FILE)] == [1]
    assert cli.main(argv + ["--max-steps", "2"]) == 0
    assert "2 steps" in capsys.readouterr().out

    history = _jsonl(out / HISTORY_FILE)
    assert [r["step"] for r in history] == [1, 2]
    assert [r["epoch"] for r in history] == [0, 1]
    assert all(sorted(r["videos"]) == ["Fighting033_x264_570_841", "RoadAccidents133_x264_270_451"] for r in history)
    assert all(r["labels"] == [1, 1] and len(r["learner"]) == 2 for r in history)
    assert history[1]["questions_before"] == history[0]["questions_after"]
    validation = _jsonl(out / VALIDATION_FILE)
    assert [r["step"] for r in validation] == [0, 1, 2] and all(r["videos"] == 1 for r in validation)
    best = (out / BEST_FILE).read_text().splitlines()
    assert best == next(r["questions"] for r in validation if r["selected"] and r["step"] == load_checkpoint(
        out / CHECKPOINT_FILE).best.step)
    from vera.vlm.prompts import load_questions

    assert load_questions(out / BEST_FILE) == best  # what generate_initial_score.py --questions reads
    assert [p.name for p in (out / "logs").iterdir()] == ["version_0"]  # one log version, continued on resume
    metrics = _csv(out / METRICS)
    assert [(r["step"], bool(r["val_skipped"])) for r in metrics] == [
        ("0", True), ("1", False), ("1", True), ("2", False), ("2", True)]
    run = json.loads((out / "run.json").read_text())
    assert run["backend"]["model"] == str(tiny_internvl)


def test_two_processes_through_training_py_match_one_process(tiny_internvl: Path, ucf: dict, tmp_path: Path) -> None:
    """The shipped launch path: ``python training.py --devices 2`` (Lightning starts the second process),
    stopped by --max-steps and resumed; the outputs equal a one-process run's byte for byte."""
    argv = ["--dataset", "ucf", "--train", str(ucf["train"]), "--val", str(ucf["val"]), "--frames", str(ucf["frames"]),
            "--model", str(tiny_internvl), "--val-every", "2", "--limit-val", "3", "--max-new-tokens", "6",
            "--num-frames", "2", "--accelerator", "cpu"]
    single = tmp_path / "single"
    assert _cli().main(argv + ["--output", str(single), "--max-steps", "3"]) == 0

    ddp = tmp_path / "ddp"
    command = [sys.executable, str(ROOT / "training.py"), *argv, "--output", str(ddp), "--devices", "2"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for max_steps in ("2", "3"):
        done = subprocess.run(command + ["--max-steps", max_steps], env=environment, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{max_steps} steps" in done.stdout
    assert "resuming" in done.stderr and "\r" not in done.stderr  # not a terminal: plain lines, no bar
    assert json.loads((ddp / "run.json").read_text())["world_size"] == 2
    assert [r["step"] for r in _jsonl(ddp / HISTORY_FILE)] == [1, 2, 3]
    assert [r["step"] for r in _jsonl(ddp / VALIDATION_FILE)] == [0, 2, 3]
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE, METRICS):
        assert (ddp / name).read_bytes() == (single / name).read_bytes(), name
    assert [p.name for p in (ddp / "logs").iterdir()] == ["version_0"]


def test_num_frames_above_a_video_length_is_refused_through_training_py(shared_data: Path, tiny_internvl: Path,
                                                                        tmp_path: Path, capsys) -> None:
    """``--num-frames 1000`` on clips of 181 and 271 frames would show each frame 3.7-5.5 times: refused before
    the model loads, naming the shortest video, its length, its list and the option."""
    train_list = tmp_path / "train.json"
    train_list.write_text(json.dumps([
        {"video": "frames/Fighting/Fighting033_x264_570_841.mp4", "length": 271},
        {"video": "frames/RoadAccidents/RoadAccidents133_x264_270_451.mp4", "length": 181},
    ]))
    out = tmp_path / "run"
    from fixtures.scripts import run

    argv = ["--dataset", "ucf", "--train", str(train_list), "--val", str(train_list), "--videos",
            str(shared_data / "clips"), "--model", str(tiny_internvl), "--num-frames", "1000", "--accelerator", "cpu",
            "--output", str(out)]
    assert run("training", argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --num-frames 1000 is more than the 181 frames of video RoadAccidents133_x264_270_451 (--train "
        f"{train_list}), whose frames would repeat, 5.5 times each on average; 2 listed videos are shorter; use "
        "--num-frames 181 or fewer"]
    assert not (out / HISTORY_FILE).exists() and not (out / "run.json").exists()


def test_num_frames_up_to_the_shortest_video_is_accepted(ucf: dict, tmp_path: Path) -> None:
    # The ucf fixture's videos have 16 frames each: 16 is every frame once, 17 is refused.
    entries = json.loads(ucf["val"].read_text())
    entries[1]["length"] = 15
    (tmp_path / "val15.json").write_text(json.dumps(entries))
    with pytest.raises(VeraError, match=r"^--num-frames 16 is more than the 15 frames of video Normal_Videos010_x264 "
                                        r"\(--val .*val15.json\), whose frames would repeat, 1.1 times each on average; "
                                        r"use --num-frames 15 or fewer$"):
        _run({**ucf, "val": tmp_path / "val15.json"}, tmp_path / "a", Script(ANSWERS), num_frames=16)
    state, _ = _run(ucf, tmp_path / "b", Script(ANSWERS), num_frames=16, max_steps=1)
    assert state.step == 1
    assert all(r["frames"] == list(range(16)) for r in _jsonl(tmp_path / "b" / HISTORY_FILE)[0]["learner"])
