"""Atomic file writes (temp file + rename) and JSON reading with clear errors.

Every long job writes through these helpers, so a kill never leaves a
half-written file behind: a reader sees the old file or the new one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from vera.errors import VeraError

_FILE_MODE = 0o644
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None and error.errno in _FULL_DISK:
            # A write on a full disk names no file: name the one this was meant to be.
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise


def sha256_text(text: str) -> str:
    """Hex SHA-256 of ``text`` (UTF-8): how run records fingerprint prompts and settings."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda handle: handle.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda handle: np.save(handle, array))


def read_text(path: Path, what: str = "file") -> str:
    """Read a UTF-8 text file, or raise ``VeraError`` naming the file and the problem."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VeraError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise VeraError(f"cannot read {what} {path}: {error}") from None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # json's default keeps the last of two equal keys without a word; a second
    # "temporal_label" or score for one segment would silently change the result.
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def parse_json(text: str, source: str) -> Any:
    """Parse JSON ``text`` refusing an object with a key twice; errors name ``source`` (a file, a line)."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as error:
        raise VeraError(f"{source} has the key {json.dumps(error.key, ensure_ascii=False)} twice in one object; "
                        "JSON keeps only the last, so the file is ambiguous") from None
    except json.JSONDecodeError as error:
        raise VeraError(f"{source} is not valid JSON ({error})") from None


def read_json(path: Path, what: str = "JSON file") -> Any:
    """Load a JSON file, or raise ``VeraError`` naming the file and the problem (a key twice included)."""
    path = Path(path)
    return parse_json(read_text(path, what), f"{what} {path}")


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays saved under their names in one uncompressed ``.npz`` (``np.load(path)[name]``)."""
    _atomic_write(path, lambda handle: np.savez(handle, **arrays))
