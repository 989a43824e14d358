"""Inference/reproduce_tables.py: every scoring table in one sweep, equal to separate compute_auc.py runs."""

from __future__ import annotations

import csv
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fixtures.scripts import ROOT, load_script
from vera.data.annotations import load_test_annotations
from vera.errors import VeraError
from vera.scoring.evaluate import evaluate
from vera.scoring.steps import ScoringOptions
from vera.scoring.sweep import sweep
from vera.scoring.synthetic import write_synthetic_inputs

compute_auc = load_script("compute_auc")
reproduce_tables = load_script("reproduce_tables")


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """20 UCF-style videos of four classes, with synthetic scores (two question sets) and tie-rich features."""
    root = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(3)
    entries = []
    for number, folder in enumerate(["RoadAccidents"] * 6 + ["Shoplifting"] * 5 + ["Arrest"] * 3 + ["Normal"] * 6):
        length = int(rng.integers(60, 1400))
        start = int(rng.integers(0, length // 2))
        labels = [-1, -1, -1, -1] if folder == "Normal" else [start, start + length // 3, -1, -1]
        name = f"Normal_Videos_{number:03d}_x264" if folder == "Normal" else f"{folder}{number:03d}_x264"
        entries.append({"video": f"frames/{folder}/{name}.mp4", "temporal_label": labels, "length": length})
    annotation = root / "ann.json"
    annotation.write_text(json.dumps(entries))
    videos = load_test_annotations(annotation, "ucf")
    write_synthetic_inputs(videos, root / "scores", root / "features", width=16, seed=4)
    write_synthetic_inputs(videos, root / "traffic", root / "features_unused", width=16, seed=5)
    return annotation, videos, root


SETTINGS = [
    {}, {"skip_step2": True, "skip_smoothing": True, "skip_position_weighting": True},
    {"k_ratio": 0.0}, {"k_ratio": 0.05}, {"k_ratio": 0.25}, {"k_ratio": 0.1, "random_k": 0},
    {"tau": 1e-7}, {"tau": float("inf")}, {"window": 5}, {"sigma1": 1.0}, {"sigma2": 0.75},
    {"classes": ("RoadAccidents",), "with_normal": True}, {"classes": ("Shoplifting",)},
    {"classes": ("Shoplifting",), "k_ratio": 0.05, "tau": 1.0},
]


@pytest.mark.parametrize("protocol", ["released", "paper"])
def test_a_sweep_equals_separate_evaluations_bit_for_bit(small_set, protocol):
    _, videos, root = small_set
    settings = [ScoringOptions(protocol=protocol, **setting) for setting in SETTINGS]
    swept = sweep(videos, root / "scores", root / "features", settings)
    for options, value in zip(settings, swept):
        assert value == evaluate(videos, root / "scores", root / "features", options).metrics["value"], options


def _xd_set(small_set, tmp_path, code: str) -> list:
    """The small UCF set as XD-Violence entries (anomalous ones labelled ``code``), with synthetic inputs."""
    entries = json.loads(small_set[0].read_text())
    xd = [{"video": f"clip{n}__#1_label_{'A' if 'Normal' in e['video'] else code}", "label": "0" if
           "Normal" in e["video"] else "1", "temporal_label": e["temporal_label"][:2], "length": e["length"]}
          for n, e in enumerate(entries)]
    (tmp_path / "xd.json").write_text(json.dumps(xd))
    videos = load_test_annotations(tmp_path / "xd.json", "xd")
    write_synthetic_inputs(videos, tmp_path / "s", tmp_path / "f", width=8, seed=1)
    return videos


def test_a_sweep_of_xd_ap_settings(small_set, tmp_path):
    videos = _xd_set(small_set, tmp_path, "B1-0-0")
    settings = [ScoringOptions("xd", "ap", **s) for s in ({}, {"k_ratio": 0.25}, {"tau": 1.0}, {"window": 30})]
    swept = sweep(videos, tmp_path / "s", tmp_path / "f", settings)
    assert swept == [evaluate(videos, tmp_path / "s", tmp_path / "f", o).metrics["value"] for o in settings]


def _flags(setting: dict) -> list[str]:
    """compute_auc.py's command line for one tables.json setting."""
    flags = []
    for name, value in setting.items():
        flag = "--" + name.replace("_", "-")
        if name == "scores" or value is False:
            continue
        flags += [flag] if value is True else [flag, ",".join(value) if name == "classes" else str(value)]
    return flags


def test_reproduce_tables_equals_compute_auc_runs(small_set, tmp_path):
    annotation, _, root = small_set
    out = tmp_path / "tables"
    common = ["--dataset", "ucf", "--annotations", str(annotation), "--features", str(root / "features")]
    assert reproduce_tables.main([*common, "--scores", str(root / "scores"), "--output", str(out),
                                  "--traffic-scores", str(root / "traffic")]) == 0
    tables = json.loads((out / "tables.json").read_text())
    assert list(tables) == ["main", "table6_steps", "table13_k", "table14_window", "table15_sigma1", "table16_tau",
                            "table17_sigma2", "table11_scenarios"]
    assert [row["paper"] for row in tables["table13_k"]] == [0.8521, 0.8648, 0.8655, 0.8661, 0.8642, 0.8619, 0.8455]
    assert tables["table16_tau"][5]["setting"] == {"tau": "inf"} and tables["table16_tau"][4]["paper"] is None
    assert tables["table13_k"][6]["setting"] == {"k_ratio": 0.1, "random_k": 0}
    measured: dict[str, float] = {}
    for name, rows in tables.items():
        for row in rows:
            setting = row["setting"]
            scores = setting.get("scores", str(root / "scores"))
            key = json.dumps([scores, _flags(setting)])
            if key not in measured:
                run_dir = tmp_path / f"run{len(measured)}"
                assert compute_auc.main([*common, "--scores", scores, "--output", str(run_dir), "--no-curves",
                                         *_flags(setting)]) == 0
                measured[key] = json.loads((run_dir / "metrics.json").read_text())["value"]
            assert row["value"] == measured[key], (name, setting)
    assert len(measured) >= 28
    # The traffic question set has its own scores: its cells differ from Q*'s.
    scenarios = tables["table11_scenarios"]
    assert {row["setting"]["scores"] for row in scenarios} == {str(root / "scores"), str(root / "traffic")}
    assert scenarios[0]["value"] != scenarios[6]["value"]


def test_table_files_are_shaped_like_the_paper(small_set, tmp_path):
    annotation, _, root = small_set
    out = tmp_path / "tables"
    reproduce_tables.main(["--dataset", "ucf", "--annotations", str(annotation), "--features", str(root / "features"),
                           "--scores", str(root / "scores"), "--output", str(out)])
    with (out / "table13_k.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["K/h", "0%", "5%", "10%", "15%", "20%", "25%", "random 10%"]
    assert rows[1][0] == "paper" and rows[1][1:] == ["85.21", "86.48", "86.55", "86.61", "86.42", "86.19", "84.55"]
    assert rows[2][0] == "ours" and all(50 <= float(value) <= 100 for value in rows[2][1:])
    markdown = (out / "table6_steps.md").read_text()
    assert "| Step 1 only | 76.10 |" in markdown and "| + position weighting | 86.55 |" in markdown
    assert "uses K/h = 15% when the option is not given" in (out / "table13_k.md").read_text()
    grid = (out / "table11_scenarios.md").read_text()
    assert "| Q*, paper | 86.55 | 70.43 | 72.58 |" in grid and "Q_traffic / Q_store rows: give" in grid
    assert (out / "tables.md").read_text().count("### ") == 8
    assert json.loads((out / "run.json").read_text())["identity"]["kind"] == "reproduce_tables"


def test_a_scenario_class_absent_from_the_annotations_leaves_its_column_out(small_set, tmp_path):
    annotation, _, root = small_set
    entries = [entry for entry in json.loads(annotation.read_text()) if "/Shoplifting/" not in entry["video"]]
    (tmp_path / "no_store.json").write_text(json.dumps(entries))
    assert reproduce_tables.main(["--dataset", "ucf", "--annotations", str(tmp_path / "no_store.json"), "--scores",
                                  str(root / "scores"), "--features", str(root / "features"), "--output",
                                  str(tmp_path / "o")]) == 0
    grid = (tmp_path / "o" / "table11_scenarios.md").read_text()
    assert "| questions, videos | All | Traffic |\n" in grid and "| Q*, paper | 86.55 | 70.43 |\n" in grid
    assert "- Left out: Store (no Shoplifting video in the annotations)." in grid
    rows = json.loads((tmp_path / "o" / "tables.json").read_text())["table11_scenarios"]
    # "All" without normal videos: the anomalous classes left (Arrest, RoadAccidents); Traffic: RoadAccidents.
    assert sorted({json.dumps(row["setting"].get("classes")) for row in rows}) == [
        '["Arrest", "RoadAccidents"]', '["RoadAccidents"]', "null"]


def test_xd_tables_have_no_paper_ablation_values_and_no_scenarios(small_set, tmp_path):
    _xd_set(small_set, tmp_path, "G-0-0")
    reproduce_tables.main(["--dataset", "xd", "--annotations", str(tmp_path / "xd.json"), "--scores",
                           str(tmp_path / "s"), "--features", str(tmp_path / "f"), "--output", str(tmp_path / "o")])
    tables = json.loads((tmp_path / "o" / "tables.json").read_text())
    assert "table11_scenarios" not in tables and "table17_sigma2" not in tables  # AP: no position weighting
    assert tables["main"][0]["paper"] == 0.7054
    assert all(row["paper"] is None for name in ("table6_steps", "table13_k") for row in tables[name])


def test_reproduce_tables_user_mistakes(small_set, tmp_path):
    annotation, _, root = small_set
    with pytest.raises(VeraError, match="--features is required"):
        reproduce_tables.main(["--dataset", "ucf", "--annotations", str(annotation), "--scores",
                               str(root / "scores"), "--output", str(tmp_path / "o")])
    result = subprocess.run([sys.executable, str(ROOT / "Inference" / "reproduce_tables.py"), "--dataset", "ucf",
                             "--annotations", str(annotation), "--scores", str(root / "scores"), "--features",
                             str(root / "features"), "--output", str(tmp_path / "o"), "--metric", "f1"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: argument --metric: invalid choice")


def test_compute_auc_classes_select_videos(small_set, tmp_path):
    annotation, videos, root = small_set
    common = ["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(root / "scores"), "--features",
              str(root / "features"), "--no-curves"]
    compute_auc.main([*common, "--output", str(tmp_path / "a"), "--classes", "Shoplifting,Arrest"])
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["num_videos"] == 8 and set(metrics["auc_per_class"]) == {"Shoplifting", "Arrest"}
    assert sorted(p.stem for p in (tmp_path / "a" / "frame_scores").iterdir()) == sorted(
        v.key for v in videos if v.video_class in ("Shoplifting", "Arrest"))
    compute_auc.main([*common, "--output", str(tmp_path / "b"), "--classes", "Shoplifting", "--with-normal"])
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["num_videos"] == 11
    # A video's scores do not depend on which other videos are evaluated.
    for key in (v.key for v in videos if v.video_class == "Shoplifting"):
        assert np.array_equal(np.load(tmp_path / "a" / "frame_scores" / f"{key}.npy"),
                              np.load(tmp_path / "b" / "frame_scores" / f"{key}.npy"))
    with pytest.raises(VeraError, match="no test video of class Burglary"):
        compute_auc.main([*common, "--output", str(tmp_path / "c"), "--classes", "Burglary"])
    with pytest.raises(VeraError, match="Normal videos come with --with-normal"):
        compute_auc.main([*common, "--output", str(tmp_path / "c"), "--classes", "Normal"])


def test_compute_auc_writes_each_stage(small_set, tmp_path):
    annotation, videos, root = small_set
    compute_auc.main(["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(root / "scores"),
                      "--features", str(root / "features"), "--no-curves", "--output", str(tmp_path / "run")])
    changed = 0
    with np.load(tmp_path / "run" / "stages.npz") as stages:
        assert len(stages.files) == 4 * len(videos)
        for video in videos:
            answers, context, smoothed, values = (stages[f"{video.key}/{n}"] for n in
                                                  ("answers", "context", "smoothed", "values"))
            content = json.loads((root / "scores" / f"{video.key}.json").read_text())
            np.testing.assert_array_equal(answers, [s["score"] for s in content.values()])
            np.testing.assert_array_equal(values, np.round(smoothed, 1))
            changed += not np.array_equal(context, answers)
            frames = np.load(tmp_path / "run" / "frame_scores" / f"{video.key}.npy")
            counts = [16] * (len(values) - 1) + [len(frames) - 16 * (len(values) - 1)]
            weights = np.exp(-0.5 * ((np.arange(len(frames)) - len(frames) // 2) / (len(frames) // 2)) ** 2)
            np.testing.assert_array_equal(frames, weights * np.repeat(values, counts))
    assert changed >= len(videos) // 2  # Step 2 moved the answers of most videos
