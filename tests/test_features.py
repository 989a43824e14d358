"""Segment features of the real clips: shapes, sources, batching, resume, errors, and the CLI."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import auc, roc_curve

from vera.data.annotations import infer_dataset, load_test_annotations
from vera.errors import VeraError, run_cli
from vera.features.feature_extraction import FeatureSettings, extract_features, video_features
from vera.data.frames import open_frames
from vera.features.imagebind import TINY, randomly_initialised
from vera.data.segments import num_segments, segment_centres, segment_window
from vera.runs import PARTIAL_DIR
from fixtures.videos import decode_to_jpegs
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
CLIPS = {"Fighting033_x264_570_841": "Fighting", "RoadAccidents133_x264_270_451": "RoadAccidents"}
TINY_SETTINGS = FeatureSettings(model="random-tiny (seed 0)")


def _cli():
    return load_script("extract_features")


@pytest.fixture(scope="module")
def data(shared_data: Path, tmp_path_factory) -> dict:
    """The two UCF clips as videos, as JPEG frame folders, and as lossless videos of those JPEGs' pixels."""
    root = tmp_path_factory.mktemp("features")
    frames_dir, lossless_dir = root / "frames", root / "lossless"
    lengths = {}
    for key in CLIPS:
        folder = frames_dir / key
        count = decode_to_jpegs(shared_data / "clips" / f"{key}.mp4", folder)
        lengths[key] = count
        # FFV1 is lossless: decoding this video gives exactly the pixels of the decoded JPEGs.
        lossless_dir.mkdir(exist_ok=True)
        first = cv2.imread(str(folder / "000000.jpg"))
        writer = cv2.VideoWriter(str(lossless_dir / f"{key}.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), 30,
                                 (first.shape[1], first.shape[0]))
        assert writer.isOpened(), "OpenCV cannot write FFV1"
        for index in range(count):
            writer.write(cv2.imread(str(folder / f"{index:06d}.jpg")))
        writer.release()
    assert lengths == {"Fighting033_x264_570_841": 271, "RoadAccidents133_x264_270_451": 181}
    annotations = root / "clips.json"
    annotations.write_text(json.dumps([
        {"video": f"frames/{folder}/{key}.mp4", "temporal_label": [-1, -1], "length": lengths[key]}
        for key, folder in CLIPS.items()
    ]))
    return {"videos": shared_data / "clips", "frames": frames_dir, "lossless": lossless_dir,
            "annotations": annotations, "lengths": lengths, "root": root}


@pytest.fixture(scope="module")
def encoder():
    return randomly_initialised(TINY).eval()


@pytest.fixture(scope="module")
def from_frames(data, encoder, tmp_path_factory) -> dict[str, np.ndarray]:
    output = tmp_path_factory.mktemp("from_frames")
    videos = load_test_annotations(data["annotations"], "ucf")
    report = extract_features(videos, encoder, output, TINY_SETTINGS, frames_dir=data["frames"], show_progress=False)
    assert report.written == list(CLIPS) and not report.failed and report.segments == 17 + 12
    return {key: np.load(output / f"{key}.npy") for key in CLIPS}


def test_features_from_frames_and_from_videos(data, encoder, from_frames, tmp_path: Path):
    videos = load_test_annotations(data["annotations"], "ucf")
    report = extract_features(videos, encoder, tmp_path, TINY_SETTINGS, videos_dir=data["videos"], show_progress=False)
    assert report.written == list(CLIPS) and not report.failed
    for key, length in data["lengths"].items():
        from_video = np.load(tmp_path / f"{key}.npy")
        assert from_video.shape == from_frames[key].shape == (num_segments(length), TINY.out_dim)
        assert from_video.dtype == np.float32 and np.all(np.isfinite(from_video))
        # Means of unit vectors; segments with different windows differ.
        assert np.all(np.linalg.norm(from_video, axis=1) <= 1 + 1e-6)
        assert np.abs(np.diff(from_video, axis=0)).max() > 1e-3
        # The mp4 and its JPEG re-encoding differ only by compression noise.
        assert np.abs(from_video - from_frames[key]).max() < 1e-2


def test_identical_frames_give_identical_features(data, encoder, from_frames, tmp_path: Path):
    videos = load_test_annotations(data["annotations"], "ucf")
    extract_features(videos, encoder, tmp_path, TINY_SETTINGS, videos_dir=data["lossless"], show_progress=False)
    for key in CLIPS:
        np.testing.assert_array_equal(np.load(tmp_path / f"{key}.npy"), from_frames[key])


def test_batching_and_window_rows(data, encoder, from_frames):
    key = "Fighting033_x264_570_841"
    with open_frames(key, frames_dir=data["frames"]) as frames:
        one_segment_per_batch = video_features(encoder, frames, 271, batch_size=3)
    np.testing.assert_allclose(one_segment_per_batch, from_frames[key], atol=1e-6)
    # Centres 128 and 144 both see the whole clip [0, 271): same views, same row.
    assert segment_window(128, 271) == segment_window(144, 271) == (0, 271)
    np.testing.assert_allclose(from_frames[key][8], from_frames[key][9], atol=1e-6)


class _Interrupting:
    """Wraps an encoder's forward: counts views and raises KeyboardInterrupt on call ``stop_at``."""

    def __init__(self, encoder, stop_at: int | None = None) -> None:
        self.forward, self.stop_at, self.calls, self.views = encoder.forward, stop_at, 0, 0

    def __call__(self, views):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.views += len(views)
        return self.forward(views)


@pytest.mark.parametrize("input_workers", [0, 2])
def test_interrupted_video_resumes_from_saved_rows(data, encoder, from_frames, tmp_path: Path, monkeypatch,
                                                   input_workers):
    videos = load_test_annotations(data["annotations"], "ucf")
    key = videos[0].key
    interrupting = _Interrupting(encoder, stop_at=3)
    monkeypatch.setattr(encoder, "forward", interrupting)
    with pytest.raises(KeyboardInterrupt):
        extract_features(videos, encoder, tmp_path, TINY_SETTINGS, frames_dir=data["frames"], batch_size=6,
                         partial_every_s=0, show_progress=False, input_workers=input_workers)
    assert not (tmp_path / f"{key}.npy").exists()
    saved = np.load(tmp_path / PARTIAL_DIR / f"{key}.npy")
    assert saved.shape == (4, TINY.out_dim)  # two batches of 2 segments were embedded before the interrupt

    counting = _Interrupting(encoder)
    monkeypatch.setattr(encoder, "forward", counting)
    report = extract_features(videos, encoder, tmp_path, TINY_SETTINGS, frames_dir=data["frames"], batch_size=6,
                              show_progress=False, input_workers=input_workers)
    assert report.written == list(CLIPS) and report.segments == (17 - 4) + 12
    assert counting.views == 3 * report.segments  # the saved rows were not recomputed
    assert not (tmp_path / PARTIAL_DIR / f"{key}.npy").exists()
    for video in videos:
        np.testing.assert_allclose(np.load(tmp_path / f"{video.key}.npy"), from_frames[video.key], atol=1e-6)


def test_cli_writes_then_skips_finished_videos(data, from_frames, tmp_path: Path, capsys):
    cli = _cli()
    # No --dataset: the CLI reads it from the annotation file.
    argv = ["--annotations", str(data["annotations"]), "--frames", str(data["frames"]),
            "--output", str(tmp_path), "--random-init", "--tiny", "--device", "cpu"]
    assert run_cli(cli.main, argv) == 0
    assert "2 written, 0 already complete, 0 failed; 29 segments" in capsys.readouterr().out
    stamps = {key: (tmp_path / f"{key}.npy").stat().st_mtime_ns for key in CLIPS}
    for key in CLIPS:
        np.testing.assert_allclose(np.load(tmp_path / f"{key}.npy"), from_frames[key], atol=1e-6)
    assert run_cli(cli.main, argv) == 0
    assert "0 written, 2 already complete" in capsys.readouterr().out
    assert stamps == {key: (tmp_path / f"{key}.npy").stat().st_mtime_ns for key in CLIPS}
    assert json.loads((tmp_path / "run.json").read_text())["identity"]["half_window"] == 150
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["written"], sorted(summary["skipped"]), summary["segments"]) == ([], sorted(CLIPS), 0)
    # Other settings cannot write into the same folder: --fps 24 means 120 frames each side.
    assert run_cli(cli.main, [*argv, "--fps", "24"]) == 2
    error = capsys.readouterr().err
    assert f"error: output folder {tmp_path} was made with other settings (half_window differ" in error
    assert run_cli(cli.main, [*argv, "--output", str(tmp_path / "fps24"), "--fps", "24", "--limit", "1"]) == 0
    assert json.loads((tmp_path / "fps24" / "run.json").read_text())["identity"]["half_window"] == 120
    for bad in ("0", "0.05", "-30", "nan", "inf"):
        assert run_cli(cli.main, [*argv, "--fps", bad]) == 2
        error = capsys.readouterr().err
        assert error.splitlines()[-1] == ("error: argument --fps: must be a finite frame rate of at least 0.1 "
                                          f"(one frame each side of a segment centre), got {bad}")


def test_cli_reports_a_missing_checkpoint(data, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "Preprocessing/extract_features.py", "--annotations", str(data["annotations"]), "--dataset",
         "ucf", "--videos", str(data["videos"]), "--output", str(tmp_path / "out"), "--checkpoint",
         str(tmp_path / "imagebind_huge.pth")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: argument --checkpoint: file not found:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("input_workers", [0, 2])
def test_problem_videos_are_named_and_the_rest_go_on(data, encoder, tmp_path: Path, input_workers):
    entries = json.loads(data["annotations"].read_text())
    entries[0]["length"] = 300  # the clip has 271 frames
    entries.append({"video": "frames/Normal/Normal_Videos_999_x264.mp4", "temporal_label": [-1, -1], "length": 50})
    annotations = tmp_path / "bad.json"
    annotations.write_text(json.dumps(entries))
    videos = load_test_annotations(annotations, "ucf")
    report = extract_features(videos, encoder, tmp_path / "out", TINY_SETTINGS, frames_dir=data["frames"],
                              show_progress=False, input_workers=input_workers)
    assert report.written == ["RoadAccidents133_x264_270_451"]
    assert "annotation gives 300 frames" in report.failed["Fighting033_x264_570_841"]
    assert "--clamp-short" in report.failed["Fighting033_x264_570_841"]
    assert "video Normal_Videos_999_x264: frame folder not found" in report.failed["Normal_Videos_999_x264"]

    clamped = extract_features(videos[:1], encoder, tmp_path / "out", TINY_SETTINGS, frames_dir=data["frames"],
                               clamp_short=True, show_progress=False, input_workers=input_workers)
    assert clamped.written == ["Fighting033_x264_570_841"]
    features = np.load(tmp_path / "out" / "Fighting033_x264_570_841.npy")
    assert features.shape == (num_segments(300), TINY.out_dim) and np.all(np.isfinite(features))

    (tmp_path / "out" / "RoadAccidents133_x264_270_451.npy").unlink()
    np.save(tmp_path / "out" / "RoadAccidents133_x264_270_451.npy", np.zeros((3, TINY.out_dim), np.float32))
    again = extract_features(videos[1:2], encoder, tmp_path / "out", TINY_SETTINGS, frames_dir=data["frames"],
                             show_progress=False)
    assert "has shape (3, 32), expected (12, 32); delete it to recompute" in again.failed["RoadAccidents133_x264_270_451"]
    with pytest.raises(VeraError, match="batch-size"):
        extract_features(videos, encoder, tmp_path / "out", TINY_SETTINGS, frames_dir=data["frames"], batch_size=0)


def test_compute_auc_accepts_the_features(data, from_frames, tmp_path: Path):
    compute_auc = load_script("compute_auc")
    # One anomalous clip and one filed as normal, with Step 1 scores on the same segment grid.
    entries = [
        {"video": "frames/Fighting/Fighting033_x264_570_841.mp4", "temporal_label": [100, 270, -1, -1], "length": 271},
        {"video": "frames/Testing_Normal_Videos_Anomaly/RoadAccidents133_x264_270_451.mp4",
         "temporal_label": [-1, -1, -1, -1], "length": 181},
    ]
    annotations = tmp_path / "eval.json"
    annotations.write_text(json.dumps(entries))
    scores_dir, features_dir = tmp_path / "scores", tmp_path / "features"
    scores_dir.mkdir()
    features_dir.mkdir()
    for key, length in data["lengths"].items():
        segments = {}
        for centre in segment_centres(length).tolist():
            start, end = segment_window(centre, length)
            segments[str(centre)] = {"start": start, "end": end, "score": int(key.startswith("Fighting") and centre >= 96)}
        (scores_dir / f"{key}.json").write_text(json.dumps(segments))
        np.save(features_dir / f"{key}.npy", from_frames[key])
    argv = ["--dataset", "ucf", "--annotations", str(annotations), "--scores", str(scores_dir), "--features",
            str(features_dir), "--output", str(tmp_path / "auc"), "--no-curves"]
    assert run_cli(compute_auc.main, argv) == 0
    metrics = json.loads((tmp_path / "auc" / "metrics.json").read_text())
    assert (metrics["num_videos"], metrics["num_frames"], metrics["num_skipped"]) == (2, 271 + 181, 0)
    # The metric is the ROC AUC of the saved frame scores, in annotation order, against the annotated frames.
    saved = [np.load(tmp_path / "auc" / "frame_scores" / f"{key}.npy") for key in
             ("Fighting033_x264_570_841", "RoadAccidents133_x264_270_451")]
    assert [len(scores) for scores in saved] == [271, 181]
    labels = np.zeros(271 + 181)
    labels[100:270] = 1
    fpr, tpr, _ = roc_curve(labels, np.concatenate(saved))
    assert metrics["metric"] == "auc" and metrics["value"] == auc(fpr, tpr)


@pytest.mark.parametrize("name, dataset", [
    ("UCF_Eval.json", "ucf"), ("UCF_Instruct_train.json", "ucf"),
    ("xd_test_800.json", "xd"), ("xd_annotations.json", "xd"), ("xd_train.json", "xd"),
])
def test_infer_dataset_from_the_real_annotation_files(shared_data: Path, name: str, dataset: str):
    assert infer_dataset(shared_data / "annotations" / name) == dataset


def test_infer_dataset_names_a_file_it_cannot_place(tmp_path: Path):
    unknown = tmp_path / "mystery.json"
    unknown.write_text(json.dumps([{"video": "clip_001", "temporal_label": [-1, -1], "length": 10}]))
    with pytest.raises(VeraError, match=re.escape(f"cannot tell whether {unknown} annotates")):
        infer_dataset(unknown)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{"video": "frames/Abuse/Abuse028_x264.mp4"}, {"video": "v=x__#1_label_A"}]))
    with pytest.raises(VeraError, match="mixed.json annotates UCF-Crime or XD-Violence"):
        infer_dataset(mixed)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(VeraError, match=re.escape(f"annotation file {empty} must hold a non-empty JSON list")):
        infer_dataset(empty)
