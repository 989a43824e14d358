"""Output folders of long jobs: one mechanism for frames, features, Step 1, training and evaluation.

A run folder belongs to one configuration. ``run.json`` holds its *identity*
(what decides the outputs: model, questions, settings…), a fingerprint of it,
and a record of how it was made (versions, time). Opening a folder:

- checks first that it can be written (before an hour of work is wasted);
- accepts a fresh folder, or one whose identity matches (the run resumes);
- refuses, naming the settings that differ, a folder made with another
  identity or one that holds outputs but no ``run.json`` — unless
  ``overwrite``, which removes the old outputs first so that nothing stale
  passes for a result of this run.

Work in progress goes to ``<folder>/.partial/<name>`` (stamped with the
fingerprint, so progress of another configuration is never resumed) and a
finished item is written atomically to its final name, after which its partial
file is removed. Every write goes through ``vera.io`` (temp file + rename).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vera.errors import VeraError
from vera.io import read_json, sha256_text, write_json_atomic

RUN_FILE = "run.json"
PARTIAL_DIR = ".partial"


def now() -> str:
    """The current UTC time, as run records write it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Python and the numeric libraries already imported (importing none for this)."""
    versions = {"python": platform.python_version()}
    for name in ("vera", "numpy", "torch", "transformers", "lightning"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = str(module.__version__)
    return versions


def fingerprint(identity: dict[str, Any]) -> str:
    return sha256_text(json.dumps(identity, sort_keys=True, default=str))


def check_writable(path: Path) -> None:
    """Create ``path`` if needed and prove it writable, or raise a one-line ``VeraError``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VeraError(f"output {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VeraError(f"cannot create output folder {path}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise VeraError(f"output folder {path} is not writable")


class RunFolder:
    """The output folder of one run; see the module docstring.

    ``outputs`` lists what the run writes there (a callable on the folder), so
    that ``overwrite`` removes exactly those, and a folder holding outputs but
    no ``run.json`` is recognised as another run's.
    """

    def __init__(self, path: Path, kind: str, identity: dict[str, Any], *, overwrite: bool = False,
                 outputs: Callable[[Path], Iterable[Path]] | None = None, record: dict[str, Any] | None = None,
                 run_file: str = RUN_FILE):
        self.path = Path(path)
        self.kind = kind
        self.identity = {"kind": kind, **identity}
        self.fingerprint = fingerprint(self.identity)
        self.overwrite = overwrite
        self._outputs = outputs or (lambda folder: [p for p in folder.iterdir() if p.name != run_file])
        self.record = dict(record or {})
        self.run_file = self.path / run_file
        self.partial_dir = self.path / PARTIAL_DIR
        self.resumed = False

    # -- opening ------------------------------------------------------------------------------

    def outputs(self) -> list[Path]:
        return [p for p in self._outputs(self.path) if p.exists()] if self.path.is_dir() else []

    def previous_identity(self) -> dict[str, Any] | None:
        if not self.run_file.is_file():
            return None
        content = read_json(self.run_file, "run record")
        if not isinstance(content, dict) or not isinstance(content.get("identity"), dict):
            raise VeraError(f"run record {self.run_file} is malformed (no 'identity'); delete it or use --overwrite")
        return content["identity"]

    def open(self) -> RunFolder:
        """Check, refuse or clear the folder as the module docstring says; write ``run.json``."""
        check_writable(self.path)
        try:
            previous = self.previous_identity()
        except VeraError:
            if not self.overwrite:
                raise
            previous = {}
        same = previous is not None and fingerprint(previous) == self.fingerprint
        if not same and (previous is not None or self.outputs()):
            if not self.overwrite:
                raise VeraError(f"output folder {self.path} {self._difference(previous)}; use another folder or "
                                "--overwrite to replace its contents")
            self.clear()
        self.resumed = same
        if not same:
            self.write_record()
        return self

    def _difference(self, previous: dict[str, Any] | None) -> str:
        if previous is None:
            return "holds files of an unknown run (no run.json)"
        if previous.get("kind") != self.kind:
            return f"holds a {previous.get('kind', 'different')} run, not {self.kind}"
        keys = sorted(k for k in set(previous) | set(self.identity) if previous.get(k) != self.identity.get(k))
        return f"was made with other settings ({', '.join(keys)} differ; see {self.run_file})"

    def clear(self) -> None:
        """Remove this run's outputs, its partial work and its record."""
        for path in self.outputs():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.run_file.unlink(missing_ok=True)

    def write_record(self, **extra: Any) -> None:
        self.record.update(extra)
        write_json_atomic(self.run_file, {"identity": self.identity, "fingerprint": self.fingerprint,
                                          **self.record, "versions": library_versions(), "created": now()})

    # -- work in progress ---------------------------------------------------------------------

    def partial_path(self, name: str) -> Path:
        return self.partial_dir / name

    def read_partial(self, name: str) -> Any | None:
        """Saved progress for ``name`` made by this configuration, else None (a damaged file costs only its work)."""
        path = self.partial_path(name)
        if not path.is_file():
            return None
        try:
            content = read_json(path, "partial progress file")
        except VeraError:
            return None
        if not isinstance(content, dict) or content.get("fingerprint") != self.fingerprint:
            return None
        return content.get("value")

    def write_partial(self, name: str, value: Any) -> None:
        write_json_atomic(self.partial_path(name), {"fingerprint": self.fingerprint, "value": value}, indent=None)

    def drop_partial(self, name: str) -> None:
        self.partial_path(name).unlink(missing_ok=True)

    def finish_json(self, name: str, value: Any, indent: int | None = 1) -> Path:
        """Write a finished item ``<folder>/<name>`` atomically and forget its partial progress."""
        path = self.path / name
        write_json_atomic(path, value, indent=indent)
        self.drop_partial(name)
        return path

    def write_summary(self, name: str, summary: dict[str, Any]) -> Path:
        path = self.path / name
        write_json_atomic(path, {**summary, "finished": now()})
        return path
