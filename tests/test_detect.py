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

from report_fixtures import parse
from scripts import ROOT
from vera.commands import run

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
    import vera.features.extraction
    import vera.vlm.step1

    workers = {}
    for stage, module in (("step1", vera.vlm.step1), ("features", vera.features.extraction)):
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
    labels = tmp_path / "labels.csv"
    labels.write_text("video,class,intervals\nFighting033_x264_570_841,Fighting,0-271\n"
                      "v=JfLYNEsrTew__#1_label_G-0-0_52_431,Normal,\n")
    output = tmp_path / "out"
    assert run("detect", _argv(clips, tiny_models.path("internvl"), output, "--labels", str(labels),
                               features=("--skip-step2",))) == 0
    assert not (output / "features").exists()
    rows = {row[0]["data-value"]: row for row in parse(output / "report" / "index.html").rows}
    assert rows["Fighting033_x264_570_841"][1]["data-value"] == "Fighting"
    assert rows["v=JfLYNEsrTew__#1_label_G-0-0_52_431"][1]["data-value"] == "Normal"
    assert "AUC over these videos" in (output / "report" / "index.html").read_text()


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
    probe = ("import sys, contextlib, io\nfrom vera.commands import run\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             f"    try:\n        run({command!r}, ['--help'])\n    except SystemExit:\n        pass\n"
             "assert 'usage:' in out.getvalue()\n"
             "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'matplotlib', 'av') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
