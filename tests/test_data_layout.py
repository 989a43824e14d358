"""Inputs not named on the command line come from the documented Data/ layout (vera.data.layout)."""

from __future__ import annotations

import json

import pytest

from vera.scoring.synthetic import write_synthetic_inputs
from fixtures.scripts import run


@pytest.fixture
def data(tmp_path, monkeypatch):
    root = tmp_path / "Data"
    root.mkdir()
    monkeypatch.setenv("VERA_DATA", str(root))
    return root


def _ucf_release(root):
    """A tiny release in the Data/ layout: annotations, scores and features of two videos."""
    entries = [{"video": "frames/Abuse/Abuse001_x264.mp4", "temporal_label": [20, 60, -1, -1], "length": 100},
               {"video": "frames/Normal/Normal_Videos_001_x264.mp4", "temporal_label": [-1, -1, -1, -1],
                "length": 90}]
    (root / "UCF_Eval.json").write_text(json.dumps(entries))
    from vera.data.annotations import load_test_annotations

    videos = load_test_annotations(root / "UCF_Eval.json", "ucf")
    write_synthetic_inputs(videos, root / "scores" / "ucf", root / "features" / "ucf", width=16)
    return videos


def test_compute_auc_takes_annotations_scores_and_features_from_data(data, tmp_path, capsys):
    _ucf_release(data)
    assert run("compute_auc", ["--dataset", "ucf", "--output", str(tmp_path / "a"), "--no-curves"]) == 0
    err = capsys.readouterr().out
    assert f"using --annotations {data / 'UCF_Eval.json'} (default from {data}/)" in err
    assert f"using --scores {data / 'scores' / 'ucf'}" in err and f"using --features {data / 'features' / 'ucf'}" in err
    named = ["--dataset", "ucf", "--annotations", str(data / "UCF_Eval.json"), "--scores", str(data / "scores" / "ucf"),
             "--features", str(data / "features" / "ucf"), "--output", str(tmp_path / "b"), "--no-curves"]
    assert run("compute_auc", named) == 0
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert first["auc"] == second["auc"]


def test_a_missing_default_is_one_line_saying_how_to_fetch_it(data, tmp_path, capsys):
    assert run("compute_auc", ["--dataset", "xd", "--output", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (f"error: argument --annotations: not given, and {data / 'xd_test_800.json'} is "
                                       "absent (the test annotations; python Data/download.py fetches the authors' "
                                       "files into Data/)\n")
    (data / "UCF_Eval.json").write_text("[]")
    assert run("compute_auc", ["--dataset", "ucf", "--output", str(tmp_path / "a")]) == 2
    assert "error: argument --scores: not given, and " in capsys.readouterr().err


def test_authors_prompts_are_used_where_present_and_said_so(data):
    import argparse

    from vera.options import fill_defaults

    args = argparse.Namespace(dataset="ucf", prompt_file=None, optimizer_prompt_file=None)
    lines = fill_defaults(args, {"prompt_file", "optimizer_prompt_file"})
    assert args.prompt_file is None and args.optimizer_prompt_file is None
    assert all("the project's own template" in line for line in lines) and len(lines) == 2
    (data / "VERA_learner_instruct.txt").write_text("x")
    args = argparse.Namespace(dataset="ucf", prompt_file=None, optimizer_prompt_file=None)
    lines = fill_defaults(args, {"prompt_file", "optimizer_prompt_file"})
    assert args.prompt_file == data / "VERA_learner_instruct.txt" and args.optimizer_prompt_file is None
    assert lines[0] == f"--prompt-file {data / 'VERA_learner_instruct.txt'} (default from {data}/)"


def test_xd_ap_takes_the_authors_frame_labels_only_for_ap(data):
    import argparse

    from vera.options import fill_defaults

    (data / "name_gt_pair.json").write_text("{}")
    for metric, expected in ((None, data / "name_gt_pair.json"), ("ap", data / "name_gt_pair.json"), ("auc", None)):
        args = argparse.Namespace(dataset="xd", metric=metric, gt_frames=None)
        fill_defaults(args, {"gt_frames"})
        assert args.gt_frames == expected, metric


def test_the_two_command_reproduction_writes_into_runs(data, tmp_path, monkeypatch, capsys):
    """`compute_auc.py --dataset ucf` alone: inputs from Data/, output runs/ucf_auc_released."""
    _ucf_release(data)
    monkeypatch.chdir(tmp_path)
    assert run("compute_auc", ["--dataset", "ucf", "--no-curves"]) == 0
    metrics = json.loads((tmp_path / "runs" / "ucf_auc_released" / "metrics.json").read_text())
    assert metrics["num_videos"] == 2 and metrics["protocol"] == "released"
    assert "wrote runs/ucf_auc_released/metrics.json" in capsys.readouterr().out


def test_merging_the_xd_duplicates_says_what_it_changed(tmp_path, capsys):
    """xd_annotations.json's '<key>.mp4' entries: the videos they turn violent and the metric both ways."""
    entries = [{"video": "v=a__#1_label_A", "temporal_label": [-1, -1], "length": 64, "label": "0"},
               {"video": "v=b__#1_label_B1-0-0", "temporal_label": [0, 32], "length": 64, "label": "1"},
               {"video": "v=a__#1_label_A.mp4", "temporal_label": [16, 48], "length": 0, "label": "1"}]
    annotations = tmp_path / "xd.json"
    annotations.write_text(json.dumps(entries))
    scores = tmp_path / "scores"
    scores.mkdir()
    answers = {"v=a__#1_label_A": [0, 1, 1, 0], "v=b__#1_label_B1-0-0": [1, 1, 0, 0]}
    for key, values in answers.items():
        (scores / f"{key}.json").write_text(json.dumps(
            {str(16 * i): {"start": 0.0, "end": 64.0, "score": v} for i, v in enumerate(values)}))
    common = ["--dataset", "xd", "--metric", "auc", "--annotations", str(annotations), "--scores", str(scores),
              "--skip-step2", "--no-curves"]
    assert run("compute_auc", [*common, "--output", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())["value"]
    capsys.readouterr()
    assert run("compute_auc", [*common, "--merge-xd-duplicates", "--output", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    merged = json.loads((tmp_path / "merged" / "metrics.json").read_text())["value"]
    assert merged != plain
    assert "--merge-xd-duplicates changed 1 videos (normal → violent, the intervals of their '<key>.mp4' " \
           "entries): v=a__#1_label_A" in out
    assert f"AUC without merging: {100 * plain:.4f} %; with: {100 * merged:.4f} %" in out
