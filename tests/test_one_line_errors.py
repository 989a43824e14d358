"""Inputs that once ended in a traceback: each is one ``error:`` line and exit code 2, through the real scripts."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fixtures.scripts import ROOT, load_script
from vera.data.annotations import load_test_annotations
from vera.errors import run_cli
from vera.scoring.synthetic import write_synthetic_inputs

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)


def annotation_of(tmp_path: Path, lengths: dict[str, int]) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"video": f"frames/Fighting/{key}.mp4", "temporal_label": [-1, -1, -1, -1],
                                 "length": length} for key, length in lengths.items()]))
    return path


def test_a_model_folder_without_config_json_is_one_line_in_every_command(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"not a model")
    annotation = annotation_of(tmp_path, {"v": 40})
    (tmp_path / "frames").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"never decoded")
    expected = f"error: model folder {model} has no config.json (is it the folder of a downloaded or converted " \
               "model?)\n"
    runs = {
        "Step 1": ["Inference/generate_initial_score.py", "--dataset", "ucf", "--annotations", str(annotation),
                   "--frames", str(tmp_path / "frames"), "--preset", "ucf", "--output", str(tmp_path / "s1")],
        "training": ["training.py", "--dataset", "ucf", "--train", str(annotation), "--val", str(annotation),
                     "--frames", str(tmp_path / "frames"), "--output", str(tmp_path / "train")],
        "detect": ["detect.py", str(tmp_path / "clip.mp4"), "--random-init", "--tiny", "--output",
                   str(tmp_path / "detect")],
    }
    for stage, args in runs.items():
        result = script(*args, "--model", str(model))
        assert (result.returncode, result.stderr) == (2, expected), stage
    assert sorted(os.listdir(tmp_path)) == ["ann.json", "clip.mp4", "frames", "model"]  # nothing made


def test_an_empty_feature_file_is_one_line_in_compute_auc_and_on_resume(tmp_path):
    annotation = annotation_of(tmp_path, {"v1": 40, "v2": 48})
    write_synthetic_inputs(load_test_annotations(annotation, "ucf"), tmp_path / "scores", tmp_path / "features",
                           width=8)
    empty = tmp_path / "features" / "v2.npy"
    empty.write_bytes(b"")
    result = script("Inference/compute_auc.py", "--dataset", "ucf", "--annotations", str(annotation), "--scores",
                    str(tmp_path / "scores"), "--features", str(tmp_path / "features"), "--output",
                    str(tmp_path / "out"))
    assert (result.returncode, result.stderr) == (
        2, f"error: video v2: cannot read feature file {empty} (No data left in file)\n")

    # extract_features.py resuming into a folder whose finished file is empty.
    from test_step1 import write_index_folder

    for key, length in (("v1", 40), ("v2", 48)):
        write_index_folder(tmp_path / "frames" / key, length)
    extract = load_script("extract_features")
    argv = ["--annotations", str(annotation), "--frames", str(tmp_path / "frames"), "--random-init", "--tiny",
            "--device", "cpu", "--no-progress", "--output", str(tmp_path / "feat")]
    assert run_cli(extract.main, argv) == 0
    (tmp_path / "feat" / "v2.npy").write_bytes(b"")
    result = script("Preprocessing/extract_features.py", *argv)
    # The video is named as it fails, the others go on, and the last line sums up.
    message = (f"video v2: cannot read existing feature file {tmp_path / 'feat' / 'v2.npy'} (No data left in file); "
               "delete it to recompute")
    assert (result.returncode, result.stderr.splitlines()) == (
        2, [f"error: {message}", f"error: 1 of 2 videos failed ({message}); fix them and rerun to resume"])


def test_tiny_model_onto_a_file_or_a_read_only_disk_is_one_line(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    result = script("-m", "vera.vlm.tiny_model", "--arch", "internvl", "--out", str(taken))
    assert (result.returncode, result.stderr) == (2, f"error: output {taken} exists and is not a folder\n")
    assert taken.read_text() == "keep me"
    read_only = Path(tempfile.mkdtemp(prefix="vera-read-only-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)],
                             capture_output=True)
    if mounted.returncode != 0:
        read_only.rmdir()
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = script("-m", "vera.vlm.tiny_model", "--arch", "internvl", "--out", str(read_only / "tiny"))
    finally:
        subprocess.run(["umount", str(read_only)], check=True)
        read_only.rmdir()
    assert (result.returncode, result.stderr) == (
        2, f"error: cannot create output folder {read_only / 'tiny'}: Read-only file system\n")


def test_a_bad_video_exits_2_in_step1_as_in_feature_extraction(tmp_path, capsys, tiny_models, one_thread):
    from test_step1 import write_index_folder

    annotation = annotation_of(tmp_path, {"good": 40, "bad": 40})
    write_index_folder(tmp_path / "frames" / "good", 40)
    message = "video bad: frame folder not found"
    step1 = load_script("generate_initial_score")
    assert run_cli(step1.main, ["--dataset", "ucf", "--annotations", str(annotation), "--frames",
                                str(tmp_path / "frames"), "--model", str(tiny_models.path("internvl")), "--preset",
                                "ucf", "--max-new-tokens", "2", "--device", "cpu", "--no-progress", "--output",
                                str(tmp_path / "s1")]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: 1 of 2 videos failed (") and message in error
    assert error.endswith("); fix them and rerun to resume")
    features = load_script("extract_features")
    assert run_cli(features.main, ["--annotations", str(annotation), "--frames", str(tmp_path / "frames"),
                                   "--random-init", "--tiny", "--device", "cpu", "--no-progress", "--output",
                                   str(tmp_path / "feat")]) == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: 1 of 2 videos failed (") and message in error
    assert np.load(tmp_path / "feat" / "good.npy").shape[0] == 3  # the good video is done in both
    assert (tmp_path / "s1" / "good.json").is_file()
