"""One writer per output folder, through the real scripts with real processes: a second run on a held folder is
refused in one line naming the folder and the holder's PID and changes nothing; a kill -9 leaves nothing to clean;
``--overwrite`` never replaces another stage's folder; a full disk is one line and the rerun gives the same bytes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.scoring import small_scoring_set
from fixtures.scripts import ROOT
from vera.errors import VeraError
from vera.runs import LOCK_FILE, RUN_FILE, RunFolder

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
TIMEOUT_S = 120

# A compute_auc.py run that holds its folder and waits, once it has checked it, until the file argv[1] exists.
PAUSED_COMPUTE_AUC = """
import sys, time
from pathlib import Path
import vera.scoring.evaluate as evaluation
sys.path.insert(0, "tests")  # the tests' own helpers; the process runs in the project root
from fixtures.scripts import run

go, real = Path(sys.argv[1]), evaluation.evaluate
def paused(*args, **kwargs):
    print("holding", flush=True)
    while not go.exists():
        time.sleep(0.02)
    return real(*args, **kwargs)
evaluation.evaluate = paused
sys.exit(run("compute_auc", sys.argv[2:]))
"""

# Step 1 (its library, a scripted model) into argv[2] on the frames argv[1] with the ucf questions; it waits
# before its argv[4]-th answer until the file argv[3] exists; argv[5] is its --shard.
PAUSED_STEP1 = """
import sys, time
from pathlib import Path
from vera.data.annotations import TestVideo
from vera.vlm.backends.scripted import ScriptedBackend
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE
from vera.constants import PRESET_QUESTIONS
from vera.vlm.step1 import Step1Runner, Step1Settings

frames, out, go = (Path(arg) for arg in sys.argv[1:4])
pause_at, shard = int(sys.argv[4]), tuple(int(part) for part in sys.argv[5].split("/"))
answered = 0
def respond(request):
    global answered
    answered += 1
    if answered == pause_at:
        print("holding", flush=True)
        while not go.exists():
            time.sleep(0.02)
    return answer(request)

def answer(request):  # as brightness_answer in the test
    brightness = int(request.images[0].mean())
    return f"Answers to Prompt Questions: brightness {brightness}\\nOutput: {brightness % 2}"

settings = Step1Settings(output=out, frames_dir=frames, batch_size=1, image_size=32, progress=False, shard=shard)
Step1Runner(ScriptedBackend(respond), DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], settings).run(
    [TestVideo("v1", 40), TestVideo("v2", 40)])
"""


def brightness_answer(request) -> str:
    brightness = int(request.images[0].mean())
    return f"Answers to Prompt Questions: brightness {brightness}\nOutput: {brightness % 2}"


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the lock file too: a refused run must not touch it either)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def results(folder: Path) -> dict[str, bytes]:
    """What a finished run leaves, less its record (which holds its creation time)."""
    return {name: data for name, data in folder_bytes(folder).items() if name != RUN_FILE}


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / name), *args], env=ENV, cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@contextlib.contextmanager
def paused(code: str, *args: str) -> Iterator[subprocess.Popen]:
    """A process running ``code`` that has said "holding" (it then waits for its go file); killed if left."""
    process = subprocess.Popen([sys.executable, "-c", code, *args], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line == "holding\n", f"{line!r} {process.stderr.read() if process.poll() is not None else ''}"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=TIMEOUT_S)


def in_use(folder: Path, pid: int) -> str:
    return f"error: output folder {folder} is in use by another run (process {pid}); wait for it to end or use " \
           "another folder\n"


@pytest.fixture
def scoring_inputs(tmp_path: Path) -> list[str]:
    """compute_auc.py's inputs (four videos, generated scores and features) as options, less --output."""
    annotation, _ = small_scoring_set(tmp_path)
    return ["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(tmp_path / "scores"),
            "--features", str(tmp_path / "features")]


def test_two_compute_auc_runs_on_one_folder_the_second_is_refused_and_changes_nothing(scoring_inputs, tmp_path):
    lone = tmp_path / "lone"
    assert script("Inference/compute_auc.py", *scoring_inputs, "--output", str(lone)).returncode == 0
    out, go = tmp_path / "out", tmp_path / "go"
    with paused(PAUSED_COMPUTE_AUC, str(go), *scoring_inputs, "--output", str(out)) as first:
        assert (out / LOCK_FILE).read_text() == f"{first.pid}\n"
        before = folder_bytes(out)
        for extra in ([], ["--skip-step2", "--overwrite"]):
            second = script("Inference/compute_auc.py", *scoring_inputs, "--output", str(out), *extra)
            assert (second.returncode, second.stderr, second.stdout) == (2, in_use(out, first.pid), "")
            assert folder_bytes(out) == before
        go.touch()
        assert first.wait(timeout=TIMEOUT_S) == 0, first.stderr.read()
    assert results(out) == results(lone) and "roc.png" in results(out)
    assert not (out / LOCK_FILE).exists()  # let go at the end


def test_a_step1_run_on_a_held_folder_is_refused_even_with_overwrite_and_another_preset(tmp_path):
    from test_step1 import read_outputs, runner, write_index_folder

    from vera.data.annotations import TestVideo
    from vera.vlm.backends.scripted import ScriptedBackend

    for key in ("v1", "v2"):
        write_index_folder(tmp_path / "frames" / key, 40)
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([{"video": f"frames/Fighting/{key}.mp4", "temporal_label": [-1, -1, -1, -1],
                                       "length": 40} for key in ("v1", "v2")]))
    model = tmp_path / "model"
    model.mkdir()
    # The second run is refused before its model loads: its config is all it reads.
    (model / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    out, lone, go = tmp_path / "out", tmp_path / "lone", tmp_path / "go"
    runner(ScriptedBackend(brightness_answer), lone, frames_dir=tmp_path / "frames", batch_size=1,
           image_size=32).run([TestVideo("v1", 40), TestVideo("v2", 40)])
    # Paused before its fifth answer: the first video done, the second begun.
    with paused(PAUSED_STEP1, str(tmp_path / "frames"), str(out), str(go), "5", "0/1") as first:
        before = folder_bytes(out)
        assert "v1.json" in before and (out / LOCK_FILE).read_text() == f"{first.pid}\n"
        second = script("Inference/generate_initial_score.py", "--dataset", "ucf", "--annotations", str(annotation),
                        "--frames", str(tmp_path / "frames"), "--model", str(model), "--preset", "xd",
                        "--overwrite", "--device", "cpu", "--no-progress", "--output", str(out))
        assert (second.returncode, second.stderr) == (2, in_use(out, first.pid))
        assert folder_bytes(out) == before
        go.touch()
        assert first.wait(timeout=TIMEOUT_S) == 0, first.stderr.read()
    assert read_outputs(out) == read_outputs(lone) and set(read_outputs(out)) == {"v1", "v2"}
    from vera.constants import PRESET_QUESTIONS

    assert json.loads((out / RUN_FILE).read_text())["identity"]["questions"] == PRESET_QUESTIONS["ucf"]


def test_the_jobs_of_a_sharded_step1_run_share_the_folder_and_an_unsharded_run_is_refused(tmp_path):
    from test_step1 import read_outputs, runner, write_index_folder

    from vera.data.annotations import TestVideo
    from vera.runs import release_folders
    from vera.vlm.backends.scripted import ScriptedBackend

    videos = [TestVideo("v1", 40), TestVideo("v2", 40)]
    for video in videos:
        write_index_folder(tmp_path / "frames" / video.key, 40)
    out, lone, go = tmp_path / "out", tmp_path / "lone", tmp_path / "go"
    runner(ScriptedBackend(brightness_answer), lone, frames_dir=tmp_path / "frames", batch_size=1,
           image_size=32).run(videos)
    with paused(PAUSED_STEP1, str(tmp_path / "frames"), str(out), str(go), "2", "0/2") as first:
        # The other job (this process) runs beside it, and so may an overwrite of nothing.
        runner(ScriptedBackend(brightness_answer), out, frames_dir=tmp_path / "frames", batch_size=1,
               image_size=32, shard=(1, 2), overwrite=True).run(videos)
        release_folders()
        assert set(read_outputs(out)) == {"v2"}
        # A run of the whole folder is refused while a job holds it.
        with pytest.raises(VeraError, match=f"^output folder {out} is in use by another run \\(process {first.pid}\\)"):
            runner(ScriptedBackend(brightness_answer), out, frames_dir=tmp_path / "frames").run(videos)
        # So is a job that would replace the folder (another configuration, --overwrite).
        with pytest.raises(VeraError, match=f"^output folder {out} is in use by other jobs of a sharded run "
                                            f"\\(process {first.pid}\\); --overwrite cannot replace it"):
            runner(ScriptedBackend(brightness_answer), out, frames_dir=tmp_path / "frames", shard=(1, 2),
                   fps=25.0, overwrite=True).run(videos)
        release_folders()
        assert set(read_outputs(out)) == {"v2"}
        go.touch()
        assert first.wait(timeout=TIMEOUT_S) == 0, first.stderr.read()
    assert read_outputs(out) == read_outputs(lone)
    assert not (out / LOCK_FILE).exists()  # the last job out removed it


def test_a_holder_killed_hard_leaves_a_lock_file_that_blocks_nothing(scoring_inputs, tmp_path):
    lone = tmp_path / "lone"
    assert script("Inference/compute_auc.py", *scoring_inputs, "--output", str(lone)).returncode == 0
    out = tmp_path / "out"
    with paused(PAUSED_COMPUTE_AUC, str(tmp_path / "never"), *scoring_inputs, "--output", str(out)) as first:
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=TIMEOUT_S) == -signal.SIGKILL
    assert (out / LOCK_FILE).read_text() == f"{first.pid}\n"  # the file stays; the kernel dropped the lock
    rerun = script("Inference/compute_auc.py", *scoring_inputs, "--output", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert results(out) == results(lone) and not (out / LOCK_FILE).exists()


def test_overwrite_never_replaces_a_folder_another_stage_made(scoring_inputs, tmp_path):
    step1 = tmp_path / "step1"
    RunFolder(step1, "step1", {"model": "m"}).open().finish_json("v.json", {"0": {"score": 1}})
    RunFolder(step1, "step1", {"model": "m"}).release()
    before = folder_bytes(step1)
    result = script("Inference/compute_auc.py", *scoring_inputs, "--output", str(step1), "--overwrite")
    assert (result.returncode, result.stderr) == (
        2, f"error: output folder {step1} holds a step1 run, not evaluation; use another folder (--overwrite "
           "replaces only evaluation runs)\n")
    assert folder_bytes(step1) == before


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 1 MiB tmpfs (the tests run as root on the project's machines; elsewhere this test skips)."""
    mount = Path(tempfile.mkdtemp(prefix="vera-small-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def fill(disk: Path, leave: int) -> Path:
    """A file taking all but about ``leave`` bytes of ``disk``."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_is_one_line_keeps_the_results_and_the_rerun_gives_the_same_bytes(scoring_inputs, tmp_path,
                                                                                     small_disk):
    lone = tmp_path / "lone"
    assert script("Inference/compute_auc.py", *scoring_inputs, "--output", str(lone)).returncode == 0
    out = small_disk / "out"
    assert script("Inference/compute_auc.py", *scoring_inputs, "--output", str(out), "--no-curves").returncode == 0
    before = folder_bytes(out)
    filler = fill(small_disk, leave=16 * 1024)  # room for the frame scores, not for the curves
    full = script("Inference/compute_auc.py", *scoring_inputs, "--output", str(out))
    assert full.returncode == 2 and full.stderr.count("\n") == 1, full.stderr
    assert full.stderr.startswith(f"error: {out / '.partial' / 'outputs'}/")
    assert full.stderr.endswith(": no space left on device; finished work is saved: free some space and rerun the "
                                "same command to resume\n")
    assert folder_bytes(out) == before  # the earlier results whole, nothing half-written beside them
    filler.unlink()
    rerun = script("Inference/compute_auc.py", *scoring_inputs, "--output", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert results(out) == results(lone)


def test_a_full_disk_in_step1_keeps_the_answers_and_the_rerun_gives_the_same_bytes(tmp_path, small_disk, capsys):
    """Step 1 writes its progress and answers through vera.io: the path of the write that failed is named."""
    from test_step1 import read_outputs, runner, write_index_folder

    from vera.data.annotations import TestVideo
    from vera.errors import run_cli
    from vera.vlm.backends.scripted import ScriptedBackend

    for key in ("v1", "v2", "v3"):
        write_index_folder(tmp_path / "frames" / key, 200)
    videos = [TestVideo(key, 200) for key in ("v1", "v2", "v3")]

    def answer(request):
        return "Answers to Prompt Questions: " + "long text " * 400 + f"\nOutput: {int(request.images[0].mean()) % 2}"

    def run(output: Path) -> int:
        return run_cli(lambda argv: runner(ScriptedBackend(answer), output, frames_dir=tmp_path / "frames",
                                           batch_size=4, image_size=32).run(videos) and 0)

    assert run(tmp_path / "lone") == 0
    out = small_disk / "out"
    filler = fill(small_disk, leave=96 * 1024)
    capsys.readouterr()
    assert run(out) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {out}/") and error.count("\n") == 1
    assert error.endswith(": no space left on device; finished work is saved: free some space and rerun the same "
                          "command to resume\n")
    filler.unlink()
    assert set(read_outputs(out)) < {"v1", "v2", "v3"}
    assert run(out) == 0
    assert read_outputs(out) == read_outputs(tmp_path / "lone")
