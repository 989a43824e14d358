"""Annotation readers on the authors' real files, and their error messages."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from vera.data.annotations import NORMAL_CLASS, load_test_annotations, load_train_annotations, ucf_class, ucf_key, xd_class
from vera.errors import VeraError


def test_ucf_test_set(shared_data):
    videos = load_test_annotations(shared_data / "annotations" / "UCF_Eval.json", "ucf")
    assert len(videos) == 290
    assert sum(v.is_anomalous for v in videos) == 140
    first = videos[0]
    assert (first.key, first.length, first.intervals, first.video_class) == ("Abuse028_x264", 1412, ((165, 240),), "Abuse")
    assert sum(v.length for v in videos) == 1_111_808


def test_xd_test_set_and_the_duplicate_entries(shared_data):
    plain = load_test_annotations(shared_data / "annotations" / "xd_annotations.json", "xd")
    test_800 = load_test_annotations(shared_data / "annotations" / "xd_test_800.json", "xd")
    assert plain == test_800 and len(plain) == 800
    assert Counter(v.video_class == NORMAL_CLASS for v in plain)[True] == 314
    merged = load_test_annotations(shared_data / "annotations" / "xd_annotations.json", "xd", merge_xd_duplicates=True)
    changed = [(a, b) for a, b in zip(plain, merged) if a != b]
    assert len(changed) == 14
    for before, after in changed:
        assert before.intervals == () and after.intervals and after.is_anomalous
    assert Counter(v.video_class == NORMAL_CLASS for v in merged)[True] == 300


def test_training_lists(shared_data):
    ucf = load_train_annotations(shared_data / "annotations" / "UCF_Instruct_train.json", "ucf")
    assert len(ucf) == 1449 and Counter(v.label for v in ucf) == {1: 729, 0: 720}
    assert ucf[0].key == "RoadAccidents075_x264" and ucf[0].label == 1 and ucf[0].length == 328
    xd = load_train_annotations(shared_data / "annotations" / "xd_val.json", "xd")
    assert len(xd) == 395 and {v.label for v in xd} == {0, 1}


def test_keys_and_classes():
    assert ucf_key("frames/Abuse/Abuse028_x264.mp4") == "Abuse028_x264"
    assert ucf_class("frames/Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4") == NORMAL_CLASS
    assert ucf_class("Arson/Arson011_x264.mp4") == "Arson"
    assert xd_class("v=S-7rRLrxnVQ__#1_label_B4-0-0") == "B4"
    assert xd_class("A.Beautiful.Mind.2001__#00-40-52_00-42-01_label_A") == NORMAL_CLASS


def test_bad_annotation_files_name_the_entry(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"video": "a/b/c.mp4", "temporal_label": [5, 1], "length": 10}]))
    with pytest.raises(VeraError, match=r"ann.json entry 0: bad temporal interval \[5, 1\]"):
        load_test_annotations(path, "ucf")
    path.write_text(json.dumps([{"video": "a/b/c.mp4", "length": 10}]))
    with pytest.raises(VeraError, match="entry 0: expected keys 'video', 'temporal_label', 'length'"):
        load_test_annotations(path, "ucf")
    path.write_text(json.dumps([{"video_name": "x", "video_label": 3, "length": 9}]))
    with pytest.raises(VeraError, match="video_label must be 0 or 1"):
        load_train_annotations(path, "xd")
    with pytest.raises(VeraError, match="annotation file not found"):
        load_test_annotations(tmp_path / "nope.json", "ucf")
    txt = tmp_path / "ann.txt"
    txt.write_text("Abuse028_x264.mp4 Abuse 165 240\n")
    with pytest.raises(VeraError, match="line 1: expected 'Name.mp4 Class s1 e1 s2 e2'"):
        load_test_annotations(txt, "ucf")
