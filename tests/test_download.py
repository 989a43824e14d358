"""Data/download.py against a loopback HTTP mirror: pins, resume, checksums, archive layouts, Drive's refusals.

Nothing here touches the network: a guard refuses every connection that is not
to 127.0.0.1, and every URL requested is recorded and checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import vera.data.download as download
import vera.data.transfer as transfer
from vera.data.download import DriveArchive, RepoFile
from vera.errors import VeraError
from fixtures.scripts import run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Mirror:
    """A static server on 127.0.0.1 with Range support; ``drop_once`` paths break midway the first time."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                mirror.requests.append((self.path, self.headers.get("Range")))
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in mirror.drop_once:
                    mirror.drop_once.discard(self.path)
                    self.wfile.write(body[start: start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops midway
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def github(self, path: str, body: bytes, ref: str = COMMIT) -> None:
        self.files[f"/github/vera-framework/VERA/{ref}/{path}"] = body

    def drive(self, drive_id: str, body: bytes) -> None:
        self.files[f"/drive/{drive_id}"] = body


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse any connection that is not to 127.0.0.1, and record every URL the downloader opens."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        assert host == "127.0.0.1", f"a test tried to reach {address}"
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    opened: list[str] = []
    real_urlopen = transfer._urlopen

    def urlopen(request):
        opened.append(request.full_url)
        return real_urlopen(request)

    monkeypatch.setattr(transfer, "_urlopen", urlopen)

    def no_drive(*args):
        raise AssertionError("the test reached for Google Drive")

    monkeypatch.setattr(download, "download_from_drive", no_drive)
    yield opened
    assert all(url.startswith("http://127.0.0.1:") for url in opened), opened


@pytest.fixture
def mirror():
    server = Mirror()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


# -- a tiny released dataset: three test videos, their scores and features ---------------------

LENGTHS = {"Abuse001_x264": 40, "Arson002_x264": 65, "Normal_Videos_003_x264": 33}


def _ucf_eval() -> bytes:
    entries = [{"video": "frames/Abuse/Abuse001_x264.mp4", "temporal_label": [3, 20, -1, -1], "length": 40},
               {"video": "frames/Arson/Arson002_x264.mp4", "temporal_label": [10, 50, -1, -1], "length": 65},
               {"video": "frames/Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4",
                "temporal_label": [-1, -1, -1, -1], "length": 33}]
    return json.dumps(entries).encode()


def _score_file(length: int, segments: int | None = None) -> bytes:
    centres = range(0, length, 16) if segments is None else range(0, 16 * segments, 16)
    return json.dumps({str(c): {"start": float(max(c - 150, 0)), "end": float(min(c + 150, length)),
                                "score": int(c // 16 % 2)} for c in centres}).encode()


def _npy(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(1, rows * 4 + 1, dtype=np.float32).reshape(rows, 4))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


@pytest.fixture
def tiny_release(monkeypatch, mirror):
    """Pins and Drive ids of a tiny release, served by the mirror; returns the expected file bodies."""
    ucf_eval = _ucf_eval()
    prompt = b"You are the model.\n[$Data]\n"
    files = (RepoFile("Data/UCF_Eval.json", "annotations", ("ucf",), hashlib.sha256(ucf_eval).hexdigest(), COMMIT),
             RepoFile("VERA_learner_instruct.txt", "prompts", ("ucf", "xd"), hashlib.sha256(prompt).hexdigest(),
                      COMMIT))
    archives = (DriveArchive("ucf", "scores", "SCORES_ID"), DriveArchive("ucf", "features", "FEATURES_ID"))
    monkeypatch.setattr(download, "REPO_FILES", files)
    monkeypatch.setattr(download, "DRIVE_ARCHIVES", archives)
    mirror.github("Data/UCF_Eval.json", ucf_eval)
    mirror.github("VERA_learner_instruct.txt", prompt)
    scores = {f"scores_77/tests/{key}.json": _score_file(length) for key, length in LENGTHS.items()}
    features = {f"{key}.npy": _npy(-(-length // 16)) for key, length in LENGTHS.items()}
    mirror.drive("SCORES_ID", _zip(scores))
    mirror.drive("FEATURES_ID", _tar_gz(features))
    return {"UCF_Eval.json": ucf_eval, "VERA_learner_instruct.txt": prompt, "scores": scores, "features": features}


def _download(mirror, dest, *extra) -> int:
    return run("download", ["--dataset", "ucf", "--dest", str(dest), "--mirror", mirror.url, "--no-progress",
                            *extra])


# -- the tests ------------------------------------------------------------------------------------

def test_the_pins_are_the_authors_files(shared_data):
    """Every pinned SHA-256 is that of the authors' file as the project keeps it."""
    folders = {"annotations": shared_data / "annotations", "prompts": shared_data / "prompts"}
    pinned = [item for item in download.REPO_FILES if item.sha256]
    assert len(pinned) == 9
    for item in pinned:
        body = (folders[item.what] / item.name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == item.sha256, item.name


def test_everything_lands_in_the_layout_and_a_rerun_fetches_nothing(tiny_release, mirror, tmp_path, capsys,
                                                                    no_network):
    dest = tmp_path / "Data"
    assert _download(mirror, dest) == 0
    out = capsys.readouterr().out
    assert (dest / "UCF_Eval.json").read_bytes() == tiny_release["UCF_Eval.json"]
    assert (dest / "VERA_learner_instruct.txt").read_bytes() == tiny_release["VERA_learner_instruct.txt"]
    for name, body in tiny_release["scores"].items():
        assert (dest / "scores" / "ucf" / Path(name).name).read_bytes() == body
    for name, body in tiny_release["features"].items():
        assert (dest / "features" / "ucf" / name).read_bytes() == body
    assert "ucf scores: 3 of 3 test videos ready" in out and "ucf features: 3 of 3 test videos ready" in out
    assert "files came from the folders scores_77/tests; placed flat" in out
    report = json.loads((dest / "download_report.json").read_text())
    assert report["ucf scores"]["problems"] == 0 and report["ucf scores"]["format"] == "zip"
    assert report["ucf features"]["format"] == "tar"
    assert len(no_network) == 4 and len(mirror.requests) == 4

    assert _download(mirror, dest) == 0  # verified files and archives are not fetched again
    assert len(mirror.requests) == 4
    assert "UCF_Eval.json: already there, verified" in capsys.readouterr().out

    # Compute_auc runs on what landed.
    assert run("compute_auc", ["--dataset", "ucf", "--annotations", str(dest / "UCF_Eval.json"), "--scores",
                               str(dest / "scores" / "ucf"), "--features", str(dest / "features" / "ucf"),
                               "--output", str(tmp_path / "auc"), "--no-curves"]) == 0


def test_an_interrupted_download_resumes_where_it_stopped(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    archive = mirror.files["/drive/SCORES_ID"]
    mirror.drop_once.add("/drive/SCORES_ID")
    assert _download(mirror, dest, "--what", "scores", "--retries", "0") == 2
    error = capsys.readouterr().err
    part = dest / "downloads" / "ucf_scores.archive.part"
    assert f"stopped after {len(archive) // 2} bytes" in error and f"resume from {part}" in error
    assert len(error.strip().splitlines()) == 1
    assert part.read_bytes() == archive[: len(archive) // 2]
    assert not (dest / "downloads" / "ucf_scores.archive").exists()

    assert _download(mirror, dest, "--what", "scores", "--retries", "0") == 0
    assert mirror.requests[-1] == ("/drive/SCORES_ID", f"bytes={len(archive) // 2}-")
    assert (dest / "downloads" / "ucf_scores.archive").read_bytes() == archive and not part.exists()


def test_a_dropped_connection_is_retried_in_the_same_run(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    mirror.drop_once.add(f"/github/vera-framework/VERA/{COMMIT}/Data/UCF_Eval.json")
    assert _download(mirror, dest, "--what", "annotations") == 0
    assert (dest / "UCF_Eval.json").read_bytes() == tiny_release["UCF_Eval.json"]
    ranges = [header for path, header in mirror.requests if path.endswith("UCF_Eval.json")]
    assert ranges == [None, f"bytes={len(tiny_release['UCF_Eval.json']) // 2}-"]
    assert "interrupted after" in capsys.readouterr().err


def test_progress_is_logged_as_plain_lines_when_not_on_a_terminal(tiny_release, mirror, tmp_path, capsys):
    """vera.progress, as every stage: a line when a transfer stops and one when it ends, in bytes; no bar."""
    dest = tmp_path / "Data"
    mirror.drop_once.add(f"/github/vera-framework/VERA/{COMMIT}/Data/UCF_Eval.json")
    assert run("download", ["--dataset", "ucf", "--dest", str(dest), "--mirror", mirror.url,
                            "--what", "annotations"]) == 0
    error = capsys.readouterr().err
    assert "\r" not in error
    size = len(tiny_release["UCF_Eval.json"])
    assert size == 317  # under 1 kB, so the counts stay in B; half of it, 158 B, is 49.8%
    rate = r"(, \d+(\.\d)? [kMG]?B/s)?"  # the loopback's speed, if the clock saw any time pass
    lines = error.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(rf"UCF_Eval\.json: {size // 2} B/{size} B \(49\.8%\){rate}, stopped after \d+ s", lines[0])
    assert lines[1].startswith(f"UCF_Eval.json: interrupted after {size // 2} bytes (")
    assert re.fullmatch(rf"UCF_Eval\.json: {size} B/{size} B \(100\.0%\){rate}, finished in \d+ s", lines[2])
    assert (dest / "UCF_Eval.json").read_bytes() == tiny_release["UCF_Eval.json"]
    # --no-progress: only the messages.
    mirror.drop_once.add(f"/github/vera-framework/VERA/{COMMIT}/Data/UCF_Eval.json")
    assert _download(mirror, tmp_path / "quiet", "--what", "annotations") == 0
    assert [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()] == [
        f"UCF_Eval.json: interrupted after {size // 2} bytes"]


def test_a_checksum_mismatch_keeps_nothing(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    mirror.github("Data/UCF_Eval.json", tiny_release["UCF_Eval.json"].replace(b"40", b"41"))
    assert _download(mirror, dest, "--what", "annotations") == 2
    error = capsys.readouterr().err
    expected = hashlib.sha256(tiny_release["UCF_Eval.json"]).hexdigest()
    assert f"not the pinned {expected}; the bytes were discarded" in error and len(error.strip().splitlines()) == 1
    assert not (dest / "UCF_Eval.json").exists() and not (dest / "UCF_Eval.json.part").exists()
    # The pinned commit answered wrongly, so the default branch was tried too before giving up.
    assert [path.split("/")[4] for path, _ in mirror.requests] == [COMMIT, "HEAD"]


def test_a_changed_local_file_is_reported_not_replaced(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    dest.mkdir()
    (dest / "UCF_Eval.json").write_text("[]")
    assert _download(mirror, dest, "--what", "annotations") == 1
    out = capsys.readouterr().out
    assert "differs from the authors' file" in out and (dest / "UCF_Eval.json").read_text() == "[]"


def test_layout_differences_are_mapped_and_every_odd_file_reported(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    mirror.drive("SCORES_ID", _zip({
        "out/Abuse001_x264.mp4.json": _score_file(40),           # key with the video's extension
        "out/Arson002_x264.json": _score_file(65, segments=3),   # too few segments for 65 frames
        "out/Arson002_x264.old.json": _score_file(65),           # a second file for the same key (UCF rule)
        "out/Training_Video_9.json": _score_file(20),            # no such test video
        "out/README.txt": b"scores",
        "__MACOSX/out/._Abuse001_x264.mp4.json": b"junk",
    }))  # Normal_Videos_003_x264 is absent
    assert _download(mirror, dest, "--what", "scores") == 1
    out = capsys.readouterr().out
    assert "ucf scores: 1 of 3 test videos ready" in out
    assert "names mapped to keys: 1 by without '.mp4'" in out
    assert "2 missing: Arson002_x264, Normal_Videos_003_x264" in out
    assert ("1 claimed by several archive files: Arson002_x264: out/Arson002_x264.json | "
            "out/Arson002_x264.old.json") in out
    assert "1 archive files that name no test video: out/Training_Video_9.json" in out
    assert "2 archive files ignored" in out and "out/README.txt (not a .json file)" in out
    assert (dest / "scores" / "ucf" / "Abuse001_x264.json").read_bytes() == _score_file(40)
    report = json.loads((dest / "download_report.json").read_text())["ucf scores"]
    assert report["renamed"] == {"out/Abuse001_x264.mp4.json": "without '.mp4'",
                                 "out/Arson002_x264.old.json": "the released UCF readers' rule (name up to the first dot)"}
    assert report["problems"] == 2  # two videos: one absent, one claimed twice

    # A malformed file in place is named with compute_auc's reason.
    (dest / "scores" / "ucf" / "Arson002_x264.json").write_bytes(_score_file(65, segments=3))
    assert _download(mirror, dest, "--what", "scores") == 1
    assert ("Arson002_x264 (video Arson002_x264: score file" in capsys.readouterr().out)


def test_drive_web_page_and_offline_are_one_line_errors_with_what_to_do(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    mirror.drive("SCORES_ID", b"<!DOCTYPE html><html><title>Google Drive - quota exceeded</title></html>")
    assert _download(mirror, dest, "--what", "scores") == 2
    error = capsys.readouterr().err.strip()
    archive = dest / "downloads" / "ucf_scores.archive"
    assert len(error.splitlines()) == 1 and "sent a web page instead of file SCORES_ID" in error
    assert f"https://drive.google.com/file/d/SCORES_ID/view in a browser, save it as {archive}" in error
    assert not archive.exists()

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    assert run("download", ["--dataset", "ucf", "--dest", str(dest), "--mirror", f"http://127.0.0.1:{port}",
                            "--what", "prompts"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"cannot reach 127.0.0.1:{port}" in error
    assert f"save it as {dest / 'VERA_learner_instruct.txt'}" in error


def test_an_archive_fetched_by_hand_is_unpacked_and_checked(tiny_release, mirror, tmp_path, capsys):
    dest = tmp_path / "Data"
    (dest / "downloads").mkdir(parents=True)
    (dest / "downloads" / "ucf_features.archive").write_bytes(mirror.files["/drive/FEATURES_ID"])
    assert _download(mirror, dest, "--what", "features") == 0
    assert not any(path.startswith("/drive/") for path, _ in mirror.requests)
    assert len(list((dest / "features" / "ucf").glob("*.npy"))) == 3


def test_without_a_mirror_drive_goes_through_gdown(tiny_release, monkeypatch, tmp_path):
    """The Drive call itself, with gdown replaced: the id and the file it writes; its refusals as one line."""
    import gdown
    import requests
    from gdown.exceptions import FileURLRetrievalError

    calls = []

    def fake_gdown(**kwargs):
        calls.append(kwargs)
        if kwargs["id"] == "FEATURES_ID":
            raise FileURLRetrievalError("Too many users have viewed or downloaded this file recently.")
        if kwargs["id"] == "OFFLINE_ID":
            raise requests.exceptions.ConnectionError("Failed to resolve 'drive.google.com'")
        Path(kwargs["output"]).write_bytes(_zip(tiny_release["scores"]))
        return kwargs["output"]

    monkeypatch.setattr(gdown, "download", fake_gdown)
    monkeypatch.setattr(download, "download_from_drive", transfer.download_from_drive)
    target = tmp_path / "ucf_scores.archive"
    download.fetch_drive(DriveArchive("ucf", "scores", "SCORES_ID"), target, mirror=None, retries=0, progress=False)
    assert calls[0]["id"] == "SCORES_ID" and calls[0]["output"] == str(target) and calls[0]["resume"] is True
    with pytest.raises(VeraError, match=r"Google Drive refused file FEATURES_ID \(quota or permission: Too many "
                                        r"users.*\); download https://drive.google.com/file/d/FEATURES_ID/view"):
        download.fetch_drive(DriveArchive("ucf", "features", "FEATURES_ID"), tmp_path / "f.archive", mirror=None,
                             retries=0, progress=False)
    with pytest.raises(VeraError, match=r"cannot download Google Drive file OFFLINE_ID \(Failed to resolve "
                                        r"'drive.google.com'\); offline\? download https://drive.google.com/file/d/"
                                        r"OFFLINE_ID/view in a browser, save it as .*o.archive and rerun"):
        download.fetch_drive(DriveArchive("ucf", "features", "OFFLINE_ID"), tmp_path / "o.archive", mirror=None,
                             retries=0, progress=False)


def test_bad_options_are_one_line_errors(capsys):
    assert run("download", ["--what", "scores,videos"]) == 2
    assert "argument --what: choose from annotations,prompts,scores,features" in capsys.readouterr().err
    assert run("download", ["--mirror", "ftp://example"]) == 2
    assert "argument --mirror: must be an http:// or https:// address" in capsys.readouterr().err


def test_the_real_manifest_through_a_mirror_of_the_authors_files(shared_data, mirror, tmp_path, capsys):
    """The released files at their pinned commits; name_gt_pair.json, which the project has never seen, is absent."""
    folders = {"annotations": shared_data / "annotations", "prompts": shared_data / "prompts"}
    for item in download.REPO_FILES:
        if item.sha256:
            mirror.github(item.path, (folders[item.what] / item.name).read_bytes(), ref=item.commit)
    dest = tmp_path / "Data"
    assert run("download", ["--dest", str(dest), "--mirror", mirror.url, "--what", "annotations,prompts"]) == 1
    out = capsys.readouterr().out
    for item in download.REPO_FILES:
        if item.sha256:
            assert (dest / item.name).read_bytes() == (folders[item.what] / item.name).read_bytes()
            assert f"{item.name}: fetched, SHA-256 verified" in out
    assert "name_gt_pair.json: not found" in out and f"put them at {dest / 'name_gt_pair.json'}" in out
    assert "1 problems" in out


def test_xd_frame_labels_are_checked_against_the_test_annotations(monkeypatch, mirror, tmp_path, capsys):
    test = json.dumps([{"video": "v=a__#1_label_B1-0-0", "temporal_label": [0, 20], "length": 50, "label": "1"},
                       {"video": "Film.2000__#1_label_A", "temporal_label": [-1, -1], "length": 33, "label": "0"}])
    gt = json.dumps({"v=a__#1_label_B1-0-0": [1] * 20 + [0] * 28, "Film.2000__#1_label_A": [0] * 33})
    monkeypatch.setattr(download, "REPO_FILES", (
        RepoFile("Data/xd_test_800.json", "annotations", ("xd",), hashlib.sha256(test.encode()).hexdigest(), COMMIT),
        RepoFile("Data/name_gt_pair.json", "annotations", ("xd",), None)))
    mirror.github("Data/xd_test_800.json", test.encode())
    mirror.github("Data/name_gt_pair.json", gt.encode(), ref="HEAD")
    dest = tmp_path / "Data"
    assert run("download", ["--dataset", "xd", "--dest", str(dest), "--mirror", mirror.url, "--what",
                            "annotations"]) == 1
    out = capsys.readouterr().out
    digest = hashlib.sha256(gt.encode()).hexdigest()
    assert f"name_gt_pair.json: fetched (not pinned; SHA-256 {digest})" in out
    # 50 frames: the released AP keeps 49 - (49 mod 16) = 48; 33 frames: 32.
    assert "name_gt_pair.json: disagrees with xd_test_800.json" in out
    assert "1 malformed: Film.2000__#1_label_A (33 frame labels; the released AP keeps 32 of its 33 frames)" in out
