"""Reading frames ahead of the model: torch's ``DataLoader`` over whole videos, in order.

A ``ReadJob`` is one video's reads: ``open()`` gives its ``VideoFrames``, then
``read(frames, item)`` runs for each item, in order (Step 1: an item is a
segment's frame indices, the result its resized frames; feature extraction:
an item is a batch's clip frames). ``read_ahead(jobs, workers, chunk)`` yields
one ``VideoReads`` per job, in job order; entering it opens the video
(``VeraError`` if that fails) and iterating it gives the read results in item
order, raising the ``VeraError`` of the first failing read after the results
before it. The caller handles a bad video exactly as it would in process.

``workers=0`` reads in this process, lazily, when the caller asks: the same
calls in the same order as a plain loop. With ``workers=N`` a ``DataLoader``
with N worker processes reads them. The jobs' items, cut into chunks of
``chunk``, form one list of chunks, video after video. Every worker walks that
whole list: a chunk of job ``j`` is read by worker ``j % N``, in the one open
``VideoFrames`` of the job, and the other workers give ``None`` in its place.
The ``DataLoader`` takes one item from each worker in turn, so the caller
receives the chunks in list order, and its ``prefetch_factor`` bounds how far
the workers run ahead: ``prefetch`` chunks of the list beyond the caller's
(default ``max(2, N)``, so that each worker can read one chunk of a short
video while the others read theirs). A video is read whole by one process with
the same calls as in process, so the results are identical and a bad video
fails with the same message. A job the caller leaves early is marked in shared
memory, and its worker reads no more of it.

A worker that dies (killed, out of memory) ends the run with an
``InputWorkerError`` naming it and the video it was reading, never a hang: the
``DataLoader`` waits for data ``POLL_S`` seconds at a time (its ``timeout``)
and checks its workers between waits (its worker-death error). A worker that
gives nothing for ``timeout_s`` seconds (stuck in a read) ends the run
likewise. Workers ignore Ctrl-C; leaving the ``read_ahead`` block (normally,
on an error, on Ctrl-C) stops them, and each ends by itself when the main
process is gone (killed hard, no block left).

Jobs cross to the workers by pickling, so ``open`` and ``read`` must be
module-level functions (or ``functools.partial`` of them). Workers are forked
from a server process (``forkserver``), not from this one (which holds threads
and maybe a GPU, which a forked child cannot use); the server imports torch
and the frame readers once, so a worker starts in a fraction of a second,
where a spawned one imports torch again (seconds). A worker imports what the
jobs name and what the main script imports, which therefore needs the
``if __name__ == "__main__"`` guard. A chunk's results come back packed in one
tensor in shared memory (``_pack``), so that the message in the pipe all
workers share stays small enough to be written whole; ``pin_memory`` (for a
model on a GPU) page-locks that tensor, so that the arrays' copy to the GPU
is faster.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vera.data.frames import VideoFrames
from vera.errors import InputWorkerError, VeraError

# One worker reads about 20 segments/s (benchmarks/RESULTS.md), more than a GPU takes; more workers help with
# many short videos and a loaded machine, and each holds a batch of frames.
MAX_AUTO_WORKERS = 4
# Longer than any one chunk's read (and a worker's start) takes: a worker silent this long is stuck.
TIMEOUT_S = 600.0
# How often a wait for data checks that the workers are alive (the DataLoader's own interval).
POLL_S = 5.0


@dataclass(frozen=True)
class ReadJob:
    """One video's reads: ``open()``, then ``read(frames, item)`` for each of ``items`` in order."""

    key: str
    open: Callable[[], VideoFrames]
    read: Callable[[VideoFrames, Any], Any]
    items: Sequence[Any]


@dataclass(frozen=True)
class FramesInfo:
    """What a worker reports of the video it opened: enough for the caller's checks and messages."""

    key: str
    num_frames: int
    fps: float | None
    source: Path


def _forget_inherited_forkserver() -> None:
    """In a process forked from one that had started the forkserver (Lightning's ``fork`` launcher): forget that
    server, so that this process starts its own. multiprocessing checks its server with ``waitpid``, which fails
    in any process but the server's parent."""
    server = multiprocessing.forkserver._forkserver
    if getattr(server, "_forkserver_pid", None) is None:
        return
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)  # the server lives while any process holds this open
    for name in ("_forkserver_address", "_forkserver_alive_fd", "_forkserver_pid", "_forkserver_authkey"):
        if hasattr(server, name):
            setattr(server, name, None)


os.register_at_fork(after_in_child=_forget_inherited_forkserver)


def default_workers(processes_per_machine: int = 1) -> int:
    """Workers per process: the CPUs this process may use, shared by the machine's processes, less one for the
    process itself, at most ``MAX_AUTO_WORKERS``; 0 (read in process) where that leaves none."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(processes_per_machine, 1) - 1))


def resolve_workers(requested: int | None, processes_per_machine: int = 1) -> int:
    """``--input-workers``: the number given, or for ``auto`` (None) ``default_workers``."""
    return default_workers(processes_per_machine) if requested is None else requested


# -- in process ------------------------------------------------------------------------------------

class _InProcess:
    """A job read here, lazily: opened on entering, one item per step of the iteration."""

    def __init__(self, job: ReadJob):
        self.job = job
        self.frames: VideoFrames | None = None

    def __enter__(self) -> VideoFrames:
        self.frames = self.job.open()
        return self.frames

    def __exit__(self, *exc_info: object) -> None:
        if self.frames is not None:
            self.frames.close()

    def __iter__(self) -> Iterator[Any]:
        for item in self.job.items:
            yield self.job.read(self.frames, item)


# -- in workers ------------------------------------------------------------------------------------

def _chunk_counts(jobs: Sequence[ReadJob], chunk: int) -> list[int]:
    return [-(-len(job.items) // chunk) for job in jobs]


def _pack(value: Any) -> torch.Tensor:
    """``value`` pickled into one uint8 tensor, its arrays out of band (copied once, aligned).

    The tensor crosses to the main process in shared memory, so the message in the ``DataLoader``'s pipe,
    which all workers share, is a few hundred bytes: a pipe write of at most 4096 bytes is whole or not at
    all, so a worker killed at any moment leaves no half message for the main process to wait on for ever.
    """
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    pieces = [memoryview(head), *(buffer.raw() for buffer in buffers)]
    table = 8 * (1 + 2 * len(pieces))  # the count, then each piece's offset and size, as int64
    offsets, end = [], table
    for piece in pieces:
        end = -(-end // 64) * 64
        offsets.append(end)
        end += piece.nbytes
    packed = torch.empty(end, dtype=torch.uint8)
    array = packed.numpy()
    array[:table].view(np.int64)[:] = [len(pieces), *offsets, *(piece.nbytes for piece in pieces)]
    for offset, piece in zip(offsets, pieces):
        array[offset:offset + piece.nbytes] = np.frombuffer(piece, dtype=np.uint8)
    return packed


def _unpack(packed: torch.Tensor) -> Any:
    """The value of ``_pack``; its arrays are views of ``packed``'s memory (no copy)."""
    array = packed.numpy()
    count = int(array[:8].view(np.int64)[0])
    table = array[8:8 * (1 + 2 * count)].view(np.int64).tolist()
    pieces = [array[offset:offset + size] for offset, size in zip(table[:count], table[count:])]
    return pickle.loads(pieces[0], buffers=pieces[1:])


def _end_with(parent: int) -> None:
    """Ends this worker as soon as the main process ``parent`` is gone, however it went: a forkserver's child
    outlives it otherwise (the server, its parent, lives on while its children hold it open)."""
    try:
        gone = os.pidfd_open(parent)
    except OSError:  # gone already
        os._exit(0)
    select.select([gone], [], [])  # readable once it has ended
    os._exit(0)


def _as_is(value: Any) -> Any:
    """The ``DataLoader``'s ``collate_fn``: results stay as the read function made them (no numpy to torch)."""
    return value


class _VideoChunks(IterableDataset):
    """The list of chunks, as one worker gives it: ``(position, _pack((info, values, error)))`` for a chunk of
    its own jobs, ``(position, None)`` for the others' and for the rest of a job that failed or was left."""

    def __init__(self, jobs: Sequence[ReadJob], chunk: int, left, pids, reading):
        self.jobs, self.chunk = list(jobs), chunk
        self.plan = [(job_id, index) for job_id, count in enumerate(_chunk_counts(jobs, chunk))
                     for index in range(count)]
        self.left = left  # shared: 1 for a job the caller left early
        self.pids = pids  # shared: each worker's pid
        self.reading = reading  # shared: the job each worker reads now
        self.parent = os.getpid()

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor | None]]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's; it then ends the workers
        threading.Thread(target=_end_with, args=(self.parent,), daemon=True).start()
        worker = get_worker_info()
        me, workers = worker.id, worker.num_workers
        self.pids[me] = os.getpid()
        frames: VideoFrames | None = None
        ended = False  # the current job failed or was left: nothing more of it is read
        try:
            for position, (job_id, index) in enumerate(self.plan):
                if job_id % workers != me:
                    yield position, None
                    continue
                if index == 0:
                    self.reading[me] = job_id
                    ended = False
                if ended or self.left[job_id]:
                    ended = True
                    if frames is not None:
                        frames.close()
                        frames = None
                    yield position, None
                    continue
                job = self.jobs[job_id]
                info, values, error = None, [], None
                try:
                    if index == 0:
                        frames = job.open()
                        info = FramesInfo(job.key, frames.num_frames, frames.fps, frames.source)
                    for item in job.items[index * self.chunk:(index + 1) * self.chunk]:
                        values.append(job.read(frames, item))
                except VeraError as failure:
                    error, ended = failure, True
                last = index + 1 == -(-len(job.items) // self.chunk)
                if frames is not None and (ended or last):
                    frames.close()
                    frames = None
                yield position, _pack((info, values, error))
        finally:
            if frames is not None:
                frames.close()


class _Workers:
    """The main process's side: the ``DataLoader``'s iterator, taken chunk by chunk in list order."""

    def __init__(self, jobs: Sequence[ReadJob], workers: int, chunk: int, prefetch: int, timeout_s: float,
                 pin_memory: bool):
        self.jobs = list(jobs)
        self.chunks = _chunk_counts(jobs, chunk)
        self.starts = [sum(self.chunks[:job_id]) for job_id in range(len(jobs))]
        self.workers = min(workers, len(jobs))
        self.timeout_s = timeout_s
        self.position = 0  # the first chunk of the list not taken yet
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["vera.data.loading"])  # torch and the frame readers, imported once
        self.left = context.RawArray("b", len(jobs))
        self.pids = context.RawArray("q", self.workers)
        self.reading = context.RawArray("q", [-1] * self.workers)
        loader = DataLoader(_VideoChunks(jobs, chunk, self.left, self.pids, self.reading), batch_size=None,
                            collate_fn=_as_is, num_workers=self.workers, prefetch_factor=prefetch,
                            pin_memory=pin_memory, timeout=min(POLL_S, timeout_s), multiprocessing_context=context)
        before = set(multiprocessing.active_children())
        self.iterator = iter(loader)
        self.processes = [p for p in multiprocessing.active_children() if p not in before]

    def take(self, job_id: int, index: int) -> tuple:
        """The ``(info, values, error)`` of chunk ``index`` of a job; chunks before it go unread."""
        target = self.starts[job_id] + index
        while True:
            # One item per worker, in worker order, for each chunk of the list.
            items = [self._next() for _ in range(self.workers)]
            position = self.position
            if any(got != position for got, _ in items):
                raise RuntimeError(f"input workers out of step: chunk {position} expected, got "
                                   f"{[got for got, _ in items]}")
            self.position += 1
            if position == target:
                return _unpack(items[job_id % self.workers][1])

    def leave(self, job_id: int) -> None:
        self.left[job_id] = 1

    def _next(self) -> tuple:
        """The next item of the ``DataLoader``; a dead or stuck worker as an ``InputWorkerError``."""
        waited = 0.0
        while True:
            try:
                return next(self.iterator)
            except (RuntimeError, OSError, EOFError) as error:
                # OSError, EOFError: a message's shared memory could not be fetched from a worker that just died.
                dead = self._dead(wait_s=0.0 if isinstance(error, RuntimeError) else POLL_S)
                if dead is not None:
                    raise dead from None
                if not str(error).startswith("DataLoader timed out"):
                    raise
            waited += min(POLL_S, self.timeout_s)
            if waited >= self.timeout_s:
                worker = self._waited_for() % self.workers
                raise InputWorkerError(f"input worker {worker} (pid {self.pids[worker]}) gave nothing for "
                                       f"{self.timeout_s:g} s while reading video {self._video(worker)} (stuck?); "
                                       "the run stops here, rerun the same command to resume")

    def _dead(self, wait_s: float = 0.0) -> InputWorkerError | None:
        """The error for a worker that died, if one did (within ``wait_s`` seconds)."""
        deadline = time.monotonic() + wait_s
        while (dead := self._dead_now()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return dead

    def _dead_now(self) -> InputWorkerError | None:
        for process in self.processes:
            code = process.exitcode if not process.is_alive() else None
            if not code:  # alive, or done: a worker that gave its whole list is let go
                continue
            how = (f"was killed by signal {-code} ({signal.Signals(-code).name}; out of memory?)" if code < 0
                   else f"exited with code {code}")
            worker = next((w for w, pid in enumerate(self.pids) if pid == process.pid), None)
            if worker is None:  # died before it began to read
                return InputWorkerError(f"an input worker (pid {process.pid}) {how} before it began to read; "
                                        "the run stops here, rerun the same command to resume")
            return InputWorkerError(f"input worker {worker} (pid {process.pid}) {how} while reading video "
                                    f"{self._video(worker)}; the run stops here, rerun the same command to resume")
        return None

    def _video(self, worker: int) -> str:
        job_id = self.reading[worker]
        return self.jobs[job_id if job_id >= 0 else self._waited_for()].key

    def _waited_for(self) -> int:
        """The job of the first chunk not taken: only its worker can hold the caller up."""
        position = min(self.position, sum(self.chunks) - 1)
        return max(job_id for job_id, start in enumerate(self.starts) if start <= position)

    def close(self) -> None:
        # The DataLoader stops its workers when its iterator is collected, which a traceback may put off.
        self.iterator._shutdown_workers()


class _InWorkers:
    """A job read by a worker: entering waits for its first chunk, iterating takes chunk after chunk."""

    def __init__(self, workers: _Workers, job_id: int):
        self.workers, self.job_id = workers, job_id
        self.first: tuple | None = None
        self.done = False

    def __enter__(self) -> FramesInfo:
        self.first = self.workers.take(self.job_id, 0)
        info, _, error = self.first
        if info is None:  # the open failed
            self.done = True
            raise error
        return info

    def __exit__(self, *exc_info: object) -> None:
        if not self.done:
            self.workers.leave(self.job_id)

    def __iter__(self) -> Iterator[Any]:
        for index in range(self.workers.chunks[self.job_id]):
            if index == 0:
                (_, values, error), self.first = self.first, None
            else:
                _, values, error = self.workers.take(self.job_id, index)
            yield from values
            if error is not None:
                self.done = True
                raise error
        self.done = True


VideoReads = _InProcess | _InWorkers


@contextmanager
def read_ahead(jobs: Sequence[ReadJob], workers: int = 0, chunk: int = 8, *, prefetch: int | None = None,
               timeout_s: float = TIMEOUT_S, pin_memory: bool = False) -> Iterator[Iterator[VideoReads]]:
    """One ``VideoReads`` per job, in order: ``with reads as frames`` opens, ``for value in reads`` reads.

    ``frames`` is the open ``VideoFrames`` in process, its ``FramesInfo`` with workers. Take the jobs in order
    and each job's values in order (stopping early is fine: a job left is not read further).
    """
    if workers < 0 or chunk < 1 or (prefetch is not None and prefetch < 1):
        raise ValueError(f"need workers >= 0, chunk >= 1 and prefetch >= 1, got {workers}, {chunk}, {prefetch}")
    if any(not job.items for job in jobs):
        raise ValueError("every job needs at least one item")
    if workers == 0 or not jobs:
        yield (_InProcess(job) for job in jobs)
        return
    reader = _Workers(jobs, workers, chunk, prefetch or max(2, workers), timeout_s, pin_memory)
    try:
        yield (_InWorkers(reader, job_id) for job_id in range(len(reader.jobs)))
    finally:
        reader.close()
