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
from vera.options import DATASETS

Dataset = Literal["ucf", "xd"]
NORMAL_CLASS = "Normal"
UCF_NORMAL_FOLDERS = ("Normal", "Testing_Normal_Videos_Anomaly", "Training_Normal_Videos_Anomaly")


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


def ucf_key(video_path: str) -> str:
    """UCF-Crime key: the file name without extension (``frames/Abuse/Abuse028_x264.mp4`` → ``Abuse028_x264``)."""
    return Path(video_path).name.split(".")[0]


def ucf_class(video_path: str) -> str:
    """UCF-Crime class from the parent folder; the normal folders map to ``Normal``."""
    parts = Path(video_path).parts
    folder = parts[-2] if len(parts) > 1 else ""
    if folder in UCF_NORMAL_FOLDERS or ucf_key(video_path).startswith("Normal"):
        return NORMAL_CLASS
    return folder or re.sub(r"\d+_x264$", "", ucf_key(video_path))


def xd_class(key: str) -> str:
    """XD-Violence class from the key's label code (``…label_B4-0-0`` → ``B4``; ``A`` is normal)."""
    match = re.search(r"label_([A-Za-z0-9]+)", key)
    code = match.group(1) if match else ""
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


def _pairs(labels: list, where: str) -> tuple[tuple[int, int], ...]:
    if len(labels) % 2:
        raise VeraError(f"{where}: temporal_label has an odd number of values: {labels}")
    pairs = []
    for start, end in zip(labels[0::2], labels[1::2]):
        if start == -1:
            continue
        if not (isinstance(start, int) and isinstance(end, int)) or end < start or start < 0:
            raise VeraError(f"{where}: bad temporal interval [{start}, {end}]")
        pairs.append((start, end))
    return tuple(pairs)


def _parse_json_test_entry(entry: dict, dataset: Dataset, where: str) -> TestVideo:
    try:
        video, labels, length = entry["video"], entry["temporal_label"], entry["length"]
    except (KeyError, TypeError):
        raise VeraError(f"{where}: expected keys 'video', 'temporal_label', 'length'") from None
    if not isinstance(length, int) or length < 0:
        raise VeraError(f"{where}: length must be a non-negative integer, got {length!r}")
    intervals = _pairs(labels, where)
    if dataset == "ucf":
        return TestVideo(ucf_key(video), length, intervals, ucf_class(video), video)
    # The video-level label decides normal vs violent (14 violent videos are
    # labelled normal in the released file); the key's code names the class.
    violent = str(entry.get("label", "1" if intervals else "0")) == "1"
    video_class = (xd_class(video) if xd_class(video) != NORMAL_CLASS else "violent") if violent else NORMAL_CLASS
    return TestVideo(video, length, intervals, video_class, video)


def _xd_duplicates_merged(videos: list[TestVideo], duplicates: list[TestVideo]) -> list[TestVideo]:
    """Fold the ``<key>.mp4`` duplicate entries of ``xd_annotations.json`` into their videos."""
    extra = {dup.key[: -len(".mp4")]: dup.intervals for dup in duplicates}
    merged = []
    for video in videos:
        if video.key in extra:
            intervals = tuple(sorted(set(video.intervals) | set(extra[video.key])))
            video_class = xd_class(video.key) if xd_class(video.key) != NORMAL_CLASS else "violent"
            video = TestVideo(video.key, video.length, intervals, video_class, video.source)
        merged.append(video)
    return merged


def load_test_annotations(path: Path, dataset: Dataset, merge_xd_duplicates: bool = False) -> list[TestVideo]:
    """Read a test annotation file (VERA JSON list or the official UCF-Crime txt), in file order.

    ``xd_annotations.json`` holds 14 extra entries named ``<key>.mp4`` (length 0)
    with the intervals of 14 violent videos that the main entries list as
    normal. The released scripts skip them (their video file does not exist),
    and so do we unless ``merge_xd_duplicates`` folds them in.
    """
    path = Path(path)
    if dataset not in DATASETS:
        raise VeraError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if path.suffix == ".txt":
        return _load_ucf_txt(path)
    entries = read_json(path, "annotation file")
    if not isinstance(entries, list):
        raise VeraError(f"annotation file {path} must hold a JSON list of videos")
    videos, duplicates = [], []
    for number, entry in enumerate(entries):
        video = _parse_json_test_entry(entry, dataset, f"{path} entry {number}")
        if dataset == "xd" and video.key.endswith(".mp4") and video.length == 0:
            duplicates.append(video)
        else:
            videos.append(video)
    if merge_xd_duplicates and duplicates:
        videos = _xd_duplicates_merged(videos, duplicates)
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
        video_class = NORMAL_CLASS if fields[1] == NORMAL_CLASS else fields[1]
        videos.append(TestVideo(ucf_key(fields[0]), None, _pairs(labels, where), video_class, fields[0]))
    return videos


def load_train_annotations(path: Path, dataset: Dataset) -> list[TrainVideo]:
    """Read a training/validation list. UCF: label 0 for the normal folder; XD: ``video_label``."""
    path = Path(path)
    entries = read_json(path, "training list")
    if not isinstance(entries, list):
        raise VeraError(f"training list {path} must hold a JSON list of videos")
    videos = []
    for number, entry in enumerate(entries):
        where = f"{path} entry {number}"
        try:
            if dataset == "ucf":
                video = entry["video"]
                label = 0 if ucf_class(video) == NORMAL_CLASS else 1
                videos.append(TrainVideo(ucf_key(video), int(entry["length"]), label, video))
            elif dataset == "xd":
                label = int(entry["video_label"])
                if label not in (0, 1):
                    raise VeraError(f"{where}: video_label must be 0 or 1, got {label}")
                videos.append(TrainVideo(entry["video_name"], int(entry["length"]), label, entry["video_name"]))
            else:
                raise VeraError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
        except (KeyError, TypeError, ValueError) as error:
            expected = "'video', 'length'" if dataset == "ucf" else "'video_name', 'video_label', 'length'"
            raise VeraError(f"{where}: expected keys {expected} ({error!r})") from None
    return videos
