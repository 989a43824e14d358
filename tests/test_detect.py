"""detect.py: two real clips end to end on CPU (tiny VLM, tiny random ImageBind), resuming, labels, errors."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fixtures.reports import parse
from fixtures.scripts import ROOT, run

# The clips' frame counts, as the shared data's README lists them.
CLIPS = {"Fighting033_x264_570_841": 271, "v=JfLYNEsrTew__#1_label_G-0-0_52_431": 379}


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for key in CLIPS:
        shutil.copy(shared_data / "clips" / f"{key}.mp4", folder / f"{key}.mp4")
    return folder


def _argv(clips: Path, model: Path, output: Path, *extra: str, features=("--random-init", "--tiny")) -> list[str]:
    return [str(clips / f"{key}.mp4") for key in CLIPS] + [
        "--model", str(model), *features, "--max-new-tokens", "4", "--device", "cpu", "--output", str(output),
        "--no-progress", "--workers", "1", *extra]


@pytest.fixture(scope="module")
def detected(clips, tiny_models, tmp_path_factory):
    output = tmp_path_factory.mktemp("detect") / "out"
    argv = _argv(clips, tiny_models.path("internvl"), output, "--input-workers", "0")  # in process; compared below
    done = subprocess.run([sys.executable, str(ROOT / "detect.py"), *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return output, done.stdout


def test_every_stage_writes_its_folder(detected):
    output, stdout = detected
    assert f"report: {output / 'report' / 'index.html'}" in stdout
    annotations = json.loads((output / "input" / "annotations.json").read_text())
    assert {Path(entry["video"]).stem: entry["length"] for entry in annotations} == CLIPS
    for key, length in CLIPS.items():
        segments = math.ceil(length / 16)
        step1 = json.loads((output / "step1" / f"{key}.json").read_text())
        assert sorted(int(centre) for centre in step1) == list(range(0, length, 16))
        assert all(entry["score"] in (0, 1) and isinstance(entry["response"], str) for entry in step1.values())
        features = np.load(output / "features" / f"{key}.npy")
        assert features.shape == (segments, 32) and np.all(np.isfinite(features))
        frames = np.load(output / "scores" / "frame_scores" / f"{key}.npy")
        assert frames.shape == (length,) and np.all((frames >= 0) & (frames <= 1))
        with np.load(output / "scores" / "stages.npz") as stages:
            answers = stages[f"{key}/answers"]
        assert answers.tolist() == [step1[str(centre)]["score"] for centre in range(0, length, 16)]
    summary = json.loads((output / "scores" / "summary.json").read_text())
    assert summary["options"]["protocol"] == "paper" and summary["options"]["window"] == 15
    rows = parse(output / "report" / "index.html").rows
    assert sorted(row[0]["data-value"] for row in rows) == sorted(CLIPS)
    for key in CLIPS:
        page = (output / "report" / "videos" / f"{key}.html").read_text()
        assert "data:image/png;base64," in page and "data:image/jpeg;base64," in page
        assert 'class="segment' in page and "<pre class=\"response\">" in page


def test_frame_scores_equal_compute_auc_with_the_paper_protocol(detected, tmp_path):
    output, _ = detected
    annotations = json.loads((output / "input" / "annotations.json").read_text())
    for entry in annotations:  # any labels: compute_auc needs two classes; the frame scores do not depend on them
        entry["video"] = entry["video"].replace("Unlabelled/", "Fighting/")
        entry["temporal_label"] = [0, 16, -1, -1]
    labelled = tmp_path / "labelled.json"
    labelled.write_text(json.dumps(annotations))
    assert run("compute_auc", ["--dataset", "ucf", "--protocol", "paper", "--annotations", str(labelled),
                               "--scores", str(output / "step1"), "--features", str(output / "features"),
                               "--output", str(tmp_path / "auc"), "--no-curves"]) == 0
    for key in CLIPS:
        assert np.array_equal(np.load(tmp_path / "auc" / "frame_scores" / f"{key}.npy"),
                              np.load(output / "scores" / "frame_scores" / f"{key}.npy"))


def test_a_rerun_resumes_without_loading_a_model(detected, clips, tiny_models, capsys):
    output, _ = detected
    stamps = {path: path.stat().st_mtime_ns for path in (output / "step1").glob("*.json")}
    started = time.monotonic()
    assert run("detect", _argv(clips, tiny_models.path("internvl"), output)) == 0
    out = capsys.readouterr().out
    assert "Step 1: all 2 videos answered before" in out and "features: all 2 videos computed before" in out
    assert {path: path.stat().st_mtime_ns for path in (output / "step1").glob("*.json")} == stamps
    assert time.monotonic() - started < 60
    # Other settings are refused, naming them; nothing is redone.
    assert run("detect", _argv(clips, tiny_models.path("internvl"), output, "--max-new-tokens", "5")) == 2
    assert "max_new_tokens differ" in capsys.readouterr().err


def test_input_workers_auto_is_step1s_default(clips, tiny_models, tmp_path, monkeypatch):
    """``--input-workers`` as generate_initial_score.py gives it: ``auto`` (the default) is ``default_workers()``."""
    import vera.data.loading
    import vera.detection

    chosen = []
    monkeypatch.setattr(vera.data.loading, "default_workers", lambda processes_per_machine=1: 3)
    monkeypatch.setattr(vera.detection, "run_detect", lambda settings: chosen.append(settings.input_workers) or "x")
    model = tiny_models.path("internvl")
    assert run("detect", _argv(clips, model, tmp_path / "auto")) == 0
    assert run("detect", _argv(clips, model, tmp_path / "auto", "--input-workers", "2")) == 0
    assert chosen == [3, 2]


def test_frames_read_by_input_workers_give_the_same_answers(detected, clips, tiny_models, tmp_path, monkeypatch):
    """A run whose Step 1 and features read through 2 workers writes the same bytes as ``detected`` (in process)."""
    import vera.features.feature_extraction
    import vera.vlm.step1

    workers = {}
    for stage, module in (("step1", vera.vlm.step1), ("features", vera.features.feature_extraction)):
        def spy(jobs, count, chunk, stage=stage, original=module.read_ahead, **options):
            workers[stage] = count
            return original(jobs, count, chunk, **options)

        monkeypatch.setattr(module, "read_ahead", spy)
    output, _ = detected
    in_workers = tmp_path / "in_workers"
    assert run("detect", _argv(clips, tiny_models.path("internvl"), in_workers, "--input-workers", "2")) == 0
    assert workers == {"step1": 2, "features": 2}
    for key in CLIPS:
        for name in (f"step1/{key}.json", f"features/{key}.npy"):
            assert (in_workers / name).read_bytes() == (output / name).read_bytes(), name


def test_labels_give_the_ground_truth_and_the_auc(clips, tiny_models, tmp_path):
    from sklearn.metrics import roc_auc_score

    labels = tmp_path / "labels.csv"
    labels.write_text("video,class,intervals\nFighting033_x264_570_841,Fighting,16-100;200-271\n"
                      "v=JfLYNEsrTew__#1_label_G-0-0_52_431,Normal,\n")
    output = tmp_path / "out"
    assert run("detect", _argv(clips, tiny_models.path("internvl"), output, "--labels", str(labels),
                               features=("--skip-step2",))) == 0
    assert not (output / "features").exists()
    annotations = {Path(entry["video"]).stem: entry
                   for entry in json.loads((output / "input" / "annotations.json").read_text())}
    assert annotations["Fighting033_x264_570_841"]["video"] == "Fighting/Fighting033_x264_570_841.mp4"
    assert annotations["Fighting033_x264_570_841"]["temporal_label"] == [16, 100, 200, 271]
    assert annotations["v=JfLYNEsrTew__#1_label_G-0-0_52_431"]["temporal_label"] == [-1, -1]
    # The ground truth by hand: frames 16-99 and 200-270 of the fight, none of the normal video.
    truth = {"Fighting033_x264_570_841": [0] * 16 + [1] * 84 + [0] * 100 + [1] * 71,
             "v=JfLYNEsrTew__#1_label_G-0-0_52_431": [0] * 379}
    scores = {key: np.load(output / "scores" / "frame_scores" / f"{key}.npy") for key in CLIPS}
    assert all(scores[key].size == len(truth[key]) == CLIPS[key] for key in CLIPS)
    expected = roc_auc_score(truth["Fighting033_x264_570_841"] + truth["v=JfLYNEsrTew__#1_label_G-0-0_52_431"],
                             np.concatenate([scores[key] for key in truth]))
    assert len({round(float(value), 6) for value in np.concatenate(list(scores.values()))}) > 2  # not a flat curve
    page = (output / "report" / "index.html").read_text()
    assert f"AUC over these videos&#x27; frames <b>{100 * expected:.2f} %</b>" in page
    rows = {row[0]["data-value"]: row for row in parse(output / "report" / "index.html").rows}
    assert rows["Fighting033_x264_570_841"][1]["data-value"] == "Fighting"
    assert rows["v=JfLYNEsrTew__#1_label_G-0-0_52_431"][1]["data-value"] == "Normal"


def test_without_a_model_offline_it_says_what_it_would_download(clips, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VERA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    status = run("detect", [str(clips), "--random-init", "--tiny", "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert status == 2 and time.monotonic() - started < 10
    assert len(error.strip().splitlines()) == 1 and error.startswith("error: without --model, detect.py runs the "
                                                                     "paper's InternVL2-8B and would download ")
    for part in ("OpenGVLab/InternVL2-8B from the Hugging Face Hub", "about 16 GB", str(tmp_path / "hub"),
                 f"converted once into {tmp_path / 'cache' / 'InternVL2-8B-native'}",
                 "the network is off (HF_HUB_OFFLINE=1)", "or pass --model PATH_OR_ID"):
        assert part in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_converted_model_in_the_cache_is_used_without_download(tmp_path, monkeypatch):
    from vera.vlm.paper_model import paper_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VERA_CACHE", str(tmp_path))
    converted = tmp_path / "InternVL2-8B-native"
    converted.mkdir()
    (converted / "vera_conversion.json").write_text("{}")
    said = []
    assert paper_model(said.append) == str(converted) and said == []


@pytest.mark.parametrize("argv, message", [
    (["nowhere.mp4", "--random-init"], "video or folder not found: nowhere.mp4"),
    (["labels.csv", "--random-init"], "labels.csv is not a video file"),
    (["CLIPS", "--tiny", "--skip-step2"], "argument --tiny: only with --random-init"),
    (["CLIPS"], "one of the arguments --features --random-init --skip-step2 is required"),
    (["CLIPS", "--random-init", "--skip-step2"], "not allowed with argument"),
])
def test_bad_arguments_are_one_line_errors(clips, tiny_models, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_text("video,class\n")
    argv = [str(clips) if part == "CLIPS" else part for part in argv]
    assert run("detect", argv + ["--model", str(tiny_models.path("internvl")), "--output", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["detect", "report"])
def test_help_imports_no_heavy_library(command):
    probe = (f"import sys, contextlib, io\nsys.path.insert(0, {str(ROOT / 'tests')!r})\nfrom fixtures.scripts import run\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             f"    try:\n        run({command!r}, ['--help'])\n    except SystemExit:\n        pass\n"
             "assert 'usage:' in out.getvalue()\n"
             "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'matplotlib', 'av') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


@pytest.fixture
def with_bad_videos(shared_data, tmp_path):
    """One good clip beside a 1-frame video (decodes, too short to score) and a file that is no video."""
    from fixtures.videos import write_index_video

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(shared_data / "clips" / "Fighting033_x264_570_841.mp4", folder)
    write_index_video(folder / "one_frame.mp4", 1, size=(64, 48))
    (folder / "junk.mp4").write_bytes(b"not a video" * 100)
    return folder


def test_a_too_short_video_stops_the_run_before_step1(with_bad_videos, tiny_models, tmp_path):
    output = tmp_path / "out"
    bad = "one_frame.mp4"
    argv = [str(with_bad_videos / "Fighting033_x264_570_841.mp4"), str(with_bad_videos / bad),
            "--model", str(tiny_models.path("internvl")), "--random-init", "--tiny", "--max-new-tokens", "4",
            "--device", "cpu", "--output", str(output), "--no-progress", "--workers", "1"]
    done = subprocess.run([sys.executable, str(ROOT / "detect.py"), *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: video one_frame: 1 frame(s), too short to score") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert str(with_bad_videos / bad) in done.stderr and "--skip-bad-videos" in done.stderr
    # Nothing computed: no annotation, no Step 1, no features.
    assert not (output / "input" / "annotations.json").exists()
    assert not (output / "step1").exists() and not (output / "features").exists()


def test_skip_bad_videos_leaves_them_out_names_them_and_reports_the_others(with_bad_videos, tiny_models, tmp_path,
                                                                          capsys):
    output = tmp_path / "out"
    labels = tmp_path / "labels.csv"  # rows for every file, the left-out ones included
    labels.write_text("video,class,intervals\nFighting033_x264_570_841,Fighting,0-100\none_frame,Normal,\n"
                      "junk.mp4,Normal,\n")
    argv = [str(with_bad_videos), "--model", str(tiny_models.path("internvl")), "--skip-step2", "--labels",
            str(labels), "--max-new-tokens", "4", "--device", "cpu", "--output", str(output), "--no-progress",
            "--workers", "1", "--skip-bad-videos"]
    assert run("detect", argv) == 0
    out = capsys.readouterr().out
    left = [line for line in out.splitlines() if line.startswith("left out (--skip-bad-videos): ")]
    assert len(left) == 2
    assert any(f"video one_frame: 1 frame(s), too short to score (at least 2 needed; {with_bad_videos}" in line
               for line in left)
    assert any("video junk: cannot open the video" in line and str(with_bad_videos / "junk.mp4") in line
               for line in left)
    assert [Path(entry["video"]).stem for entry in json.loads((output / "input" / "annotations.json").read_text())] \
        == ["Fighting033_x264_570_841"]
    assert sorted(path.name for path in (output / "step1").glob("*.json")) == ["Fighting033_x264_570_841.json",
                                                                              "run.json", "summary.json"]
    index = output / "report" / "index.html"
    assert [row[0]["data-value"] for row in parse(index).rows] == ["Fighting033_x264_570_841"]
    note = index.read_text().split('id="left-out"', 1)[1].split("</div>", 1)[0]
    assert "Left out, not scored (2)" in note and "video one_frame: 1 frame(s)" in note and "video junk:" in note

    # The same inputs give the same verdict on resume: without the option the run stops, naming the videos,
    # and changes nothing; with it, the run resumes and names them again.
    before = {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}
    assert run("detect", argv[:-1]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: 2 of 3 videos cannot be scored: ") and "one_frame" in error and "junk" in error
    assert len(error.strip().splitlines()) == 1
    assert run("detect", argv) == 0
    out = capsys.readouterr().out
    assert "Step 1: all 1 videos answered before" in out and out.count("left out (--skip-bad-videos): ") == 2
    after = {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}
    assert {path for path in after if "report" not in path.parts} == {path for path in before if "report" not in path.parts}
    assert all(after[path] == before[path] for path in before if "step1" in path.parts)


def test_skip_bad_videos_with_no_good_video_left_is_an_error(with_bad_videos, tiny_models, tmp_path, capsys):
    (with_bad_videos / "Fighting033_x264_570_841.mp4").unlink()
    output = tmp_path / "out"
    assert run("detect", [str(with_bad_videos), "--model", str(tiny_models.path("internvl")), "--skip-step2",
                          "--device", "cpu", "--output", str(output), "--workers", "1", "--skip-bad-videos"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: none of the 2 videos can be scored: ") and len(error.strip().splitlines()) == 1
    assert not (output / "step1").exists()
