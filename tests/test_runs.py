"""vera.runs: identity, resume, refusal, overwrite, partial progress and output replacement of run folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vera.errors import VeraError
from fixtures.unprivileged import read_only_folder, unprivileged, world_readable_tmp
from vera.runs import LOCK_FILE, PARTIAL_DIR, RUN_FILE, RunFolder, check_writable

IDENTITY = {"model": "tiny", "fps": 30, "questions": ["Is there a fight?"]}


def outputs(folder: Path) -> list[Path]:
    """What the test runs write: ``*.json`` results (not the record) and the ``scores`` folder."""
    return [p for p in folder.glob("*.json") if p.name != RUN_FILE] + [folder / "scores"]


def folder(path: Path, identity: dict | None = None, **options) -> RunFolder:
    return RunFolder(path, "test", IDENTITY if identity is None else identity, outputs=outputs, **options)


def test_a_fresh_folder_is_created_and_recorded(tmp_path):
    run = folder(tmp_path / "a" / "b", record={"prompt": "p"}).open()
    assert not run.resumed
    record = json.loads((tmp_path / "a" / "b" / RUN_FILE).read_text())
    assert record["identity"] == {"kind": "test", **IDENTITY}
    assert record["fingerprint"] == run.fingerprint and len(run.fingerprint) == 64
    assert record["prompt"] == "p" and record["created"] and record["versions"]["python"]
    # The write probe leaves nothing; the lock file names this process while it holds the folder.
    assert sorted(os.listdir(tmp_path / "a" / "b")) == [LOCK_FILE, RUN_FILE]
    assert (tmp_path / "a" / "b" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    run.release()
    assert sorted(os.listdir(tmp_path / "a" / "b")) == [RUN_FILE]


def test_the_same_identity_resumes_and_keeps_outputs_and_record(tmp_path):
    first = folder(tmp_path).open()
    first.finish_json("v.json", {"0": 1})
    first.write_partial("w.json", {"done": 3})
    record = (tmp_path / RUN_FILE).read_bytes()
    # Key order does not matter; the values do.
    again = folder(tmp_path, dict(reversed(list(IDENTITY.items())))).open()
    assert again.resumed and again.fingerprint == first.fingerprint
    assert (tmp_path / RUN_FILE).read_bytes() == record
    assert json.loads((tmp_path / "v.json").read_text()) == {"0": 1}
    assert again.read_partial("w.json") == {"done": 3}
    # --overwrite with the same settings has nothing of another run to replace: it resumes too.
    assert folder(tmp_path, overwrite=True).open().resumed
    assert (tmp_path / "v.json").exists() and again.read_partial("w.json") == {"done": 3}


def test_another_identity_is_refused_naming_what_differs(tmp_path):
    folder(tmp_path).open().finish_json("v.json", {})
    other = {**IDENTITY, "fps": 24, "questions": ["Other?"], "extra": 1}
    with pytest.raises(VeraError) as error:
        folder(tmp_path, other).open()
    assert str(error.value) == (f"output folder {tmp_path} was made with other settings (extra, fps, questions "
                                f"differ; see {tmp_path / RUN_FILE}); use another folder or --overwrite to replace "
                                "its contents")
    with pytest.raises(VeraError, match=f"output folder {tmp_path} holds a test run, not features;"):
        RunFolder(tmp_path, "features", IDENTITY, outputs=outputs).open()
    # check() refuses the same way and changes nothing.
    with pytest.raises(VeraError, match="fps, questions differ"):
        folder(tmp_path, other).check()
    assert json.loads((tmp_path / RUN_FILE).read_text())["identity"]["fps"] == 30


def test_the_refusal_names_the_other_kind_with_its_article(tmp_path):
    RunFolder(tmp_path, "evaluation", IDENTITY, outputs=outputs).open()
    with pytest.raises(VeraError, match=f"output folder {tmp_path} holds an evaluation run, not features;"):
        RunFolder(tmp_path, "features", IDENTITY, outputs=outputs).open()


def test_overwrite_clears_outputs_partial_work_and_record_but_nothing_else(tmp_path):
    first = folder(tmp_path).open()
    first.finish_json("v.json", {"old": True})
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "v.npy").write_bytes(b"old")
    first.write_partial("w.json", {"done": 3})
    (tmp_path / "notes.txt").write_text("mine")  # not an output of this kind of run
    other = {**IDENTITY, "model": "huge"}
    run = folder(tmp_path, other, overwrite=True).open()
    assert not run.resumed
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, "notes.txt", RUN_FILE]  # the lock is not an output
    assert json.loads((tmp_path / RUN_FILE).read_text())["identity"]["model"] == "huge"


def test_outputs_without_a_record_are_refused_unless_adopted_or_overwritten(tmp_path):
    (tmp_path / "notes.txt").write_text("not an output")
    assert not folder(tmp_path).open().resumed  # nothing of a run here: fresh
    (tmp_path / RUN_FILE).unlink()
    (tmp_path / "v.json").write_text("{}")
    with pytest.raises(VeraError, match=r"holds files of an unknown run \(no run.json\); use another folder or "
                                        "--overwrite"):
        folder(tmp_path).open()
    assert not (tmp_path / RUN_FILE).exists()
    adopted = folder(tmp_path, adopt_unrecorded=True).open()
    assert not adopted.resumed and (tmp_path / "v.json").exists() and (tmp_path / RUN_FILE).exists()
    (tmp_path / RUN_FILE).unlink()
    folder(tmp_path, overwrite=True).open()
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, "notes.txt", RUN_FILE]


def test_a_damaged_record_is_named_and_overwrite_replaces_it(tmp_path):
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(VeraError, match=f"run record {tmp_path / RUN_FILE} is not valid JSON.*; delete it or use "
                                        "--overwrite"):
        folder(tmp_path).open()
    (tmp_path / RUN_FILE).write_text("[]")
    with pytest.raises(VeraError, match="is malformed"):
        folder(tmp_path).open()
    folder(tmp_path, overwrite=True).open()
    assert json.loads((tmp_path / RUN_FILE).read_text())["identity"]["model"] == "tiny"


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "taken"
    path.write_text("x")
    with pytest.raises(VeraError) as error:
        folder(path).open()
    assert str(error.value) == f"output {path} exists and is not a folder"
    with pytest.raises(VeraError) as error:
        check_writable(path / "sub" / "run")
    assert str(error.value) == f"cannot create output folder {path / 'sub' / 'run'}: {path} is a file, not a folder"
    assert path.read_text() == "x"


@pytest.fixture
def shared_tmp():
    with world_readable_tmp() as path:
        yield path


def test_a_read_only_folder_is_refused_before_any_work(shared_tmp):
    read_only = read_only_folder(shared_tmp)
    writable = shared_tmp / "writable"
    writable.mkdir()
    writable.chmod(0o777)
    with unprivileged():
        # os.access asks about the real user (root here) and would call both writable.
        with pytest.raises(VeraError) as error:
            check_writable(read_only)
        check_writable(writable)
        with pytest.raises(VeraError) as below:
            check_writable(read_only / "new")
    assert str(error.value) == f"output folder {read_only} is not writable (Permission denied)"
    assert str(below.value) == f"cannot create output folder {read_only / 'new'}: Permission denied"
    assert os.listdir(read_only) == [] and os.listdir(writable) == []


def test_partial_progress_of_another_identity_or_damaged_is_ignored(tmp_path):
    run = folder(tmp_path).open()
    run.write_partial("v.json", {"segments": {"0": 1}})
    assert run.read_partial("v.json") == {"segments": {"0": 1}}
    # The same file seen by a run of another configuration (e.g. copied from another folder).
    assert folder(tmp_path, {**IDENTITY, "fps": 24}).read_partial("v.json") is None
    for damaged in ('{"fingerprint": "', "[1, 2]", '{"value": {"segments": {}}}'):
        run.partial_path("v.json").write_text(damaged)
        assert run.read_partial("v.json") is None
    assert run.read_partial("absent.json") is None
    run.write_partial("v.json", {"segments": {}})
    run.finish_json("v.json", {"0": 1})
    assert not run.partial_path("v.json").exists() and json.loads((tmp_path / "v.json").read_text()) == {"0": 1}
    run.finish_npy("w.npy", np.arange(3.0))
    assert np.array_equal(np.load(tmp_path / "w.npy"), np.arange(3.0))


def test_tidy_removes_only_an_empty_partial_folder(tmp_path):
    run = folder(tmp_path).open()
    run.write_partial("v.json", {})
    run.tidy()
    assert run.partial_path("v.json").exists()
    run.drop_partial("v.json")
    run.tidy()
    assert not (tmp_path / PARTIAL_DIR).exists()
    run.tidy()  # nothing to do


def test_replace_outputs_leaves_nothing_of_the_previous_run(tmp_path):
    def evaluation_outputs(path: Path) -> list[Path]:
        return [path / "metrics.json", path / "scores", path / "roc.png"]

    def write(keys: list[str], curves: bool):
        def into(staging: Path) -> None:
            (staging / "scores").mkdir()
            for key in keys:
                (staging / "scores" / f"{key}.npy").write_text(key)
            if curves:
                (staging / "roc.png").write_text("png")
            (staging / "metrics.json").write_text(json.dumps({"keys": keys}))
        return into

    run = RunFolder(tmp_path, "evaluation", IDENTITY, outputs=evaluation_outputs).open()
    (tmp_path / "notes.txt").write_text("mine")
    run.replace_outputs(write(["a", "b", "c"], curves=True), last="metrics.json")
    assert sorted(os.listdir(tmp_path / "scores")) == ["a.npy", "b.npy", "c.npy"]
    again = RunFolder(tmp_path, "evaluation", IDENTITY, outputs=evaluation_outputs).open()
    again.replace_outputs(write(["a"], curves=False), last="metrics.json")
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, "metrics.json", "notes.txt", RUN_FILE, "scores"]
    assert os.listdir(tmp_path / "scores") == ["a.npy"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"keys": ["a"]}

    def failing(staging: Path) -> None:
        (staging / "metrics.json").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        again.replace_outputs(failing, last="metrics.json")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"keys": ["a"]}
    assert os.listdir(tmp_path / "scores") == ["a.npy"]


def test_overwrite_and_replaced_outputs_never_take_the_lock_file(tmp_path):
    """A run whose outputs are everything in its folder (the default) still keeps the lock it holds."""
    RunFolder(tmp_path, "tables", IDENTITY).open().finish_json("t.json", {})
    run = RunFolder(tmp_path, "tables", {**IDENTITY, "fps": 24}, overwrite=True).open()
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, RUN_FILE]
    run.replace_outputs(lambda staging: (staging / "u.json").write_text("{}"))
    assert sorted(os.listdir(tmp_path)) == [LOCK_FILE, RUN_FILE, "u.json"]
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
