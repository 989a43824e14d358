"""Frame extraction and frame access: exact frames, resumable runs, bad videos reported."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from fixtures.videos import decode_index, extract_or_crash, index_frame, write_h264_index_video, write_index_video

from vera.errors import VeraError
from vera.data.frame_extraction import (
    MANIFEST_NAME,
    ExtractedVideo,
    annotated_lengths,
    extract_videos,
    length_mismatches,
    read_manifest,
)
from vera.data.frames import (
    JpegFolderFrames,
    VideoFileFrames,
    decode_jpeg,
    find_video,
    frame_name,
    list_videos,
    open_frames,
)
from vera.data.segments import segment_centres, segment_window, window_frame_indices
from vera.runs import LOCK_FILE, PARTIAL_DIR, RUN_FILE
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
# Frame counts, sizes and rates of the real clips, from ../shared/data/README.md.
CLIPS = {
    "Fighting033_x264_570_841": (271, 320, 240),
    "RoadAccidents133_x264_270_451": (181, 320, 240),
    "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101": (256, 640, 346),
    "v=JfLYNEsrTew__#1_label_G-0-0_52_431": (379, 640, 360),
}


def sequential_decode(video: Path) -> list[np.ndarray]:
    """Every frame of a full OpenCV decode, BGR, as the released extraction reads them."""
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def assert_folder_matches_video(folder: Path, video: Path) -> None:
    """Each JPEG is byte for byte OpenCV's JPEG of the frame a direct decode gives, and nothing more."""
    frames = sequential_decode(video)
    assert sorted(os.listdir(folder)) == [frame_name(i) for i in range(len(frames))]
    for index, frame in enumerate(frames):
        expected = cv2.imencode(".jpg", frame)[1].tobytes()
        assert (folder / frame_name(index)).read_bytes() == expected, f"{folder.name} frame {index}"


@pytest.fixture(scope="session")
def clips(shared_data: Path) -> Path:
    folder = shared_data / "clips"
    if not all((folder / f"{key}.mp4").is_file() for key in CLIPS):
        pytest.skip(f"the real clips are absent from {folder}")
    return folder


@pytest.fixture(scope="session")
def clip_frames(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four clips extracted once with two workers."""
    frames_dir = tmp_path_factory.mktemp("clip_frames")
    report = extract_videos(sorted(clips.glob("*.mp4")), frames_dir, workers=2, progress=False)
    assert [o.status for o in report.outcomes] == ["written"] * 4, report.outcomes
    return frames_dir


# --- extraction -------------------------------------------------------------------------------


def test_extracted_clips_match_a_direct_decode(clips: Path, clip_frames: Path) -> None:
    manifest = read_manifest(clip_frames)
    assert set(manifest) == set(CLIPS)
    for key, (frames, width, height) in CLIPS.items():
        assert manifest[key] == ExtractedVideo(key, frames, 30.0, width, height, str(clips / f"{key}.mp4"), frames)
        assert_folder_matches_video(clip_frames / key, clips / f"{key}.mp4")
    assert not [name for name in os.listdir(clip_frames) if name.startswith(".")]


def test_rerun_skips_complete_videos_and_merges_the_manifest(clips: Path, tmp_path: Path) -> None:
    videos = sorted(clips.glob("*_x264_*.mp4"))  # the two small UCF clips
    first = extract_videos(videos[:1], tmp_path, progress=False)
    second = extract_videos(videos, tmp_path, progress=False)
    assert [o.status for o in first.outcomes] == ["written"]
    assert sorted(o.status for o in second.outcomes) == ["skipped", "written"]
    assert set(read_manifest(tmp_path)) == {video.stem for video in videos}
    assert second.summary == "frames: 1 videos written (181 frames), 1 skipped as already complete, 0 failed"


def test_a_killed_run_resumes_to_the_complete_set(clips: Path, tmp_path: Path) -> None:
    videos_dir, frames_dir = tmp_path / "videos", tmp_path / "frames"
    videos_dir.mkdir()
    ucf_clips = [key for key in CLIPS if "_x264_" in key]
    for key in ucf_clips:
        (videos_dir / f"{key}.mp4").symlink_to(clips / f"{key}.mp4")
    command = [sys.executable, str(ROOT / "Preprocessing" / "extract_frames.py"), "--videos", str(videos_dir),
               "--frames", str(frames_dir), "--workers", "1", "--no-progress"]
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.poll() is None:
        partial = [p for p in (frames_dir / PARTIAL_DIR).glob("*") if len(os.listdir(p)) >= 20] \
            if (frames_dir / PARTIAL_DIR).exists() else []
        if partial:
            break
        time.sleep(0.005)
    os.killpg(run.pid, signal.SIGKILL)  # the script and its worker, mid-video
    run.wait()
    assert partial, "the run ended before a video was half written; cannot test the kill"
    # A killed run leaves only whole folders under video keys.
    for folder in frames_dir.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            assert_folder_matches_video(folder, clips / f"{folder.name}.mp4")

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().splitlines()[-1].endswith("0 failed")
    assert set(read_manifest(frames_dir)) == set(ucf_clips)
    for key in ucf_clips:
        assert_folder_matches_video(frames_dir / key, clips / f"{key}.mp4")
    assert not [name for name in os.listdir(frames_dir) if name.startswith(".")]


def test_stale_and_unrecorded_folders_are_repaired_or_adopted(clips: Path, tmp_path: Path) -> None:
    videos = sorted(clips.glob("*_x264_*.mp4"))
    fighting, road = (video.stem for video in videos)
    extract_videos(videos, tmp_path, progress=False)
    # A run killed before saving the manifest, a half-written folder from a
    # non-atomic tool, and a temporary folder left by a kill.
    (tmp_path / MANIFEST_NAME).unlink()
    for index in range(100, CLIPS[road][0]):
        (tmp_path / road / frame_name(index)).unlink()
    (tmp_path / PARTIAL_DIR / fighting).mkdir(parents=True)
    (tmp_path / PARTIAL_DIR / fighting / frame_name(0)).write_bytes(b"junk")

    report = extract_videos(videos, tmp_path, progress=False)
    assert {o.video.stem: o.status for o in report.outcomes} == {fighting: "skipped", road: "written"}
    assert {key: entry.frames for key, entry in read_manifest(tmp_path).items()} == {fighting: 271, road: 181}
    assert_folder_matches_video(tmp_path / road, clips / f"{road}.mp4")
    # The incomplete folder was replaced whole, and the temporary folder of the adopted video removed.
    assert not (tmp_path / PARTIAL_DIR).exists()


def test_corrupt_videos_are_reported_and_the_others_complete(clips: Path, tmp_path: Path) -> None:
    videos_dir = tmp_path / "videos"
    (videos_dir / "Fighting").mkdir(parents=True)
    good = clips / "RoadAccidents133_x264_270_451.mp4"
    shutil.copy(good, videos_dir / "Fighting" / good.name)
    (videos_dir / "truncated.mp4").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])
    (videos_dir / "garbage.avi").write_bytes(np.random.default_rng(0).bytes(20000))
    frames_dir = tmp_path / "frames"
    result = subprocess.run([sys.executable, str(ROOT / "Preprocessing" / "extract_frames.py"), "--videos",
                             str(videos_dir), "--frames", str(frames_dir), "--workers", "2", "--no-progress"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # bad input
    assert result.stderr.startswith("error: 2 of 3 videos failed (") and result.stderr.count("\n") == 1
    assert result.stderr.endswith("); fix them and rerun to resume\n")
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 2 and any("garbage.avi" in line for line in failures)
    assert any("truncated.mp4" in line for line in failures)
    assert result.stdout.strip().splitlines()[-1] == (
        "frames: 1 videos written (181 frames), 0 skipped as already complete, 2 failed")
    assert set(read_manifest(frames_dir)) == {good.stem}
    assert sorted(os.listdir(frames_dir)) == sorted([good.stem, MANIFEST_NAME, RUN_FILE])


def test_a_crashing_worker_fails_only_its_video(tmp_path: Path) -> None:
    videos = [write_index_video(tmp_path / "videos" / f"{name}.avi", 12) for name in ("a", "crash", "oops", "b")]
    report = extract_videos(videos, tmp_path / "frames", workers=2, progress=False, task=extract_or_crash)
    statuses = {o.video.stem: o.status for o in report.outcomes}
    # A video finished by the worker beside the crash may lose its result with
    # the pool; the retry then finds its folder whole and adopts it.
    assert statuses["a"] in ("written", "skipped") and statuses["b"] in ("written", "skipped")
    failures = {o.video.stem: o.message for o in report.of("failed")}
    assert failures["crash"].startswith("video crash: the worker crashed twice")
    assert failures["oops"] == "video oops: RuntimeError('unexpected')"
    assert {key: entry.frames for key, entry in read_manifest(tmp_path / "frames").items()} == {"a": 12, "b": 12}
    assert sorted(os.listdir(tmp_path / "frames")) == [LOCK_FILE, "a", "b", MANIFEST_NAME, RUN_FILE]  # held still


def test_annotated_lengths_are_checked(clips: Path, clip_frames: Path, tmp_path: Path) -> None:
    annotations = tmp_path / "test.json"
    annotations.write_text(json.dumps([
        {"video": "frames/Fighting/Fighting033_x264_570_841.mp4", "temporal_label": [0, 270, -1, -1], "length": 271},
        {"video": "frames/RoadAccidents/RoadAccidents133_x264_270_451.mp4", "temporal_label": [-1, -1, -1, -1],
         "length": 673},
        {"video": "frames/Normal/Normal_Videos_001_x264.mp4", "temporal_label": [-1, -1, -1, -1], "length": 10},
    ]))
    lengths = annotated_lengths(annotations)
    assert lengths == {"Fighting033_x264_570_841": 271, "RoadAccidents133_x264_270_451": 673,
                       "Normal_Videos_001_x264": 10}
    assert length_mismatches(read_manifest(clip_frames), lengths) == [("RoadAccidents133_x264_270_451", 673, 181)]
    result = subprocess.run([sys.executable, str(ROOT / "Preprocessing" / "extract_frames.py"), "--videos",
                             str(clips), "--frames", str(clip_frames), "--annotations", str(annotations),
                             "--no-progress"], capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stderr
    assert "length mismatch: RoadAccidents133_x264_270_451: annotated 673 frames, extracted 181" in lines
    assert lines[-1] == "frames: 0 videos written (0 frames), 4 skipped as already complete, 0 failed"


def test_annotated_lengths_of_the_real_files(shared_data: Path) -> None:
    annotations = shared_data / "annotations"
    ucf = annotated_lengths(annotations / "UCF_Eval.json")
    xd_train = annotated_lengths(annotations / "xd_train.json")
    assert len(ucf) == 290 and sum(ucf.values()) == 1_111_808  # figures from the data README
    assert len(xd_train) == 3559


# --- frame access -----------------------------------------------------------------------------


def read_patterns(num_frames: int, seed: int = 0) -> list[list[int]]:
    """Reads as the pipeline makes them: Step 1 windows, random batches with repeats, backward jumps."""
    rng = np.random.default_rng(seed)
    windows = [window_frame_indices(*segment_window(int(c), num_frames)).tolist() for c in segment_centres(num_frames)]
    return windows + [
        rng.integers(0, num_frames, 12).tolist(),  # unsorted, with repeats likely
        [num_frames - 1, 0, num_frames // 2, num_frames // 2, 1],
        list(range(num_frames - 1, num_frames - 40, -3)),  # stepping backwards
    ]


# h264_open.mkv: open GOPs; h264_vfr.mp4: variable frame rate; h264_raw.h264: no timestamps at all.
@pytest.mark.parametrize("name", ["mpeg4.mp4", "mjpeg.avi", "mpeg4.mkv", "h264.mp4", "h264_open.mkv", "h264.ts",
                                  "h264_vfr.mp4", "h264_raw.h264"])
def test_video_reader_returns_the_frame_at_each_index(tmp_path: Path, name: str) -> None:
    num_frames = 150
    path = tmp_path / name
    if name.startswith("h264"):
        write_h264_index_video(path, num_frames, keyframe_interval=40 if "open" in name else 25,
                               bframes=5 if "open" in name else 3, open_gop="open" in name,
                               variable_rate="vfr" in name)
    else:
        write_index_video(path, num_frames)
    for cache_bytes in (0, 64 * 2**20):
        with VideoFileFrames(path, cache_bytes=cache_bytes) as video:
            assert video.num_frames == num_frames
            if "vfr" in name:
                assert 20 < video.fps < 22  # 70 of 150 frames last 2/30 s
            elif "raw" not in name:  # FFmpeg guesses 25 fps for a raw stream
                assert video.fps == 30.0
            for indices in read_patterns(num_frames):
                frames = video.read(indices)
                assert frames.shape == (len(indices), 128, 160, 3) and frames.dtype == np.uint8
                assert [decode_index(frame) for frame in frames] == indices


def test_jpeg_folder_and_video_give_the_same_indices(tmp_path: Path) -> None:
    video = write_index_video(tmp_path / "videos" / "sub" / "idx.mp4", 90, size=(96, 64))
    report = extract_videos([video], tmp_path / "frames", progress=False)
    assert report.of("written")
    with open_frames("idx", frames_dir=tmp_path / "frames") as from_jpegs, \
            open_frames("idx", videos_dir=tmp_path / "videos") as from_video:
        assert isinstance(from_jpegs, JpegFolderFrames) and from_jpegs.fps is None
        assert isinstance(from_video, VideoFileFrames) and from_video.fps == 30.0
        assert from_jpegs.num_frames == from_video.num_frames == 90
        for indices in read_patterns(90, seed=1):
            jpegs, decoded = from_jpegs.read(indices), from_video.read(indices)
            assert [decode_index(f) for f in jpegs] == [decode_index(f) for f in decoded] == indices
            # The JPEG of a frame stays within compression error of the frame itself.
            assert np.abs(jpegs.astype(int) - decoded).mean() < 3


def test_video_reader_matches_a_full_decode_of_the_real_clips(clips: Path, clip_frames: Path) -> None:
    rng = np.random.default_rng(2)
    for key, (num_frames, width, height) in CLIPS.items():
        reference = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in sequential_decode(clips / f"{key}.mp4")])
        assert len(reference) == num_frames
        patterns = read_patterns(num_frames) + [rng.integers(0, num_frames, 20).tolist()]
        with open_frames(key, videos_dir=clips) as video, open_frames(key, frames_dir=clip_frames) as jpegs:
            assert (video.num_frames, video.width, video.height, video.fps) == (num_frames, width, height, 30.0)
            assert jpegs.num_frames == num_frames
            for indices in patterns:
                np.testing.assert_array_equal(video.read(indices), reference[indices], err_msg=f"{key} {indices}")
            indices = patterns[-1]
            expected = [cv2.imdecode(cv2.imencode(".jpg", f[:, :, ::-1])[1], cv2.IMREAD_COLOR)[:, :, ::-1]
                        for f in reference[indices]]
            np.testing.assert_array_equal(jpegs.read(indices), np.stack(expected))
        # Random single reads without the cache: every backward read seeks.
        with VideoFileFrames(clips / f"{key}.mp4", cache_bytes=0) as video:
            for index in rng.integers(0, num_frames, 8).tolist():
                np.testing.assert_array_equal(video.read([index])[0], reference[index])


def test_video_reader_turns_rotated_videos_upright_like_opencv(tmp_path: Path) -> None:
    for rotation in (90, 180, -90):
        path = write_h264_index_video(tmp_path / f"rotated{rotation}.mp4", 40, rotation=rotation)
        reference = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in sequential_decode(path)])
        with VideoFileFrames(path) as video:
            assert (video.height, video.width) == reference.shape[1:3]
            indices = [39, 3, 17, 17, 0]
            np.testing.assert_array_equal(video.read(indices), reference[indices])


def _cut_video(tmp_path: Path) -> tuple[Path, int]:
    """``videos/cut.mp4``: a 200-frame video cut to two thirds of its bytes, and how many frames decode from it."""
    whole = write_h264_index_video(tmp_path / "whole.mp4", 200, faststart=True)
    cut = tmp_path / "videos" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    decodable = len(sequential_decode(cut))
    assert 50 < decodable < 200
    return cut, decodable


def test_a_truncated_video_is_read_up_to_its_break(tmp_path: Path) -> None:
    cut, decodable = _cut_video(tmp_path)
    with VideoFileFrames(cut) as video:
        assert decode_index(video.read([decodable - 1])[0]) == decodable - 1
        with pytest.raises(VeraError, match=rf"video cut: cannot decode frame {video.num_frames - 1}: "
                                            rf"the stream ends at frame {decodable} \("):
            video.read([10, video.num_frames - 1])
        assert decode_index(video.read([20])[0]) == 20  # the reader recovers after the error


def test_a_video_that_decodes_short_fails_unless_allowed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cut, decodable = _cut_video(tmp_path)
    report = extract_videos([cut], tmp_path / "frames", progress=False)
    assert report.of("failed")[0].message == (
        f"video cut: decoded {decodable} of the 200 frames {cut} declares (cut short or corrupt?); "
        "--allow-short keeps the frames that decode")
    assert read_manifest(tmp_path / "frames") == {}
    assert sorted(os.listdir(tmp_path / "frames")) == [LOCK_FILE, MANIFEST_NAME, "run.json"]

    main = load_script("extract_frames").main
    from vera.errors import run_cli
    argv = ["--videos", str(cut.parent), "--frames", str(tmp_path / "frames"), "--workers", "1", "--no-progress"]
    assert run_cli(main, argv) == 2
    printed = capsys.readouterr()
    assert printed.out.strip().splitlines()[-1] == (
        "frames: 0 videos written (0 frames), 0 skipped as already complete, 1 failed")
    assert printed.err == f"error: 1 of 1 videos failed ({report.of('failed')[0].message}); fix them and rerun " \
                          "to resume\n"
    assert main([*argv, "--allow-short"]) == 0
    entry = read_manifest(tmp_path / "frames")["cut"]
    assert (entry.frames, entry.declared_frames) == (decodable, 200)  # the manifest says it is short
    assert f"decoded {decodable} of the 200 frames the file declares (--allow-short)" in capsys.readouterr().out
    assert_folder_matches_video(tmp_path / "frames" / "cut", cut)


@pytest.mark.parametrize("name", ["vfr.mkv", "h264.ts", "mjpeg.avi"])
def test_whole_videos_are_not_taken_for_short(tmp_path: Path, name: str) -> None:
    """Containers without a frame count: OpenCV's duration × fps says 299 for this 200-frame VFR video."""
    path = tmp_path / name
    if name == "mjpeg.avi":
        write_index_video(path, 120)
    else:
        write_h264_index_video(path, 200, variable_rate=name == "vfr.mkv")
    report = extract_videos([path], tmp_path / "frames", progress=False)
    assert [o.status for o in report.outcomes] == ["written"] and report.outcomes[0].message == ""
    entry = read_manifest(tmp_path / "frames")[path.stem]
    assert entry.frames == entry.declared_frames == (120 if name == "mjpeg.avi" else 200)


def test_frame_access_errors_name_the_video_and_frame(tmp_path: Path) -> None:
    video = write_index_video(tmp_path / "videos" / "Abuse" / "clip.avi", 20)
    with open_frames("clip", videos_dir=tmp_path / "videos") as frames:
        with pytest.raises(VeraError, match=r"video clip: frame 20 is out of range \(the video has 20 frames"):
            frames.read([3, 20])
        with pytest.raises(VeraError, match="frame -1 is out of range"):
            frames.read([-1])
    with pytest.raises(VeraError, match="video nope: no video file"):
        open_frames("nope", videos_dir=tmp_path / "videos")
    with pytest.raises(VeraError, match="exactly one"):
        open_frames("clip")
    with pytest.raises(VeraError, match="frame folder not found"):
        open_frames("clip", frames_dir=tmp_path / "frames")
    assert find_video(tmp_path / "videos", "clip") == video
    twice = tmp_path / "twice"
    shutil.copytree(tmp_path / "videos", twice)
    shutil.copy(video, twice / "clip.mp4")
    with pytest.raises(VeraError, match="video clip: several files match"):
        find_video(twice, "clip")
    with pytest.raises(VeraError, match="share the key 'clip'"):
        extract_videos(list_videos(twice), tmp_path / "out", progress=False)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(VeraError, match="video broken: cannot open"):
        VideoFileFrames(tmp_path / "broken.mp4")

    folder = tmp_path / "frames" / "gappy"
    folder.mkdir(parents=True)
    for index in (0, 1, 3):
        cv2.imwrite(str(folder / frame_name(index)), index_frame(index))
    with pytest.raises(VeraError, match="without gaps"):
        JpegFolderFrames(folder)
    (folder / frame_name(3)).rename(folder / frame_name(2))
    (folder / frame_name(1)).write_bytes(b"not a jpeg")
    with JpegFolderFrames(folder) as frames:
        assert decode_index(frames.read([2])[0]) == 3
        with pytest.raises(VeraError, match=r"video gappy: cannot read frame 1 \("):
            frames.read([0, 1])


# --- strict decoding --------------------------------------------------------------------------


def _damaged_jpegs(good: bytes) -> dict[str, bytes]:
    """Three ways a JPEG breaks; libjpeg only warns about each and OpenCV returns an image anyway."""
    middle = len(good) // 2
    return {
        "truncated": good[:middle],
        "junk before the end marker": good[:-2] + b"\x13\x37" * 20 + good[-2:],
        "marker inside the scan": good[:middle] + b"\xff\xd0\x00\x11" + good[middle:],
    }


def test_a_damaged_jpeg_is_an_error_naming_the_video_and_frame(tmp_path: Path) -> None:
    folder = tmp_path / "frames" / "clip"
    folder.mkdir(parents=True)
    for index in range(4):
        cv2.imwrite(str(folder / frame_name(index)), cv2.GaussianBlur(index_frame(index + 5), (9, 9), 3))
    good = (folder / frame_name(0)).read_bytes()
    for index, (kind, data) in enumerate(_damaged_jpegs(good).items(), start=1):
        (folder / frame_name(index)).write_bytes(data)
        assert cv2.imread(str(folder / frame_name(index))) is not None, kind  # what the old reader accepted
    with open_frames("clip", frames_dir=tmp_path / "frames") as frames:
        expected = cv2.cvtColor(cv2.imread(str(folder / frame_name(0))), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(frames.read([0])[0], expected)
        messages = {}
        for index in (1, 2, 3):
            with pytest.raises(VeraError) as caught:
                frames.read([0, index])
            messages[index] = str(caught.value)
    for index, message in messages.items():
        assert message.startswith(f"video clip: cannot read frame {index} ({folder / frame_name(index)}: ")
        assert "\n" not in message
    assert "Premature end of JPEG file" in messages[1]
    assert "Corrupt JPEG data" in messages[2] and "Corrupt JPEG data" in messages[3]


def test_strict_jpeg_decoding_gives_opencvs_pixels(tmp_path: Path) -> None:
    """Colour, grey and every EXIF orientation: the pixels ``cv2.imread`` gave before."""
    from PIL import Image

    rng = np.random.default_rng(3)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (7, 7), 2)
    cases = {"colour.jpg": bgr, "grey.jpg": cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)}
    for name, image in cases.items():
        cv2.imwrite(str(tmp_path / name), image)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(bgr[:, :, ::-1]).save(tmp_path / f"exif{orientation}.jpg", exif=exif, quality=90)
    for path in sorted(tmp_path.glob("*.jpg")):
        reference = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(decode_jpeg(path), reference, err_msg=path.name)
    assert decode_jpeg(tmp_path / "exif6.jpg").shape == (64, 48, 3)


def test_a_damaged_video_frame_is_an_error_not_a_concealed_frame(tmp_path: Path) -> None:
    path = write_index_video(tmp_path / "videos" / "idx.avi", 60)
    with av.open(str(path)) as container:
        packets = [(packet.pos, packet.size) for packet in container.demux(container.streams.video[0]) if packet.size]
    position, size = packets[30]
    data = bytearray(path.read_bytes())
    data[position + size - 24] ^= 0x10  # one bit inside frame 30's compressed data
    path.write_bytes(bytes(data))
    with av.open(str(path)) as container:  # FFmpeg's default: the damage is concealed, no error
        assert sum(1 for _ in container.decode(video=0)) == 60
    with VideoFileFrames(path) as video:
        assert [decode_index(frame) for frame in video.read([29, 31, 5])] == [29, 31, 5]
        with pytest.raises(VeraError, match=rf"^video idx: cannot decode frame 30: decoding fails at frame 30 "
                                            rf"\({path}: "):
            video.read([28, 30])
        assert decode_index(video.read([40])[0]) == 40


def test_a_name_with_dots_has_one_key_in_annotations_extraction_and_lookup(tmp_path: Path) -> None:
    """The released readers cut UCF names at the first dot and extraction did not: 'frame folder not found'."""
    from vera.data.annotations import load_test_annotations

    video = write_index_video(tmp_path / "videos" / "Abuse" / "Abuse.Night.2_x264.avi", 20)
    annotations = tmp_path / "test.json"
    annotations.write_text(json.dumps([{"video": "frames/Abuse/Abuse.Night.2_x264.mp4",
                                        "temporal_label": [3, 9, -1, -1], "length": 20}]))
    [annotated] = load_test_annotations(annotations, "ucf")
    assert annotated.key == "Abuse.Night.2_x264"
    assert extract_videos([video], tmp_path / "frames", progress=False).of("written")
    assert find_video(tmp_path / "videos", annotated.key) == video
    with open_frames(annotated.key, frames_dir=tmp_path / "frames") as jpegs, \
            open_frames(annotated.key, videos_dir=tmp_path / "videos") as decoded:
        for frames in (jpegs, decoded):
            assert [decode_index(frame) for frame in frames.read([4, 19])] == [4, 19]
