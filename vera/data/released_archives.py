"""The authors' archives of per-video files: open them, map names to keys, place them, check them.

Neither the archives' inner layout nor their file names are documented, and
the released scoring script read its scores from nested folders. So every
member is accounted for: mapped to a test video's key (and how, where the name
is not ``<key>.json`` / ``<key>.npy``), or listed as a conflict, as a file no
test video claims, or as ignored with the reason. Mapped files are written to
``<dest>/<kind>/<dataset>/<key><suffix>`` and then checked the way
``Inference/compute_auc.py`` checks its inputs.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath, Path

import numpy as np

from vera.data.annotations import TestVideo
from vera.data.segments import num_segments
from vera.errors import VeraError
from vera.io import read_json, write_bytes_atomic

SUFFIX = {"scores": ".json", "features": ".npy"}
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm")  # a key may carry its video's extension: '<key>.mp4.json'
SHOWN = 5


class Archive:
    """A zip or tar archive (any compression), recognised by its content, not its name."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if zipfile.is_zipfile(self.path):
            self.format = "zip"
        elif tarfile.is_tarfile(self.path):
            self.format = "tar"
        else:
            with open(self.path, "rb") as handle:
                head = handle.read(16)
            raise VeraError(f"{self.path} is neither a zip nor a tar archive (it starts with {head!r}); delete it "
                            "and rerun, or unpack it by hand into the Data/ layout")

    def members(self) -> dict[str, int]:
        """Every regular file: name → size."""
        try:
            if self.format == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    return {info.filename: info.file_size for info in archive.infolist() if not info.is_dir()}
            with tarfile.open(self.path, "r:*") as archive:
                return {member.name: member.size for member in archive if member.isfile()}
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise VeraError(f"archive {self.path} is damaged ({error}); delete it and rerun") from None

    def verify(self) -> None:
        """Read every byte once (zip: CRC of each member), so a damaged download is found before it is used."""
        try:
            if self.format == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise VeraError(f"archive {self.path}: member {bad} is damaged (CRC); delete it and rerun")
            else:
                with tarfile.open(self.path, "r:*") as archive:
                    for member in archive:
                        if member.isfile():
                            archive.extractfile(member).read()
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise VeraError(f"archive {self.path} is damaged ({error}); delete it and rerun") from None

    def extract(self, wanted: dict[str, Path]) -> None:
        """Write member ``name`` to ``wanted[name]`` (atomically), for every name given."""
        try:
            if self.format == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    for name, dest in wanted.items():
                        write_bytes_atomic(dest, archive.read(name))
            else:
                with tarfile.open(self.path, "r:*") as archive:  # in archive order: one pass over a stream
                    for member in archive:
                        if member.name in wanted:
                            write_bytes_atomic(wanted[member.name], archive.extractfile(member).read())
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as error:
            raise VeraError(f"archive {self.path} is damaged ({error}); delete it and rerun") from None


@dataclass
class Mapping:
    """Where each archive member goes, and every member that goes nowhere, with the reason."""

    placed: dict[str, str] = field(default_factory=dict)  # key → member
    how: dict[str, str] = field(default_factory=dict)  # member → the rule that named its key, where not exact
    folders: Counter = field(default_factory=Counter)  # folders the mapped members sat in
    conflicts: dict[str, list[str]] = field(default_factory=dict)  # key → several members
    unmatched: list[str] = field(default_factory=list)  # right suffix, but no test video has that key
    ignored: dict[str, str] = field(default_factory=dict)  # member → why


def _candidates(stem: str, dataset: str) -> list[tuple[str, str]]:
    found = [(stem, "exact")]
    for suffix in VIDEO_SUFFIXES:
        if stem.lower().endswith(suffix):
            found.append((stem[: -len(suffix)], f"without '{suffix}'"))
    if dataset == "ucf":
        found.append((stem.split(".")[0], "the released UCF readers' rule (name up to the first dot)"))
    return found


def map_members(names: list[str], keys: set[str], kind: str, dataset: str) -> Mapping:
    """Assign archive members to test-video keys by file name; nothing is left unaccounted for."""
    suffix = SUFFIX[kind]
    mapping, claims = Mapping(), {}
    for name in sorted(names):
        path = PurePosixPath(name)
        if "__MACOSX" in path.parts or path.name.startswith("."):
            mapping.ignored[name] = "macOS or hidden metadata"
            continue
        if not path.name.endswith(suffix):
            mapping.ignored[name] = f"not a {suffix} file"
            continue
        stem = path.name[: -len(suffix)]
        match = next(((key, rule) for key, rule in _candidates(stem, dataset) if key in keys), None)
        if match is None:
            mapping.unmatched.append(name)
            continue
        key, rule = match
        claims.setdefault(key, []).append(name)
        if rule != "exact":
            mapping.how[name] = rule
        mapping.folders[str(path.parent)] += 1
    for key, members in claims.items():
        if len(members) > 1:
            mapping.conflicts[key] = members
        else:
            mapping.placed[key] = members[0]
    return mapping


def place(archive: Archive, mapping: Mapping, sizes: dict[str, int], folder: Path, kind: str
          ) -> tuple[int, int, list[str]]:
    """Write mapped members as ``folder/<key><suffix>``; returns (written, already there, differing files kept).

    A file already there with the member's size is taken as placed by an
    earlier, interrupted run (writes are atomic); one of another size is not
    ours to replace, and is listed.
    """
    wanted, present, differing = {}, 0, []
    for key, name in mapping.placed.items():
        dest = folder / f"{key}{SUFFIX[kind]}"
        if dest.exists():
            if dest.stat().st_size == sizes[name]:
                present += 1
            else:
                differing.append(str(dest))
            continue
        wanted[name] = dest
    archive.extract(wanted)
    return len(wanted), present, differing


def _check_scores(video: TestVideo, path: Path) -> bool:
    """Raise VeraError as compute_auc would; return whether the scores are all 0/1 (the released protocol)."""
    from vera.scoring.evaluate import check_length  # the very check compute_auc applies
    from vera.scoring.score_files import read_segment_scores

    segments = read_segment_scores(path, binary=False)
    check_length(video, segments, path)
    return bool(np.all((segments.scores == 0) | (segments.scores == 1)))


def _check_features(video: TestVideo, path: Path) -> None:
    from vera.scoring.evaluate import load_features  # the very check compute_auc applies

    load_features(path, video.key, num_segments(video.length))


def check_folder(videos: list[TestVideo], folder: Path, kind: str) -> tuple[list[str], dict[str, str], int]:
    """Per test video: missing keys, malformed files (key → reason) and, for scores, files with soft scores."""
    missing, malformed, soft = [], {}, 0
    for video in videos:
        path = folder / f"{video.key}{SUFFIX[kind]}"
        if not path.is_file():
            missing.append(video.key)
            continue
        try:
            if kind == "scores":
                soft += not _check_scores(video, path)
            else:
                _check_features(video, path)
        except VeraError as error:
            malformed[video.key] = str(error)
    return missing, malformed, soft


def check_gt_frames(path: Path, videos: list[TestVideo]) -> tuple[list[str], dict[str, str]]:
    """XD frame labels (``{key: [0/1, …]}``): one list per test video, as long as the released AP keeps."""
    from vera.scoring.steps import released_ap_trim

    content = read_json(path, "frame labels")
    if not isinstance(content, dict):
        raise VeraError(f"{path} must map video keys to lists of 0/1 frame labels")
    missing, malformed = [], {}
    for video in videos:
        labels = content.get(video.key)
        if labels is None:
            missing.append(video.key)
        elif not isinstance(labels, list) or any(value not in (0, 1) or isinstance(value, bool) for value in labels):
            malformed[video.key] = "frame labels must be a list of 0 and 1"
        elif len(labels) != released_ap_trim(video.length):
            malformed[video.key] = (f"{len(labels)} frame labels; the released AP keeps "
                                    f"{released_ap_trim(video.length)} of its {video.length} frames")
    return missing, malformed
