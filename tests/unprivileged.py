"""Acting as an ordinary user in tests: root writes into a 0o555 folder regardless of its mode.

The tests run as root on the project's machines, where a read-only folder can
only be made real by dropping the effective user id for a moment. Only the
effective id changes (root keeps its saved id and switches back), so the code
inside must need nothing that is not imported or readable by everyone: the
inputs go into ``world_readable_tmp`` and the modules are imported beforehand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@contextlib.contextmanager
def world_readable_tmp() -> Iterator[Path]:
    """A temporary folder every user may enter (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="vera-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for inner in path.rglob("*"):
            if inner.is_dir() and not inner.is_symlink():
                inner.chmod(0o755)
        shutil.rmtree(path)


def read_only_folder(parent: Path, name: str = "read-only") -> Path:
    folder = parent / name
    folder.mkdir()
    folder.chmod(0o555)
    return folder
