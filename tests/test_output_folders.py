"""Every stage's output folder: a file, a read-only folder or another run's folder is one line, before any work.

Each command's expensive step (decoding videos, loading ImageBind or the VLM,
scoring) is replaced by one that fails the test if reached, so these tests
show that the folder is checked first.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

# Imported now: the read-only case runs part of each command as an ordinary user, who cannot read
# the standard library's folder here, so nothing may be imported for the first time inside it.
import vera.data.annotations  # noqa: F401
import vera.data.frame_extraction
import vera.data.frames  # noqa: F401
import vera.devices  # noqa: F401
import vera.features.feature_extraction  # noqa: F401
import vera.features.imagebind
import vera.scoring.evaluate
import vera.scoring.steps  # noqa: F401
import vera.vlm.backends
import vera.vlm.prompts  # noqa: F401
import vera.vlm.step1  # noqa: F401
from fixtures.unprivileged import read_only_folder, unprivileged, world_readable_tmp
from vera.errors import run_cli
from vera.runs import RunFolder
from fixtures.scripts import load_script

STAGES = {
    # command module: (kind of run folder, the flag naming the output folder, where its work starts)
    "extract_frames": ("frames", "--frames", (vera.data.frame_extraction, "_run_pool")),
    "extract_features": ("features", "--output", (vera.features.imagebind, "load_vision_encoder")),
    "generate_initial_score": ("step1", "--output", (vera.vlm.backends, "load_backend")),
    "compute_auc": ("evaluation", "--output", (vera.scoring.evaluate, "evaluate")),
}
COMMANDS = {name: load_script(name) for name in STAGES}


@pytest.fixture
def inputs():
    """Minimal valid inputs of every command, in a folder an ordinary user may read."""
    with world_readable_tmp() as root:
        annotations = root / "ann.json"
        annotations.write_text(json.dumps([{"video": "frames/Fighting/Fighting001_x264.mp4",
                                            "temporal_label": [10, 20, -1, -1], "length": 40}]))
        for name in ("videos", "frames", "scores", "model"):
            (root / name).mkdir()
        (root / "videos" / "Fighting001_x264.mp4").write_bytes(b"never decoded")
        # Step 1 reads the model's config (its architecture picks the default frame layout), never its weights.
        (root / "model" / "config.json").write_text(json.dumps({"model_type": "internvl"}))
        yield root


@pytest.fixture
def no_work(monkeypatch):
    """Make each command's expensive step fail the test if it is ever reached."""
    def started(*args, **kwargs):
        raise AssertionError("work started")

    for module, name in (place for _, _, place in STAGES.values()):
        monkeypatch.setattr(module, name, started)


def argv(stage: str, root: Path, output: Path, *extra: str) -> list[str]:
    if stage == "extract_frames":
        return ["--videos", str(root / "videos"), "--frames", str(output), "--workers", "1", "--no-progress", *extra]
    common = ["--annotations", str(root / "ann.json"), "--output", str(output), *extra]
    if stage == "extract_features":
        return [*common, "--frames", str(root / "frames"), "--random-init", "--tiny", "--device", "cpu",
                "--no-progress"]
    if stage == "generate_initial_score":
        return [*common, "--dataset", "ucf", "--frames", str(root / "frames"), "--model", str(root / "model"),
                "--preset", "ucf", "--device", "cpu", "--no-progress"]
    return [*common, "--dataset", "ucf", "--scores", str(root / "scores"), "--skip-step2"]


@pytest.mark.parametrize("stage", STAGES)
def test_an_output_path_that_is_a_file_is_one_line(stage, inputs, no_work, capsys):
    taken = inputs / "taken.txt"
    taken.write_text("keep me")
    flag = STAGES[stage][1]
    assert run_cli(COMMANDS[stage].main, argv(stage, inputs, taken)) == 2
    assert capsys.readouterr().err == f"error: argument {flag}: {taken} exists and is not a folder\n"
    assert run_cli(COMMANDS[stage].main, argv(stage, inputs, taken / "sub")) == 2
    assert capsys.readouterr().err == (f"error: argument {flag}: cannot write to {taken / 'sub'}: {taken} is not a "
                                       "writable folder\n")
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("stage", STAGES)
def test_a_read_only_output_folder_is_one_line_before_any_work(stage, inputs, no_work, capsys):
    read_only = read_only_folder(inputs)
    with unprivileged():
        code = run_cli(COMMANDS[stage].main, argv(stage, inputs, read_only))
    assert (code, capsys.readouterr().err) == (2, f"error: output folder {read_only} is not writable "
                                                  "(Permission denied)\n")


@pytest.mark.parametrize("stage", STAGES)
def test_another_runs_folder_is_refused_before_any_work_unless_overwrite(stage, inputs, no_work, capsys):
    output = inputs / "used"
    kind = STAGES[stage][0]
    RunFolder(output, kind, {"made_by": "another configuration"}).open()
    assert run_cli(COMMANDS[stage].main, argv(stage, inputs, output)) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: output folder {output} was made with other settings (")
    assert "made_by" in error and error.endswith("; use another folder or --overwrite to replace its contents\n")
    assert error.count("\n") == 1
    # With --overwrite the folder is accepted, and the work begins.
    with pytest.raises(AssertionError, match="work started"):
        COMMANDS[stage].main(argv(stage, inputs, output, "--overwrite"))
