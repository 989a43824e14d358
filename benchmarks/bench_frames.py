"""Frame extraction throughput and video-reader speed on the real clips; prints a markdown report.

    python benchmarks/bench_frames.py [--clips ../shared/data/clips] [--repeats 1]

Extraction: the four clips, three times over, with 1 and 2 workers (frames
written per second, worker start-up included, best of --repeats). Reading: a
25-second 640×360 H.264 video re-encoded from a real clip (libx264 defaults:
keyframe every 250 frames, B-frames), read in the patterns the pipeline uses,
against OpenCV's own seeking (``CAP_PROP_POS_FRAMES``, then BGR→RGB); and seek
accuracy on index videos where OpenCV's frame seeking goes wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # test fixtures (video writer), not the package

from fixtures.videos import decode_index, write_h264_index_video  # noqa: E402

from vera.data.frame_extraction import extract_videos  # noqa: E402
from vera.data.frames import DEFAULT_CACHE_BYTES, JpegFolderFrames, VideoFileFrames  # noqa: E402
from vera.data.segments import segment_centres, segment_window, window_frame_indices  # noqa: E402


def best_time(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_extraction(clips: list[Path], work: Path, repeats: int, copies: int = 3) -> list[str]:
    """Extraction of ``copies`` links to each clip (distinct keys), so that worker start-up is amortised."""
    videos = []
    for copy in range(copies):
        for clip in clips:
            link = work / "videos" / f"{copy}_{clip.name}"
            link.parent.mkdir(exist_ok=True)
            link.symlink_to(clip.resolve())
            videos.append(link)
    total = copies * sum(int(cv2.VideoCapture(str(c)).get(cv2.CAP_PROP_FRAME_COUNT)) for c in clips)
    rows = []
    for workers in (1, 2):
        def run() -> None:
            out = Path(tempfile.mkdtemp(dir=work))
            report = extract_videos(videos, out, workers=workers, progress=False)
            assert len(report.of("written")) == len(videos)
        seconds = best_time(run, repeats)
        rows.append(f"| {len(videos)} videos (the clips {copies}×, {total} frames), {workers} worker(s) "
                    f"| {seconds:.2f} s "
                    f"| {total / seconds:.0f} frames/s |")
    return rows


def long_video(clip: Path, work: Path, loops: int = 2) -> Path:
    """A longer H.264 video with real content: the clip's frames ``loops`` times over, x264 defaults."""
    path = work / "long.mp4"
    capture = cv2.VideoCapture(str(clip))
    frames = []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames * loops:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))
    return path


def opencv_reads(path: Path, patterns: list[list[int]]) -> None:
    """OpenCV baseline: seek with CAP_PROP_POS_FRAMES for every frame not next in line."""
    capture = cv2.VideoCapture(str(path))
    position = 0
    for indices in patterns:
        for index in sorted(set(indices)):
            if index != position:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)
            position = index + 1


def bench_reader(video: Path, repeats: int) -> list[str]:
    num_frames = VideoFileFrames(video).num_frames
    rng = np.random.default_rng(0)
    step1 = [window_frame_indices(*segment_window(int(c), num_frames)).tolist() for c in segment_centres(num_frames)]
    windows = [segment_window(int(c), num_frames) for c in segment_centres(num_frames)]
    features = [(start + np.linspace(0, end - start - 1, 10, dtype=int)).tolist() for start, end in windows]
    patterns = {
        "every frame in order, one read each": ([[i] for i in range(num_frames)], num_frames, "frames"),
        "Step 1 windows (8 frames, centres every 16)": (step1, len(step1), "windows"),
        "feature windows (10 frames, centres every 16)": (features, len(features), "windows"),
        "random single frames": ([[int(i)] for i in rng.integers(0, num_frames, 100)], 100, "frames"),
    }
    rows = []
    for name, (reads, count, unit) in patterns.items():
        cells = []
        for cache_bytes in (DEFAULT_CACHE_BYTES, 0):
            def run() -> None:
                with VideoFileFrames(video, cache_bytes=cache_bytes) as frames:
                    for indices in reads:
                        frames.read(indices)
            cells.append(f"{count / best_time(run, repeats):.0f}")
        opencv = count / best_time(lambda: opencv_reads(video, reads), repeats)
        rows.append(f"| {name} | {cells[0]} | {cells[1]} | {opencv:.0f} | {unit}/s |")
    return rows


def bench_jpeg_folder(frames_dir: Path, repeats: int) -> str:
    key = sorted(p for p in frames_dir.iterdir() if p.is_dir())[0].name
    folder = JpegFolderFrames(frames_dir / key)
    seconds = best_time(lambda: folder.read(range(folder.num_frames)), repeats)
    return f"| JPEG folder, every frame of {key} ({folder.num_frames}) | {folder.num_frames / seconds:.0f} frames/s |"


def seek_accuracy(work: Path) -> list[str]:
    """Wrong frames out of 200 random reads: this reader vs OpenCV's CAP_PROP_POS_FRAMES."""
    rows = []
    for name, variable in (("h264_cfr.mp4", False), ("h264_vfr.mp4", True), ("h264.ts", False)):
        path = write_h264_index_video(work / name, 300, variable_rate=variable)
        indices = np.random.default_rng(1).integers(0, 300, 200).tolist()
        with VideoFileFrames(path, cache_bytes=0) as frames:
            ours = sum(decode_index(frames.read([i])[0]) != i for i in indices)
        capture = cv2.VideoCapture(str(path))
        wrong = 0
        for index in indices:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            wrong += not ok or decode_index(frame) != index
        rows.append(f"| {name} | {ours} | {wrong} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "data" / "clips")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    clips = sorted(args.clips.glob("*.mp4"))
    if not clips:
        sys.exit(f"no clips in {args.clips}")
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("| extraction | time | throughput |\n|---|---|---|")
        print("\n".join(bench_extraction(clips, work, args.repeats)))
        frames_dir = work / "frames"
        extract_videos(clips, frames_dir, workers=2, progress=False)
        print("\n| reading | speed |\n|---|---|")
        print(bench_jpeg_folder(frames_dir, args.repeats))
        video = long_video(max(clips, key=lambda c: c.stat().st_size), work)
        with VideoFileFrames(video) as frames:
            described = f"{frames.num_frames} frames {frames.width}×{frames.height}"
        print(f"\n| video reader on {described} H.264 | cached | no cache | OpenCV seeking | unit |")
        print("|---|---|---|---|---|")
        print("\n".join(bench_reader(video, args.repeats)))
        print("\n| seek accuracy: wrong frames of 200 random reads | this reader | OpenCV CAP_PROP_POS_FRAMES |")
        print("|---|---|---|")
        print("\n".join(seek_accuracy(work)))


if __name__ == "__main__":
    main()
