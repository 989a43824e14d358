"""Frame access for every stage: from extracted JPEG folders or straight from video files.

``open_frames(key, frames_dir=…)`` reads ``<frames_dir>/<key>/%06d.jpg`` (0-based,
as ``Preprocessing/extract_frames.py`` writes them); ``open_frames(key,
videos_dir=…)`` decodes ``<videos_dir>/**/<key>.<ext>`` directly. Both return a
``VideoFrames`` whose ``read(indices)`` gives ``(n, H, W, 3)`` uint8 RGB frames,
frame ``i`` being exactly the ``i``-th frame of a full sequential decode.

Video files are decoded with PyAV rather than OpenCV because OpenCV's seeking
(``CAP_PROP_POS_FRAMES``) returned wrong frames without notice on a
variable-frame-rate MP4 and on MPEG-TS in our measurements, while seeking by
presentation timestamp, as here, was exact on every file tested. Both decode
to the same RGB pixels.

Decoding is strict: a truncated or corrupt JPEG, or a video frame the decoder
reports as damaged, is an error naming the video and frame, never a console
warning over grey or smeared pixels that would silently change the results.
"""

from __future__ import annotations

import io
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import simplejpeg
from av.video.reformatter import VideoReformatter
from PIL import Image

from vera.data.annotations import VIDEO_EXTENSIONS, video_key
from vera.errors import VeraError

VLM_IMAGE_SIZE = 448  # InternVL2's tile: one tile per frame, as released

DEFAULT_CACHE_BYTES = 256 * 2**20  # decoded frames kept per video reader: 776 frames at 640×360
FRAME_SUFFIX = ".jpg"
EXIF_ORIENTATION_TAG = 0x0112
# FFmpeg's decoders hide damaged data by default (error concealment); "explode"
# makes them fail on it instead, and a frame they still flag is refused too.
STRICT_DECODER_OPTIONS = {"err_detect": "explode"}


def frame_name(index: int) -> str:
    """File name of frame ``index`` in a frame folder: ``000042.jpg``."""
    return f"{index:06d}{FRAME_SUFFIX}"


def _exif_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG (1 = as stored); Pillow parses it only where an EXIF block exists."""
    if data.find(b"Exif\x00\x00", 0, 65536) < 0:
        return 1
    with Image.open(io.BytesIO(data)) as image:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))


def _upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 2-8 as ``cv2.imread`` does (flips, then quarter turns)."""
    transforms = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(transforms[orientation](rgb)) if orientation in transforms else rgb


def decode_jpeg(path: Path) -> np.ndarray:
    """A JPEG file as ``(H, W, 3)`` uint8 RGB, strictly; ``ValueError``/``OSError`` say what is wrong.

    OpenCV and Pillow decode a truncated or corrupt JPEG with at most a console
    warning and fill the rest grey. libjpeg-turbo through ``simplejpeg`` with
    ``strict=True`` raises on any such warning instead. It decodes with
    ``cv2.imread``'s settings (accurate integer DCT, smooth chroma upsampling),
    so a good file gives the same pixels, EXIF orientation included.
    """
    data = Path(path).read_bytes()
    rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False, strict=True)
    return _upright(rgb, _exif_orientation(data))


class VideoFrames(ABC):
    """Random access to the frames of one video."""

    key: str
    num_frames: int
    fps: float | None
    source: Path

    @abstractmethod
    def _read_sorted(self, unique: list[int]) -> list[np.ndarray]:
        """Read distinct, in-range, increasing indices; return RGB frames in that order."""

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as ``(n, H, W, 3)`` uint8 RGB."""
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            raise VeraError(f"video {self.key}: no frame indices to read")
        bad = wanted[(wanted < 0) | (wanted >= self.num_frames)]
        if bad.size:
            raise VeraError(
                f"video {self.key}: frame {int(bad[0])} is out of range "
                f"(the video has {self.num_frames} frames; {self.source})"
            )
        unique, positions = np.unique(wanted, return_inverse=True)
        frames = self._read_sorted(unique.tolist())
        shapes = {frame.shape for frame in frames}
        if len(shapes) > 1:
            raise VeraError(f"video {self.key}: frames differ in size {sorted(shapes)} ({self.source})")
        # Filled in place: one copy of each frame, which matters for long reads.
        out = np.empty((len(wanted), *frames[0].shape), dtype=np.uint8)
        for row, position in enumerate(positions.tolist()):
            out[row] = frames[position]
        return out

    def close(self) -> None:
        """Release open files and cached frames."""

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.key!r}, num_frames={self.num_frames}, fps={self.fps}, "
                f"source={self.source})")


class JpegFolderFrames(VideoFrames):
    """Frames extracted to ``<folder>/%06d.jpg``; ``fps`` is unknown (``None``)."""

    def __init__(self, folder: Path, key: str | None = None) -> None:
        self.source = Path(folder)
        self.key = key if key is not None else self.source.name
        self.fps = None
        try:
            self.num_frames = sum(1 for entry in os.scandir(self.source) if entry.name.endswith(FRAME_SUFFIX))
        except FileNotFoundError:
            raise VeraError(f"video {self.key}: frame folder not found: {self.source}") from None
        except NotADirectoryError:
            raise VeraError(f"video {self.key}: {self.source} is not a folder of frames") from None
        if self.num_frames == 0:
            raise VeraError(f"video {self.key}: no {FRAME_SUFFIX} frames in {self.source}")
        # Frames are numbered from 000000; a gap would shift every index after it.
        if not (self.source / frame_name(self.num_frames - 1)).is_file():
            raise VeraError(
                f"video {self.key}: {self.source} holds {self.num_frames} frames but no "
                f"{frame_name(self.num_frames - 1)}; frames must be numbered 000000.jpg … without gaps"
            )

    def _read_sorted(self, unique: list[int]) -> list[np.ndarray]:
        frames = []
        for index in unique:
            path = self.source / frame_name(index)
            try:
                frames.append(decode_jpeg(path))
            except (ValueError, OSError) as error:
                raise VeraError(f"video {self.key}: cannot read frame {index} ({path}: {error})") from None
        return frames


class VideoFileFrames(VideoFrames):
    """Frames decoded from a video file with PyAV (FFmpeg), frame-accurately.

    Opening the file scans its packets (no decoding) for every frame's
    presentation timestamp and for the keyframes: frame ``i`` is the frame with
    the ``i``-th smallest timestamp, which is the ``i``-th frame of a full
    sequential decode. A read decodes forward when no keyframe lies between
    the decoder's position and the wanted frame; otherwise it seeks to the last
    keyframe before the wanted frame and decodes forward, checking every
    timestamp. A seek that lands elsewhere retries from an earlier keyframe and
    finally from the start. Files without distinct timestamps are read by
    counting frames from the start.

    Decoded frames are kept, still in YUV, up to ``cache_bytes``, so the
    overlapping windows of Step 1, which step back a few hundred frames between
    calls, decode each frame once. ``threads=0`` lets FFmpeg choose; pass 1
    when running one reader per process on a busy machine.
    """

    SEEK_RETRIES = 3  # earlier keyframes tried before decoding from the start

    def __init__(self, path: Path, key: str | None = None, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 threads: int = 0) -> None:
        self.source = Path(path)
        self.key = key if key is not None else video_key(self.source)
        if not self.source.is_file():
            raise VeraError(f"video {self.key}: file not found: {self.source}")
        self._threads = threads
        self._lock = threading.Lock()
        self._container: av.container.InputContainer | None = None
        self._open()
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.num_frames, self._pts, self._keyframes, self._keyframe_dts = self._scan_packets()
        if self.num_frames == 0:
            raise self._error("the video stream holds no frames")
        self._cache: OrderedDict[int, av.VideoFrame] = OrderedDict()
        self._reformatter = VideoReformatter()
        self._cache_capacity = 0  # until the frame size is known
        self._open()  # rewind after the scan
        first = self._decode_next()
        self._restart_decoding(0)
        self._pending = first
        self.height, self.width = self._to_rgb(first).shape[:2]
        self._cache_capacity = cache_bytes // max(first.width * first.height * 3 // 2, 1)

    def _error(self, what: str, error: BaseException | None = None) -> VeraError:
        detail = f": {error}" if error is not None else ""
        return VeraError(f"video {self.key}: {what} ({self.source}{detail})")

    def _open(self) -> None:
        """(Re)open the file; the decoder then returns frame 0 next."""
        self._close_container()
        try:
            self._container = av.open(str(self.source))
        except (av.FFmpegError, OSError) as error:
            raise self._error("cannot open the video (corrupt or unsupported format?)", error) from None
        if not self._container.streams.video:
            self._close_container()
            raise self._error("the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.codec_context.options = dict(STRICT_DECODER_OPTIONS)
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = self._threads
        self._restart_decoding(0)

    def _restart_decoding(self, next_index: int) -> None:
        self._decoded: Iterator[av.VideoFrame] = self._container.decode(self._stream)
        self._next = next_index  # index of the frame the decoder returns next
        self._pending: av.VideoFrame | None = None  # a frame decoded ahead, returned next

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _scan_packets(self) -> tuple[int, np.ndarray | None, np.ndarray, dict[int, int]]:
        """Frame count, sorted frame timestamps (``None`` unless distinct), keyframe indices and their dts."""
        stamps, keyframe_dts = [], {}
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or packet.is_discard:  # flush packets; frames an edit list cuts
                    continue
                stamps.append(packet.pts)
                if packet.is_keyframe and packet.pts is not None:
                    keyframe_dts[packet.pts] = packet.dts
        except av.FFmpegError as error:
            raise self._error(f"cannot read the packets after {len(stamps)} frames", error) from None
        if None in stamps or len(set(stamps)) != len(stamps):
            return len(stamps), None, np.zeros(0, dtype=np.int64), {}
        pts = np.sort(np.asarray(stamps, dtype=np.int64))
        keyframes = np.searchsorted(pts, np.asarray(sorted(keyframe_dts), dtype=np.int64))
        return len(stamps), pts, keyframes, {int(k): keyframe_dts[int(pts[k])] for k in keyframes}

    def _decode_next(self, wanted: int | None = None) -> av.VideoFrame:
        """The frame at ``self._next`` (on the way to frame ``wanted``), checked against its timestamp."""
        wanted = self._next if wanted is None else wanted
        if self._pending is not None:
            frame, self._pending = self._pending, None
        else:
            try:
                frame = next(self._decoded, None)
            except av.FFmpegError as error:
                what = f"cannot decode frame {wanted}: decoding fails at frame {self._next}"
                raise self._error(what, error) from None
            if frame is None:
                raise self._error(f"cannot decode frame {wanted}: the stream ends at frame {self._next}")
        if frame.is_corrupt:
            raise self._error(f"cannot decode frame {wanted}: frame {self._next} is damaged (corrupt data)")
        if self._pts is not None and frame.pts != self._pts[self._next]:
            # The decoder disagrees with the packet index (dropped or extra
            # frames): fall back to counting frames from the start.
            self._pts, self._keyframes, self._keyframe_dts = None, np.zeros(0, dtype=np.int64), {}
            self._cache.clear()
            position = self._next
            self._open()
            self._skip_to(position, wanted)
            return self._decode_next(wanted)
        index = self._next
        self._next += 1
        self._remember(index, frame)
        return frame

    def _skip_to(self, index: int, wanted: int | None = None) -> None:
        while self._next < index:
            self._decode_next(index if wanted is None else wanted)

    def _remember(self, index: int, frame: av.VideoFrame) -> None:
        if self._cache_capacity <= 0:
            return
        self._cache[index] = frame
        while len(self._cache) > self._cache_capacity:
            self._cache.popitem(last=False)

    def _seek(self, index: int) -> None:
        """Position the decoder at or before ``index`` near it: at the keyframe that precedes it."""
        if self._pts is not None:
            before = self._keyframes[self._keyframes <= index]
            for keyframe in before[::-1][: self.SEEK_RETRIES].tolist():
                if self._seek_to_keyframe(keyframe):
                    return
        self._open()

    def _seek_to_keyframe(self, keyframe: int) -> bool:
        """Seek to the keyframe with index ``keyframe``; ``False`` if the decoder lands elsewhere.

        Some demuxers (MPEG-TS) seek by decoding timestamp and land on the next
        keyframe when given the presentation one, so the keyframe's dts is tried too.
        """
        stamp = int(self._pts[keyframe])
        dts = self._keyframe_dts.get(keyframe)
        targets = [stamp] if dts is None or dts == stamp else [stamp, int(dts)]
        return any(self._seek_landing(keyframe, stamp, target) for target in targets)

    def _seek_landing(self, keyframe: int, stamp: int, target: int) -> bool:
        try:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
            self._restart_decoding(keyframe)
            # Frames shown before the keyframe but decoded after it (open GOPs)
            # may lack their references after a seek: skip them.
            frame = next(self._decoded, None)
            while frame is not None and frame.pts is not None and frame.pts < stamp:
                frame = next(self._decoded, None)
        except av.FFmpegError:
            return False
        if frame is None or frame.pts != stamp:
            return False
        self._pending = frame
        return True

    def _needs_seek(self, index: int) -> bool:
        if index < self._next:
            return True
        if self._pts is None:
            return False
        # Seek only when a keyframe lies past the decoder's position and at or
        # before the target: decoding from it skips the frames in between.
        after = np.searchsorted(self._keyframes, self._next, side="right")
        return after < len(self._keyframes) and self._keyframes[after] <= index

    def _read_sorted(self, unique: list[int]) -> list[np.ndarray]:
        with self._lock:
            if self._container is None:
                raise self._error("the video is closed")
            frames = []
            try:
                for index in unique:
                    frame = self._cache.get(index)
                    if frame is None:
                        if self._needs_seek(index):
                            self._seek(index)
                        self._skip_to(index)
                        frame = self._decode_next(index)
                    frames.append(self._to_rgb(frame))
            except VeraError:
                self._next = self.num_frames + 1  # decoder state unknown: the next read seeks afresh
                raise
            return frames

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        # OpenCV turns frames upright by the stream's display rotation (phone
        # videos); so do we, so that frames match extracted JPEGs.
        turns = (frame.rotation // 90) % 4
        return np.rot90(rgb, turns) if turns else rgb

    def close(self) -> None:
        with self._lock:
            self._close_container()
            self._cache.clear()


_VIDEO_INDEX: dict[Path, dict[str, list[Path]]] = {}
_VIDEO_INDEX_LOCK = threading.Lock()


def list_videos(videos_dir: Path) -> list[Path]:
    """Every video file anywhere below ``videos_dir``, sorted by path (hidden files skipped)."""
    root = Path(videos_dir)
    if not root.is_dir():
        raise VeraError(f"videos folder not found: {videos_dir}")
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        found.extend(
            Path(folder) / name for name in files
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS and not name.startswith(".")
        )
    return sorted(found)


def index_videos(videos_dir: Path, refresh: bool = False) -> dict[str, list[Path]]:
    """Map each key to the video files with that key below ``videos_dir`` (built once per folder)."""
    root = Path(videos_dir).resolve()
    with _VIDEO_INDEX_LOCK:
        if refresh or root not in _VIDEO_INDEX:
            index: dict[str, list[Path]] = {}
            for path in list_videos(root):
                index.setdefault(video_key(path), []).append(path)
            _VIDEO_INDEX[root] = index
        return _VIDEO_INDEX[root]


def find_video(videos_dir: Path, key: str) -> Path:
    """The one video file named ``<key>.<ext>`` in ``videos_dir`` or any folder below it."""
    found = index_videos(videos_dir).get(key, [])
    if not found:  # the folder may have changed since it was indexed
        found = index_videos(videos_dir, refresh=True).get(key, [])
    if not found:
        extensions = "|".join(extension[1:] for extension in VIDEO_EXTENSIONS)
        raise VeraError(f"video {key}: no video file {key}.<{extensions}> in {videos_dir} or below")
    if len(found) > 1:
        raise VeraError(f"video {key}: several files match in {videos_dir}: {', '.join(map(str, found[:3]))}")
    return found[0]


def open_frames(key: str, *, frames_dir: Path | None = None, videos_dir: Path | None = None,
                cache_bytes: int = DEFAULT_CACHE_BYTES) -> VideoFrames:
    """Open the frames of video ``key`` from a frames folder or a videos folder (exactly one).

    ``cache_bytes`` bounds the decoded frames a video reader keeps; Step 1's
    windows decode each frame once when 300 frames fit (YUV 4:2:0: 1.5 bytes a pixel).
    """
    if (frames_dir is None) == (videos_dir is None):
        raise VeraError("give exactly one of a frames folder and a videos folder")
    if frames_dir is not None:
        return JpegFolderFrames(Path(frames_dir) / key, key)
    return VideoFileFrames(find_video(Path(videos_dir), key), key, cache_bytes=cache_bytes)


def resize_frames(frames: Sequence[np.ndarray], size: int = VLM_IMAGE_SIZE) -> list[np.ndarray]:
    """Each ``(H, W, 3)`` frame resized to ``size``×``size`` with PIL bicubic, as the released preprocessing.

    Step 1 and training both show the VLM frames through this, so the questions
    are learned on the same input they are later used with.
    """
    return [np.array(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC)) for frame in frames]


def read_resized(frames: VideoFrames, indices: Sequence[int], size: int = VLM_IMAGE_SIZE) -> list[np.ndarray]:
    """The frames at ``indices``, each resized by ``resize_frames``: what a VLM request shows."""
    return resize_frames(frames.read(indices), size)
