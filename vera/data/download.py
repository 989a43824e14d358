"""Fetch the authors' released artifacts into the documented ``Data/`` layout.

Two sources. The annotation lists and prompt files come from the authors'
GitHub repository, each pinned by SHA-256 and by a commit at which that exact
file is published. The initial Step 1 scores and the ImageBind features come
from Google Drive archives through ``gdown``; nothing pins their content, so
each archive is checked by what it holds (``vera.data.released_archives``) and
its SHA-256 is reported.

``--mirror URL`` replaces both hosts by one static HTTP server laid out as
``URL/github/<owner>/<repo>/<ref>/<path>`` and ``URL/drive/<file id>``:
a local copy, a proxy, or the tests' loopback server.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vera.data.annotations import TestVideo, load_test_annotations
from vera.data.released_archives import Archive, check_folder, check_gt_frames, map_members, place
from vera.data.transfer import (ChecksumMismatch, NotFound, download_from_drive, fetch_url, refuse_web_page,
                                sha256_file)
from vera.errors import VeraError
from vera.io import read_json, write_json_atomic

AUTHORS_REPO = "vera-framework/VERA"
GITHUB_RAW = "https://raw.githubusercontent.com"
REPORT_NAME = "download_report.json"
SHOWN = 5
FALLBACK_REF = "HEAD"  # the default branch: tried where a pinned commit does not answer; SHA-256 still decides


@dataclass(frozen=True)
class RepoFile:
    """One file of the authors' repository and where it goes in ``Data/``."""

    path: str  # inside the repository
    what: str  # "annotations" or "prompts"
    datasets: tuple[str, ...]
    sha256: str | None  # None: the project has never seen the file, so only its content is checked
    commit: str = FALLBACK_REF  # a commit at which this exact file is published

    @property
    def name(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class DriveArchive:
    """One Google Drive archive of the authors' per-video files."""

    dataset: str
    what: str  # "scores" or "features"
    drive_id: str

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.what}.archive"  # Drive's own name is unknown until downloaded


_BOTH = ("ucf", "xd")
# SHA-256 of the authors' files as released (the copies the project's tests use);
# the commits are those at which the files are published unchanged.
REPO_FILES = (
    RepoFile("Data/UCF_Eval.json", "annotations", ("ucf",),
             "f3857cddd623f767e7b86bd50a4aeb122445fc6e241ddd7130b7e3ec0c4d8b9f"),
    RepoFile("Data/UCF_Instruct_train.json", "annotations", ("ucf",),
             "28eaf3ff4a167ffc8f40f86a28204d484c1853561fb37f3d9b75ac116778f264",
             "bfd85e98635cca61a3ae3acc411269a88660657e"),
    RepoFile("Data/UCF_Instruct_val.json", "annotations", ("ucf",),
             "c8a903315e2b47f03b7aeb0d313aedea66800c1598dba2272254493ae4bd1da5",
             "bfd85e98635cca61a3ae3acc411269a88660657e"),
    RepoFile("Data/xd_test_800.json", "annotations", ("xd",),
             "1e9e9cc520c8f4a976ab4502fb3444c9af5b194c935b0ab16aae7adbf93fd3c9",
             "bc6dfd3670985ae1c4691aec149810ef638d85d7"),
    RepoFile("Data/xd_annotations.json", "annotations", ("xd",),
             "8c34b4a59c7a6af42ba5507d2dd560e019c1ca2c600b21c4a641e40c5b240168",
             "befddcf333ffc1be0b2b8baba9afef2962f0f095"),
    RepoFile("Data/xd_train.json", "annotations", ("xd",),
             "007493cfd2978c5fa8b554b085c9e8c7c59ad5b116d90a20d79b13dc247fc8bc",
             "8d341e25f2c226ba757850a706d576c25458f98e"),
    RepoFile("Data/xd_val.json", "annotations", ("xd",),
             "e7fc29913a3d89a20b1c7181066352a2ea5091c363ae468cc054fa7714e01f6e",
             "8d341e25f2c226ba757850a706d576c25458f98e"),
    # The XD frame labels of Wu et al. that the released AP script reads; checked by content.
    RepoFile("Data/name_gt_pair.json", "annotations", ("xd",), None),
    RepoFile("VERA_learner_instruct.txt", "prompts", _BOTH,
             "b03933522e8f4468b50a190012ca28443fb73257b7842bca7f98cf9a7339527c",
             "18bab4894beda07864deca13b133b597b114ebc3"),
    RepoFile("VERA_optimizer_instruct.txt", "prompts", _BOTH,
             "e952afe1b5792ebf5b69fc7b2c60bc39c5229ef5ca9ef974a2b2ff09c1bc5416",
             "4179ad01612c36cd5e6f0bc4bfc93e29d5b8e91e"),
)

# The links of the authors' README (initial scores with InternVL2; ImageBind features).
DRIVE_ARCHIVES = (
    DriveArchive("ucf", "scores", "1LIvPUE7Pv7tPxtXjpOU0sOpSZs6Y7xGv"),
    DriveArchive("xd", "scores", "113rhslKnIE7CKeWd0HKiy8FWp0QJ5OxH"),
    DriveArchive("ucf", "features", "1gwkgIKiPg6fpRaO5yXkxuRcN3X1-97LF"),
    DriveArchive("xd", "features", "1_bN5TRYPpaFpLpf_M7YniRwWeOZgNJtI"),
)

# Where each dataset's test annotations are, for checking the archives against them.
TEST_ANNOTATIONS = {"ucf": "UCF_Eval.json", "xd": "xd_test_800.json"}


def github_url(path: str, ref: str, mirror: str | None = None) -> str:
    base = f"{mirror}/github" if mirror else GITHUB_RAW
    return f"{base}/{AUTHORS_REPO}/{ref}/{path}"


def drive_mirror_url(drive_id: str, mirror: str) -> str:
    return f"{mirror}/drive/{drive_id}"


def fetch_repo_file(item: RepoFile, dest: Path, *, mirror: str | None, retries: int, progress: bool) -> str:
    """The authors' file at its pinned commit, else at the default branch; either way it must match the pin."""
    refs = [item.commit] + ([FALLBACK_REF] if item.commit != FALLBACK_REF else [])
    failures: list[VeraError] = []
    for ref in refs:
        try:
            return fetch_url(github_url(item.path, ref, mirror), dest, sha256=item.sha256, retries=retries,
                             progress=progress)
        except (NotFound, ChecksumMismatch) as error:
            failures.append(error)
    mismatch = [error for error in failures if isinstance(error, ChecksumMismatch)]
    raise mismatch[0] if mismatch else failures[-1]


def fetch_drive(archive: DriveArchive, dest: Path, *, mirror: str | None, retries: int, progress: bool) -> None:
    """The archive at ``dest``: from the mirror (``MIRROR/drive/<id>``) or from Google Drive."""
    if mirror:
        fetch_url(drive_mirror_url(archive.drive_id, mirror), dest, retries=retries, progress=progress)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        download_from_drive(archive.drive_id, dest, progress)
    refuse_web_page(dest, archive.drive_id)


@dataclass
class Outcome:
    """What happened to one item (a file, or one dataset's scores or features)."""

    item: str
    lines: list[str]
    problems: int = 0
    details: dict = field(default_factory=dict)


def _short(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f", … ({len(items)} in all)" if len(items) > SHOWN else "")


def _repo_file(item: RepoFile, dest: Path, mirror: str | None, retries: int, progress: bool,
               log: Callable[[str], None]) -> Outcome:
    target = dest / item.name
    if target.exists():
        digest = sha256_file(target)
        if item.sha256 is not None and digest != item.sha256:
            return Outcome(item.name, [f"{item.name}: {target} differs from the authors' file (SHA-256 {digest}); "
                                       "not replaced: move it away and rerun to fetch it"], 1, {"sha256": digest})
        return Outcome(item.name, [f"{item.name}: already there" + (", verified" if item.sha256 else "")],
                       details={"sha256": digest, "status": "already there"})
    log(f"{item.name}: fetching from {github_url(item.path, item.commit, mirror)}")
    try:
        digest = fetch_repo_file(item, target, mirror=mirror, retries=retries, progress=progress)
    except NotFound as error:
        by_hand = (f"not found ({error}); the XD AP needs the frame labels of Wu et al. as "
                   f"{{key: [0/1, …]}}: put them at {target}" if item.sha256 is None else
                   f"not found ({error}); fetch it by hand and save it as {target}")
        return Outcome(item.name, [f"{item.name}: {by_hand}"], 1, {"status": "missing"})
    pinned = ", SHA-256 verified" if item.sha256 else f" (not pinned; SHA-256 {digest})"
    return Outcome(item.name, [f"{item.name}: fetched{pinned}"], details={"sha256": digest, "status": "fetched"})


def _test_videos(dataset: str, dest: Path, mirror: str | None, retries: int, progress: bool,
                 log: Callable[[str], None]) -> list[TestVideo]:
    """The dataset's test annotations, fetched first if absent: the archives are checked against them."""
    name = TEST_ANNOTATIONS[dataset]
    path = dest / name
    if not path.exists():
        log(f"{name}: needed to check the {dataset} archives")
        item = next(item for item in REPO_FILES if item.name == name)
        fetch_repo_file(item, path, mirror=mirror, retries=retries, progress=progress)
    return load_test_annotations(path, dataset)


def _archive_file(archive: DriveArchive, dest: Path, mirror: str | None, retries: int, progress: bool,
                  log: Callable[[str], None]) -> tuple[Archive, dict]:
    """The downloaded archive, verified once; a verified one (recorded beside it) is not read again."""
    path = dest / "downloads" / archive.name
    record = path.with_name(path.name + ".verified.json")
    if path.exists() and record.exists():
        known = read_json(record, "download record")
        if isinstance(known, dict) and known.get("size") == path.stat().st_size:
            return Archive(path), known
    if not path.exists():
        source = drive_mirror_url(archive.drive_id, mirror) if mirror else f"Google Drive ({archive.drive_id})"
        log(f"{archive.dataset} {archive.what}: fetching {source} to {path}")
        fetch_drive(archive, path, mirror=mirror, retries=retries, progress=progress)
    opened = Archive(path)
    opened.verify()
    known = {"size": path.stat().st_size, "sha256": sha256_file(path), "format": opened.format,
             "drive_id": archive.drive_id}
    write_json_atomic(record, known)
    return opened, known


def _archive(archive: DriveArchive, dest: Path, mirror: str | None, retries: int, progress: bool,
             log: Callable[[str], None]) -> Outcome:
    label = f"{archive.dataset} {archive.what}"
    videos = _test_videos(archive.dataset, dest, mirror, retries, progress, log)
    opened, known = _archive_file(archive, dest, mirror, retries, progress, log)
    sizes = opened.members()
    mapping = map_members(list(sizes), {video.key for video in videos}, archive.what, archive.dataset)
    folder = dest / archive.what / archive.dataset
    written, present, differing = place(opened, mapping, sizes, folder, archive.what)
    missing, malformed, soft = check_folder(videos, folder, archive.what)
    ready = len(videos) - len(missing) - len(malformed)
    lines = [f"{label}: {ready} of {len(videos)} test videos ready in {folder} ({written} written, {present} "
             f"already there); archive {known['format']}, SHA-256 {known['sha256']}"]
    if mapping.how:
        rules = Counter(mapping.how.values())
        lines.append("  names mapped to keys: " + "; ".join(f"{n} by {rule}" for rule, n in rules.items()))
    if set(mapping.folders) - {"."}:
        lines.append(f"  layout: files came from the folders {_short(sorted(mapping.folders))}; placed flat")
    for what, items in (("missing", missing), ("malformed", [f"{key} ({why})" for key, why in malformed.items()]),
                        ("claimed by several archive files", [f"{key}: {' | '.join(names)}" for key, names in
                                                              mapping.conflicts.items()]),
                        ("not replaced (a different file is there)", differing),
                        ("archive files that name no test video", mapping.unmatched),
                        ("archive files ignored", [f"{name} ({why})" for name, why in mapping.ignored.items()])):
        if items:
            lines.append(f"  {len(items)} {what}: {_short(items)}")
    if soft:
        lines.append(f"  {soft} score files hold scores other than 0/1: use --protocol paper "
                     "(the released protocol takes 0/1 answers)")
    details = {"archive": str(opened.path), **known, "written": written, "already_there": present,
               "renamed": mapping.how, "folders": dict(mapping.folders), "missing": missing, "malformed": malformed,
               "conflicts": mapping.conflicts, "not_replaced": differing, "unmatched": mapping.unmatched,
               "ignored": mapping.ignored, "soft_score_files": soft}
    problems = len(set(missing) | set(malformed) | set(mapping.conflicts)) + len(differing)  # keys, once each
    return Outcome(label, lines, problems, details)


def _gt_frames_check(dest: Path) -> Outcome | None:
    path, test = dest / "name_gt_pair.json", dest / TEST_ANNOTATIONS["xd"]
    if not (path.exists() and test.exists()):
        return None
    missing, malformed = check_gt_frames(path, load_test_annotations(test, "xd"))
    lines = [f"name_gt_pair.json: {'agrees with' if not (missing or malformed) else 'disagrees with'} "
             f"{TEST_ANNOTATIONS['xd']}"]
    if missing:
        lines.append(f"  {len(missing)} test videos without frame labels: {_short(missing)}")
    if malformed:
        lines.append(f"  {len(malformed)} malformed: {_short([f'{k} ({why})' for k, why in malformed.items()])}")
    return Outcome("name_gt_pair.json check", lines, len(missing) + len(malformed),
                   {"missing": missing, "malformed": malformed})


def fetch_released(dest: Path, datasets: tuple[str, ...], what: tuple[str, ...], *, mirror: str | None = None,
                   retries: int = 3, progress: bool = True, log: Callable[[str], None] = print) -> list[Outcome]:
    """Fetch, unpack and check what was asked for; writes ``<dest>/download_report.json``.

    Network failures, checksum mismatches and damaged archives stop the run
    with one line (``VeraError``); what is missing or malformed in the
    authors' files is collected in the outcomes, each counted as a problem.
    """
    dest = Path(dest)
    outcomes: list[Outcome] = []

    def done(outcome: Outcome | None) -> None:
        if outcome is not None:
            outcomes.append(outcome)
            for line in outcome.lines:
                log(line)

    for item in REPO_FILES:
        if item.what in what and set(item.datasets) & set(datasets):
            done(_repo_file(item, dest, mirror, retries, progress, log))
    if "annotations" in what and "xd" in datasets:
        done(_gt_frames_check(dest))
    for archive in DRIVE_ARCHIVES:
        if archive.what in what and archive.dataset in datasets:
            done(_archive(archive, dest, mirror, retries, progress, log))
    write_json_atomic(dest / REPORT_NAME, {outcome.item: {"problems": outcome.problems, **outcome.details,
                                                          "summary": outcome.lines} for outcome in outcomes})
    return outcomes
