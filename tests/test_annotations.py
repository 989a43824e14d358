"""Annotation readers on the authors' real files, and their error messages."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from vera.data.annotations import (
    INTERVAL_END_SLACK,
    NORMAL_CLASS,
    load_test_annotations,
    load_train_annotations,
    ucf_class,
    video_key,
    xd_class,
)
from vera.errors import VeraError


def test_ucf_test_set(shared_data):
    videos = load_test_annotations(shared_data / "annotations" / "UCF_Eval.json", "ucf")
    assert len(videos) == 290
    assert sum(v.is_anomalous for v in videos) == 140
    first = videos[0]
    assert (first.key, first.length, first.intervals, first.video_class) == ("Abuse028_x264", 1412, ((165, 240),), "Abuse")
    assert sum(v.length for v in videos) == 1_111_808
    # Five intervals of the official annotations end 1-2 frames past the video: accepted, cut as released.
    overshoot = {v.key: max(end for _, end in v.intervals) - v.length for v in videos
                 if v.intervals and max(end for _, end in v.intervals) > v.length}
    assert overshoot == {"Arson011_x264": 1, "Arson016_x264": 1, "Explosion033_x264": 2, "Fighting003_x264": 1,
                         "Shooting015_x264": 2}
    assert max(overshoot.values()) == INTERVAL_END_SLACK


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
    assert video_key("frames/Abuse/Abuse028_x264.mp4") == "Abuse028_x264"
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


def test_one_key_rule_for_annotations_and_files():
    """The name without its directory and video extension; dots inside a name stay (split(".") would cut them)."""
    assert video_key("frames/Abuse/Abuse028_x264.mp4") == "Abuse028_x264"
    assert video_key("videos/Abuse/Abuse.Night.v2_x264.MP4") == "Abuse.Night.v2_x264"
    assert video_key("clip.ts") == "clip" and video_key("clip.mkv") == "clip"
    xd = "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A"
    assert video_key(xd) == xd and video_key(f"{xd}.mp4") == xd


def _write(path, entries):
    path.write_text(json.dumps(entries))
    return path


def _ucf(video="frames/Abuse/Abuse001_x264.mp4", labels=(10, 20, -1, -1), length=100):
    return {"video": video, "temporal_label": list(labels), "length": length}


def _xd(video="v=abc__#1_label_B1-0-0", labels=(10, 20), length=100, **extra):
    return {"video": video, "temporal_label": list(labels), "length": length, **extra}


@pytest.mark.parametrize("entry, dataset, message", [
    (_ucf(labels=(10, 103)), "ucf",
     r"entry 0: video Abuse001_x264: interval \[10, 103\] lies past the video's end \(100 frames\)"),
    (_ucf(labels=(100, 101)), "ucf", r"entry 0: video Abuse001_x264: interval \[100, 101\] lies past the video's end"),
    (_ucf("frames/Normal/Normal_Videos_003_x264.mp4"), "ucf",
     r"entry 0: video Normal_Videos_003_x264 is in the normal class .* but has anomalous intervals \[\(10, 20\)\]"),
    (_xd(label="0"), "xd", r'entry 0: video v=abc__#1_label_B1-0-0 is labelled normal \(label "0"\) but has'),
    (_xd("v=abc__#1_label_A"), "xd",
     r"entry 0: video v=abc__#1_label_A is normal by its label code A but has anomalous"),
    (_xd(label="yes"), "xd", r'entry 0: video v=abc__#1_label_B1-0-0: label must be "0" \(normal\) or "1"'),
    (_xd(labels=(10, 200), label="1"), "xd",
     r"entry 0: video v=abc__#1_label_B1-0-0: interval \[10, 200\] lies past the video's end \(100 frames\)"),
    (_ucf(length="100"), "ucf", r"entry 0: length must be a positive whole number of frames, got '100'"),
    (_ucf(length=0), "ucf", r"entry 0: length must be a positive whole number of frames, got 0"),
    (_ucf(length=True), "ucf", r"entry 0: length must be a positive whole number of frames, got True"),
    (_ucf(labels=(10.0, 20)), "ucf", r"entry 0: bad temporal interval \[10.0, 20\]"),
    (_xd(), "ucf", r"looks like XD-Violence \(entry 0: 'v=abc__#1_label_B1-0-0'\), but --dataset ucf"),
    (_ucf(), "xd", r"looks like UCF-Crime \(entry 0: 'frames/Abuse/Abuse001_x264.mp4'\), but --dataset xd"),
])
def test_contradictory_test_annotations_name_the_file_and_video(tmp_path, entry, dataset, message):
    path = tmp_path / "ann.json"
    if "looks like" in message:  # every entry of the other dataset
        _write(path, [entry, entry])
        expected = f"^annotation file {re.escape(str(path))} {message}$"
    else:  # a good entry after the bad one: the error names the bad one
        good = _ucf("frames/Abuse/Abuse002_x264.mp4") if dataset == "ucf" else _xd("v=ok__#1_label_G-0-0", label="1")
        _write(path, [entry, good])
        expected = f"^{re.escape(str(path))} {message}"
    with pytest.raises(VeraError, match=expected):
        load_test_annotations(path, dataset)


def test_intervals_within_the_slack_are_kept_and_merged_duplicates_are_checked(tmp_path):
    path = _write(tmp_path / "ann.json", [_ucf(labels=(10, 100 + INTERVAL_END_SLACK))])
    assert load_test_annotations(path, "ucf")[0].intervals == ((10, 102),)
    main = _xd("v=abc__#1_label_B1-0-0", labels=(-1, -1), label="0")
    duplicate = _xd("v=abc__#1_label_B1-0-0.mp4", labels=(50, 400), length=0, label="1")
    path = _write(tmp_path / "xd.json", [main, duplicate])
    assert load_test_annotations(path, "xd")[0].intervals == ()  # duplicates skipped, as released
    with pytest.raises(VeraError, match=r"xd.json entry v=abc__#1_label_B1-0-0.mp4 \(merged\): video "
                                        r"v=abc__#1_label_B1-0-0: interval \[50, 400\] lies past the video's end"):
        load_test_annotations(path, "xd", merge_xd_duplicates=True)


def test_official_txt_with_a_normal_video_with_intervals_or_the_wrong_dataset(tmp_path):
    txt = tmp_path / "ann.txt"
    txt.write_text("Normal_Videos_003_x264.mp4 Normal 10 20 -1 -1\n")
    with pytest.raises(VeraError, match=r"ann.txt line 1: video Normal_Videos_003_x264 is of class Normal but has"):
        load_test_annotations(txt, "ucf")
    with pytest.raises(VeraError, match=r"looks like the official UCF-Crime txt, but --dataset xd"):
        load_test_annotations(txt, "xd")


@pytest.mark.parametrize("length, shown", [("16", "'16'"), (0, "0"), (-3, "-3"), (16.0, "16.0"), (False, "False")])
def test_training_lengths_follow_the_test_rule(tmp_path, length, shown):
    ucf = _write(tmp_path / "ucf.json", [{"video": "frames/Abuse/Abuse001_x264.mp4", "length": length}])
    xd = _write(tmp_path / "xd.json", [{"video_name": "v=a__#1_label_A", "video_label": 0, "length": length}])
    for path, dataset in ((ucf, "ucf"), (xd, "xd")):
        with pytest.raises(VeraError, match=rf"^{path} entry 0: length must be a positive whole number of frames, "
                                            rf"got {shown}$"):
            load_train_annotations(path, dataset)


def test_training_list_of_the_other_dataset_is_named(shared_data):
    annotations = shared_data / "annotations"
    with pytest.raises(VeraError, match=r"xd_train.json looks like XD-Violence \(entry 0: 'v=2lXh2n0aPyw__#1_label_A'\)"
                                        r", but --dataset ucf$"):
        load_train_annotations(annotations / "xd_train.json", "ucf")
    with pytest.raises(VeraError, match=r"UCF_Instruct_val.json looks like UCF-Crime .*, but --dataset xd$"):
        load_train_annotations(annotations / "UCF_Instruct_val.json", "xd")
    with pytest.raises(VeraError, match=r"UCF_Eval.json looks like UCF-Crime .*, but --dataset xd$"):
        load_test_annotations(annotations / "UCF_Eval.json", "xd")
