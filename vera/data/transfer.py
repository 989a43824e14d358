"""Resumable downloads: HTTP with Range requests, and Google Drive through gdown.

Bytes go to ``<file>.part``; a retry after a dropped connection, or a rerun,
asks only for the rest. A file is renamed into place only once whole and, where
a SHA-256 is pinned, verified, so a file under its final name is a checked one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from vera.errors import VeraError
from vera.progress import Progress

DRIVE_VIEW = "https://drive.google.com/file/d/{id}/view"
TIMEOUT_S = 60
CHUNK = 1 << 20


class NotFound(VeraError):
    """The server has no such file (HTTP 404)."""


class ChecksumMismatch(VeraError):
    """The bytes received are not the pinned file."""


class _Interrupted(Exception):
    """The connection dropped mid-transfer; what arrived is kept in the .part file."""


def _urlopen(request: urllib.request.Request):
    """The one place this module opens a connection (the tests watch it)."""
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline(url: str, dest: Path, reason: object) -> VeraError:
    host = urlsplit(url).netloc
    return VeraError(f"cannot reach {host} ({reason}); offline? Fetch {url} by hand, save it as {dest} "
                     "and rerun")


def _transfer(url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (all of it when the server ignores the Range request)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "vera-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _urlopen(urllib.request.Request(url, headers=headers))
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left to send: the part is whole; the checks decide
            return
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        # A bar on a terminal, log lines elsewhere (vera.progress); the count starts at the bytes resumed from.
        with open(part, "ab" if resumed else "wb") as out, Progress(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[: -len(".part")],
                enabled=progress, leave=False) as bar:
            while True:
                try:
                    block = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as error:  # reset, timeout, IncompleteRead
                    raise _Interrupted(str(error) or type(error).__name__) from None
                if not block:
                    break
                out.write(block)
                bar.update(len(block))
            out.flush()
            size = part.stat().st_size
            if total is not None and size < total:  # raised inside, so the progress line says stopped
                raise _Interrupted(f"connection closed after {size} of {total} bytes")


def fetch_url(url: str, dest: Path, *, sha256: str | None = None, retries: int = 3,
              progress: bool = False) -> str:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after a drop; returns the SHA-256.

    A pinned ``sha256`` that the bytes do not match discards them
    (``ChecksumMismatch``); the file is renamed into place only when whole.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, progress)
            break
        except urllib.error.HTTPError as error:
            if error.code == 404:
                raise NotFound(f"{url} does not exist (HTTP 404)") from None
            raise VeraError(f"{url} answered HTTP {error.code} {error.reason}; fetch it by hand, save it as "
                            f"{dest} and rerun") from None
        except urllib.error.URLError as error:
            raise _offline(url, dest, error.reason) from None
        except _Interrupted as error:
            got = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise VeraError(f"download of {url} stopped after {got} bytes ({error}); rerun the same "
                                f"command to resume from {part}") from None
            print(f"{dest.name}: interrupted after {got} bytes ({error}); resuming (retry {attempt + 1} of "
                  f"{retries})", file=sys.stderr)
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise ChecksumMismatch(f"{dest.name} from {url} has SHA-256 {digest}, not the pinned {sha256}; "
                               "the bytes were discarded")
    os.replace(part, dest)
    return digest


def download_from_drive(drive_id: str, dest: Path, progress: bool) -> None:
    """Google Drive through gdown (it follows Drive's confirmation pages and resumes partial files).

    The only call that needs Drive itself; the tests replace it or go through a mirror.
    """
    import gdown
    from gdown.exceptions import DownloadError, FileURLRetrievalError

    by_hand = f"download {DRIVE_VIEW.format(id=drive_id)} in a browser, save it as {dest} and rerun"
    bar = progress and sys.stderr.isatty()  # gdown draws its own tqdm bar, whose carriage returns suit no log
    try:
        gdown.download(id=drive_id, output=str(dest), quiet=not bar, resume=True, timeout=TIMEOUT_S)
    except FileURLRetrievalError as error:
        reason = " ".join(str(error).split())[:160]
        raise VeraError(f"Google Drive refused file {drive_id} (quota or permission: {reason}); {by_hand}") from None
    except (DownloadError, OSError) as error:  # requests' errors are OSErrors
        reason = " ".join(str(error).split())[:160]
        raise VeraError(f"cannot download Google Drive file {drive_id} ({reason}); offline? {by_hand}") from None


def refuse_web_page(path: Path, drive_id: str) -> None:
    """Drive answers a quota or virus-scan page with HTTP 200: an HTML file is not the archive."""
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        path.unlink()
        raise VeraError(f"Google Drive sent a web page instead of file {drive_id} (download quota exceeded, "
                        f"or the link needs confirmation); download {DRIVE_VIEW.format(id=drive_id)} in a "
                        f"browser, save it as {path} and rerun")
