"""Inference/compute_auc.py end to end: real annotations, generated inputs, every error path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve, roc_curve

from reference.released import reference_labels, reference_video
from vera.data.annotations import TestVideo, load_test_annotations
from vera.errors import VeraError
from vera.scoring.evaluate import evaluate
from vera.scoring.steps import ScoringOptions
from vera.scoring.synthetic import segment_file, write_synthetic_inputs

from fixtures.scripts import ROOT, load_script
from fixtures.scoring import small_scoring_set

compute_auc = load_script("compute_auc")


def _reference_run(annotation_path: Path, scores_dir: Path, features_dir: Path, dataset: str, metric: str):
    """The released evaluation, video by video, through the naive reference."""
    entries = json.loads(annotation_path.read_text())
    all_scores, all_labels, per_video = [], [], {}
    for entry in entries:
        key = Path(entry["video"]).name.split(".")[0] if dataset == "ucf" else entry["video"]
        if dataset == "xd" and key.endswith(".mp4"):
            continue
        content = json.loads((scores_dir / f"{key}.json").read_text())
        centres = [int(c) for c in content]
        frames = reference_video(centres, [content[c]["end"] for c in content], [content[c]["score"] for c in content],
                                 np.load(features_dir / f"{key}.npy"), dataset, metric)
        labels = reference_labels(entry["length"], entry["temporal_label"])
        if metric == "ap":
            labels = labels[: len(frames)]
        per_video[key] = np.array(frames)
        all_scores.extend(frames)
        all_labels.extend(labels)
    if metric == "ap":
        precision, recall, _ = precision_recall_curve(all_labels, all_scores)
        return auc(recall, precision), per_video
    fpr, tpr, _ = roc_curve(all_labels, all_scores)
    return auc(fpr, tpr), per_video


def test_full_ucf_test_set_matches_the_released_loops_bit_for_bit(shared_data, tmp_path):
    annotation = shared_data / "annotations" / "UCF_Eval.json"
    videos = load_test_annotations(annotation, "ucf")
    assert len(videos) == 290 and sum(v.length for v in videos) == 1_111_808
    write_synthetic_inputs(videos, tmp_path / "scores", tmp_path / "features", width=24, seed=5)
    expected_value, expected_frames = _reference_run(annotation, tmp_path / "scores", tmp_path / "features", "ucf", "auc")

    code = compute_auc.main(["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(tmp_path / "scores"),
                             "--features", str(tmp_path / "features"), "--output", str(tmp_path / "out")])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["value"] == expected_value
    assert (metrics["dataset"], metrics["metric"], metrics["protocol"]) == ("ucf", "auc", "released")
    assert metrics["num_videos"] == 290 and metrics["num_frames"] == 1_111_808
    assert 0.5 < metrics["value"] < 1.0  # the generated scores follow the annotation
    for key, frames in expected_frames.items():
        saved = np.load(tmp_path / "out" / "frame_scores" / f"{key}.npy")
        assert saved.dtype == np.float64 and np.array_equal(saved, frames), key
    assert set(metrics["auc_per_class"]) == {v.video_class for v in videos} - {"Normal"}
    assert (tmp_path / "out" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "out" / "pr.png").stat().st_size > 1000


@pytest.mark.parametrize("metric", ["auc", "ap"])
def test_xd_subset_matches_the_released_loops(shared_data, tmp_path, metric):
    entries = json.loads((shared_data / "annotations" / "xd_annotations.json").read_text())
    # 60 videos, short ones first so that the h ≤ 4 and h ≤ 10 rules are exercised, plus one duplicate entry.
    real = [e for e in entries if not e["video"].endswith(".mp4")]
    chosen = sorted(real, key=lambda e: e["length"])[:30]
    chosen += [e for e in real[:40] if e not in chosen][:30]
    chosen += [next(e for e in entries if e["video"].endswith(".mp4"))]
    # Real XD videos are at least 81 frames long (6 segments); add made-up ones of 3 and 5 segments.
    chosen += [{"video": f"short_{n}__label_B1-0-0", "temporal_label": [10, 30], "length": n, "label": "1"} for n in (40, 70)]
    annotation = tmp_path / "xd.json"
    annotation.write_text(json.dumps(chosen))
    videos = load_test_annotations(annotation, "xd")
    assert len(videos) == 62 and min(v.length for v in videos[:30]) == 81  # the '.mp4' duplicate is skipped, as the released scripts skip it
    write_synthetic_inputs(videos, tmp_path / "scores", tmp_path / "features", width=16, seed=2)
    expected_value, expected_frames = _reference_run(annotation, tmp_path / "scores", tmp_path / "features", "xd", metric)
    evaluation = evaluate(videos, tmp_path / "scores", tmp_path / "features", ScoringOptions("xd", metric))
    assert evaluation.metrics["value"] == expected_value
    for video in evaluation.videos:
        assert np.array_equal(video.scores, expected_frames[video.key])


def test_xd_ap_with_wu_ground_truth_file(shared_data, tmp_path):
    videos = load_test_annotations(shared_data / "annotations" / "xd_test_800.json", "xd")[:40]
    write_synthetic_inputs(videos, tmp_path / "s", tmp_path / "f", width=8)
    options = ScoringOptions("xd", "ap")
    plain = evaluate(videos, tmp_path / "s", tmp_path / "f", options)
    gt = {v.key: v.labels.astype(int).tolist() for v in plain.videos}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with_file = evaluate(videos, tmp_path / "s", tmp_path / "f", options, gt_frames_path=tmp_path / "gt.json")
    assert with_file.metrics["value"] == plain.metrics["value"]
    gt[videos[0].key] = gt[videos[0].key][:-16]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(VeraError, match=rf"^--gt-frames file {tmp_path / 'gt.json'}: video {re.escape(videos[0].key)} "
                                        rf"has {len(gt[videos[0].key])} frame labels, but scoring gives "
                                        rf"{len(gt[videos[0].key]) + 16} frames$"):
        evaluate(videos, tmp_path / "s", tmp_path / "f", options, gt_frames_path=tmp_path / "gt.json")


def test_xd_ap_takes_its_labels_from_the_gt_frames_file_not_the_intervals(shared_data, tmp_path):
    # Labels that disagree with the annotation on purpose: each video's file labels are its annotated
    # labels shifted by 48 frames and flipped in a fixed stretch, so reading the intervals gives another AP.
    annotation = shared_data / "annotations" / "xd_test_800.json"
    entries = [e for e in json.loads(annotation.read_text()) if not e["video"].endswith(".mp4")][:20]
    (tmp_path / "xd.json").write_text(json.dumps(entries))
    videos = load_test_annotations(tmp_path / "xd.json", "xd")
    write_synthetic_inputs(videos, tmp_path / "s", tmp_path / "f", width=8, seed=3)
    all_scores, file_labels, annotated_labels, gt = [], [], [], {}
    for entry in entries:
        content = json.loads((tmp_path / "s" / f"{entry['video']}.json").read_text())
        frames = reference_video([int(c) for c in content], [content[c]["end"] for c in content],
                                 [content[c]["score"] for c in content],
                                 np.load(tmp_path / "f" / f"{entry['video']}.npy"), "xd", "ap")
        annotated = reference_labels(entry["length"], entry["temporal_label"])[: len(frames)]
        labels = [int(value) for value in annotated[48:] + annotated[:48]]
        labels[100:164] = [1 - value for value in labels[100:164]]
        gt[entry["video"]] = labels
        all_scores += frames
        file_labels += labels
        annotated_labels += annotated
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    precision, recall, _ = precision_recall_curve(file_labels, all_scores)
    expected = auc(recall, precision)
    precision, recall, _ = precision_recall_curve(annotated_labels, all_scores)
    assert abs(expected - auc(recall, precision)) > 0.01  # the file's labels give another AP than the intervals

    evaluation = evaluate(videos, tmp_path / "s", tmp_path / "f", ScoringOptions("xd", "ap"),
                          gt_frames_path=tmp_path / "gt.json")
    assert evaluation.metrics["value"] == expected
    for video in evaluation.videos:
        assert video.labels.tolist() == gt[video.key], video.key


@pytest.mark.parametrize("value, message", [
    (["0", 1], "frame 0 has label '0'; labels must be 0 or 1"),
    ([0, 1, 2], "frame 2 has label 2; labels must be 0 or 1"),
    ([0, True], "frame 1 has label True; labels must be 0 or 1"),
    ([0, 0.5], "frame 1 has label 0.5; labels must be 0 or 1"),
    ([0, None], "frame 1 has label None; labels must be 0 or 1"),
    ("0101", "must have a non-empty list of 0/1 labels"),
    (None, "is missing"),
])
def test_bad_gt_frames_are_named_before_any_scoring(tmp_path, value, message):
    entries = [{"video": f"v=clip{i}__#1_label_{code}", "temporal_label": labels, "length": 64, "label": label}
               for i, (code, labels, label) in enumerate([("G-0-0", [0, 30], "1"), ("A", [-1, -1], "0")])]
    (tmp_path / "xd.json").write_text(json.dumps(entries))
    videos = load_test_annotations(tmp_path / "xd.json", "xd")
    write_synthetic_inputs(videos, tmp_path / "s", tmp_path / "f", width=8)
    (tmp_path / "s" / f"{videos[0].key}.json").write_text("{")  # never read: the labels are checked first
    gt = {videos[0].key: [1] * 48, videos[1].key: value}
    if value is None:
        del gt[videos[1].key]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(VeraError, match=rf"^--gt-frames file {tmp_path / 'gt.json'}: video "
                                        rf"{re.escape(videos[1].key)}:? {re.escape(message)}$"):
        evaluate(videos, tmp_path / "s", tmp_path / "f", ScoringOptions("xd", "ap"),
                 gt_frames_path=tmp_path / "gt.json")


# ------------------------------------------------------------------ small hand-made cases


def _small_set(tmp_path: Path) -> tuple[Path, list[TestVideo]]:
    return small_scoring_set(tmp_path)


def _cli(tmp_path: Path, annotation: Path, *extra: str) -> int:
    return compute_auc.main(["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(tmp_path / "scores"),
                             "--features", str(tmp_path / "features"), "--output", str(tmp_path / "out"), *extra])


def test_ablations_change_what_they_should(tmp_path):
    annotation, videos = _small_set(tmp_path)
    full = evaluate(videos, tmp_path / "scores", tmp_path / "features", ScoringOptions())
    raw = evaluate(videos, tmp_path / "scores", None,
                   ScoringOptions(skip_step2=True, skip_smoothing=True, skip_position_weighting=True))
    for video in raw.videos:  # without Steps 2-3 the frame scores are the 0/1 answers, repeated
        content = json.loads((tmp_path / "scores" / f"{video.key}.json").read_text())
        answers = [content[c]["score"] for c in content]
        np.testing.assert_array_equal(video.scores[::16], answers)
    no_position = evaluate(videos, tmp_path / "scores", tmp_path / "features", ScoringOptions(skip_position_weighting=True))
    for a, b in zip(full.videos, no_position.videos):
        n = len(a.scores)
        weights = np.exp(-0.5 * ((np.arange(n) - n // 2) / (n // 2)) ** 2)
        np.testing.assert_array_equal(a.scores, weights * b.scores)
    paper = evaluate(videos, tmp_path / "scores", tmp_path / "features", ScoringOptions(protocol="paper"))
    assert paper.metrics["protocol"] == "paper" and not np.array_equal(paper.videos[0].scores, full.videos[0].scores)


def test_extra_metrics_by_hand(tmp_path):
    annotation, videos = _small_set(tmp_path)
    evaluation = evaluate(videos, tmp_path / "scores", tmp_path / "features", ScoringOptions())
    m = evaluation.metrics
    by_key = {v.key: v for v in evaluation.videos}
    normal = np.concatenate([by_key["Normal_Videos_003_x264"].scores, by_key["Normal_Videos_004_x264"].scores])
    assert m["false_alarm_rate_normal"] == np.count_nonzero(normal >= 0.5) / normal.size
    fighting = by_key["Fighting001_x264"]
    labels = np.concatenate([fighting.labels, np.zeros(normal.size)])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([fighting.scores, normal]))
    assert m["auc_per_class"]["Fighting"] == auc(fpr, tpr)
    anomalous = [by_key["Fighting001_x264"], by_key["Arson002_x264"]]
    fpr, tpr, _ = roc_curve(np.concatenate([v.labels for v in anomalous]), np.concatenate([v.scores for v in anomalous]))
    assert m["auc_anomalous_videos"] == auc(fpr, tpr)
    assert by_key["Arson002_x264"].labels.sum() == 60 + 50  # the second interval is clipped at the length


def test_missing_files_are_listed_then_skipped_on_request(tmp_path, capsys):
    annotation, videos = _small_set(tmp_path)
    (tmp_path / "scores" / "Arson002_x264.json").unlink()
    (tmp_path / "features" / "Normal_Videos_004_x264.npy").unlink()
    with pytest.raises(VeraError) as error:
        _cli(tmp_path, annotation)
    message = str(error.value)
    assert "2 of 4 videos lack files" in message and "Arson002_x264.json" in message and "Normal_Videos_004_x264.npy" in message
    assert _cli(tmp_path, annotation, "--allow-missing") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_videos"] == 2 and metrics["num_skipped"] == 2
    assert "skipped 2 with missing files" in capsys.readouterr().out


@pytest.mark.parametrize(
    "corrupt,expected",
    [
        (lambda d: d.update({"17": d.pop("16")}), "centre 17 is off the grid"),
        (lambda d: d["0"].update(score=0.4), "segment 0 has score 0.4"),
        (lambda d: d.pop(max(d, key=int)), "annotation length is 200"),
        (lambda d: d.update({"abc": d.pop("0")}), "segment key 'abc' is not a frame number"),
        (lambda d: d["32"].update(score="1"), r"segment 32: 'score' must be a number, got '1'$"),
        (lambda d: d["16"].update(score=True), r"segment 16: 'score' must be a number, got True$"),
        (lambda d: d["48"].update(end="60"), r"segment 48: 'end' must be a number, got '60'$"),
        (lambda d: d["0"].pop("score"), r"segment 0 has no 'score'$"),
        (lambda d: d.update({"64": [1]}), r"segment 64 must be an object with 'end' and 'score'$"),
    ],
)
def test_bad_score_files_name_the_file(tmp_path, corrupt, expected):
    annotation, videos = _small_set(tmp_path)
    path = tmp_path / "scores" / "Fighting001_x264.json"
    content = json.loads(path.read_text())
    corrupt(content)
    path.write_text(json.dumps(content))
    with pytest.raises(VeraError, match=expected) as error:
        _cli(tmp_path, annotation)
    assert str(path) in str(error.value)


def test_bad_features_and_unreadable_json_name_the_file(tmp_path):
    annotation, videos = _small_set(tmp_path)
    feature_path = tmp_path / "features" / "Arson002_x264.npy"
    np.save(feature_path, np.ones((3, 8), dtype=np.float32))
    with pytest.raises(VeraError, match=r"video Arson002_x264: feature file .* has shape \(3, 8\); expected one row per segment \(10 rows\)"):
        _cli(tmp_path, annotation)
    np.save(feature_path, np.zeros((10, 8), dtype=np.float32))
    with pytest.raises(VeraError, match="row 0 is all zeros"):
        _cli(tmp_path, annotation)
    write_synthetic_inputs(videos, tmp_path / "scores", tmp_path / "features", width=8)
    (tmp_path / "scores" / "Normal_Videos_003_x264.json").write_text('{"0": {"start": 0, ')
    with pytest.raises(VeraError, match="Normal_Videos_003_x264.json is not valid JSON"):
        _cli(tmp_path, annotation)


def test_user_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path):
    annotation, _ = _small_set(tmp_path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "Inference" / "compute_auc.py"), "--dataset", "ucf", "--annotations",
         str(annotation), "--scores", str(tmp_path / "nope"), "--features", str(tmp_path / "features"),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: argument --scores: folder not found: {tmp_path / 'nope'}"


def test_official_ucf_txt_takes_lengths_from_the_scores(tmp_path):
    annotation, videos = _small_set(tmp_path)
    txt = tmp_path / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt"
    txt.write_text(
        "Fighting001_x264.mp4  Fighting  40  120  -1  -1\n"
        "Arson002_x264.mp4  Arson  0  60  100  150\n"
        "Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1\n"
        "Normal_Videos_004_x264.mp4  Normal  -1  -1  -1  -1\n"
    )
    from_txt = evaluate(load_test_annotations(txt, "ucf"), tmp_path / "scores", tmp_path / "features", ScoringOptions())
    from_json = evaluate(videos, tmp_path / "scores", tmp_path / "features", ScoringOptions())
    assert from_txt.metrics["value"] == from_json.metrics["value"]
    assert [v.video_class for v in from_txt.videos] == [v.video_class for v in from_json.videos]
    # Without lengths in the txt, its intervals are checked against the length the score file gives.
    txt.write_text(txt.read_text().replace("100  150", "100  500"))
    with pytest.raises(VeraError, match=rf"^video length from score file {tmp_path / 'scores' / 'Arson002_x264.json'}: "
                                        r"video Arson002_x264: interval \[100, 500\] lies past the video's end "
                                        r"\(150 frames\)$"):
        evaluate(load_test_annotations(txt, "ucf"), tmp_path / "scores", tmp_path / "features", ScoringOptions())


def test_segment_file_layout():
    content = segment_file(40, np.array([1, 0, 1]))
    assert content == {"0": {"start": 0.0, "end": 40.0, "score": 1}, "16": {"start": 0.0, "end": 40.0, "score": 0},
                       "32": {"start": 0.0, "end": 40.0, "score": 1}}
    assert segment_file(400, np.zeros(25))["192"] == {"start": 42.0, "end": 342.0, "score": 0}


def test_soft_scores_by_label_prob_with_fallback(tmp_path):
    annotation, videos = _small_set(tmp_path)
    rng = np.random.default_rng(4)
    nulls = 0
    for video in videos:
        path = tmp_path / "scores" / f"{video.key}.json"
        content = json.loads(path.read_text())
        for centre, segment in content.items():
            segment["label_prob"] = None if centre == "16" else float(rng.random())
            nulls += centre == "16"
        path.write_text(json.dumps(content))
    with pytest.raises(VeraError, match="--score-field label_prob gives soft scores; the released protocol"):
        _cli(tmp_path, annotation, "--score-field", "label_prob")
    assert _cli(tmp_path, annotation, "--score-field", "label_prob", "--protocol", "paper",
                "--skip-step2", "--skip-smoothing", "--skip-position-weighting") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["score_field"] == "label_prob" and metrics["score_fallbacks"] == nulls == 4
    for video in videos:  # without Steps 2-3 the frames carry the soft scores, the 0/1 answer where it was null
        content = json.loads((tmp_path / "scores" / f"{video.key}.json").read_text())
        expected = [s["label_prob"] if s["label_prob"] is not None else s["score"] for s in content.values()]
        saved = np.load(tmp_path / "out" / "frame_scores" / f"{video.key}.npy")
        np.testing.assert_array_equal(saved[::16], expected)


def test_a_rerun_replaces_every_output_and_other_settings_need_overwrite(tmp_path):
    annotation, videos = _small_set(tmp_path)
    out = tmp_path / "out"
    assert _cli(tmp_path, annotation) == 0
    assert sorted(os.listdir(out / "frame_scores")) == sorted(f"{video.key}.npy" for video in videos)
    assert (out / "roc.png").is_file() and (out / "pr.png").is_file()
    # The same settings with one video fewer and no curves: nothing of the first run may remain.
    (tmp_path / "scores" / "Arson002_x264.json").unlink()
    assert _cli(tmp_path, annotation, "--allow-missing", "--no-curves") == 0
    assert sorted(os.listdir(out)) == [".lock", "frame_scores", "metrics.json", "run.json", "stages.npz"]  # held
    remaining = [video.key for video in videos if video.key != "Arson002_x264"]
    with np.load(out / "stages.npz") as stages:
        assert sorted({name.split("/")[0] for name in stages.files}) == sorted(remaining)
    assert sorted(os.listdir(out / "frame_scores")) == sorted(f"{key}.npy" for key in remaining)
    with np.load(out / "stages.npz") as stages:
        assert sorted({name.split("/")[0] for name in stages.files}) == sorted(remaining)
    metrics = (out / "metrics.json").read_bytes()
    assert json.loads(metrics)["num_videos"] == 3
    # Other settings: refused before scoring, the folder untouched; --overwrite replaces it.
    with pytest.raises(VeraError) as error:
        _cli(tmp_path, annotation, "--allow-missing", "--skip-smoothing")
    assert str(error.value) == (f"output folder {out} was made with other settings (skip_smoothing differ; see "
                                f"{out / 'run.json'}); use another folder or --overwrite to replace its contents")
    assert (out / "metrics.json").read_bytes() == metrics
    assert _cli(tmp_path, annotation, "--allow-missing", "--skip-smoothing", "--overwrite") == 0
    assert json.loads((out / "metrics.json").read_text())["options"]["skip_smoothing"] is True
    assert json.loads((out / "run.json").read_text())["identity"]["skip_smoothing"] is True
    assert sorted(os.listdir(out / "frame_scores")) == sorted(f"{key}.npy" for key in remaining)
