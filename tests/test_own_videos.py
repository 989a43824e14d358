"""An annotation file for your own videos (Data/make_annotations.py), and the pipeline on it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from sklearn.metrics import auc, roc_curve

from reference.released import reference_video
from fixtures.scripts import ROOT, run
from vera.data.annotations import NORMAL_CLASS, load_test_annotations
from vera.errors import VeraError

# The clips' frame counts as the shared data's README lists them.
CLIP_FRAMES = {
    "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101": 256,
    "Fighting033_x264_570_841": 271,
    "RoadAccidents133_x264_270_451": 181,
    "v=JfLYNEsrTew__#1_label_G-0-0_52_431": 379,
}
UCF_CLIPS = ("Fighting033_x264_570_841", "RoadAccidents133_x264_270_451", "v=JfLYNEsrTew__#1_label_G-0-0_52_431")


def _opencv_frame_count(path) -> int:
    """An independent count: OpenCV's sequential decode, frame by frame."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.fixture
def clips(shared_data, tmp_path):
    """The four clips, two of them one folder down (videos are found at any depth)."""
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    for number, source in enumerate(sorted((shared_data / "clips").glob("*.mp4"))):
        shutil.copy(source, folder / ("sub" if number % 2 else "") / source.name)
    return folder


def _labels(tmp_path, rows: list[str]):
    path = tmp_path / "labels.csv"
    path.write_text("video,class,intervals\n" + "\n".join(rows) + "\n")
    return path


def test_lengths_are_decoded_frames_and_keys_are_file_names(clips, tmp_path):
    output = tmp_path / "mine.json"
    assert run("make_annotations", ["--videos", str(clips), "--dataset", "xd", "--output", str(output),
                                    "--workers", "1"]) == 0
    videos = load_test_annotations(output, "xd")
    assert {video.key: video.length for video in videos} == CLIP_FRAMES
    for path in clips.rglob("*.mp4"):
        assert CLIP_FRAMES[path.stem] == _opencv_frame_count(path)
    # No labels: keys and lengths only, nothing claimed anomalous.
    assert all(video.intervals == () for video in videos)


def test_labels_then_compute_auc_on_the_file(clips, tmp_path, capsys):
    for path in list(clips.rglob("A.Beautiful*")):
        path.unlink()  # an XD-Violence clip: three UCF classes are enough here
    labels = _labels(tmp_path, [
        "Fighting033_x264_570_841.mp4,Fighting,100-200",
        "sub/RoadAccidents133_x264_270_451.mp4,RoadAccidents,20-60; 90-150",
        "v=JfLYNEsrTew__#1_label_G-0-0_52_431,normal,",
    ])
    output = tmp_path / "mine.json"
    argv = ["--videos", str(clips), "--dataset", "ucf", "--output", str(output), "--labels", str(labels),
            "--workers", "2"]
    assert run("make_annotations", argv) == 0
    videos = {video.key: video for video in load_test_annotations(output, "ucf")}
    assert set(videos) == set(UCF_CLIPS)
    assert videos["Fighting033_x264_570_841"].intervals == ((100, 200),)
    assert videos["Fighting033_x264_570_841"].video_class == "Fighting"
    assert videos["RoadAccidents133_x264_270_451"].intervals == ((20, 60), (90, 150))
    assert videos["v=JfLYNEsrTew__#1_label_G-0-0_52_431"].video_class == NORMAL_CLASS
    assert json.loads(output.read_text())[0]["video"] == "Fighting/Fighting033_x264_570_841.mp4"
    assert "2 anomalous" in capsys.readouterr().out

    from vera.scoring.synthetic import write_synthetic_inputs

    # Features from the videos themselves (ImageBind's architecture, tiny and random), scores synthetic.
    assert run("extract_features", ["--annotations", str(output), "--videos", str(clips), "--output",
                                    str(tmp_path / "features"), "--random-init", "--tiny", "--device", "cpu"]) == 0
    write_synthetic_inputs(list(videos.values()), tmp_path / "scores", tmp_path / "unused", width=16)
    result = tmp_path / "auc"
    assert run("compute_auc", ["--dataset", "ucf", "--annotations", str(output), "--scores", str(tmp_path / "scores"),
                               "--features", str(tmp_path / "features"), "--output", str(result), "--no-curves"]) == 0
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["num_videos"] == 3 and metrics["num_frames"] == 271 + 181 + 379
    # The released UCF AUC over the hand-written intervals, through the loop-by-loop reference.
    truth = {"Fighting033_x264_570_841": [0] * 100 + [1] * 100 + [0] * 71,
             "RoadAccidents133_x264_270_451": [0] * 20 + [1] * 40 + [0] * 30 + [1] * 60 + [0] * 31,
             "v=JfLYNEsrTew__#1_label_G-0-0_52_431": [0] * 379}
    frames = {}
    for key in truth:
        content = json.loads((tmp_path / "scores" / f"{key}.json").read_text())
        frames[key] = reference_video([int(c) for c in content], [content[c]["end"] for c in content],
                                      [content[c]["score"] for c in content],
                                      np.load(tmp_path / "features" / f"{key}.npy"), "ucf", "auc")
        assert len(frames[key]) == len(truth[key])

    def roc_area(keys):
        fpr, tpr, _ = roc_curve(sum((truth[k] for k in keys), []), sum((list(frames[k]) for k in keys), []))
        return auc(fpr, tpr)

    assert metrics["value"] == roc_area(list(truth))
    normal = "v=JfLYNEsrTew__#1_label_G-0-0_52_431"
    assert metrics["auc_per_class"] == pytest.approx(
        {"Fighting": roc_area(["Fighting033_x264_570_841", normal]),
         "RoadAccidents": roc_area(["RoadAccidents133_x264_270_451", normal])}, abs=1e-12)


def test_a_file_name_the_reader_would_misread_is_refused(shared_data, tmp_path, capsys):
    # The UCF reader takes every video whose name starts with "Normal" as normal: a fight filed under
    # such a name would read back as a normal video with anomalous frames, so no file is written.
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared_data / "clips" / "Fighting033_x264_570_841.mp4", videos / "Normal_fight.mp4")
    output = tmp_path / "mine.json"
    status = run("make_annotations", ["--videos", str(videos), "--dataset", "ucf", "--output", str(output),
                                      "--labels", str(_labels(tmp_path, ["Normal_fight.mp4,Fighting,100-200"])),
                                      "--workers", "1"])
    error = capsys.readouterr().err
    assert status == 2 and not output.exists() and list(tmp_path.glob(".mine.json*")) == []
    assert len(error.strip().splitlines()) == 1 and error.startswith("error: ")
    assert "video Normal_fight is in the normal class (Fighting/Normal_fight.mp4) but has anomalous " \
           "intervals [(100, 200)]" in error


def test_a_file_name_with_dots_reads_back_whole(clips, tmp_path):
    output = tmp_path / "mine.json"
    assert run("make_annotations", ["--videos", str(clips), "--dataset", "ucf", "--output", str(output),
                                    "--workers", "1"]) == 0
    assert {video.key: video.length for video in load_test_annotations(output, "ucf")} == CLIP_FRAMES


@pytest.fixture(scope="module")
def measured(shared_data):
    from vera.data.own_videos import measure_videos

    return measure_videos(shared_data / "clips")


@pytest.mark.parametrize("rows, message", [
    (["nosuch.mp4,Fighting,1-2"], r"labels.csv line 2: no video 'nosuch.mp4'"),
    (["Fighting033_x264_570_841,Fighting,100-300"], r"line 2: interval 100-300 lies past the end of "
                                                    r"Fighting033_x264_570_841 \(271 frames\)"),
    (["Fighting033_x264_570_841,Normal,1-5"], "is Normal but has anomalous intervals"),
    (["Fighting033_x264_570_841,Fighting,"], "is Fighting but has no intervals"),
    (["Fighting033_x264_570_841,Fighting,5..9"], r"interval '5..9' is not START-END"),
    (["Fighting033_x264_570_841,Fighting,9-5"], "ends before it starts"),
    (["Fighting033_x264_570_841,Fighting,1-5", "Fighting033_x264_570_841.mp4,Fighting,1-5"], "labelled twice"),
    (["Fighting033_x264_570_841,Fighting,1-5"], r"has no row for 3 videos"),
])
def test_bad_labels_name_the_line(measured, tmp_path, rows, message):
    from vera.data.own_videos import read_labels

    with pytest.raises(VeraError, match=message):
        read_labels(_labels(tmp_path, rows), measured)


def test_a_bad_label_is_a_one_line_error_and_nothing_is_written(clips, tmp_path, capsys):
    output = tmp_path / "mine.json"
    status = run("make_annotations", ["--videos", str(clips), "--dataset", "xd", "--output", str(output),
                                      "--labels", str(_labels(tmp_path, ["nosuch,Fighting,1-2"])), "--workers", "1"])
    error = capsys.readouterr().err
    assert status == 2 and not output.exists()
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1 and "no video 'nosuch'" in error


def test_a_corrupt_video_and_an_existing_output_are_errors(clips, tmp_path, capsys):
    output = tmp_path / "mine.json"
    output.write_text("[]")
    assert run("make_annotations", ["--videos", str(clips), "--dataset", "xd", "--output", str(output)]) == 2
    assert f"{output} exists; pass --overwrite" in capsys.readouterr().err
    (clips / "broken.mp4").write_bytes(next(clips.rglob("Fighting*.mp4")).read_bytes()[:3000])
    assert run("make_annotations", ["--videos", str(clips), "--dataset", "xd", "--output", str(output),
                                    "--overwrite", "--workers", "1"]) == 2
    error = capsys.readouterr().err
    assert "1 of 5 videos cannot be decoded: video broken:" in error and "broken.mp4" in error
    assert output.read_text() == "[]"


def test_the_script_runs_as_a_user_runs_it(clips, tmp_path):
    output = tmp_path / "mine.json"
    done = subprocess.run([sys.executable, str(ROOT / "Data" / "make_annotations.py"), "--videos", str(clips),
                           "--dataset", "xd", "--output", str(output), "--workers", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"wrote {output}: 4 videos, {sum(CLIP_FRAMES.values())} frames" in done.stdout
