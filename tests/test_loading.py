"""Reading ahead in worker processes (``vera.data.loading``): the values and errors of a plain in-process
loop, in order; at most ``prefetch`` chunks read ahead of the caller; a killed or stuck worker or a failing
caller never leaves a hang or a process behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import cv2
import pytest
from fixtures.videos import decode_index, index_frame, write_index_video

import vera.data.loading
from vera.data.frames import open_frames
from vera.data.loading import ReadJob, default_workers, read_ahead
from vera.errors import InputWorkerError, VeraError


def read_index(frames, item):
    """Module-level, so that workers can run it: the index stamped on frame ``item[0]``, logged to ``item[1]``."""
    index, log = item
    with open(log, "a") as file:
        file.write(f"{frames.key} {index}\n")
    return decode_index(frames.read([index])[0])


def read_or_stop(frames, item):
    """Module-level, for the workers: ``read_index``, except that on ``("kill", ...)`` the worker kills itself
    and on ``("sleep", seconds, ...)`` it sleeps first."""
    if item[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if item[0] == "sleep":
        time.sleep(item[1])
        item = item[2:]
    return read_index(frames, item)


def write_folder(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), index_frame(index, (64, 48)))


def job(key: str, indices, log: Path, **where) -> ReadJob:
    return ReadJob(key, partial(open_frames, key, **where), read_index, [(index, str(log)) for index in indices])


def consume(jobs, workers: int, chunk: int, stop_after: dict | None = None) -> list:
    """What a caller sees: per job its frame count and values, or the error after the values before it."""
    seen = []
    with read_ahead(jobs, workers, chunk) as videos:
        for job_, reads in zip(jobs, videos, strict=True):
            values = []
            try:
                with reads as frames:
                    for value in reads:
                        values.append(value)
                        if len(values) == (stop_after or {}).get(job_.key):
                            break  # the caller abandons the job
                seen.append((job_.key, frames.num_frames, values))
            except VeraError as error:
                seen.append((job_.key, values, str(error)))
    return seen


def logged(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def sources(tmp_path: Path) -> dict:
    frames, videos = tmp_path / "frames", tmp_path / "videos"
    write_folder(frames / "a", 40)
    write_folder(frames / "bad", 30)
    (frames / "bad" / "000026.jpg").write_bytes(b"not a jpeg")
    write_folder(frames / "c", 7)
    write_index_video(videos / "v.mp4", 90, size=(64, 48))
    return {"frames": frames, "videos": videos, "log": tmp_path / "reads.log"}


def mixed_jobs(sources: dict) -> list[ReadJob]:
    frames, log = sources["frames"], sources["log"]
    return [job("a", range(40), log, frames_dir=frames), job("bad", range(0, 30, 2), log, frames_dir=frames),
            job("missing", [0], log, frames_dir=frames),
            job("v", [80, 3, 3, 40, 89], log, videos_dir=sources["videos"]), job("c", range(7), log, frames_dir=frames)]


def test_workers_give_the_values_and_errors_of_the_in_process_loop(sources):
    in_process = consume(mixed_jobs(sources), workers=0, chunk=1)
    bad = sources["frames"] / "bad"
    assert [entry[:2] for entry in in_process] == [("a", 40), ("bad", list(range(0, 25, 2))), ("missing", []),
                                                   ("v", 90), ("c", 7)]
    assert in_process[1][2].startswith(f"video bad: cannot read frame 26 ({bad / '000026.jpg'}: ")
    assert in_process[2][2] == f"video missing: frame folder not found: {sources['frames'] / 'missing'}"
    assert [entry[2] for entry in in_process if entry[0] in "a v c"] == [list(range(40)), [80, 3, 3, 40, 89],
                                                                         list(range(7))]
    for workers, chunk in ((1, 4), (2, 3), (3, 50)):
        assert consume(mixed_jobs(sources), workers, chunk) == in_process, (workers, chunk)


def test_an_abandoned_job_is_not_read_further_and_the_next_ones_are_right(sources):
    for workers in (0, 2):
        sources["log"].unlink(missing_ok=True)
        seen = consume(mixed_jobs(sources), workers, chunk=4, stop_after={"a": 6, "v": 2})
        assert [entry[-1] for entry in seen[:1] + seen[3:]] == [[0, 1, 2, 3, 4, 5], [80, 3], list(range(7))]
        reads_of_a = [line for line in logged(sources["log"]) if line.startswith("a ")]
        # In process: the 6 taken. In workers a chunk at a time, at most 2 (the prefetch) beyond the one taken.
        assert len(reads_of_a) == 6 if workers == 0 else 8 <= len(reads_of_a) <= 16


def test_the_workers_read_at_most_prefetch_chunks_ahead_of_the_caller(sources):
    frames, log = sources["frames"], sources["log"]
    jobs = [job("a", range(40), log, frames_dir=frames), job("c", range(7), log, frames_dir=frames)]
    with read_ahead(jobs, workers=2, chunk=3) as videos:  # prefetch: max(2, workers) = 2 chunks
        reads = next(videos)
        with reads as opened:
            values = iter(reads)
            assert next(values) == 0 and opened.num_frames == 40
            time.sleep(2)  # time enough for the workers to read everything, were they not held back
            # The chunk taken (0-2) and the next two (3-8) of "a"; nothing yet of "c".
            assert sorted(logged(log)) == sorted(f"a {i}" for i in range(9))
            assert [next(values) for _ in range(36)] == list(range(1, 37))  # the 13th chunk of "a" taken (36-38)
            time.sleep(2)
            # Ahead of it now: the last of "a" (39) and the first chunk of "c" (0-2), on the other worker.
            assert sorted(logged(log)) == sorted([f"a {i}" for i in range(40)] + [f"c {i}" for i in range(3)])


def _alarm(seconds: int):
    def hung(*_):
        raise TimeoutError(f"no answer within {seconds} s: a hang")
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)


def killed_message(worker: int, key: str) -> str:
    return (rf"^input worker {worker} \(pid \d+\) was killed by signal 9 \(SIGKILL; out of memory\?\) while "
            rf"reading video {key}; the run stops here, rerun the same command to resume$")


def test_a_killed_worker_ends_the_run_with_a_clear_error_not_a_hang(sources):
    frames, log = sources["frames"], sources["log"]
    jobs = [job("a", range(40), log, frames_dir=frames)]
    _alarm(120)
    try:
        with pytest.raises(InputWorkerError, match=killed_message(0, "a")) as raised:
            with read_ahead(jobs, workers=1, chunk=2) as videos:
                reads = next(videos)
                with reads:
                    for value in reads:
                        if value == 0:
                            [worker] = multiprocessing.active_children()
                            os.kill(worker.pid, signal.SIGKILL)
    finally:
        signal.alarm(0)
    assert f"(pid {worker.pid})" in str(raised.value)
    assert not multiprocessing.active_children()


def test_a_worker_that_kills_itself_names_its_own_video(sources):
    """Worker 1 dies on its first read of "v" (its second video) while the caller still takes "a" from worker 0."""
    frames, log = sources["frames"], sources["log"]
    dying = ReadJob("v", partial(open_frames, "v", videos_dir=sources["videos"]), read_or_stop,
                    [("kill", str(log))])
    jobs = [job("a", range(12), log, frames_dir=frames), job("c", range(7), log, frames_dir=frames),
            job("a", range(3), log, frames_dir=frames), dying]
    jobs[:3] = [replace(job_, read=read_or_stop) for job_ in jobs[:3]]
    taken = []
    _alarm(120)
    try:
        with pytest.raises(InputWorkerError, match=killed_message(1, "v")):
            with read_ahead(jobs, workers=2, chunk=2, prefetch=8) as videos:
                for reads in videos:
                    with reads:
                        taken += list(reads)
    finally:
        signal.alarm(0)
    # What the worker sent before it died comes through first, in order.
    assert taken == [*range(12), *range(7), *range(3)][:len(taken)]
    assert not multiprocessing.active_children()


def test_a_slow_read_is_waited_for_and_a_stuck_one_ends_the_run(sources, monkeypatch):
    frames, log = sources["frames"], sources["log"]
    monkeypatch.setattr(vera.data.loading, "POLL_S", 0.5)  # the DataLoader's timeout: its check of the workers
    jobs = [job("a", range(4), log, frames_dir=frames), job("c", range(3), log, frames_dir=frames)]
    def slow(seconds: float) -> list[ReadJob]:
        items = [("sleep", seconds, 0, str(log)), (1, str(log)), (2, str(log))]
        return [jobs[0], ReadJob("c", jobs[1].open, read_or_stop, items)]

    assert [values for _, _, values in consume(slow(1.2), workers=2, chunk=2)] == [[0, 1, 2, 3], [0, 1, 2]]
    _alarm(120)
    try:
        with pytest.raises(InputWorkerError, match=r"^input worker 1 \(pid \d+\) gave nothing for 5 s while "
                                                   r"reading video c \(stuck\?\); the run stops here"):
            with read_ahead(slow(6), workers=2, chunk=2, timeout_s=5) as videos:
                for reads in videos:
                    with reads:
                        list(reads)
    finally:
        signal.alarm(0)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("failure", [RuntimeError("the model failed"), KeyboardInterrupt()])
def test_a_failing_caller_leaves_no_worker_behind(sources, failure):
    jobs = mixed_jobs(sources)
    with pytest.raises(type(failure)):
        with read_ahead(jobs, workers=2, chunk=2) as videos:
            with next(videos) as _:
                pids = [process.pid for process in multiprocessing.active_children()]
                assert len(pids) == 2
                raise failure
    assert not multiprocessing.active_children()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_default_workers_share_the_cpus_of_the_machine(monkeypatch):
    for cpus, processes, expected in ((1, 1, 0), (2, 1, 1), (4, 1, 3), (64, 1, 4), (16, 8, 1), (8, 8, 0)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(cpus)))
        assert default_workers(processes) == expected, (cpus, processes)
