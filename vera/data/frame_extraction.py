"""Extract every frame of every video to ``<frames>/<key>/%06d.jpg``, in parallel and resumably.

Frames are decoded and written with OpenCV exactly as the released
``Preprocessing/extract_frames.py`` does (``cv2.VideoCapture.read`` then
``cv2.imwrite`` at OpenCV's default JPEG quality, 95), so with the same OpenCV
build the JPEGs match theirs byte for byte. The frames folder is a
``vera.runs.RunFolder`` (``run.json`` names the decoder and JPEG quality). Each
video is written to ``.partial/<key>/`` and renamed to ``<key>`` only when
complete, so a folder named after a key always holds a whole video; a manifest
(``manifest.json``) records each finished video.

A video that decodes fewer frames than its file declares (cut short, or the
decoder gives up on corrupt data) fails unless ``allow_short``; the manifest
records the declared count beside the frames written.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

import av
import cv2

from vera.data.annotations import Dataset, infer_dataset, load_test_annotations, load_train_annotations, video_key
from vera.errors import VeraError
from vera.data.frames import JpegFolderFrames, decode_jpeg, frame_name
from vera.io import read_json, write_json_atomic
from vera.progress import progress as progress_display
from vera.runs import PARTIAL_DIR, RunFolder

MANIFEST_NAME = "manifest.json"
MANIFEST_SAVE_SECONDS = 5.0  # a kill loses at most this much of the manifest; see _adopt for the rest
JPEG_QUALITY = 95  # OpenCV's default, which the released script used
# What decides the pixels of a frames folder besides the videos themselves.
IDENTITY = {"decoder": "OpenCV VideoCapture (FFmpeg backend), every frame in decode order",
            "image_format": "jpg", "jpeg_quality": JPEG_QUALITY}
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]


@dataclass(frozen=True)
class ExtractedVideo:
    """One complete frame folder, as recorded in the manifest."""

    key: str
    frames: int
    fps: float | None
    width: int
    height: int
    video: str = ""  # the source file, as given
    declared_frames: int | None = None  # what the file declares; more than ``frames`` only with --allow-short


@dataclass(frozen=True)
class Outcome:
    """What happened to one video."""

    video: Path
    status: Literal["written", "skipped", "failed"]
    entry: ExtractedVideo | None = None
    message: str = ""  # why it failed, or a warning for a finished video


@dataclass
class ExtractionReport:
    """All outcomes of one run."""

    outcomes: list[Outcome] = field(default_factory=list)

    def of(self, status: str) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == status]

    @property
    def summary(self) -> str:
        written = self.of("written")
        frames = sum(outcome.entry.frames for outcome in written if outcome.entry)
        return (f"frames: {len(written)} videos written ({frames} frames), "
                f"{len(self.of('skipped'))} skipped as already complete, {len(self.of('failed'))} failed")


def read_manifest(frames_dir: Path) -> dict[str, ExtractedVideo]:
    """The manifest of a frames folder (empty if there is none yet)."""
    path = Path(frames_dir) / MANIFEST_NAME
    if not path.exists():
        return {}
    content = read_json(path, "frames manifest")
    try:
        return {key: ExtractedVideo(key=key, **fields) for key, fields in content.items()}
    except (AttributeError, TypeError) as error:
        raise VeraError(f"frames manifest {path} is malformed ({error}); delete it to rebuild it") from None


def write_manifest(frames_dir: Path, entries: dict[str, ExtractedVideo]) -> None:
    content = {key: {k: v for k, v in asdict(entries[key]).items() if k != "key"} for key in sorted(entries)}
    write_json_atomic(Path(frames_dir) / MANIFEST_NAME, content)


def count_frames(folder: Path) -> int:
    """Number of frames in a complete folder, or -1 if the folder is missing, empty or numbered with gaps."""
    try:
        return JpegFolderFrames(folder).num_frames
    except VeraError:
        return -1


def is_complete(frames_dir: Path, entry: ExtractedVideo) -> bool:
    """Whether ``<frames_dir>/<key>`` holds exactly the manifest's frames (two file checks, no listing)."""
    folder = Path(frames_dir) / entry.key
    return (folder / frame_name(entry.frames - 1)).is_file() and not (folder / frame_name(entry.frames)).exists()


def _open_capture(video: Path) -> cv2.VideoCapture:
    # One decoding thread: the parallelism comes from one video per worker.
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not capture.isOpened():
        raise VeraError(f"video {video_key(video)}: cannot open {video} (corrupt or unsupported format?)")
    return capture


def _fps(capture: cv2.VideoCapture) -> float | None:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps > 0 else None


def declared_frames(video: Path, decoded: int | None = None) -> int | None:
    """The frames ``video`` declares, or ``None`` where FFmpeg cannot open it.

    MP4, MOV and AVI store a frame count; frames that an edit list cuts are
    shown by no decoder, so they are subtracted, counted (one pass over the
    packets, no decoding) only when ``decoded`` falls short of the count. MKV,
    WebM and MPEG-TS store no count: there it is the packets the file holds, so
    a decoder that stops early is caught, but not a file cut short. OpenCV's
    own figure for those containers, duration × frame rate, is no count at all
    for a variable frame rate (299 "frames" for a 200-frame test video).
    """
    try:
        container = av.open(str(video))
    except (av.FFmpegError, OSError):
        return None
    with container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        stored = stream.frames
        if stored > 0 and (decoded is None or decoded >= stored):
            return stored
        kept = discarded = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # flush packets
                    continue
                discarded += packet.is_discard
                kept += not packet.is_discard
        except av.FFmpegError:
            pass  # a damaged file declares what its header says, or the packets before the damage
        return stored - discarded if stored > 0 else kept


def _adopt(video: Path, folder: Path) -> ExtractedVideo | None:
    """An existing folder the manifest does not know: keep it if it holds as many frames as the video declares.

    This covers a run killed between renaming a folder and saving the manifest,
    and folders written by the released script.
    """
    frames = count_frames(folder)
    capture = _open_capture(video)
    try:
        fps = _fps(capture)
    finally:
        capture.release()
    if frames <= 0 or declared_frames(video, frames) != frames:
        return None
    try:
        height, width = decode_jpeg(folder / frame_name(0)).shape[:2]
    except (ValueError, OSError):
        return None
    return ExtractedVideo(video_key(video), frames, fps, width, height, str(video), frames)


def extract_video(video: Path, frames_dir: Path, known: bool = False, allow_short: bool = False) -> Outcome:
    """Write every frame of ``video`` to ``<frames_dir>/<key>/``, or adopt a whole folder the manifest lacks.

    Never raises for a bad video: the outcome says ``failed`` and why. A video
    that decodes fewer frames than it declares fails unless ``allow_short``.
    """
    video, frames_dir = Path(video), Path(frames_dir)
    key = video_key(video)
    final = frames_dir / key
    partial = frames_dir / PARTIAL_DIR / key
    try:
        if final.exists() and not known:
            entry = _adopt(video, final)
            if entry is not None:
                return Outcome(video, "skipped", entry, "existing folder adopted into the manifest")
        shutil.rmtree(partial, ignore_errors=True)  # left by a killed run
        partial.mkdir(parents=True)
        capture = _open_capture(video)
        try:
            fps = _fps(capture)
            count, shape = 0, None
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if not cv2.imwrite(str(partial / frame_name(count)), frame, _JPEG_PARAMS):
                    raise VeraError(f"video {key}: cannot write frame {count} to {partial}")
                shape = frame.shape
                count += 1
        finally:
            capture.release()
        if count == 0:
            raise VeraError(f"video {key}: no frame could be decoded from {video}")
        declared = declared_frames(video, count)
        short = declared is not None and count < declared
        if short and not allow_short:
            raise VeraError(f"video {key}: decoded {count} of the {declared} frames {video} declares (cut short or "
                            "corrupt?); --allow-short keeps the frames that decode")
        _replace_folder(partial, final)
    except (VeraError, OSError, cv2.error) as error:
        shutil.rmtree(partial, ignore_errors=True)
        return Outcome(video, "failed", message=str(error))
    warning = "" if declared is None or declared == count else (
        f"decoded {count} of the {declared} frames the file declares" + (" (--allow-short)" if short else ""))
    entry = ExtractedVideo(key, count, fps, shape[1], shape[0], str(video), declared)
    return Outcome(video, "written", entry, warning)


def _replace_folder(partial: Path, final: Path) -> None:
    """Rename the finished temporary folder into place, replacing an incomplete one."""
    if final.exists():
        stale = partial.with_name(f"{final.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        partial.rename(final)
        shutil.rmtree(stale)
    else:
        partial.rename(final)


def _quiet_worker() -> None:
    """Silence OpenCV's and FFmpeg's console messages in a worker: failures are reported per video instead."""
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET; read when the first capture opens
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _run_pool(tasks: Sequence[tuple[Path, bool]], frames_dir: Path, workers: int,
              on_outcome: Callable[[Outcome], None],
              task: Callable[[Path, Path, bool], Outcome] = extract_video) -> list[tuple[Path, bool]]:
    """Run ``task`` over ``tasks`` in ``workers`` processes; return the tasks lost to a crashed worker."""
    crashed = []
    # "spawn" so that workers start clean whatever the parent imported (threads, CUDA).
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_quiet_worker) as pool:
        futures = {pool.submit(task, video, frames_dir, known): (video, known) for video, known in tasks}
        try:
            for future in as_completed(futures):
                video, known = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    crashed.append((video, known))
                    continue
                except Exception as error:  # unexpected, but one video must not stop the others
                    outcome = Outcome(video, "failed", message=f"video {video_key(video)}: {error!r}")
                on_outcome(outcome)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return crashed


def frames_folder(frames_dir: Path, overwrite: bool = False) -> RunFolder:
    """The frames folder as a run folder: frame folders and the manifest are its outputs.

    Frame folders without ``run.json`` (the released script's, or this
    project's before it kept one) are the same JPEGs, so they are adopted
    rather than refused.
    """
    def outputs(folder: Path) -> list[Path]:
        return [path for path in folder.iterdir() if not path.name.startswith(".")
                and (path.is_dir() or path.name == MANIFEST_NAME)]

    return RunFolder(frames_dir, "frames", IDENTITY, overwrite=overwrite, outputs=outputs,
                     record={"opencv": cv2.__version__}, adopt_unrecorded=True)


def extract_videos(videos: Sequence[Path], frames_dir: Path, *, workers: int = 1, progress: bool = True,
                   task: Callable[..., Outcome] = extract_video, overwrite: bool = False,
                   allow_short: bool = False) -> ExtractionReport:
    """Extract the frames of ``videos`` (one per worker process), skipping those already complete.

    The manifest is merged and saved every few seconds and at the end, also when
    interrupted. A video whose worker crashes is retried once on its own, then
    reported as failed. ``allow_short`` keeps videos that decode fewer frames
    than they declare. ``task`` replaces the per-video work (tests use it).
    """
    folder = frames_folder(frames_dir, overwrite).open()
    frames_dir = folder.path
    task = partial(task, allow_short=allow_short)
    by_key: dict[str, Path] = {}
    for video in videos:
        other = by_key.setdefault(video_key(video), Path(video))
        if other != Path(video):
            raise VeraError(f"two videos share the key {video_key(video)!r}: {other} and {video}")
    manifest = read_manifest(frames_dir)
    report = ExtractionReport()
    tasks = []
    for key, video in by_key.items():
        if key in manifest and is_complete(frames_dir, manifest[key]):
            report.outcomes.append(Outcome(video, "skipped", manifest[key]))
        else:
            tasks.append((video, key in manifest))
    bar = progress_display(total=len(by_key), initial=len(report.outcomes), unit="video", desc="extracting frames",
                           enabled=progress)
    last_save = time.monotonic()

    def on_outcome(outcome: Outcome) -> None:
        nonlocal last_save
        report.outcomes.append(outcome)
        if outcome.entry is not None:
            manifest[outcome.entry.key] = outcome.entry
        if outcome.status == "failed":
            bar.write(f"FAILED: {outcome.message}", file=sys.stdout)
        elif outcome.message:
            bar.write(f"{outcome.video}: {outcome.message}", file=sys.stdout)
        bar.update(1)
        if time.monotonic() - last_save > MANIFEST_SAVE_SECONDS:
            write_manifest(frames_dir, manifest)
            last_save = time.monotonic()

    try:
        crashed = _run_pool(tasks, frames_dir, max(1, workers), on_outcome, task) if tasks else []
        for video, known in crashed:  # alone this time, so a second crash names the culprit
            if _run_pool([(video, known)], frames_dir, 1, on_outcome, task):
                message = f"video {video_key(video)}: the worker crashed twice decoding {video}"
                on_outcome(Outcome(video, "failed", message=message))
    finally:
        bar.close()
        write_manifest(frames_dir, manifest)
    for key in by_key.keys() & manifest.keys():  # temporary folders a killed run left for videos now complete
        shutil.rmtree(folder.partial_path(key), ignore_errors=True)
    folder.tidy()
    return report


def annotated_lengths(path: Path, dataset: Dataset | None = None) -> dict[str, int]:
    """Key → annotated length in frames from a VERA annotation file (test or training list).

    ``dataset`` is inferred from the file when not given.
    """
    path = Path(path)
    if path.suffix == ".txt":
        raise VeraError(f"annotation file {path} gives no video lengths; use a VERA JSON annotation file")
    dataset = dataset or infer_dataset(path)
    entries = read_json(path, "annotation file")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict) and "temporal_label" in entries[0]:
        videos = load_test_annotations(path, dataset)
        return {video.key: video.length for video in videos if video.length is not None}
    return {video.key: video.length for video in load_train_annotations(path, dataset)}


def length_mismatches(manifest: dict[str, ExtractedVideo], lengths: dict[str, int]) -> list[tuple[str, int, int]]:
    """``(key, annotated, extracted)`` for every annotated video whose frame count differs."""
    return [(key, length, manifest[key].frames) for key, length in lengths.items()
            if key in manifest and manifest[key].frames != length]
