"""Step 1 with its frames read by worker processes (``--input-workers``): the same bytes as in process, on the
real clips with a scripted backend and with the tiny InternVL; the same failures for damaged videos; a killed
worker ends the run with a clear error, keeping the answers so far."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_step1 import index_answer, runner, video, wait_until_gone, write_index_folder
from fixtures.videos import decode_to_jpegs, write_problem_videos

from vera.errors import InputWorkerError
from vera.runs import LOCK_FILE
from vera.vlm.step1 import plan_segments
from vera.vlm.backends.scripted import ScriptedBackend

CLIPS = {"RoadAccidents133_x264_270_451": 181, "Fighting033_x264_570_841": 271,  # 320×240
         "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101": 256,  # 640×346
         "v=JfLYNEsrTew__#1_label_G-0-0_52_431": 379}  # 640×360


def pixel_answer(request) -> str:
    """An answer that names the exact bytes of the frames it was shown."""
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(image).tobytes() for image in request.images))
    return f"Answers to Prompt Questions: frames {digest.hexdigest()}\nOutput: {digest.digest()[0] % 2}"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file a run (Step 1's or the features') wrote, with the times in the summary taken out."""
    files = {}
    for path in sorted(path for path in folder.rglob("*") if path.is_file()):
        data = path.read_bytes()
        if path.name.startswith("summary"):
            summary = json.loads(data)
            for name in ("seconds", "seconds_per_generated_segment", "finished"):
                summary.pop(name, None)  # the features' summary has no time per segment
            data = json.dumps(summary).encode()
        elif path.name in ("run.json", LOCK_FILE):
            continue  # its creation time differs; the lock file names the process holding the folder
        files[str(path.relative_to(folder))] = data
    return files


def run_clips(backend, output: Path, workers: int, clips: list, **options) -> Path:
    runner(backend, output, input_workers=workers, **options).run([video(key, n) for key, n in clips])
    return output


@pytest.fixture(scope="module")
def clip_frames(shared_data, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip_frames")
    for key, length in CLIPS.items():
        assert decode_to_jpegs(shared_data / "clips" / f"{key}.mp4", folder / key) == length
    return folder


@pytest.mark.parametrize("source", ["videos", "frames"])
def test_workers_give_the_same_bytes_on_the_real_clips(shared_data, clip_frames, tmp_path, source):
    where = {"videos_dir": shared_data / "clips"} if source == "videos" else {"frames_dir": clip_frames}
    results = {}
    for workers in (0, 2):
        backend = ScriptedBackend(pixel_answer)
        # 448×448 frames, as a real run; batches of 5 straddle videos and the workers' chunks.
        out = run_clips(backend, tmp_path / f"out{workers}", workers, list(CLIPS.items()), image_size=448,
                        batch_size=5, **where)
        results[workers] = (folder_bytes(out), [request.key for request in backend.requests], backend.batch_sizes)
    files, keys, sizes = results[0]
    assert len(keys) == 12 + 17 + 16 + 24 and sizes == [5] * 13 + [4]
    assert len({json.loads(files[f"{key}.json"])["0"]["response"] for key in CLIPS}) == 4  # the frames differ
    assert results[2] == results[0]


def test_workers_give_the_same_bytes_with_the_tiny_internvl(shared_data, tiny_models, tmp_path, one_thread):
    clips = list(CLIPS.items())[:2]
    results = {}
    for workers in (0, 1):
        out = run_clips(tiny_models.backend("internvl"), tmp_path / f"out{workers}", workers, clips,
                        videos_dir=shared_data / "clips", image_size=448, batch_size=4, max_new_tokens=4)
        results[workers] = folder_bytes(out)
    assert set(results[0]) == {"summary.json", *[f"{key}.json" for key, _ in clips]}
    assert results[1] == results[0]


def test_damaged_short_and_unreadable_videos_fail_alike_in_workers(tmp_path):
    videos = tmp_path / "videos"
    bad = min(i for segment in plan_segments(200, 150) for i in segment.indices if i > 100)  # a frame shown
    write_problem_videos(videos, bad)
    annotated = [video("damaged", 200), video("good", 120), video("cut", 200), video("junk", 50)]
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        summary = runner(ScriptedBackend(index_answer), out, videos_dir=videos, batch_size=4,
                         input_workers=workers).run(annotated)
        results[workers] = (summary.failed, folder_bytes(out))
    failed, files = results[0]
    assert list(failed) == ["damaged", "cut", "junk"]
    assert failed["damaged"].startswith(f"video damaged: cannot decode frame {bad}: decoding fails at frame {bad}")
    assert failed["cut"].startswith(f"video cut: the annotation gives 200 frames but {videos / 'cut.mp4'} has ")
    assert failed["junk"].startswith(f"video junk: cannot open the video (corrupt or unsupported format?) "
                                     f"({videos / 'junk.mp4'}: ")
    assert set(files) == {".partial/damaged.json", "good.json", "summary.json"}  # answers before the damage kept
    assert results[2] == results[0]


def test_a_killed_input_worker_stops_the_run_with_a_clear_error_and_keeps_the_answers(tmp_path):
    frames = tmp_path / "frames"
    write_index_folder(frames / "v", 400, size=(40, 32))
    answered = []

    def respond(request):
        answered.append(request)
        if len(answered) == 6:  # in the second batch: kill the worker that reads ahead
            for process in multiprocessing.active_children():
                os.kill(process.pid, signal.SIGKILL)
        return index_answer(request)

    out = tmp_path / "out"
    with pytest.raises(InputWorkerError, match=r"^input worker 0 \(pid \d+\) was killed by signal 9 "
                                               r"\(SIGKILL; out of memory\?\) while reading video v; the run "
                                               r"stops here, rerun the same command to resume"):
        runner(ScriptedBackend(respond), out, frames_dir=frames, batch_size=4, input_workers=1).run([video("v", 400)])
    assert not multiprocessing.active_children()
    partial = json.loads((out / ".partial" / "v.json").read_text())["value"]["segments"]
    # The two batches answered, and those the worker had sent before it died (it reads 2 batches ahead).
    assert len(partial) in (8, 12, 16) and list(partial) == [str(c) for c in range(0, 16 * len(partial), 16)]


CTRL_C_SCRIPT = """
import multiprocessing, sys, time
from pathlib import Path
from fixtures.videos import decode_index
from vera.data.annotations import TestVideo
from vera.vlm.backends.scripted import ScriptedBackend
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE
from vera.constants import PRESET_QUESTIONS
from vera.vlm.step1 import Step1Runner, Step1Settings

def respond(request):
    if respond.calls == 0:
        print(*[process.pid for process in multiprocessing.active_children()], flush=True)  # the input workers
    respond.calls += 1
    time.sleep(0.2)  # a slow model: Ctrl-C comes while it works
    return "Output: 0"
respond.calls = 0

settings = Step1Settings(output=Path(sys.argv[1]) / "out", frames_dir=Path(sys.argv[1]) / "frames", batch_size=4,
                         image_size=64, progress=False, input_workers=2)
Step1Runner(ScriptedBackend(respond), DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], settings).run(
    [TestVideo("v", 400), TestVideo("w", 400)])
"""


def test_ctrl_c_stops_the_run_and_its_workers_and_keeps_the_answers(tmp_path):
    for key in ("v", "w"):
        write_index_folder(tmp_path / "frames" / key, 400, size=(40, 32))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        run = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(tmp_path)], cwd=root, env=env,
                               stdout=stdout, stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 120
        while not (tmp_path / "stdout").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C in a terminal: to the run and its workers
        run.wait(timeout=60)
    errors = (tmp_path / "stderr").read_text()
    assert errors.count("Traceback") == 1 and errors.rstrip().endswith("KeyboardInterrupt")  # workers print none
    workers = [int(pid) for pid in (tmp_path / "stdout").read_text().split()]
    assert len(workers) == 2 and wait_until_gone(workers, seconds=10)
    partial = json.loads((tmp_path / "out" / ".partial" / "v.json").read_text())["value"]["segments"]
    assert 4 <= len(partial) < 25 and len(partial) % 4 == 0  # whole batches answered before Ctrl-C
