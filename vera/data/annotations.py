"""Dataset annotations: test sets (temporal labels) and training lists (video labels).

Readers for the VERA JSON files (``UCF_Eval.json``, ``xd_test_800.json``,
``xd_annotations.json``, ``UCF_Instruct_*.json``, ``xd_train.json``/``xd_val.json``)
and for the official UCF-Crime ``Temporal_Anomaly_Annotation_for_Testing_Videos.txt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vera.errors import VeraError
from vera.io import read_json, read_text
from vera.constants import DATASETS

Dataset = Literal["ucf", "xd"]
DATASET_NAMES = {"ucf": "UCF-Crime", "xd": "XD-Violence"}
NORMAL_CLASS = "Normal"
UCF_NORMAL_FOLDERS = ("Normal", "Testing_Normal_Videos_Anomaly", "Training_Normal_Videos_Anomaly")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
# The official UCF-Crime test annotations, and so UCF_Eval.json, end five intervals
# 1-2 frames past the video (Arson011, Arson016, Explosion033, Fighting003,
# Shooting015); the released scripts cut them at the last frame, and so do we.
# Further past, an interval belongs to another video or another frame rate.
INTERVAL_END_SLACK = 2


@dataclass(frozen=True)
class TestVideo:
    """One test video: its key, length in frames and anomalous frame intervals."""

    __test__ = False  # not a pytest test class, despite the name

    key: str
    length: int | None  # None where the annotation file gives none (official UCF txt)
    intervals: tuple[tuple[int, int], ...] = ()
    video_class: str = NORMAL_CLASS
    source: str = ""

    @property
    def is_anomalous(self) -> bool:
        return self.video_class != NORMAL_CLASS


@dataclass(frozen=True)
class TrainVideo:
    """One training or validation video with its video-level label (1 anomalous)."""

    key: str
    length: int
    label: int
    path: str = field(default="", compare=False)


def video_key(path: str | Path) -> str:
    """THE key of a video, for both datasets, annotation entries and video files alike.

    The last path component without a trailing video extension (``.mp4``,
    ``.avi``, … in any case); dots inside a name are kept:
    ``frames/Abuse/Abuse028_x264.mp4`` → ``Abuse028_x264``, the XD-Violence
    ``A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A`` stays as it is, and so
    does its file's name without ``.mp4``. Frame folders, score and feature
    files are named by it, and videos are found by it. On the authors'
    annotation files it gives the keys of the released readers
    (``name.split(".")[0]`` for UCF-Crime, the ``video`` field for XD-Violence);
    unlike ``split(".")``, it also agrees with the file name of a video whose
    name holds a dot, so extraction needs no dataset to name a folder.
    """
    name = Path(path).name
    stem, extension = Path(name).stem, Path(name).suffix
    return stem if extension.lower() in VIDEO_EXTENSIONS else name


def ucf_class(video_path: str) -> str:
    """UCF-Crime class from the parent folder; the normal folders map to ``Normal``."""
    parts = Path(video_path).parts
    folder = parts[-2] if len(parts) > 1 else ""
    if folder in UCF_NORMAL_FOLDERS or video_key(video_path).startswith("Normal"):
        return NORMAL_CLASS
    return folder or re.sub(r"\d+_x264$", "", video_key(video_path))


def _xd_label_code(key: str) -> str:
    match = re.search(r"label_([A-Za-z0-9]+)", key)
    return match.group(1) if match else ""


def xd_class(key: str) -> str:
    """XD-Violence class from the key's label code (``…label_B4-0-0`` → ``B4``; ``A`` is normal)."""
    code = _xd_label_code(key)
    return NORMAL_CLASS if code in ("", "A") else code


def _entry_dataset(entry: object) -> Dataset | None:
    """The dataset one annotation entry belongs to, or None where it does not say."""
    if not isinstance(entry, dict):
        return None
    if "video_name" in entry:  # only XD training lists use this key
        return "xd"
    video = entry.get("video")
    if not isinstance(video, str):
        return None
    if "/" in video or re.search(r"_x264(\.\w+)?$", video):  # UCF paths: frames/<Class>/<Name>_x264.mp4
        return "ucf"
    if re.search(r"_label_[A-Za-z0-9]", video):  # XD keys end in their label code
        return "xd"
    return None


def infer_dataset(path: Path) -> Dataset:
    """``"ucf"`` or ``"xd"`` from what a VERA annotation file (test or training list) holds.

    The official UCF-Crime txt is UCF; in the JSON files UCF entries give paths
    (``frames/Abuse/Abuse028_x264.mp4``) and XD entries give keys with a label
    code (``…_label_B4-0-0``) or, in training lists, ``video_name``. Every
    entry must agree.
    """
    path = Path(path)
    if path.suffix == ".txt":
        return "ucf"
    entries = read_json(path, "annotation file")
    if not isinstance(entries, list) or not entries:
        raise VeraError(f"annotation file {path} must hold a non-empty JSON list of videos")
    found = {_entry_dataset(entry) for entry in entries}
    if len(found) != 1 or None in found:
        raise VeraError(f"cannot tell whether {path} annotates UCF-Crime or XD-Violence; pass --dataset ucf or xd")
    return found.pop()


def _check_dataset(entries: list, dataset: str, path: Path) -> None:
    """Refuse a file whose entries all belong to the other dataset: what would follow names the wrong cause."""
    if dataset not in DATASETS:
        raise VeraError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    placed = [(number, found) for number, found in enumerate(map(_entry_dataset, entries)) if found is not None]
    if placed and all(found != dataset for _, found in placed):
        number, found = placed[0]
        name = entries[number].get("video", entries[number].get("video_name"))
        raise VeraError(f"annotation file {path} looks like {DATASET_NAMES[found]} (entry {number}: {name!r}), "
                        f"but --dataset {dataset}")


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _length(value: object, where: str) -> int:
    """A video's length: a positive whole number of frames, the one rule of every reader."""
    if not _whole_number(value) or value < 1:
        raise VeraError(f"{where}: length must be a positive whole number of frames, got {value!r}")
    return value


def _pairs(labels: object, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(labels, list) or len(labels) % 2:
        raise VeraError(f"{where}: temporal_label must list [start, end] pairs, got {labels!r}")
    pairs = []
    for start, end in zip(labels[0::2], labels[1::2]):
        if start == -1 and _whole_number(start):
            continue
        if not (_whole_number(start) and _whole_number(end)) or end < start or start < 0:
            raise VeraError(f"{where}: bad temporal interval [{start}, {end}]")
        pairs.append((start, end))
    return tuple(pairs)


def check_intervals(video: TestVideo, length: int, where: str) -> None:
    """Every anomalous interval must lie in the video's ``length`` frames (ends up to ``INTERVAL_END_SLACK`` past)."""
    for start, end in video.intervals:
        if start >= length or end > length + INTERVAL_END_SLACK:
            raise VeraError(f"{where}: video {video.key}: interval [{start}, {end}] lies past the video's end "
                            f"({length} frames)")


def check_frame_count(key: str, length: int, num_frames: int, source: object,
                      allow_mismatch: bool = False) -> str | None:
    """Every stage's verdict on a video whose frames are not as many as its annotated ``length``.

    The length is the number of frames the evaluation scores, and the segment
    grid and the intervals are laid on it: a video with other frames than
    that (more or fewer) was extracted at another frame rate or is another
    video. Stop, or with ``allow_mismatch`` return the warning to show (None
    where they agree).
    """
    if num_frames == length:
        return None
    message = f"video {key}: the annotation gives {length} frames but {source} has {num_frames}"
    if not allow_mismatch:
        raise VeraError(message + " (wrong frame rate at extraction? --allow-length-mismatch uses the annotation's "
                                  "length where the frames exist)")
    return message + "; using the annotation's length"


def _xd_violent(entry: dict, key: str, intervals: tuple, where: str) -> bool:
    """The video-level label decides normal vs violent (14 violent videos are labelled normal in the released
    file, so the key's code cannot); without a label, the intervals do. A normal video has no intervals."""
    label = entry.get("label")
    if label is None:
        if intervals and _xd_label_code(key) == "A":
            raise VeraError(f"{where}: video {key} is normal by its label code A but has anomalous intervals "
                            f"{list(intervals)}")
        return bool(intervals)
    if isinstance(label, bool) or str(label) not in ("0", "1"):
        raise VeraError(f"{where}: video {key}: label must be \"0\" (normal) or \"1\" (violent), got {label!r}")
    if str(label) == "0" and intervals:
        raise VeraError(f"{where}: video {key} is labelled normal (label \"0\") but has anomalous intervals "
                        f"{list(intervals)}")
    return str(label) == "1"


def _is_xd_duplicate(entry: dict) -> bool:
    """The ``<key>.mp4`` entries of ``xd_annotations.json``: length 0, intervals of the video ``<key>``."""
    return str(entry.get("video", "")).endswith(".mp4") and entry.get("length") == 0


def _parse_json_test_entry(entry: object, dataset: Dataset, where: str) -> TestVideo:
    try:
        video, labels, length = entry["video"], entry["temporal_label"], entry["length"]
    except (KeyError, TypeError):
        raise VeraError(f"{where}: expected keys 'video', 'temporal_label', 'length'") from None
    if not isinstance(video, str) or not video:
        raise VeraError(f"{where}: 'video' must name the video, got {video!r}")
    duplicate = dataset == "xd" and _is_xd_duplicate(entry)
    length = 0 if duplicate else _length(length, where)
    intervals = _pairs(labels, where)
    if dataset == "ucf":
        result = TestVideo(video_key(video), length, intervals, ucf_class(video), video)
        if intervals and not result.is_anomalous:
            raise VeraError(f"{where}: video {result.key} is in the normal class ({video}) but has anomalous "
                            f"intervals {list(intervals)}")
    elif duplicate:  # its intervals are checked against its video's length when merged
        return TestVideo(video, 0, intervals, "violent", video)
    else:
        key = video_key(video)
        violent = _xd_violent(entry, key, intervals, where)
        video_class = (xd_class(key) if xd_class(key) != NORMAL_CLASS else "violent") if violent else NORMAL_CLASS
        result = TestVideo(key, length, intervals, video_class, video)
    check_intervals(result, length, where)
    return result


def _xd_duplicates_merged(videos: list[TestVideo], duplicates: list[TestVideo], path: Path) -> list[TestVideo]:
    """Fold the ``<key>.mp4`` duplicate entries of ``xd_annotations.json`` into their videos."""
    extra = {video_key(dup.key): dup.intervals for dup in duplicates}
    merged = []
    for video in videos:
        if video.key in extra:
            intervals = tuple(sorted(set(video.intervals) | set(extra[video.key])))
            video_class = xd_class(video.key) if xd_class(video.key) != NORMAL_CLASS else "violent"
            video = TestVideo(video.key, video.length, intervals, video_class, video.source)
            check_intervals(video, video.length, f"{path} entry {video.key}.mp4 (merged)")
        merged.append(video)
    return merged


def load_test_annotations(path: Path, dataset: Dataset, merge_xd_duplicates: bool = False) -> list[TestVideo]:
    """Read a test annotation file (VERA JSON list or the official UCF-Crime txt), in file order.

    Each entry is checked: a positive length, intervals inside the video, none on
    a video labelled normal, and a file that looks like the other dataset is refused.
    ``xd_annotations.json`` holds 14 extra entries named ``<key>.mp4`` (length 0)
    with the intervals of 14 violent videos that the main entries list as
    normal. The released scripts skip them (their video file does not exist),
    and so do we unless ``merge_xd_duplicates`` folds them in.
    """
    path = Path(path)
    if path.suffix == ".txt":
        if dataset != "ucf":
            raise VeraError(f"annotation file {path} looks like the official UCF-Crime txt, but --dataset {dataset}")
        return _load_ucf_txt(path)
    entries = read_json(path, "annotation file")
    if not isinstance(entries, list):
        raise VeraError(f"annotation file {path} must hold a JSON list of videos")
    _check_dataset(entries, dataset, path)
    videos, duplicates = [], []
    for number, entry in enumerate(entries):
        video = _parse_json_test_entry(entry, dataset, f"{path} entry {number}")
        (duplicates if dataset == "xd" and _is_xd_duplicate(entry) else videos).append(video)
    if merge_xd_duplicates and duplicates:
        videos = _xd_duplicates_merged(videos, duplicates, path)
    keys = [video.key for video in videos]
    if len(set(keys)) != len(keys):
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise VeraError(f"annotation file {path} lists videos twice: {', '.join(repeated[:5])}")
    return videos


def _load_ucf_txt(path: Path) -> list[TestVideo]:
    """Official UCF-Crime lines: ``Name.mp4 Class s1 e1 s2 e2`` (no lengths)."""
    lines = read_text(path, "annotation file").splitlines()
    videos = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) != 6:
            raise VeraError(f"{where}: expected 'Name.mp4 Class s1 e1 s2 e2', got {line!r}")
        try:
            labels = [int(value) for value in fields[2:]]
        except ValueError:
            raise VeraError(f"{where}: frame numbers must be integers: {line!r}") from None
        video = TestVideo(video_key(fields[0]), None, _pairs(labels, where), fields[1], fields[0])
        if video.intervals and not video.is_anomalous:
            raise VeraError(f"{where}: video {video.key} is of class {NORMAL_CLASS} but has anomalous intervals "
                            f"{list(video.intervals)}")
        videos.append(video)
    return videos


def load_train_annotations(path: Path, dataset: Dataset) -> list[TrainVideo]:
    """Read a training/validation list. UCF: label 0 for the normal folder; XD: ``video_label``."""
    path = Path(path)
    entries = read_json(path, "training list")
    if not isinstance(entries, list):
        raise VeraError(f"training list {path} must hold a JSON list of videos")
    _check_dataset(entries, dataset, path)
    videos = []
    for number, entry in enumerate(entries):
        where = f"{path} entry {number}"
        try:
            if dataset == "ucf":
                video = entry["video"]
                label = 0 if ucf_class(video) == NORMAL_CLASS else 1
                videos.append(TrainVideo(video_key(video), _length(entry["length"], where), label, video))
            else:
                label = int(entry["video_label"])
                if label not in (0, 1):
                    raise VeraError(f"{where}: video_label must be 0 or 1, got {label}")
                name = entry["video_name"]
                videos.append(TrainVideo(video_key(name), _length(entry["length"], where), label, name))
        except (KeyError, TypeError, ValueError) as error:
            expected = "'video', 'length'" if dataset == "ucf" else "'video_name', 'video_label', 'length'"
            raise VeraError(f"{where}: expected keys {expected} ({error!r})") from None
    return videos
