"""The paper's training studies as options: frame sampling, batch size × frames, the number of questions m,
no questions at all, and the optimizer without frames."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_optimizer import expected_authors_prompt
from test_training import (  # noqa: F401 - ucf is a fixture
    ANSWERS,
    GOOD,
    METRICS,
    Script,
    _jsonl,
    _options,
    _proposal,
    _run,
    ucf,
)

from vera.errors import VeraError, run_cli
from vera.learning.launch import train
from vera.learning.run_state import BEST_FILE, HISTORY_FILE, VALIDATION_FILE, load_checkpoint
from vera.learning.optimizer_prompt import DEFAULT_OPTIMIZER_TEMPLATE, build_optimizer_prompt, state_question_limit
from vera.learning.sampling import training_frame_indices
from vera.options import questions_source
from vera.vlm.backends.scripted import ScriptedBackend
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, load_questions, questions_from
from fixtures.scripts import load_script

QUESTIONS = ["1. Is there a fight?", "2. Is something burning?"]


def _draw(method: str, length: int = 100, num_frames: int = 8, seed: int = 0, epoch: int = 0, step: int = 0,
          key: str = "Abuse001_x264") -> list[int]:
    return training_frame_indices(length, num_frames, method, seed=seed, epoch=epoch, step=step, key=key).tolist()


# --------------------------------------------------------------------------- frame sampling: index sets


def test_uniform_is_the_released_arange_whatever_the_draw() -> None:
    # np.arange(0, 100, 12.5) floored, written out.
    assert _draw("uniform") == [0, 12, 25, 37, 50, 62, 75, 87]
    assert _draw("uniform", seed=3, epoch=2, step=9, key="other") == [0, 12, 25, 37, 50, 62, 75, 87]
    assert _draw("uniform", length=16, num_frames=4) == [0, 4, 8, 12]


def test_tsn_takes_one_frame_from_each_equal_part() -> None:
    # Parts of a 100-frame video in 8: [⌊100i/8⌋, ⌊100(i+1)/8⌋).
    parts = [(0, 12), (12, 25), (25, 37), (37, 50), (50, 62), (62, 75), (75, 87), (87, 100)]
    seen = [set() for _ in parts]
    for epoch in range(300):
        indices = _draw("tsn", epoch=epoch, step=epoch * 7)
        assert len(indices) == 8
        for (start, end), index, frames in zip(parts, indices, seen):
            assert start <= index < end
            frames.add(index)
    # Every frame of every part is drawn at some time, not just the part's first frame.
    assert seen == [set(range(start, end)) for start, end in parts]
    # Reproducible from (seed, epoch, step, video); another epoch, step, video or seed draws anew.
    assert _draw("tsn", epoch=1, step=5) == _draw("tsn", epoch=1, step=5)
    first = _draw("tsn", epoch=1, step=5)
    assert first != _draw("tsn", epoch=2, step=5)
    assert first != _draw("tsn", epoch=1, step=6)
    assert first != _draw("tsn", epoch=1, step=5, key="Abuse002_x264")
    assert first != _draw("tsn", epoch=1, step=5, seed=1)
    # Fewer frames than parts: each part is its first frame, [0, 0, 1, 1, 2, 3, 3, 4] for 5 frames in 8.
    assert _draw("tsn", length=5) == [0, 0, 1, 1, 2, 3, 3, 4]


def test_random_takes_distinct_frames_in_video_order() -> None:
    seen: set[int] = set()
    for epoch in range(100):
        indices = _draw("random", epoch=epoch, step=epoch)
        assert len(set(indices)) == 8 and indices == sorted(indices)
        assert all(0 <= index < 100 for index in indices)
        seen.update(indices)
    assert seen == set(range(100))
    assert _draw("random", epoch=4, step=3) == _draw("random", epoch=4, step=3)
    assert _draw("random", epoch=4, step=3) != _draw("random", epoch=5, step=3)
    assert _draw("random", seed=0) != _draw("random", seed=1)
    short = _draw("random", length=5)  # fewer frames than asked: drawn with repeats
    assert len(short) == 8 and short == sorted(short) and set(short) <= set(range(5))


# --------------------------------------------------------------------------- frame sampling: in training


def _learner_requests(backend: ScriptedBackend, keys: set[str]) -> list:
    return [r for r in backend.requests if r.key in keys]


def _means(images: list[np.ndarray]) -> list[float]:
    return [float(image.mean()) for image in images]


def test_training_shows_the_tsn_frames_and_validation_the_uniform_ones(ucf: dict, tmp_path: Path) -> None:
    """16-frame videos whose frame i is grey level 10·i, 4 frames: parts [0,4), [4,8), [8,12), [12,16)."""
    _, backend = _run(ucf, tmp_path / "run", Script({}), frame_sampling="tsn", num_frames=4)
    history = _jsonl(tmp_path / "run" / HISTORY_FILE)
    learner = [record for step in history for record in step["learner"]]
    train_keys = {record["key"] for record in learner}
    requests = _learner_requests(backend, train_keys)
    assert len(requests) == len(learner) == 8
    for record, request in zip(learner, requests):
        assert request.key == record["key"]
        assert all(4 * part <= index < 4 * part + 4 for part, index in enumerate(record["frames"]))
        assert np.allclose(_means(request.images), 10 * np.asarray(record["frames"]), atol=3)
    # The optimizer sees the same frames as the learner did.
    optimizer = [r for r in backend.requests if r.key.startswith("optimizer")]
    for step, request in zip(history, optimizer):
        frames = [index for record in step["learner"] for index in record["frames"]]
        assert np.allclose(_means(request.images), 10 * np.asarray(frames), atol=3)
    # Each video is met once per epoch, with new frames in the second.
    by_epoch = [{r["key"]: r["frames"] for step in history if step["epoch"] == epoch for r in step["learner"]}
                for epoch in (0, 1)]
    assert set(by_epoch[0]) == set(by_epoch[1]) == train_keys
    assert by_epoch[0] != by_epoch[1]
    # Validation scores every question set on the released uniform frames.
    for validation in _jsonl(tmp_path / "run" / VALIDATION_FILE):
        assert [r["frames"] for r in validation["predictions"]] == [[0, 4, 8, 12]] * 4
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["identity"]["frame_sampling"] == "tsn"
    # The same seed draws the same frames; another seed other ones.
    _run(ucf, tmp_path / "again", Script({}), frame_sampling="tsn", num_frames=4)
    assert (tmp_path / "again" / HISTORY_FILE).read_bytes() == (tmp_path / "run" / HISTORY_FILE).read_bytes()
    _run(ucf, tmp_path / "seed1", Script({}), frame_sampling="tsn", num_frames=4, seed=1)
    other = {(s["epoch"], r["key"]): r["frames"] for s in _jsonl(tmp_path / "seed1" / HISTORY_FILE)
             for r in s["learner"]}
    assert other != {(s["epoch"], r["key"]): r["frames"] for s in history for r in s["learner"]}


def test_random_sampling_in_training(ucf: dict, tmp_path: Path) -> None:
    _, backend = _run(ucf, tmp_path / "run", Script({}), frame_sampling="random", num_frames=4, max_steps=2)
    learner = [r for step in _jsonl(tmp_path / "run" / HISTORY_FILE) for r in step["learner"]]
    for record, request in zip(learner, _learner_requests(backend, {r["key"] for r in learner})):
        assert len(set(record["frames"])) == 4 and record["frames"] == sorted(record["frames"])
        assert np.allclose(_means(request.images), 10 * np.asarray(record["frames"]), atol=3)
    assert any(record["frames"] != [0, 4, 8, 12] for record in learner)


def test_resume_after_kills_with_tsn_sampling_matches_an_uninterrupted_run(ucf: dict, tmp_path: Path) -> None:
    options = {"frame_sampling": "tsn", "num_frames": 4}
    reference = tmp_path / "reference"
    _run(ucf, reference, Script(ANSWERS), **options)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(ucf, out, Script(ANSWERS, kill_at="optimizer step 3"), **options)
    assert load_checkpoint(out / "last.ckpt").step == 2
    with pytest.raises(KeyboardInterrupt):
        _run(ucf, out, Script(ANSWERS, kill_at="Stealing011_x264"), **options)  # in the validation after step 3
    script = Script(ANSWERS)
    _run(ucf, out, script, **options)
    assert script.optimizer_calls == [4]
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE, METRICS):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    # Another sampling in the same folder is another run.
    with pytest.raises(VeraError, match="frame_sampling differ"):
        _run(ucf, out, Script(ANSWERS), frame_sampling="random", num_frames=4)


class _OptimizerImages(ScriptedBackend):
    """One rank's scripted model, writing the grey levels of each optimizer image to ``<folder>/rank<N>.json``."""

    def __init__(self, folder: Path):
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        super().__init__(Script(ANSWERS))
        self.log = folder / f"rank{rank_zero_only.rank}.json"

    def generate(self, requests, max_new_tokens: int = 1024):
        seen = json.loads(self.log.read_text()) if self.log.exists() else {}
        seen.update({r.key: _means(r.images) for r in requests if r.key.startswith("optimizer")})
        self.log.write_text(json.dumps(seen))
        return super().generate(requests, max_new_tokens)


def test_two_ranks_draw_the_same_tsn_frames_as_one(ucf: dict, tmp_path: Path) -> None:
    """Rank 0 reads rank 1's videos again for the optimizer: it must draw the frames rank 1 showed the learner."""
    reference = tmp_path / "single"
    _run(ucf, reference, Script(ANSWERS), frame_sampling="tsn", num_frames=4)
    seen = tmp_path / "seen"
    seen.mkdir()
    out = tmp_path / "ddp"
    train(_options(ucf, out, frame_sampling="tsn", num_frames=4), lambda device: _OptimizerImages(seen),
          accelerator="cpu", devices=2, start_method="fork", progress=False)
    for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    optimizer = json.loads((seen / "rank0.json").read_text())
    assert not (seen / "rank1.json").exists() or not json.loads((seen / "rank1.json").read_text())
    for step in _jsonl(out / HISTORY_FILE):
        frames = [index for record in step["learner"] for index in record["frames"]]
        assert np.allclose(optimizer[f"optimizer step {step['step']}"], 10 * np.asarray(frames), atol=3)


# --------------------------------------------------------------------------- batch size × frames, through the CLI


def _cli_with_scripted_model(monkeypatch: pytest.MonkeyPatch, module: str, respond) -> tuple:
    """The command ``module`` with the model replaced by a scripted one (the model folder is still checked)."""
    backend = ScriptedBackend(respond)
    monkeypatch.setattr(importlib.import_module("vera.vlm.backends"), "load_backend", lambda *a, **k: backend)
    return load_script(module), backend


def test_batch_size_and_num_frames_reach_the_learner_and_the_optimizer(ucf: dict, tmp_path: Path, tiny_models,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cli, backend = _cli_with_scripted_model(monkeypatch, "training", Script({}))
    argv = ["--dataset", "ucf", "--train", str(ucf["train"]), "--val", str(ucf["val"]), "--frames", str(ucf["frames"]),
            "--model", str(tiny_models.path("internvl")), "--batch-size", "3", "--num-frames", "4",
            "--max-steps", "1", "--limit-val", "1", "--accelerator", "cpu", "--output", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    step = _jsonl(tmp_path / "run" / HISTORY_FILE)[0]
    assert len(step["videos"]) == 3
    learner = _learner_requests(backend, set(step["videos"]))
    assert len(learner) == 3
    for request in learner:
        assert "[Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\n]" in request.prompt
        assert request.prompt.count("<image>") == 4 and request.image_block
        assert np.allclose(_means(request.images), [0, 40, 80, 120], atol=3)
    optimizer = [r for r in backend.requests if r.key.startswith("optimizer")]
    assert len(optimizer) == 1
    video = "[Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\n] "
    assert ("** Inputs (video frames, one bracketed list per video): **\n[" + video * 3 + "]\n\n"
            "** Model Descriptions: **\n") in optimizer[0].prompt
    assert optimizer[0].prompt.count("<image>") == 12 and len(optimizer[0].images) == 12
    assert np.allclose(_means(optimizer[0].images), [0, 40, 80, 120] * 3, atol=3)
    assert f"** The detector's predictions: **\n{step['predictions']}\n" in optimizer[0].prompt
    assert len(step["predictions"]) == 3
    identity = json.loads((tmp_path / "run" / "run.json").read_text())["identity"]
    assert (identity["batch_size"], identity["num_frames"]) == (3, 4)


# --------------------------------------------------------------------------- the number of questions m


def test_the_question_limit_is_stated_in_the_templates(shared_data: Path) -> None:
    authors = (shared_data / "prompts" / "VERA_optimizer_instruct.txt").read_text(encoding="utf-8")
    assert state_question_limit(authors, 5) == authors  # m = 5: the authors' text, character for character
    # The two places the authors' prompt states the limit, each once.
    assert authors.count("no more than five questions!") == 1 and authors.count("at most five!") == 1
    assert state_question_limit(authors, 7) == authors.replace(
        "no more than five questions!", "no more than seven questions!").replace("at most five!", "at most seven!")
    assert state_question_limit(authors, 1) == authors.replace(
        "no more than five questions!", "no more than one question!").replace("at most five!", "at most one!")

    ours = DEFAULT_OPTIMIZER_TEMPLATE
    assert ours.count("Write at most five questions,") == 1 and ours.count("one per line, at most five]") == 1
    assert state_question_limit(ours, 5) == ours
    assert state_question_limit(ours, 3) == ours.replace(
        "Write at most five questions,", "Write at most three questions,").replace(
        "one per line, at most five]", "one per line, at most three]")
    assert "Write at most 13 questions," in state_question_limit(ours, 13)
    silent = ours.replace("at most five", "a few")
    assert state_question_limit(silent, 5) == silent
    with pytest.raises(VeraError, match="does not state the question limit.*--num-questions 3"):
        state_question_limit(silent, 3, "optimizer prompt file mine.txt")


def test_num_questions_limits_the_proposals_and_is_stated(ucf: dict, tmp_path: Path) -> None:
    one = ["1. Is anyone fighting or stealing? (good)"]
    state, backend = _run(ucf, tmp_path / "m1", Script({1: _proposal(GOOD), 2: _proposal(one)}), num_questions=1,
                          max_steps=2)
    history = _jsonl(tmp_path / "m1" / HISTORY_FILE)
    assert [r["update_status"] for r in history] == ["too_many_questions (2 > 1)", "accepted"]
    assert state.questions == one
    optimizer = next(r for r in backend.requests if r.key.startswith("optimizer"))
    assert "Write at most one question, each ending" in optimizer.prompt
    assert "[the new questions, one per line, at most one]" in optimizer.prompt
    identity = json.loads((tmp_path / "m1" / "run.json").read_text())["identity"]
    assert identity["num_questions"] == 1

    six = [f"{i}. Is {i} odd? (good)" for i in range(1, 7)]
    state, _ = _run(ucf, tmp_path / "m7", Script({1: _proposal(six)}), num_questions=7, max_steps=1)
    assert state.questions == six
    state, _ = _run(ucf, tmp_path / "m5", Script({1: _proposal(six)}), max_steps=1)
    assert state.questions != six and state.rejected_updates == 1
    # The released method's identity holds none of the study options, as before they existed.
    identity = json.loads((tmp_path / "m5" / "run.json").read_text())["identity"]
    assert not {"frame_sampling", "num_questions", "optimizer_frames"} & set(identity)
    with pytest.raises(VeraError, match=r"\(num_questions, optimizer_template differ"):
        _run(ucf, tmp_path / "m5", Script({}), num_questions=3, max_steps=1)


def test_authors_optimizer_file_with_another_m(ucf: dict, tmp_path: Path, shared_data: Path) -> None:
    _, backend = _run(ucf, tmp_path / "run", Script({}), max_steps=1, num_questions=3,
                      optimizer_prompt_file=shared_data / "prompts" / "VERA_optimizer_instruct.txt")
    optimizer = next(r for r in backend.requests if r.key.startswith("optimizer"))
    assert "no more than three questions!" in optimizer.prompt and "at most three!" in optimizer.prompt
    assert "five" not in optimizer.prompt


# --------------------------------------------------------------------------- no questions


def test_questions_none_is_the_bare_prompt(tmp_path: Path) -> None:
    assert questions_source("none") == "none" and questions_from("none") == []
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(VeraError, match="holds no questions .*--questions none asks none"):
        load_questions(empty)


def test_training_from_no_questions(ucf: dict, tmp_path: Path) -> None:
    state, backend = _run(ucf, tmp_path / "run", Script({1: _proposal(GOOD)}), initial_questions=[], max_steps=1)
    validation = _jsonl(tmp_path / "run" / VALIDATION_FILE)
    assert validation[0]["questions"] == [] and validation[1]["questions"] == GOOD
    assert state.best.questions == GOOD
    # The learner's bare prompt: the template with its frame lines and nothing inserted.
    learner = next(r for r in backend.requests if not r.key.startswith("optimizer"))
    frames = "".join(f"Frame{i}: <image>\n" for i in range(1, 9))
    assert learner.prompt == DEFAULT_LEARNER_TEMPLATE.replace("$Data", frames)
    assert "using only what you see in the frames.\nBased on the analysis above" in learner.prompt
    optimizer = next(r for r in backend.requests if r.key.startswith("optimizer"))
    assert "** Current Prompt Questions:**\nGuiding questions: answer each question below in one sentence, using " \
           "only what you see in the frames.\nBased on the analysis above" in optimizer.prompt


def test_step1_with_questions_none(shared_data: Path, tmp_path: Path, tiny_models,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "frames" / "Abuse001_x264"
    folder.mkdir(parents=True)
    for index in range(20):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), np.full((8, 8, 3), index, np.uint8))
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([{"video": "frames/Abuse/Abuse001_x264.mp4", "temporal_label": [2, 10, -1, -1],
                                       "length": 20}]))
    cli, backend = _cli_with_scripted_model(monkeypatch, "generate_initial_score",
                                            lambda request: "Answers to Prompt Questions: none.\nOutput:\n0")
    learner_file = shared_data / "prompts" / "VERA_learner_instruct.txt"
    argv = ["--dataset", "ucf", "--annotations", str(annotation), "--frames", str(tmp_path / "frames"),
            "--model", str(tiny_models.path("internvl")), "--questions", "none", "--prompt-file", str(learner_file),
            "--no-progress", "--output", str(tmp_path / "scores")]
    assert cli.main(argv) == 0
    authors = learner_file.read_text(encoding="utf-8")
    frames = "".join(f"Frame{i}: <image>\n" for i in range(1, 9))
    assert [r.prompt for r in backend.requests] == [authors.replace("$Data", frames)] * 2  # centres 0 and 16
    assert "in one sentence. \nBased on the analysis above" in backend.requests[0].prompt
    assert json.loads((tmp_path / "scores" / "run.json").read_text())["identity"]["questions"] == []
    # A file that holds no questions is still a mistake.
    (tmp_path / "empty.txt").write_text("")
    assert run_cli(cli.main, argv[:-1] + [str(tmp_path / "other")] + ["--questions", str(tmp_path / "empty.txt")]) == 2


# --------------------------------------------------------------------------- the optimizer without frames


def test_optimizer_prompt_without_frames_is_the_template_untouched_there(shared_data: Path) -> None:
    path = shared_data / "prompts" / "VERA_optimizer_instruct.txt"
    built = build_optimizer_prompt(path.read_text(encoding="utf-8"), QUESTIONS, [1, 0], [1, 1], num_frames=8,
                                   with_frames=False)
    assert built == expected_authors_prompt(path.read_text(encoding="utf-8"), QUESTIONS, "[1, 0]", "[1, 1]", None)
    assert "** Inputs (a batch of i.i.d. video frames): **\n** Model Descriptions: **\n" in built
    assert "<image>" not in built


def test_training_with_an_optimizer_that_sees_no_frames(ucf: dict, tmp_path: Path) -> None:
    state, backend = _run(ucf, tmp_path / "run", Script(ANSWERS), optimizer_frames=False)
    optimizer = [r for r in backend.requests if r.key.startswith("optimizer")]
    assert len(optimizer) == 4
    assert all(r.images == [] and not r.image_block and "<image>" not in r.prompt for r in optimizer)
    inputs = "** Inputs (video frames, one bracketed list per video): **\n** Model Descriptions: **"
    assert inputs in optimizer[0].prompt
    learner = [r for r in backend.requests if not r.key.startswith("optimizer")]
    assert all(len(r.images) == 8 for r in learner)
    assert state.questions == GOOD  # the updates are applied as with frames
    assert json.loads((tmp_path / "run" / "run.json").read_text())["identity"]["optimizer_frames"] is False


def test_tiny_model_runs_the_studies_end_to_end(ucf: dict, tmp_path: Path, tiny_models) -> None:
    """The real backend: no questions, TSN frames, m = 3 and an optimizer call without images, one step."""
    cli = load_script("training")
    out = tmp_path / "run"
    argv = ["--dataset", "ucf", "--train", str(ucf["train"]), "--val", str(ucf["val"]), "--frames", str(ucf["frames"]),
            "--model", str(tiny_models.path("internvl")), "--questions", "none", "--frame-sampling", "tsn",
            "--num-questions", "3", "--no-optimizer-frames", "--num-frames", "2", "--max-new-tokens", "4",
            "--max-steps", "1", "--limit-val", "1", "--accelerator", "cpu", "--output", str(out)]
    assert cli.main(argv) == 0
    step = _jsonl(out / HISTORY_FILE)[0]
    assert step["questions_before"] == [] and step["optimizer_response"] is not None
    assert all(0 <= r["frames"][0] < 8 <= r["frames"][1] < 16 for r in step["learner"])
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["initial_questions"] == [] and identity["frame_sampling"] == "tsn"
    assert identity["num_questions"] == 3 and identity["optimizer_frames"] is False


def test_study_options_are_checked_before_anything_runs(ucf: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    cli = load_script("training")
    base = ["--dataset", "ucf", "--train", str(ucf["train"]), "--val", str(ucf["val"]), "--frames", str(ucf["frames"]),
            "--model", str(tmp_path), "--output", str(tmp_path / "run")]
    assert run_cli(cli.main, base + ["--num-questions", "0"]) == 2
    assert capsys.readouterr().err == "error: argument --num-questions: must be at least 1, got 0\n"
    assert run_cli(cli.main, base + ["--frame-sampling", "dense"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --frame-sampling: invalid choice: 'dense'")
    assert not (tmp_path / "run").exists()
