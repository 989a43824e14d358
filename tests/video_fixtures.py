"""Synthetic test videos whose frames carry their own index.

Each frame is a grid of big black/white cells, one bit of the frame index per
cell, so the index survives lossy compression: ``decode_index`` recovers it
from any decoded frame (RGB or BGR) and refuses a frame it cannot read clearly,
such as a blend of two frames.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

GRID_ROWS, GRID_COLS = 4, 5  # 20 bits: indices up to 1,048,575
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


def index_frame(index: int, size: tuple[int, int] = (160, 128)) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 frame whose cells spell ``index`` in binary (cell 0 = lowest bit)."""
    width, height = size
    if not 0 <= index < 2 ** (GRID_ROWS * GRID_COLS):
        raise ValueError(f"index {index} does not fit in {GRID_ROWS * GRID_COLS} bits")
    bits = (index >> np.arange(GRID_ROWS * GRID_COLS)) & 1
    cells = (bits.reshape(GRID_ROWS, GRID_COLS) * 255).astype(np.uint8)
    plane = cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.repeat(plane[:, :, None], 3, axis=2)


def decode_index(frame: np.ndarray) -> int:
    """The index spelled by a frame of ``write_index_video`` (raises ValueError if unclear)."""
    height, width = frame.shape[:2]
    gray = frame.mean(axis=2)
    rows = (np.arange(GRID_ROWS) + 0.5) * height / GRID_ROWS
    cols = (np.arange(GRID_COLS) + 0.5) * width / GRID_COLS
    half_h, half_w = height / GRID_ROWS / 4, width / GRID_COLS / 4  # sample the middle half of each cell
    means = np.array([
        gray[int(r - half_h):int(r + half_h), int(c - half_w):int(c + half_w)].mean() for r in rows for c in cols
    ])
    if np.any((means > 64) & (means < 192)):
        raise ValueError(f"frame does not carry a clear index (cell means {np.round(means).astype(int).tolist()})")
    bits = (means >= 128).astype(np.int64)
    return int((bits << np.arange(bits.size)).sum())


def write_index_video(path: Path, num_frames: int, size: tuple[int, int] = (160, 128), fps: float = 30.0,
                      fourcc: str | None = None) -> Path:
    """Write a video whose frame ``i`` spells ``i`` (MPEG-4 Part 2 in .mp4/.mkv, MJPEG in .avi)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    code = fourcc or FOURCC_BY_SUFFIX.get(path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {code} video {path}")
    try:
        for index in range(num_frames):
            writer.write(index_frame(index, size))
    finally:
        writer.release()
    return path


def write_h264_index_video(path: Path, num_frames: int, size: tuple[int, int] = (160, 128), fps: int = 30,
                           keyframe_interval: int = 30, bframes: int = 3, variable_rate: bool = False,
                           open_gop: bool = False, rotation: int = 0, faststart: bool = False) -> Path:
    """An H.264 index video through PyAV's libx264 (B-frames, any container FFmpeg writes: .mp4, .mkv, .ts).

    ``variable_rate`` alternates stretches of 1/fps and 2/fps frame durations,
    the case where frame numbers cannot be derived from timestamps and fps;
    ``rotation`` (degrees) is stored as display rotation, as phones do;
    ``faststart`` puts an MP4's index first, so a truncated copy still opens.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = Fraction(1, 90000)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else None) as container:
        options = {"g": str(keyframe_interval), "bf": str(bframes)}
        if open_gop:  # B-frames before a keyframe may reference the GOP before it
            options["x264-params"] = "open-gop=1"
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        stamp = 0
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(index, size), format="rgb24")
            frame.pts, frame.time_base = stamp, time_base
            stamp += 90000 // fps * (2 if variable_rate and (index // 20) % 2 else 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_problem_videos(videos: Path, bad_frame: int) -> None:
    """The failure cases of a run on video files, in ``videos``: ``good.mp4`` (120 frames, 64×48),
    ``damaged.avi`` (200 frames, one bit flipped inside frame ``bad_frame``'s data), ``cut.mp4`` (the first two
    thirds of a 200-frame H.264 file, its index first so that it opens) and ``junk.mp4`` (not a video)."""
    write_index_video(videos / "good.mp4", 120, size=(64, 48))
    damaged = write_index_video(videos / "damaged.avi", 200)
    with av.open(str(damaged)) as container:
        packets = [(packet.pos, packet.size) for packet in container.demux(container.streams.video[0]) if packet.size]
    position, size = packets[bad_frame]
    data = bytearray(damaged.read_bytes())
    data[position + size - 24] ^= 0x10  # one bit inside that frame's data
    damaged.write_bytes(bytes(data))
    whole = write_h264_index_video(videos.parent / "whole.mp4", 200, faststart=True)
    (videos / "cut.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    (videos / "junk.mp4").write_bytes(b"not a video" * 100)


def extract_or_crash(video: Path, frames_dir: Path, known: bool, allow_short: bool = False):
    """A stand-in for ``extract_video`` whose worker dies on videos named ``crash*`` and raises on ``oops*``."""
    from vera.data.frame_extraction import extract_video

    if Path(video).name.startswith("crash"):
        os._exit(3)
    if Path(video).name.startswith("oops"):
        raise RuntimeError("unexpected")
    return extract_video(video, frames_dir, known, allow_short)


def decode_to_jpegs(video: Path, folder: Path) -> int:
    """Decode ``video`` with OpenCV and write every frame as ``folder/%06d.jpg``; returns the count.

    A plain decode-and-write loop, independent of ``vera.data.frame_extraction``,
    for tests and benchmarks that need frame folders of the real clips.
    """
    folder.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(video))
    count = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"{count:06d}.jpg"), frame)
        count += 1
    capture.release()
    return count
