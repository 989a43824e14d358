"""Step 1: segment layout, frame sources, outputs, resume, sharding, bad input, and the CLI on real clips."""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import auc, roc_curve
from fixtures.videos import decode_index, decode_to_jpegs, index_frame, write_index_video

from vera.data.annotations import TestVideo
from vera.vlm.backends.base import VLMAnswer, VLMRequest
from vera.vlm.backends.scripted import ScriptedBackend
from vera.errors import VeraError
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt
from vera.constants import PRESET_QUESTIONS
from vera.data.frames import resize_frames
from vera.options import shard as shard_option
from vera.vlm.step1 import Step1Runner, Step1Settings, plan_segments, select_videos
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = PRESET_QUESTIONS["ucf"]


# -- helpers ------------------------------------------------------------------------------------

def index_answer(request: VLMRequest) -> str:
    """A well-formed answer naming the frame indices the images carry; label = parity of the second."""
    indices = [decode_index(image) for image in request.images]
    return f"Answers to Prompt Questions: frames {indices}\nOutput: {indices[1] % 2}"


def answered_indices(entry: dict) -> list[int]:
    return json.loads(entry["response"].split("frames ", 1)[1].split("\n", 1)[0])


def write_index_folder(folder: Path, num_frames: int, size=(64, 48)) -> None:
    folder.mkdir(parents=True)
    for index in range(num_frames):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), index_frame(index, size))


def runner(backend, output: Path, *, questions=QUESTIONS, template=DEFAULT_LEARNER_TEMPLATE, **options) -> Step1Runner:
    options.setdefault("progress", False)
    options.setdefault("image_size", 64)  # the scripted backend needs no 448×448 frames; keeps tests quick
    return Step1Runner(backend, template, questions, Step1Settings(output=output, **options))


def video(key: str, length: int) -> TestVideo:
    return TestVideo(key, length)


def wait_until_gone(pids: list[int], seconds: float = 30) -> bool:
    """Whether every process in ``pids`` has ended (a zombie counts as ended) within ``seconds``."""
    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + seconds
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def read_outputs(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))
            if path.name != "run.json" and not path.name.startswith("summary")}


@pytest.fixture
def index_videos(tmp_path: Path) -> dict:
    """Index-stamped videos as .mp4 files and as JPEG folders: 400 frames, 37 frames and 5 frames."""
    lengths = {"long": 400, "mid": 37, "short": 5}
    for key, length in lengths.items():
        write_index_video(tmp_path / "videos" / f"{key}.mp4", length, size=(64, 48))
        write_index_folder(tmp_path / "frames" / key, length)
    return {"videos": [video(key, length) for key, length in lengths.items()],
            "videos_dir": tmp_path / "videos", "frames_dir": tmp_path / "frames"}


# -- segment layout -----------------------------------------------------------------------------

def test_segment_layout_pins_centres_windows_and_indices():
    segments = plan_segments(1000, half=150)
    assert [s.centre for s in segments] == list(range(0, 1000, 16))
    first, tenth, last = segments[0], segments[10], segments[-1]
    assert (first.start, first.end, first.indices) == (0, 150, (0, 18, 37, 56, 75, 93, 112, 131))
    assert (tenth.centre, tenth.start, tenth.end) == (160, 10, 310)
    assert tenth.indices == (10, 47, 85, 122, 160, 197, 235, 272)  # step 37.5
    assert (last.centre, last.start, last.end) == (992, 842, 1000)
    assert last.indices == (842, 861, 881, 901, 921, 940, 960, 980)  # step 19.75
    assert all(len(s.indices) == 8 and s.start <= min(s.indices) and max(s.indices) < s.end for s in segments)


def test_segment_layout_of_videos_shorter_than_one_window():
    short = plan_segments(5, half=150)
    assert [(s.centre, s.start, s.end) for s in short] == [(0, 0, 5)]
    assert short[0].indices == (0, 0, 1, 1, 2, 3, 3, 4)  # step 0.625: frames repeat
    twenty = plan_segments(20, half=150)
    assert [(s.centre, s.start, s.end) for s in twenty] == [(0, 0, 20), (16, 0, 20)]
    assert twenty[1].indices == (0, 2, 5, 7, 10, 12, 15, 17)
    assert plan_segments(0, half=150) == []
    assert [s.centre for s in plan_segments(17, half=150)] == [0, 16]


def test_true_ten_second_window_at_a_given_fps(tmp_path):
    backend = ScriptedBackend(lambda r: "Output: 0")
    step = runner(backend, tmp_path / "out", frames_dir=tmp_path, fps=24.0)
    assert step.half == 120
    assert (plan_segments(1000, step.half)[10].start, plan_segments(1000, step.half)[10].end) == (40, 280)


# -- frames, prompts and outputs ----------------------------------------------------------------

def test_frames_are_resized_to_448_bicubic():
    assert Step1Settings(output=Path("x")).image_size == 448
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, 160:] = 200
    (resized,) = resize_frames(frame[None])
    assert resized.shape == (448, 448, 3) and resized.dtype == np.uint8 and resized.flags.writeable
    assert (resized[:, :200] == 0).all() and (resized[:, 250:] == 200).all()
    # Bicubic overshoots at the edge (nearest or bilinear would stay within 0–200).
    assert resized[:, 200:250].max() > 200

@pytest.mark.parametrize("layout", ["released", "per-frame"])
def test_video_files_and_frame_folders_show_the_same_planned_frames(index_videos, tmp_path, layout):
    outputs = {}
    for source in ("videos_dir", "frames_dir"):
        backend = ScriptedBackend(index_answer)
        out = tmp_path / f"out-{source}-{layout}"
        runner(backend, out, frame_layout=layout, batch_size=5, **{source: index_videos[source]}).run(
            index_videos["videos"])
        outputs[source] = read_outputs(out)
        prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, QUESTIONS)
        assert all(r.prompt == prompt and r.image_block == (layout == "released") for r in backend.requests)
        assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in backend.requests[0].images)
    assert outputs["videos_dir"] == outputs["frames_dir"]
    for item in index_videos["videos"]:
        entries = outputs["videos_dir"][item.key]
        segments = plan_segments(item.length, 150)
        assert list(entries) == [str(s.centre) for s in segments]
        assert [answered_indices(entries[str(s.centre)]) for s in segments] == [list(s.indices) for s in segments]


def test_output_format_run_record_and_summary(index_videos, tmp_path):
    out = tmp_path / "out"
    summary = runner(ScriptedBackend(index_answer), out, videos_dir=index_videos["videos_dir"], batch_size=4).run(
        index_videos["videos"])
    entries = read_outputs(out)["long"]
    assert list(entries) == [str(c) for c in range(0, 400, 16)]
    assert entries["160"] == {"start": 10.0, "end": 310.0, "score": 1, "parse_status": "ok", "well_formed": True,
                              "label_prob": None, "response": entries["160"]["response"]}
    assert entries["0"]["score"] == 0  # second index 18; 160's is 47
    assert all(isinstance(e["start"], float) and isinstance(e["end"], float) for e in entries.values())
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["questions"] == QUESTIONS and run["identity"]["frame_layout"] == "released"
    assert run["identity"]["half_window"] == 150 and run["identity"]["max_new_tokens"] == 1024
    assert run["prompt"] == build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, QUESTIONS)
    assert run["backend"] == {"backend": "scripted"} and run["created"] and run["versions"]["vera"]
    assert Step1Settings(output=out).checkpoint_every == 64
    assert (summary.videos, summary.segments, summary.not_well_formed) == (3, 25 + 3 + 1, 0)
    assert json.loads((out / "summary.json").read_text())["segments"] == 29
    assert not list((out / ".partial").glob("*.json"))


def test_batches_span_videos(index_videos, tmp_path):
    backend = ScriptedBackend(index_answer)
    runner(backend, tmp_path / "out", frames_dir=index_videos["frames_dir"], batch_size=8).run(index_videos["videos"])
    assert backend.batch_sizes == [8, 8, 8, 5]  # 25 + 3 + 1 segments


def test_malformed_empty_and_truncated_answers_are_recorded_and_counted(tmp_path):
    write_index_folder(tmp_path / "frames" / "v", 80)
    answers = iter([VLMAnswer("Output: 0"), VLMAnswer(""), VLMAnswer("Answers to Prompt Questions: 1. The",
                                                                    extra={"truncated": True}),
                    VLMAnswer("no label at all"), VLMAnswer("Output: 1", label_prob=0.8)])
    summary = runner(ScriptedBackend(lambda r: next(answers)), tmp_path / "out",
                     frames_dir=tmp_path / "frames").run([video("v", 80)])
    entries = read_outputs(tmp_path / "out")["v"]
    assert [(e["score"], e["parse_status"], e["well_formed"]) for e in entries.values()] == [
        (0, "ok", True), (1, "empty", False), (1, "truncated", False), (1, "no-marker", False), (1, "ok", True)]
    assert entries["64"]["label_prob"] == 0.8
    assert summary.not_well_formed == 3
    assert dict(summary.by_status) == {"ok": 2, "empty": 1, "truncated": 1, "no-marker": 1}
    assert "answers not well formed: 3 of 5 (60.0%)" in summary.text()


# -- resume, refusal, sharding ------------------------------------------------------------------

KILL_SCRIPT = """
import multiprocessing, os, sys
from pathlib import Path
from fixtures.videos import decode_index
from vera.data.annotations import TestVideo
from vera.vlm.backends.scripted import ScriptedBackend
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE
from vera.constants import PRESET_QUESTIONS
from vera.vlm.step1 import Step1Runner, Step1Settings

answered = 0
def respond(request):
    global answered
    answered += 1
    if answered == 1:
        print(*[process.pid for process in multiprocessing.active_children()], flush=True)  # input workers
    if answered > int(sys.argv[2]):
        os._exit(137)  # a hard kill: no cleanup runs
    indices = [decode_index(image) for image in request.images]
    return f"Answers to Prompt Questions: frames {indices}\\nOutput: {indices[1] % 2}"

settings = Step1Settings(output=Path(sys.argv[1]) / "out", frames_dir=Path(sys.argv[1]) / "frames",
                         batch_size=8, checkpoint_every=16, image_size=64, progress=False,
                         input_workers=int(sys.argv[3]))
Step1Runner(ScriptedBackend(respond), DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], settings).run(
    [TestVideo("done", 40), TestVideo("long", 1600)])
"""


@pytest.mark.parametrize("input_workers", [0, 2])
def test_resume_after_a_hard_kill_loses_at_most_one_checkpoint_interval(tmp_path, input_workers):
    write_index_folder(tmp_path / "frames" / "done", 40)
    write_index_folder(tmp_path / "frames" / "long", 1600, size=(40, 32))
    # Batches of 8: 3 segments of "done" and 5 of "long", then 8 of "long" at a time; killed in the
    # 7th batch. With a checkpoint every 16 answers, "long" was checkpointed after 21 and 37 answers.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    # Output to files, not pipes: the run must end without waiting for workers that inherited them.
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), "52", str(input_workers)],
                                env=env, cwd=ROOT, stdout=stdout, stderr=stderr, timeout=300)
    assert killed.returncode == 137, (tmp_path / "stderr").read_text()
    workers = [int(pid) for pid in (tmp_path / "stdout").read_text().split()]
    assert len(workers) == input_workers
    assert wait_until_gone(workers, seconds=10), "input workers outlived the killed run"
    out = tmp_path / "out"
    assert set(read_outputs(out)) == {"done"}
    partial = json.loads((out / ".partial" / "long.json").read_text())["value"]
    assert len(partial["segments"]) == 37  # its answers 38–45 came after the last checkpoint: lost

    backend = ScriptedBackend(index_answer)
    videos = [video("done", 40), video("long", 1600)]
    summary = runner(backend, out, frames_dir=tmp_path / "frames", batch_size=8, checkpoint_every=16).run(videos)
    assert len(backend.requests) == 100 - 37  # only what the checkpoint lacked
    assert (summary.videos_skipped, summary.segments) == (1, 3 + 100)
    fresh = tmp_path / "fresh"
    runner(ScriptedBackend(index_answer), fresh, frames_dir=tmp_path / "frames", batch_size=8,
           checkpoint_every=16).run(videos)
    assert read_outputs(out) == read_outputs(fresh)
    assert not (out / ".partial" / "long.json").exists()


@pytest.mark.parametrize("input_workers", [0, 2])
def test_a_failing_backend_keeps_every_answer_and_a_rerun_finishes(tmp_path, input_workers):
    write_index_folder(tmp_path / "frames" / "v", 400, size=(40, 32))
    write_index_folder(tmp_path / "frames" / "w", 100, size=(40, 32))
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) == 14:
            raise RuntimeError("backend crashed")
        return index_answer(request)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="backend crashed"):
        runner(ScriptedBackend(flaky), out, frames_dir=tmp_path / "frames", batch_size=4,
               input_workers=input_workers).run([video("v", 400), video("w", 100)])
    assert not multiprocessing.active_children()  # the input workers stopped with the run
    partial = json.loads((out / ".partial" / "v.json").read_text())["value"]
    assert len(partial["segments"]) == 12  # three whole batches, though no checkpoint interval was reached
    backend = ScriptedBackend(index_answer)
    runner(backend, out, frames_dir=tmp_path / "frames", batch_size=4).run([video("v", 400)])
    assert len(backend.requests) == 25 - 12 and len(read_outputs(out)["v"]) == 25


def test_a_checkpoint_saved_for_another_annotation_length_is_redone(tmp_path):
    # The run identity holds no annotation lengths, so only the checkpoint's own length tells that the
    # annotation changed between runs: its answers (windows ending at frame 100) must not be reused.
    write_index_folder(tmp_path / "frames" / "v", 100, size=(40, 32))
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) == 5:
            raise RuntimeError("backend crashed")
        return "Output: 1"

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="backend crashed"):
        runner(ScriptedBackend(flaky), out, frames_dir=tmp_path / "frames", batch_size=1,
               allow_length_mismatch=True).run([video("v", 100)])
    saved = json.loads((out / ".partial" / "v.json").read_text())["value"]
    assert saved["length"] == 100 and list(saved["segments"]) == ["0", "16", "32", "48"]
    assert {entry["end"] for entry in saved["segments"].values()} == {100.0}

    backend = ScriptedBackend(index_answer)
    runner(backend, out, frames_dir=tmp_path / "frames", batch_size=1,
           allow_length_mismatch=True).run([video("v", 90)])
    assert len(backend.requests) == 6  # centres 0, 16, …, 80 of 90 frames: every one asked afresh
    result = read_outputs(out)["v"]
    assert list(result) == ["0", "16", "32", "48", "64", "80"]
    assert {entry["end"] for entry in result.values()} == {90.0}
    assert [entry["score"] for entry in result.values()] == [answered_indices(e)[1] % 2 for e in result.values()]
    assert not (out / ".partial" / "v.json").exists()


def test_refuses_another_configuration_unless_overwrite(index_videos, tmp_path):
    out = tmp_path / "out"
    videos = index_videos["videos"][1:]
    frames = index_videos["frames_dir"]
    runner(ScriptedBackend(lambda r: "Output: 0"), out, frames_dir=frames).run(videos)
    assert runner(ScriptedBackend(lambda r: "Output: 1"), out, frames_dir=frames).run(videos).segments_generated == 0
    for change, differ in [({"questions": ["1. Other?"]}, "prompt_sha256, questions"),
                           ({"frame_layout": "per-frame"}, "frame_layout"), ({"fps": 25.0}, "half_window"),
                           ({"max_new_tokens": 16}, "max_new_tokens")]:
        with pytest.raises(VeraError, match=rf"output folder {out} was made with other settings \({differ} differ;"):
            runner(ScriptedBackend(lambda r: "Output: 1"), out, frames_dir=frames, **change).run(videos)
    runner(ScriptedBackend(lambda r: "Output: 1"), out, frames_dir=frames, questions=["1. Other?"],
           overwrite=True, limit=1).run(videos)
    # Starting afresh removed the old configuration's results, also for videos this run did not do.
    assert set(read_outputs(out)) == {"mid"}
    assert all(e["score"] == 1 for e in read_outputs(out)["mid"].values())
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "mid.json").write_text("{}")
    with pytest.raises(VeraError, match=r"holds files of an unknown run \(no run.json\)"):
        runner(ScriptedBackend(lambda r: "Output: 1"), unknown, frames_dir=frames).run(videos)
    # A JSON file that is no annotated video's score file is no conflict, and --overwrite would keep it.
    (unknown / "mid.json").rename(unknown / "notes.json")
    runner(ScriptedBackend(lambda r: "Output: 1"), unknown, frames_dir=frames).run(videos)
    assert set(read_outputs(unknown)) == {"mid", "short", "notes"}


def test_shards_split_videos_deterministically(index_videos, tmp_path):
    videos = index_videos["videos"] + [video(f"extra{i}", 20) for i in range(3)]
    for i in range(3):
        write_index_folder(index_videos["frames_dir"] / f"extra{i}", 20)
    assert [v.key for v in select_videos(videos, (1, 2))] == ["mid", "extra0", "extra2"]
    assert [v.key for v in select_videos(videos, (0, 2), limit=3)] == ["long", "short"]
    assert shard_option("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(argparse.ArgumentTypeError):
            shard_option(bad)
    sharded = tmp_path / "sharded"
    for index in range(2):
        runner(ScriptedBackend(index_answer), sharded, frames_dir=index_videos["frames_dir"],
               shard=(index, 2)).run(videos)
    assert (sharded / "summary.shard-0-of-2.json").is_file() and (sharded / "summary.shard-1-of-2.json").is_file()
    whole = tmp_path / "whole"
    runner(ScriptedBackend(index_answer), whole, frames_dir=index_videos["frames_dir"]).run(videos)
    assert read_outputs(sharded) == read_outputs(whole)


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("input_workers", [0, 2])
def test_a_bad_video_is_reported_and_the_others_finish(index_videos, tmp_path, input_workers):
    frames = index_videos["frames_dir"]
    (frames / "long" / "000272.jpg").write_bytes(b"not a jpeg")  # first shown by segment 160
    videos = index_videos["videos"] + [video("absent", 50)]
    summary = runner(ScriptedBackend(index_answer), tmp_path / "out", frames_dir=frames,
                     input_workers=input_workers).run(videos)
    assert set(read_outputs(tmp_path / "out")) == {"mid", "short"}
    assert set(summary.failed) == {"long", "absent"}
    assert "video long: cannot read frame 272" in summary.failed["long"]
    assert "video absent: frame folder not found" in summary.failed["absent"]
    # The answers "long" got before its bad frame are kept for the rerun.
    kept = json.loads((tmp_path / "out" / ".partial" / "long.json").read_text())["value"]["segments"]
    assert list(kept) == [str(c) for c in range(0, 160, 16)]


@pytest.mark.parametrize("input_workers", [0, 2])
def test_annotation_length_must_match_the_frames_on_disk(index_videos, tmp_path, input_workers):
    frames = index_videos["frames_dir"]
    summary = runner(ScriptedBackend(index_answer), tmp_path / "a", frames_dir=frames,
                     input_workers=input_workers).run([video("mid", 40), video("short", 5)])
    message = summary.failed["mid"]
    assert "video mid: the annotation gives 40 frames but" in message and "has 37" in message
    assert set(read_outputs(tmp_path / "a")) == {"short"}
    summary = runner(ScriptedBackend(index_answer), tmp_path / "b", frames_dir=frames, allow_length_mismatch=True,
                     input_workers=input_workers).run([video("mid", 30)])
    assert not summary.failed and "using the annotation's length" in summary.warnings[0]
    assert list(read_outputs(tmp_path / "b")["mid"]) == ["0", "16"]
    summary = runner(ScriptedBackend(index_answer), tmp_path / "c", frames_dir=frames, allow_length_mismatch=True,
                     input_workers=input_workers).run([video("mid", 60)])
    assert "video mid: frame 37 is out of range" in summary.failed["mid"]


# -- the command line on the real clips with the tiny model -------------------------------------

def test_cli_on_real_clips_with_the_tiny_model(shared_data, tmp_path, capsys, tiny_models):

    clips = shared_data / "clips"
    keys = {"RoadAccidents133_x264_270_451": 181, "Fighting033_x264_570_841": 271}
    annotation = tmp_path / "ann.json"
    # Made-up labels, only so that the evaluation sees both classes.
    annotation.write_text(json.dumps([
        {"video": f"frames/Fighting/{keys_name}.mp4", "temporal_label": [100, min(200, length), -1, -1],
         "length": length}
        for keys_name, length in keys.items()]))
    frames = tmp_path / "frames"
    for key in list(keys)[:1]:  # the frames run does the first video only (--limit 1)
        assert decode_to_jpegs(clips / f"{key}.mp4", frames / key) == keys[key]

    cli = load_script("generate_initial_score")
    common = ["--dataset", "ucf", "--annotations", str(annotation), "--model", str(tiny_models.path("internvl")),
              "--preset", "ucf", "--batch-size", "8", "--max-new-tokens", "4", "--device", "cpu", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for source, folder, limit in (("--videos", clips, 2), ("--frames", frames, 1)):
            out = tmp_path / f"scores{source}"
            assert cli.main(common + [source, str(folder), "--output", str(out), "--limit", str(limit)]) == 0
            scores = read_outputs(out)
            assert list(scores) == sorted(list(keys)[:limit])
            for key in scores:
                length = keys[key]
                assert list(scores[key]) == [str(c) for c in range(0, length, 16)]
                assert scores[key][str(16 * (len(scores[key]) - 1))]["end"] == float(length)
                assert all(e["response"] is not None and e["score"] in (0, 1) for e in scores[key].values())
            run = json.loads((out / "run.json").read_text())
            assert run["backend"]["model_type"] == "internvl" and run["identity"]["max_new_tokens"] == 4
        text = capsys.readouterr().out
        assert "2 videos (0 already finished), 29 segments, 29 generated" in text
        assert "1 videos (0 already finished), 12 segments, 12 generated" in text
        assert "answers not well formed" in text
        # A rerun finds everything done.
        assert cli.main(common + ["--videos", str(clips), "--output", str(tmp_path / "scores--videos")]) == 0
        assert "(2 already finished), 29 segments, 0 generated" in capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)

    compute_auc = load_script("compute_auc")
    assert compute_auc.main(["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(tmp_path / "scores--videos"),
                     "--skip-step2", "--no-curves", "--output", str(tmp_path / "auc")]) == 0
    metrics = json.loads((tmp_path / "auc" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["num_frames"]) == (2, 181 + 271)
    # The metric is the AUC of the saved frame scores against the annotated frames 100-199 of each clip.
    saved = np.concatenate([np.load(tmp_path / "auc" / "frame_scores" / f"{key}.npy") for key in keys])
    labels = np.concatenate([(np.arange(length) >= 100) & (np.arange(length) < 200) for length in keys.values()])
    fpr, tpr, _ = roc_curve(labels, saved)
    assert metrics["value"] == auc(fpr, tpr)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from vera.errors import run_cli

    cli = load_script("generate_initial_score")
    annotation = tmp_path / "ann.json"
    annotation.write_text("[]")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl"}))  # a model folder, no weights read
    base = ["--dataset", "ucf", "--annotations", str(annotation), "--frames", str(tmp_path), "--model", str(tmp_path),
            "--output", str(tmp_path / "out")]
    assert run_cli(cli.main, base + ["--preset", "ucf", "--shard", "2/2"]) == 2
    assert capsys.readouterr().err == "error: argument --shard: 2/2: need 0 <= I < N\n"
    assert run_cli(cli.main, base + ["--questions", str(tmp_path / "q.txt")]) == 2
    assert capsys.readouterr().err == f"error: argument --questions: file not found: {tmp_path / 'q.txt'}\n"
    assert run_cli(cli.main, base + ["--preset", "ucf", "--input-workers", "-1"]) == 2
    assert capsys.readouterr().err == "error: argument --input-workers: must be at least 0, got -1\n"
    assert run_cli(cli.main, base + ["--preset", "ucf", "--input-workers", "some"]) == 2
    assert capsys.readouterr().err == "error: argument --input-workers: must be a whole number or 'auto', got 'some'\n"
    assert run_cli(cli.main, base + ["--preset", "ucf", "--prompt-file", str(annotation)]) == 2
    assert "lacks '$Data' and 'Based on the analysis above'" in capsys.readouterr().err
