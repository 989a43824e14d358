"""Verbalized learning driven by a scripted stand-in model: updates, selection, rejection, resume, DDP."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import socket
import traceback
from pathlib import Path

import cv2
import numpy as np
import pytest

from vera.vlm.backends.base import VLMAnswer, VLMRequest
from vera.vlm.backends.scripted import ScriptedBackend
from vera.errors import VeraError
from vera.learning.loop import (
    BEST_FILE,
    CHECKPOINT_FILE,
    HISTORY_FILE,
    INITIAL_QUESTIONS,
    VALIDATION_FILE,
    TrainingOptions,
    batch_at,
    epoch_order,
    load_checkpoint,
    train,
)

ROOT = Path(__file__).resolve().parents[1]

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


def _run(data: dict, output: Path, script: Script, **overrides):
    backend = ScriptedBackend(script)
    state = train(_options(data, output, **overrides), backend, progress=False)
    return state, backend


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


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
    state = train(_options(ucf, tmp_path / "run", select_by="auc", max_steps=1), backend, progress=False)
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
    script = Script(ANSWERS)
    state, _ = _run(ucf, out, script)
    assert script.optimizer_calls == [4]  # only the unfinished step is redone
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE):
        assert (out / name).read_text() == (reference / name).read_text()
    assert state.step == 4
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
        _run(ucf, out, Script(ANSWERS))


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
    frames = ucf["frames"]
    for folder in frames.iterdir():
        folder.rename(frames.parent / f"moved_{folder.name}")
    with pytest.raises(VeraError, match=rf"^none of the 4 training videos has frames in {frames}: nothing to learn"):
        _run(ucf, tmp_path / "a", Script(ANSWERS), skip_bad_videos=True)
    assert not (tmp_path / "a").exists()  # said before any output or model call
    for folder in frames.parent.glob("moved_*"):
        folder.rename(frames / folder.name.removeprefix("moved_"))
    val_keys = [Path(entry["video"]).stem for entry in json.loads(ucf["val"].read_text())]
    for key in val_keys:  # present but every frame truncated: found when validation reads them
        for jpeg in (frames / key).iterdir():
            jpeg.write_bytes(jpeg.read_bytes()[:60])
    script = Script(ANSWERS)
    with pytest.raises(VeraError, match=r"^none of the 4 validation videos could be read at step 0 \(first: video "
                                        r"\S+: cannot read frame \d+ \(.*\)\)$"):
        _run(ucf, tmp_path / "b", script, skip_bad_videos=True)
    assert script.optimizer_calls == []


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


# --------------------------------------------------------------------------- DDP on CPU (gloo)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, data: dict, output: str, seen: str) -> None:
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        # Rank 1's optimizer would propose BAD: if it were ever asked, the ranks would disagree.
        script = Script(ANSWERS if rank == 0 else {step: _proposal(BAD) for step in range(1, 5)})
        backend = ScriptedBackend(script)
        state = train(_options(data, Path(output)), backend, progress=False)
        Path(seen, f"rank{rank}.json").write_text(json.dumps({
            "keys": [r.key for r in backend.requests], "questions": state.questions,
            "best": state.best.questions, "optimizer_calls": script.optimizer_calls,
        }))
        dist.destroy_process_group()
    except BaseException:
        Path(seen, f"rank{rank}.error").write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)  # a forked child must not run the parent's pytest teardown


def test_ddp_two_ranks_agree_with_one_process(ucf: dict, tmp_path: Path) -> None:
    reference = tmp_path / "single"
    _run(ucf, reference, Script(ANSWERS))
    seen = tmp_path / "seen"
    seen.mkdir()
    # fork, not spawn: the children inherit the imports, which keeps this test quick (CPU only, no CUDA).
    context = multiprocessing.get_context("fork")
    port = _free_port()
    workers = [context.Process(target=_ddp_worker, args=(rank, port, ucf, str(tmp_path / "ddp"), str(seen)))
               for rank in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    errors = [path.read_text() for path in seen.glob("*.error")]
    assert not errors, errors[0]
    assert [worker.exitcode for worker in workers] == [0, 0]
    ranks = [json.loads((seen / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["questions"] == ranks[1]["questions"] == GOOD
    assert ranks[0]["best"] == ranks[1]["best"] == GOOD
    assert ranks[0]["optimizer_calls"] == [1, 2, 3, 4] and ranks[1]["optimizer_calls"] == []
    # Each rank answered its share: every training batch of 2 split one-one, validation split in halves.
    history = _jsonl(tmp_path / "ddp" / HISTORY_FILE)
    for rank in (0, 1):
        keys = [key for key in ranks[rank]["keys"] if not key.startswith("optimizer")]
        assert len(keys) == 5 * 2 + 4  # five validations of 2 videos, four steps of 1
        assert [k for k in keys if k in {v for r in history for v in r["videos"]}] == [
            r["videos"][rank] for r in history]
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE):
        assert (tmp_path / "ddp" / name).read_text() == (reference / name).read_text()


# --------------------------------------------------------------------------- the CLI with the tiny random model


def _cli():
    return importlib.import_module("vera.commands.training")


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
    metrics = (out / "logs" / "version_1" / "metrics.csv").read_text()
    assert "train_accuracy" in metrics and "val_accuracy" in metrics
    run = json.loads((out / "run.json").read_text())
    assert run["backend"]["model"] == str(tiny_internvl)
