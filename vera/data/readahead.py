"""Reading frames ahead of their use, in worker processes, while the main process runs the model.

A ``ReadJob`` is one video's reads: ``open()`` gives its ``VideoFrames``, then
``read(frames, item)`` runs for each item, in order (Step 1: an item is a
segment's frame indices, the result its resized frames). ``read_ahead(jobs,
workers, chunk)`` yields one ``VideoReads`` per job, in job order; entering it
opens the video (``VeraError`` if that fails) and iterating it gives the read
results in item order, raising the ``VeraError`` of the first failing read
after the results before it. The caller handles a bad video exactly as it
would in process.

``workers=0`` reads in this process, lazily, when the caller asks: the same
calls in the same order as a plain loop. With ``workers=N`` the jobs are
spread over N processes. Each job is read whole by one process, in item order,
through one open ``VideoFrames``, the same calls as in process, so the results
are identical and a bad video fails with the same message. A worker reads
``chunk`` items at a time and only one chunk ahead of the caller (it waits
until the caller takes it before reading on): memory stays about ``workers``
chunks beyond the caller's own. A thread here takes each chunk off the pipe as
soon as it is read, so the copy overlaps the caller's work. When a job is
done, its worker takes the next unstarted job, so several videos are read at
once, but one long video is read by one process.

A worker that dies (killed, out of memory) ends the run with an
``InputWorkerError`` naming it and the video, never a hang: each worker has
its own pipes, whose other ends only it holds, so its death is an end of
file. Workers ignore Ctrl-C; leaving the ``read_ahead`` block (normally, on an
error, on Ctrl-C) terminates them.

Jobs cross to the workers by pickling, so ``open`` and ``read`` must be
module-level functions (or ``functools.partial`` of them) of modules that are
cheap to import. Workers are spawned, not forked (the main process holds
threads and maybe a GPU): a worker imports what the jobs name and what the
main script imports, which therefore needs the ``if __name__ == "__main__"``
guard.

Not ``concurrent.futures``: its pool gives a task to any free process, while a
video's reads must stay in one process, in order, to be the in-process reads;
and its result pipe is shared and held open by the main process, so a worker
killed in the middle of an answer leaves the reader waiting for ever.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from vera.data.frames import VideoFrames
from vera.errors import VeraError

# One worker reads about 20 segments/s (benchmarks/RESULTS.md), more than a GPU takes; more workers help with
# many short videos and a loaded machine, and each holds a batch of frames.
MAX_AUTO_WORKERS = 4


class InputWorkerError(RuntimeError):
    """A worker process stopped without answering (killed, out of memory) or failed unexpectedly."""


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

def _worker_main(tasks: Connection, results: Connection) -> None:
    """A worker: read the chunks it is sent, one at a time, and send back what it read."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's; it then ends the workers
    current: tuple[int, VideoFrames] | None = None  # the job being read and its open video
    try:
        while True:
            try:
                task = tasks.recv()
            except EOFError:  # the main process is gone or done
                return
            job_id, key, open_, read, items, last = task
            if current is not None and current[0] != job_id:
                current[1].close()
                current = None
            info, values, error = None, [], None
            try:
                if current is None:
                    frames = open_()
                    current = (job_id, frames)
                    info = FramesInfo(key, frames.num_frames, frames.fps, frames.source)
                for item in items:
                    values.append(read(current[1], item))
            except VeraError as failure:
                error = failure
            if current is not None and (error is not None or last):
                current[1].close()
                current = None
            try:
                results.send(("ok", info, values, error))
            except (BrokenPipeError, ConnectionResetError):  # the main process stopped listening
                return
    except BaseException:  # a bug or an out-of-memory: reported to the main process, which stops the run
        try:
            results.send(("crash", traceback.format_exc()))
        except OSError:
            pass


@dataclass
class _Task:
    job_id: int
    chunk: int


class _Worker:
    """The main process's end of one worker: its process, its pipes and the task it was given."""

    def __init__(self, context: multiprocessing.context.BaseContext, index: int):
        task_reader, self.tasks = context.Pipe(duplex=False)
        self.results, result_writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_worker_main, args=(task_reader, result_writer),
                                       name=f"vera-input-{index}", daemon=True)
        self.process.start()
        # Only the worker holds these ends now: its death reads as an end of file here.
        task_reader.close()
        result_writer.close()
        self.task: _Task | None = None  # the chunk it reads, or read and waits to be taken
        self.job: int | None = None  # the job it reads
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # its answers, None once it is gone
        self.receiver = threading.Thread(target=self._receive_all, name=f"{self.process.name}-receiver", daemon=True)
        self.receiver.start()

    def _receive_all(self) -> None:
        """Take each answer off the pipe as it comes: the copy then overlaps the caller's work (the model's)."""
        while True:
            try:
                message = self.results.recv()
            except (EOFError, OSError):  # OSError: the end came in the middle of a message
                self.inbox.put(None)
                return
            self.inbox.put(message)

    def died(self, key: str) -> InputWorkerError:
        self.process.join(timeout=5)
        code = self.process.exitcode
        how = ("is still running but closed its pipe" if code is None
               else f"was killed by signal {-code} ({signal.Signals(-code).name}; out of memory?)" if code < 0
               else f"exited with code {code} (its error is printed above)")
        return InputWorkerError(f"input worker {self.process.name} (pid {self.process.pid}) {how} while reading "
                                f"video {key}; the run stops here, rerun the same command to resume")

    def stop(self) -> None:
        self.tasks.close()  # an idle worker ends at this end of file
        if self.process.is_alive():
            self.process.terminate()  # it may be in the middle of a read: nothing of it is needed
        self.process.join(timeout=10)
        if self.process.is_alive():  # ignored the terminate (stuck in a read): no waiting on it for ever
            self.process.kill()
            self.process.join()
        self.receiver.join()  # the worker's end is closed now: the receiver sees the end of file
        self.results.close()


class _Pool:
    """Hands jobs to workers, a chunk at a time, and takes the results back in job order."""

    def __init__(self, jobs: Sequence[ReadJob], workers: int, chunk: int):
        self.jobs = list(jobs)
        self.chunk = chunk
        self.chunks = [-(-len(job.items) // chunk) for job in self.jobs]
        self.sent = [0] * len(self.jobs)  # chunks of each job handed out so far
        self.ended = [False] * len(self.jobs)  # failed in the worker or abandoned by the caller
        self.owner: dict[int, _Worker] = {}
        self.next_job = 0  # the first job no worker has started
        context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads and a GPU
        self.workers: list[_Worker] = []
        try:
            for index in range(min(workers, len(self.jobs))):
                self.workers.append(_Worker(context, index))
                self._feed(self.workers[-1])
        except BaseException:
            self.close()
            raise

    def _feed(self, worker: _Worker) -> None:
        """Give an idle worker its next chunk: the rest of its job, else the next job no worker has started."""
        job_id = worker.job
        if job_id is None or self.ended[job_id] or self.sent[job_id] == self.chunks[job_id]:
            if self.next_job == len(self.jobs):
                worker.job = None
                return
            job_id, self.next_job = self.next_job, self.next_job + 1
            self.owner[job_id] = worker
            worker.job = job_id
        chunk = self.sent[job_id]
        self.sent[job_id] += 1
        job = self.jobs[job_id]
        worker.task = _Task(job_id, chunk)
        items = job.items[chunk * self.chunk:(chunk + 1) * self.chunk]
        try:
            worker.tasks.send((job_id, job.key, job.open, job.read, items, chunk + 1 == self.chunks[job_id]))
        except OSError:  # BrokenPipeError: the worker is gone
            raise worker.died(job.key) from None

    def _receive(self, worker: _Worker) -> tuple:
        """The answer to the worker's task; the worker gets its next one at once."""
        task = worker.task
        key = self.jobs[task.job_id].key
        message = worker.inbox.get()
        if message is None:
            raise worker.died(key)
        if message[0] == "crash":
            raise InputWorkerError(f"input worker {worker.process.name} failed while reading video {key}:\n"
                                   f"{message[1]}")
        _, info, values, error = message
        if error is not None:
            self.ended[task.job_id] = True
        worker.task = None
        self._feed(worker)
        return info, values, error

    def take(self, job_id: int, chunk: int) -> tuple:
        """The ``(info, values, error)`` of a job's chunk; the caller takes chunks in order."""
        while job_id not in self.owner:  # every worker is still on a job the caller abandoned
            self._receive(next(w for w in self.workers if w.task and self.ended[w.task.job_id]))
        worker = self.owner[job_id]
        while worker.task != _Task(job_id, chunk):  # answers to abandoned jobs go unread
            self._receive(worker)
        return self._receive(worker)

    def abandon(self, job_id: int) -> None:
        self.ended[job_id] = True

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


class _InWorkers:
    """A job read by a worker: entering waits for its first chunk, iterating takes chunk after chunk."""

    def __init__(self, pool: _Pool, job_id: int):
        self.pool, self.job_id = pool, job_id
        self.first: tuple | None = None
        self.done = False

    def __enter__(self) -> FramesInfo:
        self.first = self.pool.take(self.job_id, 0)
        info, _, error = self.first
        if info is None:  # the open failed
            self.done = True
            raise error
        return info

    def __exit__(self, *exc_info: object) -> None:
        if not self.done:
            self.pool.abandon(self.job_id)

    def __iter__(self) -> Iterator[Any]:
        for chunk in range(self.pool.chunks[self.job_id]):
            if chunk == 0:
                (_, values, error), self.first = self.first, None
            else:
                _, values, error = self.pool.take(self.job_id, chunk)
            yield from values
            if error is not None:
                self.done = True
                raise error
        self.done = True


VideoReads = _InProcess | _InWorkers


@contextmanager
def read_ahead(jobs: Sequence[ReadJob], workers: int = 0, chunk: int = 8) -> Iterator[Iterator[VideoReads]]:
    """One ``VideoReads`` per job, in order: ``with reads as frames`` opens, ``for value in reads`` reads.

    ``frames`` is the open ``VideoFrames`` in process, its ``FramesInfo`` with workers. Take the jobs in order
    and each job's values in order (stopping early is fine: an abandoned job is not read further).
    """
    if workers < 0 or chunk < 1:
        raise ValueError(f"need workers >= 0 and chunk >= 1, got {workers} and {chunk}")
    if any(not job.items for job in jobs):
        raise ValueError("every job needs at least one item")
    if workers == 0:
        yield (_InProcess(job) for job in jobs)
        return
    pool = _Pool(jobs, workers, chunk)
    try:
        yield (_InWorkers(pool, job_id) for job_id in range(len(pool.jobs)))
    finally:
        pool.close()
