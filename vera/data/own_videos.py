"""An annotation file for a folder of your own videos, so every stage runs on any clips.

Each video's length is measured by decoding every frame (``vera.data.frames``,
the reader every stage uses), not taken from the container's header, which
may promise frames the stream does not hold. Labels are optional: a CSV with
the columns ``video,class,intervals`` (see ``Data/README.md``). The file is
written in the format of the authors' test annotations for the chosen
dataset, and read back with ``load_test_annotations`` before it replaces the
output, so what the pipeline will read is what was meant.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vera.data.annotations import NORMAL_CLASS, VIDEO_EXTENSIONS, Dataset, TestVideo, load_test_annotations
# The key rule: the file name without its last extension. The one place this
# module decides keys; switch it here when the project's shared rule changes.
from vera.data.annotations import video_key
from vera.data.frames import VideoFileFrames, list_videos
from vera.errors import VeraError
from vera.io import read_text, write_text_atomic

UNLABELLED_CLASS = "Unlabelled"  # the UCF-style folder of videos given without --labels
DECODE_CHUNK = 32  # frames decoded per read while counting: bounds memory, not speed
_SHOWN = 5
LABEL_COLUMNS = ("video", "class", "intervals")  # of a --labels CSV


@dataclass(frozen=True)
class MeasuredVideo:
    """One video file, its key and the number of frames a full decode gives."""

    path: Path
    key: str
    length: int
    fps: float | None


@dataclass(frozen=True)
class Label:
    video_class: str
    intervals: tuple[tuple[int, int], ...]


def measure_video(path: Path) -> MeasuredVideo:
    """Decode every frame of ``path`` and count them; a frame that cannot be decoded is an error naming it."""
    with VideoFileFrames(path, video_key(path), cache_bytes=0, threads=1) as frames:
        for start in range(0, frames.num_frames, DECODE_CHUNK):
            frames.read(range(start, min(start + DECODE_CHUNK, frames.num_frames)))
        return MeasuredVideo(Path(path), frames.key, frames.num_frames, frames.fps)


def _measure_or_error(path: Path) -> MeasuredVideo | str:
    try:
        return measure_video(path)
    except VeraError as error:
        return str(error)


def measure_videos(videos_dir: Path, workers: int = 1) -> list[MeasuredVideo]:
    """Every video below ``videos_dir``, measured; all failures are reported together, naming each file."""
    paths = list_videos(videos_dir)
    if not paths:
        raise VeraError(f"no video files in {videos_dir} or below")
    return measure_files(paths, workers)


def video_files(inputs: list[Path]) -> list[Path]:
    """The video files named in ``inputs``: files as given, folders searched recursively; each file once."""
    found: dict[Path, Path] = {}
    for path in map(Path, inputs):
        if path.is_dir():
            listed = list_videos(path)
            if not listed:
                raise VeraError(f"no video files in {path} or below")
        elif path.is_file():
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                raise VeraError(f"{path} is not a video file (extensions: {' '.join(VIDEO_EXTENSIONS)})")
            listed = [path]
        else:
            raise VeraError(f"video or folder not found: {path}")
        for video in listed:
            found.setdefault(video.resolve(), video)
    return list(found.values())


def measure_files(paths: list[Path], workers: int = 1) -> list[MeasuredVideo]:
    """These video files, measured; keys must be distinct, and all failures are reported together."""
    results = measure_each(paths, workers)
    failed = [result for result in results if isinstance(result, str)]
    if failed:
        raise VeraError(f"{len(failed)} of {len(paths)} videos cannot be decoded: " + "; ".join(failed[:_SHOWN]))
    return results  # type: ignore[return-value]


def measure_each(paths: list[Path], workers: int = 1) -> list[MeasuredVideo | str]:
    """Each file measured, or the one-line reason it cannot be decoded, in the order given; keys must be
    distinct."""
    by_key: dict[str, list[Path]] = {}
    for path in paths:
        by_key.setdefault(video_key(path), []).append(path)
    clashes = {key: found for key, found in by_key.items() if len(found) > 1}
    if clashes:
        key, found = next(iter(clashes.items()))
        raise VeraError(f"{len(clashes)} keys name several files (key = file name without extension), e.g. "
                        f"{key}: {', '.join(map(str, found))}; rename them")
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(min(workers, len(paths))) as pool:
            return list(pool.map(_measure_or_error, paths))
    return [_measure_or_error(path) for path in paths]


def _parse_intervals(text: str, where: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for part in re.split(r"[\s;]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if not match:
            raise VeraError(f"{where}: interval {part!r} is not START-END in frames (e.g. 30-90)")
        start, end = int(match.group(1)), int(match.group(2))
        if end <= start:
            raise VeraError(f"{where}: interval {part} ends before it starts")
        pairs.append((start, end))
    return tuple(sorted(pairs))


def read_label_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a labels CSV by column name, its header checked: ``video``, ``class`` and ``intervals`` only.

    A UTF-8 byte-order mark (as spreadsheets save CSV) is skipped; a column the
    reader does not know, a column named twice or a row with more fields than
    the header (an unquoted comma) is refused: its content would be dropped.
    """
    path = Path(path)
    lines = read_text(path, "labels file").removeprefix("\ufeff").splitlines()
    table = list(csv.reader(lines))
    header = [name.strip() for name in table[0]] if table else []
    if not {"video", "class"} <= set(header):
        raise VeraError(f"labels file {path} needs a header with the columns {','.join(LABEL_COLUMNS[:2])}"
                        f"[,{LABEL_COLUMNS[2]}], got {','.join(header) or 'an empty file'}")
    unknown = [(number, name) for number, name in enumerate(header, start=1) if name not in LABEL_COLUMNS]
    if unknown:
        number, name = unknown[0]
        raise VeraError(f"labels file {path} has the column {name!r} (column {number}), which is none of "
                        f"{','.join(LABEL_COLUMNS)}; its values would be ignored, so remove it")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise VeraError(f"labels file {path} names the column {twice[0]!r} twice in its header")
    rows = []
    for number, fields in enumerate(table[1:], start=2):  # line 1 is the header
        if not any(field.strip() for field in fields):
            continue  # a blank line, or a spreadsheet's empty row (",,")
        if len(fields) > len(header):
            raise VeraError(f"{path} line {number} has {len(fields)} fields, but the header names {len(header)} "
                            f"({','.join(header)}); quote a value that holds a comma")
        rows.append(dict(zip(header, fields)))
    return rows


def read_labels(path: Path, videos: list[MeasuredVideo], left_out: Iterable[Path] = ()) -> dict[str, Label]:
    """Labels by key from a CSV ``video,class[,intervals]``; every video needs exactly one row.

    Rows naming a ``left_out`` file (one that cannot be scored and was
    skipped) are passed over, so that one labels file serves with or without it.

    ``video`` is the key, the file name or its path below the videos folder;
    ``class`` is ``Normal`` (any case) or the name of the anomaly; ``intervals``
    lists the anomalous frames as ``START-END`` pairs (0-based, END exclusive)
    separated by spaces or semicolons.
    """
    by_name: dict[str, MeasuredVideo] = {}
    for video in videos:
        for name in (video.key, video.path.name):
            by_name.setdefault(name, video)
    skipped = {name for file in map(Path, left_out) for name in (video_key(file), file.name)}
    rows = read_label_rows(path)
    labels: dict[str, Label] = {}
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path} line {number}"
        name = (row.get("video") or "").strip()
        video = by_name.get(name) or by_name.get(Path(name).name)
        if video is None and {name, Path(name).name} & skipped:
            continue
        if video is None:
            raise VeraError(f"{where}: no video {name!r} among the {len(videos)} videos found")
        if video.key in labels:
            raise VeraError(f"{where}: video {video.key} is labelled twice")
        video_class = (row.get("class") or "").strip()
        if not video_class:
            raise VeraError(f"{where}: the class of {video.key} is empty (Normal or the anomaly's name)")
        normal = video_class.lower() == NORMAL_CLASS.lower()
        intervals = _parse_intervals(row.get("intervals") or "", where)
        if normal and intervals:
            raise VeraError(f"{where}: {video.key} is Normal but has anomalous intervals")
        if not normal and not intervals:
            raise VeraError(f"{where}: {video.key} is {video_class} but has no intervals; frame-level "
                            "scores need the anomalous frames (START-END)")
        past = [f"{s}-{e}" for s, e in intervals if e > video.length]
        if past:
            raise VeraError(f"{where}: interval {past[0]} lies past the end of {video.key} ({video.length} frames)")
        labels[video.key] = Label(NORMAL_CLASS if normal else video_class, intervals)
    unlabelled = [video.key for video in videos if video.key not in labels]
    if unlabelled:
        raise VeraError(f"{path} has no row for {len(unlabelled)} videos: {', '.join(unlabelled[:_SHOWN])}")
    return labels


def annotation_entry(video: MeasuredVideo, label: Label | None, dataset: Dataset) -> dict:
    """One entry in the format of ``UCF_Eval.json`` (ucf) or ``xd_test_800.json`` (xd)."""
    flat = [frame for pair in label.intervals for frame in pair] if label else []
    temporal = flat or [-1, -1]
    if dataset == "ucf":
        # UCF-Crime entries name the class by the folder: <Class>/<file name>.
        folder = label.video_class if label else UNLABELLED_CLASS
        return {"video": f"{folder}/{video.path.name}", "temporal_label": temporal, "length": video.length}
    entry = {"video": video.key, "temporal_label": temporal, "length": video.length}
    if label:
        entry["label"] = "0" if label.video_class == NORMAL_CLASS else "1"
    return entry


def _expected(video: MeasuredVideo, label: Label | None) -> tuple:
    if label is None:
        return video.key, video.length, ()
    return video.key, video.length, label.intervals, label.video_class == NORMAL_CLASS


def _read_back(path: Path, dataset: Dataset, wanted: list[tuple]) -> None:
    """The written file must read back as meant: same keys, lengths, intervals and normal/anomalous."""
    loaded: list[TestVideo] = load_test_annotations(path, dataset)
    if len(loaded) != len(wanted):
        raise VeraError(f"the {dataset} annotation reader reads {len(loaded)} videos back, not {len(wanted)}")
    for want, got in zip(wanted, loaded):
        seen = (got.key, got.length, got.intervals, not got.is_anomalous)[: len(want)]
        if seen != want:
            raise VeraError(
                f"video {want[0]}: the {dataset} annotation reader reads it back as key {got.key!r}, "
                f"{'normal' if not got.is_anomalous else got.video_class}; rename the file (e.g. without dots) "
                f"or choose the other --dataset")


def write_annotations(videos: list[MeasuredVideo], labels: dict[str, Label] | None, dataset: Dataset,
                      output: Path, overwrite: bool = False) -> list[dict]:
    """Write the annotation file (one entry a line), checked by reading it back; returns the entries."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise VeraError(f"{output} exists; pass --overwrite to replace it")
    videos = sorted(videos, key=lambda video: video.key)
    chosen = [labels[video.key] if labels else None for video in videos]
    entries = [annotation_entry(video, label, dataset) for video, label in zip(videos, chosen)]
    text = "[\n" + ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in entries) + "\n]\n"
    check = output.with_name(f".{output.name}.check")
    write_text_atomic(check, text)
    try:
        _read_back(check, dataset, [_expected(v, label) for v, label in zip(videos, chosen)])
        os.replace(check, output)
    finally:
        check.unlink(missing_ok=True)
    return entries
