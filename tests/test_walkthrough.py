"""The README's walkthrough, run exactly as written: every stage on the four shared clips with tiny random models.

The block is taken from a copy of the README by ``.ci/run``'s own ``readme_block`` function (read out of that
file, so the rule cannot drift) and run with ``bash -euo pipefail`` in a temporary project folder whose
``python`` is this test's interpreter, as if the newcomer had activated the environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
CLIPS = {"Fighting033_x264_570_841": 271, "RoadAccidents133_x264_270_451": 181,  # ../shared/data/README.md
         "A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101": 256,
         "v=JfLYNEsrTew__#1_label_G-0-0_52_431": 379}


def readme_block(readme_dir: Path, name: str) -> str:
    """The fenced block after ``<!-- ci:NAME -->`` in ``readme_dir/README.md``, by .ci/run's function."""
    ci_run = (ROOT / ".ci" / "run").read_text()
    function = re.search(r"^readme_block\(\) \{\n.*?^\}\n", ci_run, re.S | re.M)
    assert function, ".ci/run defines no readme_block function"
    result = subprocess.run(["bash", "-c", f"{function.group(0)}\nreadme_block {name}"], cwd=readme_dir,
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_the_extraction_rule_is_ci_runs(tmp_path):
    (tmp_path / "README.md").write_text("text\n<!-- ci:walkthrough -->\n\n```bash\necho one\necho two\n```\n"
                                        "```bash\necho not this\n```\n")
    assert readme_block(tmp_path, "walkthrough") == "echo one\necho two\n"


def test_the_walkthrough_runs_as_written(tmp_path):
    clips = SHARED_DATA / "clips"
    if not clips.is_dir():
        pytest.skip(f"the walkthrough's clips {clips} are absent (see the README, 'Test')")
    # The project as a newcomer has it: the README copied, everything else linked, ../shared beside it.
    project = tmp_path / "project"
    project.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in ("README.md", "runs", ".venv", ".git", ".pytest_cache"):
            (project / entry.name).symlink_to(entry)
    shutil.copy(ROOT / "README.md", project / "README.md")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    block = readme_block(project, "walkthrough")
    assert "python Inference/plot.py" in block, "the README has no walkthrough block"
    bin_dir = tmp_path / "bin"  # `python` is this interpreter, venv and all, as after `source .venv/bin/activate`
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=project, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"

    out = project / "runs" / "walkthrough"
    metrics = json.loads((out / "auc" / "metrics.json").read_text())
    assert (metrics["protocol"], metrics["num_videos"], metrics["num_frames"]) == ("released", 4, sum(CLIPS.values()))
    assert sorted(json.loads((out / "clips.json").read_text()), key=lambda e: e["length"]) == [
        {"video": "RoadAccidents/RoadAccidents133_x264_270_451.mp4", "temporal_label": [0, 181], "length": 181},
        {"video": "Normal/A.Beautiful.Mind.2001__#01-14-30_01-16-59_label_A_1845_2101.mp4",
         "temporal_label": [-1, -1], "length": 256},
        {"video": "Fighting/Fighting033_x264_570_841.mp4", "temporal_label": [0, 271], "length": 271},
        {"video": "Explosion/v=JfLYNEsrTew__#1_label_G-0-0_52_431.mp4", "temporal_label": [0, 379],
         "length": 379}]
    # Step 1 asked the learned questions: one file per clip, one segment every 16 frames.
    for key, frames in CLIPS.items():
        assert len(json.loads((out / "step1" / f"{key}.json").read_text())) == -(-frames // 16)
    learned = (out / "train" / "best_questions.txt").read_text().splitlines()
    assert learned and json.loads((out / "step1" / "run.json").read_text())["identity"]["questions"] == learned
    assert "| questions, videos | All | Traffic |" in (out / "tables" / "table11_scenarios.md").read_text()
    assert "answers not well formed" in (out / "report" / "index.html").read_text()
    assert (out / "figures" / "Fighting033_x264_570_841.png").stat().st_size > 0
