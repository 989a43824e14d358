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
A run that recomputes everything each time (the evaluation) stages its outputs
and swaps them in whole (``replace_outputs``), so no file of an earlier run is
left beside the new ones.

One writer per folder: ``check`` and ``open`` take an OS lock on
``<folder>/.lock`` (``fcntl.flock``) before they look at or change anything,
and the process keeps it until it exits (or ``release_folders``). The kernel
drops the lock with the process, so a kill -9 leaves nothing to clean: a lock
file left behind holds no lock. A second process is refused at once, naming
the holder's PID (written into the lock file). The same process may open a
folder again (``detect.py`` checks every folder, then each stage opens its
own); the ranks of a multi-process run are one writer, whose lock rank 0 holds.
The jobs of a sharded Step 1 run (``--shard I/N``) share the folder by design:
they hold it shared, and only a job that must clear it (``--overwrite``) needs
it alone.
``--overwrite`` replaces only a run of the same kind: a folder another stage
made is refused, naming that stage.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vera.errors import VeraError
from vera.io import read_json, save_npy_atomic, sha256_text, write_json_atomic

RUN_FILE = "run.json"
PARTIAL_DIR = ".partial"
LOCK_FILE = ".lock"


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
    """Create ``path`` if needed and prove it writable, or raise a one-line ``VeraError``.

    Writability is proven by creating a file: ``os.access`` answers for the
    real user id and ignores what the file system would refuse, so it says
    "writable" to root everywhere and to anyone on some network mounts.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VeraError(f"output {path} exists and is not a folder")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise VeraError(f"cannot create output folder {path}: {blocking} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VeraError(f"cannot create output folder {path}: {error.strerror or error}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vera-write-test-"):
            pass
    except OSError as error:
        raise VeraError(f"output folder {path} is not writable ({error.strerror or error})") from None


# -- one writer per folder ----------------------------------------------------------------------

# Folder (real path) → (lock file descriptor, the process that took it, whether shared). A forked child
# inherits the table and the lock with it, but must not remove the lock file of the process that took it.
_HELD: dict[str, tuple[int, int, bool]] = {}

# How torchrun, SLURM and Lightning tell a process its place in a run; any non-zero one: not rank 0.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_other_rank() -> bool:
    """Whether this process was started beside rank 0 of a multi-process run, which holds the folders for all."""
    return any(os.environ.get(name, "0").strip() not in ("", "0") for name in _RANK_VARIABLES)


def hold_folder(path: Path, shared: bool = False) -> None:
    """Lock the folder ``path`` for this process until it exits, or raise a one-line ``VeraError`` naming the
    process that holds it. Holding it already (or being another rank of a run) is fine. ``shared``: for the
    jobs of one sharded run, which write into one folder together."""
    key = os.path.realpath(path)
    if key in _HELD or is_other_rank():
        return
    lock = os.path.join(key, LOCK_FILE)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as error:
            raise VeraError(f"cannot lock output folder {path}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd) if isinstance(error, BlockingIOError) else None
            os.close(fd)
            if isinstance(error, BlockingIOError):
                raise VeraError(f"output folder {path} is in use by another run ({holder}); wait for it "
                                "to end or use another folder") from None
            raise VeraError(f"cannot lock output folder {path}: {error.strerror or error}") from None
        # A holder removes the file as it lets go: a lock won on a removed file guards nothing, so try again.
        if _same_file(lock, fd):
            break
        os.close(fd)
    if not shared:
        os.ftruncate(fd, 0)  # PIDs a killed holder left
    os.write(fd, f"{os.getpid()}\n".encode())  # one line per holder (the jobs of a sharded run add theirs)
    _HELD[key] = (fd, os.getpid(), shared)


@contextlib.contextmanager
def held_alone(path: Path) -> Iterator[None]:
    """Hold alone, for the time of the block, a folder this process holds shared (a sharded job's)."""
    held = _HELD.get(os.path.realpath(path))
    if held is None or not held[2]:
        yield
        return
    fd = held[0]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a refused conversion drops the shared lock: take it back
        raise VeraError(f"output folder {path} is in use by other jobs of a sharded run ({_holder(fd)}); "
                        "--overwrite cannot replace it while they run") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_SH)


def _same_file(path: str, fd: int) -> bool:
    try:
        found, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _holder(fd: int) -> str:
    """"process N" naming the holders, from the lock file (each writes its own just after taking the lock: wait a
    moment for it); those of processes that have ended are left out."""
    for _ in range(100):
        pids = [pid for pid in _pids(fd) if pid != os.getpid()]
        if pids:
            alive = [pid for pid in pids if _alive(pid)] or pids
            return f"process{'es' if len(alive) > 1 else ''} {', '.join(str(pid) for pid in alive)}"
        time.sleep(0.01)
    return "process unknown"


def _pids(fd: int) -> list[int]:
    text = os.pread(fd, 4096, 0).decode("ascii", errors="replace")
    return [int(line) for line in text.split() if line.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # another user's process
    return True


def held_folders() -> list[str]:
    """The folders this process holds (real paths)."""
    return sorted(_HELD)


def release_folders(path: Path | None = None) -> None:
    """Let go of the folders this process holds (all of them, or ``path``): remove the lock file, then unlock."""
    keys = list(_HELD) if path is None else [os.path.realpath(path)]
    for key in keys:
        held = _HELD.pop(key, None)
        if held is None:
            continue
        fd, owner, shared = held
        if owner != os.getpid():  # a forked child: the lock is its parent's, which keeps holding it
            os.close(fd)
            continue
        lock = os.path.join(key, LOCK_FILE)
        if shared:
            try:  # the last of the jobs sharing it removes the file; the others take their PID out of it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                others = [pid for pid in _pids(fd) if pid != owner]
                os.ftruncate(fd, 0)
                os.write(fd, "".join(f"{pid}\n" for pid in others).encode())
                os.close(fd)
                continue
        if _same_file(lock, fd):
            try:
                os.unlink(lock)
            except OSError:
                pass  # a folder removed or made read-only meanwhile: the file is harmless, the lock goes below
        os.close(fd)


atexit.register(release_folders)


class RunFolder:
    """The output folder of one run; see the module docstring.

    ``outputs`` lists what the run writes there (a callable on the folder), so
    that ``overwrite`` removes exactly those and nothing else the folder holds,
    and a folder holding outputs but no ``run.json`` is recognised as another
    run's. ``adopt_unrecorded`` takes such outputs as this run's instead: for
    frame folders, which the released script writes identically but without a
    record.
    """

    def __init__(self, path: Path, kind: str, identity: dict[str, Any], *, overwrite: bool = False,
                 outputs: Callable[[Path], Iterable[Path]] | None = None, record: dict[str, Any] | None = None,
                 adopt_unrecorded: bool = False, run_file: str = RUN_FILE, shared: bool = False):
        self.path = Path(path)
        self.kind = kind
        self.identity = {"kind": kind, **identity}
        self.fingerprint = fingerprint(self.identity)
        self.overwrite = overwrite
        self._outputs = outputs or (lambda folder: list(folder.iterdir()))
        self.adopt_unrecorded = adopt_unrecorded
        self.record = dict(record or {})
        self.run_file = self.path / run_file
        self.partial_dir = self.path / PARTIAL_DIR
        self.resumed = False
        self.shared = shared  # the jobs of a sharded run write into it together

    # -- opening ------------------------------------------------------------------------------

    def outputs(self) -> list[Path]:
        """This run's kind of outputs present in the folder (never ``run.json``, ``.partial`` or ``.lock``)."""
        if not self.path.is_dir():
            return []
        return [p for p in self._outputs(self.path)
                if p.name not in (self.run_file.name, PARTIAL_DIR, LOCK_FILE) and (p.exists() or p.is_symlink())]

    def previous_identity(self) -> dict[str, Any] | None:
        if not self.run_file.is_file():
            return None
        try:
            content = read_json(self.run_file, "run record")
        except VeraError as error:
            raise VeraError(f"{error}; delete it or use --overwrite") from None
        if not isinstance(content, dict) or not isinstance(content.get("identity"), dict):
            raise VeraError(f"run record {self.run_file} is malformed (no 'identity'); delete it or use --overwrite")
        return content["identity"]

    def check(self, hold: bool = True) -> bool:
        """Everything ``open`` checks, changing nothing but creating the folder; True if the run would resume.

        Commands call it before loading a model, so that a folder they may not
        use is refused at once. ``hold`` takes the folder's lock (see the
        module docstring) first; the other ranks of a run pass False.
        """
        return self._state(hold) == "resume"

    def _state(self, hold: bool = True) -> str:
        """"resume", "fresh" (nothing of another run here) or "conflict" (allowed only with overwrite)."""
        check_writable(self.path)
        if hold:
            hold_folder(self.path, self.shared)
        try:
            previous = self.previous_identity()
        except VeraError:
            if not self.overwrite:
                raise
            return "conflict"
        if previous is not None and fingerprint(previous) == self.fingerprint:
            return "resume"
        if previous is not None and previous.get("kind", self.kind) != self.kind:
            # Another stage's folder: its outputs are not this run's to replace, even with --overwrite.
            kind = str(previous["kind"])
            raise VeraError(f"output folder {self.path} holds {'an' if kind[:1] in 'aeiou' else 'a'} {kind} run, not "
                            f"{self.kind}; use another folder (--overwrite replaces only {self.kind} runs)")
        if previous is None and (self.adopt_unrecorded or not self.outputs()):
            return "fresh"
        if not self.overwrite:
            raise VeraError(f"output folder {self.path} {self._difference(previous)}; use another folder or "
                            "--overwrite to replace its contents")
        return "conflict"

    def open(self, hold: bool = True) -> RunFolder:
        """Check, refuse or clear the folder as the module docstring says; write ``run.json``."""
        state = self._state(hold)
        if state == "conflict":
            # Outputs of another configuration must not pass for results of this one.
            with held_alone(self.path):  # a sharded job clears only while no other job runs
                self.clear()
                self.write_record()
        elif state == "fresh":
            self.write_record()
        self.resumed = state == "resume"
        return self

    def _difference(self, previous: dict[str, Any] | None) -> str:
        if previous is None:
            return "holds files of an unknown run (no run.json)"
        keys = sorted(k for k in set(previous) | set(self.identity) if previous.get(k) != self.identity.get(k))
        return f"was made with other settings ({', '.join(keys)} differ; see {self.run_file})"

    def clear(self) -> None:
        """Remove this run's outputs, its partial work and its record."""
        for path in self.outputs():
            _remove(path)
        shutil.rmtree(self.partial_dir, ignore_errors=True)
        self.run_file.unlink(missing_ok=True)

    def release(self) -> None:
        """Let go of the folder before the process ends (``release_folders``)."""
        release_folders(self.path)

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

    def tidy(self) -> None:
        """Remove ``.partial`` once nothing is left in it, so a finished folder holds only results."""
        try:
            self.partial_dir.rmdir()
        except OSError:
            pass  # absent, or still holding work in progress

    # -- finished work ------------------------------------------------------------------------

    def finish_json(self, name: str, value: Any, indent: int | None = 1) -> Path:
        """Write a finished item ``<folder>/<name>`` atomically and forget its partial progress."""
        path = self.path / name
        write_json_atomic(path, value, indent=indent)
        self.drop_partial(name)
        return path

    def finish_npy(self, name: str, array: np.ndarray) -> Path:
        """Write a finished array ``<folder>/<name>`` atomically and forget its partial progress."""
        path = self.path / name
        save_npy_atomic(path, array)
        self.drop_partial(name)
        return path

    def write_summary(self, name: str, summary: dict[str, Any]) -> Path:
        path = self.path / name
        write_json_atomic(path, {**summary, "finished": now()})
        return path

    def replace_outputs(self, write: Callable[[Path], None], last: str | None = None) -> None:
        """Replace all of this run's outputs by what ``write(staging_folder)`` produces.

        The new outputs are written beside the old ones first (in ``.partial``),
        so a failure leaves the previous results whole. ``last`` (e.g.
        ``metrics.json``) is removed first and moved in last: where it exists,
        every other output belongs to the same run.
        """
        staging = self.partial_path("outputs")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            write(staging)
        except BaseException:
            # Half-written outputs are of no use to a rerun, which recomputes them; on a full disk they take its room.
            shutil.rmtree(staging, ignore_errors=True)
            self.tidy()
            raise
        if last is not None:
            (self.path / last).unlink(missing_ok=True)
        for path in self.outputs():
            _remove(path)
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == last):
            target = self.path / entry.name
            if target.exists() or target.is_symlink():
                _remove(target)
            entry.rename(target)
        staging.rmdir()
        self.tidy()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
