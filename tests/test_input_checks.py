"""Inputs that would give a wrong number without a word: a JSON key twice, a report beside other labels, a labels
CSV's extra column or byte-order mark, an annotation whose length is not the video's. Each stops with one line
naming the file, exit code 2, and the folders made before are left byte for byte as they were."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.reports import ENTRIES, make_case
from fixtures.scripts import ROOT, run
from vera.data.annotations import load_test_annotations
from vera.errors import VeraError
from vera.io import parse_json, read_json
from vera.scoring.synthetic import write_synthetic_inputs


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def script(path: str, *argv: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / path), *map(str, argv)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def twice(what: str, path: Path, key: str) -> str:
    return (f"{what} {path} has the key {json.dumps(key, ensure_ascii=False)} twice in one object; JSON keeps only "
            "the last, so the file is ambiguous")


# -- a JSON key twice --------------------------------------------------------------------------------------------

SMALL = [
    {"video": "frames/Fighting/Fighting001_x264.mp4", "temporal_label": [40, 120, -1, -1], "length": 200},
    {"video": "frames/Arson/Arson002_x264.mp4", "temporal_label": [0, 60, 100, 150], "length": 150},
    {"video": "frames/Normal/Normal_Videos_003_x264.mp4", "temporal_label": [-1, -1, -1, -1], "length": 170},
]


@pytest.fixture
def scored(tmp_path):
    """A small scored set and a compute_auc.py output made from it."""
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps(SMALL))
    write_synthetic_inputs(load_test_annotations(annotation, "ucf"), tmp_path / "scores", tmp_path / "features",
                           width=8, seed=1)
    common = ["--dataset", "ucf", "--features", tmp_path / "features", "--output", tmp_path / "out", "--no-curves"]
    assert run("compute_auc", [str(a) for a in ["--annotations", annotation, "--scores", tmp_path / "scores",
                                                 *common]]) == 0
    return annotation, common


def test_an_annotation_with_a_key_twice_is_refused_by_compute_auc(scored, tmp_path):
    annotation, common = scored
    before = tree(tmp_path / "out")
    text = annotation.read_text()
    # The second temporal_label of the first video would win silently: a normal video's labels.
    doubled = tmp_path / "doubled.json"
    doubled.write_text(text.replace('"length": 200}', '"length": 200, "temporal_label": [-1, -1, -1, -1]}', 1))
    assert doubled.read_text() != text
    result = script("Inference/compute_auc.py", "--annotations", doubled, "--scores", tmp_path / "scores", *common,
                    "--overwrite")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {twice('annotation file', doubled, 'temporal_label')}"]
    assert tree(tmp_path / "out") == before


def test_a_score_file_with_a_segment_twice_is_refused_by_compute_auc(scored, tmp_path):
    annotation, common = scored
    before = tree(tmp_path / "out")
    scores = tmp_path / "doubled"
    shutil.copytree(tmp_path / "scores", scores)
    path = scores / "Fighting001_x264.json"
    content = json.loads(path.read_text())
    flipped = {**content["32"], "score": 1 - content["32"]["score"]}
    path.write_text(json.dumps(content)[:-1] + ', "32": ' + json.dumps(flipped) + "}")
    result = script("Inference/compute_auc.py", "--annotations", annotation, "--scores", scores, *common,
                    "--overwrite")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {twice('score file', path, '32')}"]
    assert tree(tmp_path / "out") == before


def test_gt_frames_and_run_records_with_a_key_twice(scored, tmp_path, capsys):
    annotation, common = scored
    before = tree(tmp_path / "out")
    gt = tmp_path / "gt.json"
    gt.write_text('{"Fighting001_x264": [0, 1], "Arson002_x264": [1], "Fighting001_x264": [1, 0]}')
    argv = ["--annotations", annotation, "--scores", tmp_path / "scores", *common, "--gt-frames", gt, "--overwrite"]
    assert run("compute_auc", [str(a) for a in argv]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {twice('--gt-frames file', gt, 'Fighting001_x264')}"]
    assert tree(tmp_path / "out") == before
    # The folder's own record, edited by hand: refused as the damaged record it is.
    record = tmp_path / "out" / "run.json"
    record.write_text(record.read_text()[:-2] + ', "identity": {}}\n')
    edited = tree(tmp_path / "out")
    assert run("compute_auc", [str(a) for a in ["--annotations", annotation, "--scores", tmp_path / "scores",
                                                 *common]]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {twice('run record', record, 'identity')}; delete it or use --overwrite"]
    assert tree(tmp_path / "out") == edited


@pytest.mark.parametrize("text, key", [
    ('[{"a": 1}, {"b": {"c": 1, "c": 2}}]', "c"),  # in a nested object
    ('{"x": 1, "x": 1}', "x"),  # even with the same value
    ('{"é": 1, "\\u00e9": 2}', "é"),  # the same key written two ways
])
def test_a_key_twice_is_found_anywhere(tmp_path, text, key):
    path = tmp_path / "f.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(VeraError) as caught:
        read_json(path, "annotation file")
    assert str(caught.value) == twice("annotation file", path, key)
    # Equal keys in different objects are no duplicate.
    assert parse_json('[{"a": 1}, {"a": 2, "b": {"a": 3}}]', "x") == [{"a": 1}, {"a": 2, "b": {"a": 3}}]


def test_a_run_log_line_with_a_key_twice_names_the_line(tmp_path):
    from vera.figures import read_jsonl
    from vera.learning.run_state import read_jsonl as read_run_records

    path = tmp_path / "history.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "step": 3}\n{"step": 4')  # the last line cut by a kill
    for reader in (read_jsonl, read_run_records):
        with pytest.raises(VeraError) as caught:
            reader(path)
        assert str(caught.value) == (f'{path} line 2 has the key "step" twice in one object; JSON keeps only the '
                                     "last, so the file is ambiguous")
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 4')
    assert read_run_records(path) == [{"step": 1, "loss": 0.5}]  # a cut line is unfinished work, not an error


# -- a report against other labels -------------------------------------------------------------------------------

def test_a_report_refuses_labels_other_than_those_its_scores_were_computed_with(tmp_path):
    (tmp_path / "case").mkdir()
    case = make_case(tmp_path / "case")
    common = ["--scores", case.scores, "--frame-scores", case.run, "--output", tmp_path / "report"]
    assert run("report", [str(a) for a in [*common, "--annotations", case.annotations]]) == 0
    before = tree(tmp_path / "report")
    # The same videos and lengths, other anomalous frames: every per-video check passes, the AUC would differ.
    other = tmp_path / "other.json"
    other.write_text(json.dumps([dict(ENTRIES[0], temporal_label=[10, 60, -1, -1]), *ENTRIES[1:]]))
    result = script("Inference/report.py", *common, "--annotations", other, "--overwrite")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: --annotations {other} is not the annotation file the frame scores in {case.run} were computed "
        f"with ({case.annotations.resolve()}, per {case.run / 'run.json'}); give that file or rerun compute_auc.py"]
    assert tree(tmp_path / "report") == before
    # A byte-identical copy elsewhere is the same labels.
    copy = tmp_path / "copy" / "ann.json"
    copy.parent.mkdir()
    shutil.copy(case.annotations, copy)
    assert run("report", [str(a) for a in [*common[:-1], tmp_path / "report2", "--annotations", copy]]) == 0


# -- the labels CSV of make_annotations.py -----------------------------------------------------------------------

CLIP_ROWS = ["Fighting033_x264_570_841.mp4,Fighting,100-200",
             "RoadAccidents133_x264_270_451.mp4,RoadAccidents,20-60 90-150",
             "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101.mp4,Normal,",
             "v=JfLYNEsrTew__#1_label_G-0-0_52_431.mp4,Normal,"]


def test_a_labels_csv_with_a_byte_order_mark_reads_as_without(shared_data, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared_data / "clips" / "RoadAccidents133_x264_270_451.mp4", videos)
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    text = "video,class,intervals\r\n" + CLIP_ROWS[1] + "\r\n"  # as a spreadsheet saves it
    plain.write_text(text, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    common = ["--videos", str(videos), "--dataset", "ucf", "--workers", "1"]
    assert run("make_annotations", [*common, "--labels", str(plain), "--output", str(tmp_path / "a.json")]) == 0
    assert run("make_annotations", [*common, "--labels", str(marked), "--output", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").read_bytes() == (tmp_path / "a.json").read_bytes()
    assert json.loads((tmp_path / "b.json").read_text()) == [
        {"video": "RoadAccidents/RoadAccidents133_x264_270_451.mp4", "temporal_label": [20, 60, 90, 150],
         "length": 181}]


@pytest.mark.parametrize("header, rows, message", [
    ("video,class,intervals,notes", [row + ",seen twice" for row in CLIP_ROWS],
     "labels file {path} has the column 'notes' (column 4), which is none of video,class,intervals; its values "
     "would be ignored, so remove it"),
    ("video,class,class", CLIP_ROWS,
     "labels file {path} names the column 'class' twice in its header"),
    ("video,class,intervals", [CLIP_ROWS[0], "RoadAccidents133_x264_270_451.mp4,RoadAccidents,20-60,90-150"],
     "{path} line 3 has 4 fields, but the header names 3 (video,class,intervals); quote a value that holds a comma"),
    ("Video;Class", ["x;y"],
     "labels file {path} needs a header with the columns video,class[,intervals], got Video;Class"),
])
def test_a_labels_csv_whose_columns_would_be_dropped_is_refused(shared_data, tmp_path, header, rows, message):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join([header, *rows]) + "\n").encode("utf-8"))
    output = tmp_path / "mine.json"
    result = script("Data/make_annotations.py", "--videos", shared_data / "clips", "--dataset", "ucf",
                    "--output", output, "--labels", path, "--workers", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: " + message.format(path=path)]
    assert not output.exists()


# -- an annotation whose length is not the video's -----------------------------------------------------------------

def test_an_annotation_shorter_than_the_video_stops_step1_and_the_features_alike(shared_data, tmp_path, capsys,
                                                                                  tiny_models):
    clips = shared_data / "clips"
    # RoadAccidents133 has 181 frames, Fighting033 271: the second is annotated 15 frames short.
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([
        {"video": "frames/RoadAccidents/RoadAccidents133_x264_270_451.mp4", "temporal_label": [20, 60, -1, -1],
         "length": 181},
        {"video": "frames/Fighting/Fighting033_x264_570_841.mp4", "temporal_label": [100, 200, -1, -1],
         "length": 256},
    ]))
    line = (f"error: video Fighting033_x264_570_841: the annotation gives 256 frames but "
            f"{(clips / 'Fighting033_x264_570_841.mp4').resolve()} has 271 (wrong frame rate at extraction? "
            "--allow-length-mismatch uses the annotation's length where the frames exist)")
    stages = {
        "extract_features": ["--random-init", "--tiny"],
        "generate_initial_score": ["--model", str(tiny_models.path("internvl")), "--preset", "ucf", "--batch-size",
                                   "8", "--max-new-tokens", "2"],
    }
    codes = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for stage, options in stages.items():
            output = tmp_path / stage
            argv = ["--dataset", "ucf", "--annotations", str(annotation), "--videos", str(clips), "--output",
                    str(output), "--device", "cpu", "--no-progress", "--input-workers", "0", *options]
            codes[stage], errors, trees = [], [], []
            for _ in range(2):  # the rerun resumes: the good video is kept, the short one refused again
                codes[stage].append(run(stage, argv))
                errors.append([text for text in capsys.readouterr().err.splitlines() if "Fighting033" in text])
                trees.append({name: data for name, data in tree(output).items() if not name.startswith("summary")})
            assert errors[0][0] == line and errors[1][0] == line, stage
            assert codes[stage] == [2, 2], stage
            assert trees[1] == trees[0] and "RoadAccidents133_x264_270_451" in "".join(trees[0]), stage
            assert not any("Fighting033" in name for name in trees[0]), stage
    finally:
        torch.set_num_threads(threads)
    # The escape is the same option in both stages: the annotated frames are read, and the run says so.
    argv = ["--dataset", "ucf", "--annotations", str(annotation), "--videos", str(clips), "--output",
            str(tmp_path / "extract_features"), "--device", "cpu", "--no-progress", "--input-workers", "0",
            "--random-init", "--tiny", "--allow-length-mismatch"]
    assert run("extract_features", argv) == 0
    assert line.replace("error: ", "warning: ", 1).split(" (wrong frame")[0] + "; using the annotation's length" \
        in capsys.readouterr().err.splitlines()
    features = np.load(tmp_path / "extract_features" / "Fighting033_x264_570_841.npy")
    assert features.shape[0] == 16  # segments at frames 0, 16, ..., 240 < 256
