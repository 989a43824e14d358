"""Step 1 and features in several processes (``--devices 2 --accelerator cpu``) through the real scripts.

Each multi-process run starts from the leftovers of an interrupted run (one
video finished, one with saved partial work: what a kill leaves) and must end
with per-video files byte for byte equal to those of a single-process run, the
videos split between the ranks as documented. Step 1 goes through Lightning's
own launcher (the script starts the second process), features through
``torchrun``, with a video that fails on rank 1 and is reported by rank 0, each
rank reading its frames in an input worker (the reference in process).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fixtures.videos import index_frame

from vera.distributed import Ranks, check_device_options, launch, make_fabric
from vera.errors import VeraError, run_cli
from vera.vlm.step1 import Step1Summary
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
# Four short videos (3, 2, 3 and 2 segments): rank 0 of 2 takes a and c, rank 1 takes b and d.
LENGTHS = {"a": 40, "b": 20, "c": 33, "d": 17}
TIMEOUT_S = 240  # a hung rank fails the test instead of hanging the suite


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    """Index-stamped JPEG folders and their annotation file."""
    root = tmp_path_factory.mktemp("distributed")
    for key, length in LENGTHS.items():
        (root / "frames" / key).mkdir(parents=True)
        for index in range(length):
            cv2.imwrite(str(root / "frames" / key / f"{index:06d}.jpg"), index_frame(index, (64, 48)))
    annotations = root / "ann.json"
    annotations.write_text(json.dumps([{"video": f"frames/Normal/{key}.mp4", "temporal_label": [-1, -1, -1, -1],
                                        "length": length} for key, length in LENGTHS.items()]))
    return {"frames": root / "frames", "annotations": annotations}


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT_S)
    return done


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _per_video(folder: Path, suffix: str) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in sorted(folder.glob(f"*{suffix}")) if path.stem in LENGTHS}


def _one_process(command: str, argv: list[str], reference: Path, suffix: str) -> dict[str, bytes]:
    """The reference: the script's ``main`` in this process (on one torch thread, as the ranks run with
    OMP_NUM_THREADS=1) into ``reference``; its per-video files."""
    assert load_script(command).main(argv + ["--output", str(reference)]) == 0
    expected = _per_video(reference, suffix)
    assert set(expected) == set(LENGTHS)
    return expected


def _killed_run(reference: Path, out: Path, suffix: str) -> None:
    """What a killed run leaves in ``out``: run.json recorded, b finished, an empty .partial/ for a's saved work."""
    out.mkdir()
    shutil.copy(reference / "run.json", out / "run.json")
    shutil.copy(reference / f"b{suffix}", out / f"b{suffix}")
    (out / ".partial").mkdir()


# -- Step 1: Lightning's launcher ----------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_step1_in_two_processes_resumes_and_equals_one_process(clips, tiny_models, tmp_path):
    common = ["--dataset", "ucf", "--annotations", str(clips["annotations"]), "--frames", str(clips["frames"]),
              "--model", str(tiny_models.path("internvl")), "--preset", "ucf", "--batch-size", "1",
              "--max-new-tokens", "4", "--no-progress"]
    reference = tmp_path / "one"
    expected = _one_process("generate_initial_score", common, reference, ".json")

    # And a with its first answer saved.
    out = tmp_path / "two"
    _killed_run(reference, out, ".json")
    run = json.loads((reference / "run.json").read_text())
    first = dict(list(json.loads(expected["a"]).items())[:1])
    (out / ".partial" / "a.json").write_text(json.dumps(
        {"fingerprint": run["fingerprint"], "value": {"length": LENGTHS["a"], "segments": first}}))

    # Each process reads its frames with its own worker process.
    done = _run([sys.executable, "Inference/generate_initial_score.py", *common, "--output", str(out),
                 "--devices", "2", "--accelerator", "cpu", "--input-workers", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert _per_video(out, ".json") == expected
    assert "4 videos (1 already finished), 10 segments, 7 generated" in done.stdout
    assert "by 2 processes" in done.stdout
    merged = json.loads((out / "summary.json").read_text())
    assert (merged["processes"], merged["segments"], merged["segments_generated"]) == (2, 10, 7)
    ranks = [json.loads((out / f"summary.rank-{rank}-of-2.json").read_text()) for rank in range(2)]
    # Rank 0 answered a (2 left) and c (3); rank 1 skipped the finished b and answered d (2).
    assert [(r["rank"], r["videos"], r["videos_skipped_as_finished"], r["segments_generated"]) for r in ranks] == [
        (0, 2, 0, 5), (1, 2, 1, 2)]
    statuses = set(ranks[0]["by_status"]) | set(ranks[1]["by_status"])
    assert merged["by_status"] == {s: ranks[0]["by_status"].get(s, 0) + ranks[1]["by_status"].get(s, 0)
                                   for s in statuses}
    assert sum(merged["by_status"].values()) == 10
    assert json.loads((out / "run.json").read_text())["identity"] == run["identity"]
    assert not (out / ".partial").exists()


# -- features: torchrun --------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_features_under_torchrun_resume_equal_one_process_and_report_every_rank(clips, tmp_path):
    common = ["--annotations", str(clips["annotations"]), "--frames", str(clips["frames"]),
              "--random-init", "--tiny", "--no-progress", "--input-workers", "0"]
    reference = tmp_path / "one"
    expected = _one_process("extract_features", common, reference, ".npy")

    out = tmp_path / "two"
    _killed_run(reference, out, ".npy")
    np.save(out / ".partial" / "a.npy", np.load(reference / "a.npy")[:1])  # a's first segment, saved before a kill

    # And d's frames are missing: the video fails on rank 1, and rank 0 reports it for the whole run.
    frames = tmp_path / "frames"
    shutil.copytree(clips["frames"], frames, ignore=lambda folder, names: ["d"] if Path(folder) == clips["frames"]
                    else [])
    done = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-port", str(_free_port()), "Preprocessing/extract_features.py",
                 "--annotations", str(clips["annotations"]), "--frames", str(frames), "--random-init", "--tiny",
                 "--no-progress", "--output", str(out), "--devices", "2", "--accelerator", "cpu",
                 "--input-workers", "1"])
    assert done.returncode != 0
    assert "2 written, 1 already complete, 1 failed; 5 segments" in done.stdout, done.stderr[-3000:]
    assert "error: 1 of 4 videos failed (video d: frame folder not found" in done.stderr
    del expected["d"]
    assert _per_video(out, ".npy") == expected
    merged = json.loads((out / "summary.json").read_text())
    assert (merged["written"], merged["skipped"], list(merged["failed"]), merged["processes"]) == (
        ["a", "c"], ["b"], ["d"], 2)
    rank1 = json.loads((out / "summary.rank-1-of-2.json").read_text())
    assert (rank1["rank"], rank1["written"], rank1["skipped"], list(rank1["failed"])) == (1, [], ["b"], ["d"])
    assert not (out / ".partial").exists()


def test_ranks_exchange_values_and_a_crash_on_one_stops_all(tmp_path):
    """Under torchrun, through ``launch``: values of different lengths gathered, rank 0's result given to all,
    and a rank that crashes stops the others (each hears of it) instead of leaving them waiting."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, sys\n"
        "from vera.distributed import launch\n"
        "from vera.errors import VeraError\n"
        "ranks = launch('cpu', 2, 1)\n"
        "seen = {'gathered': ranks.gather({'rank': ranks.rank, 'text': 'é' * 5 * ranks.rank}),\n"
        "        'from_main': ranks.on_main(lambda: ['rank', ranks.rank])}\n"
        "def work():\n"
        "    if ranks.rank == 1:\n"
        "        raise ValueError('boom')\n"
        "    return 'fine'\n"
        "try:\n"
        "    ranks.together(work)\n"
        "except VeraError as error:\n"
        "    seen['error'] = str(error)\n"
        "open(f'{sys.argv[1]}/rank{ranks.rank}.json', 'w').write(json.dumps(seen))\n")
    done = _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-port", str(_free_port()), str(script), str(tmp_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "gathered": [{"rank": 0, "text": ""}, {"rank": 1, "text": "ééééé"}], "from_main": ["rank", 0],
            "error": "rank 1 failed: ValueError: boom"}
    assert "Traceback" in done.stderr and "ValueError: boom" in done.stderr  # the crash's own traceback is shown


# -- options and ranks, in this process -----------------------------------------------------------

def test_device_options_are_checked_before_anything_starts(tmp_path, capsys):
    with pytest.raises(VeraError, match="--device cuda:1 names one device for a single process"):
        check_device_options("cuda:1", "auto", 2, 1)
    check_device_options("cpu", "auto", 1, 1)
    check_device_options("auto", "cpu", 2, 3)
    cli = load_script("extract_features")
    annotation = tmp_path / "ann.json"
    annotation.write_text("[]")
    base = ["--annotations", str(annotation), "--frames", str(tmp_path), "--random-init", "--output",
            str(tmp_path / "out")]
    assert run_cli(cli.main, base + ["--devices", "2", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.startswith("error: --device cpu names one device for a single process;")
    assert run_cli(cli.main, base + ["--num-nodes", "0"]) == 2
    assert capsys.readouterr().err == "error: argument --num-nodes: must be at least 1, got 0\n"


def test_a_process_of_a_bigger_launch_must_be_told_its_devices(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(VeraError, match=r"one of 4 processes .* --devices 1 --num-nodes 1"):
        launch("auto", 1, 1)
    monkeypatch.delenv("WORLD_SIZE")
    assert launch("cpu", 1, 1) == Ranks(device="cpu")
    assert launch("auto", 1, 1, device="cuda:1").device == "cuda:1"


def test_ranks_split_every_world_size_th_item_and_name_their_summaries():
    items = list("abcdefg")
    shares = [Ranks(rank=rank, world_size=3).share(items) for rank in range(3)]
    assert shares == [["a", "d", "g"], ["b", "e"], ["c", "f"]]
    assert Ranks().share(items) == items
    assert Ranks(world_size=3).merge(shares) == items
    assert Ranks(rank=2, world_size=3).summary_name("summary.shard-0-of-2.json") == \
        "summary.shard-0-of-2.rank-2-of-3.json"


def test_a_lone_process_merges_its_own_summary_unchanged():
    mine = Step1Summary(videos=2, videos_skipped=1, segments=5, by_status=Counter(ok=4, no_output=1),
                        failed={"c": "video c: broken"}, warnings=["w"], seconds=1.25)
    assert Ranks().merged_summary(Step1Summary, lambda: mine) == mine


def test_processes_wait_a_week_for_each_other_not_lightnings_half_hour():
    """Ranks finish hours apart: the process group's timeout (which Lightning's DDPStrategy gives
    init_process_group) is a week, in every stage (all build their Fabric with make_fabric)."""
    from lightning.fabric.strategies import DDPStrategy, SingleDeviceStrategy

    fabric = make_fabric("cpu", 2, 1)
    assert isinstance(fabric.strategy, DDPStrategy)
    assert (fabric.strategy._timeout, fabric.strategy._start_method) == (timedelta(days=7), "popen")
    assert make_fabric("cpu", 1, 2, start_method="fork").strategy._start_method == "fork"
    assert isinstance(make_fabric("cpu", 1, 1).strategy, SingleDeviceStrategy)
    if not torch.cuda.is_available():
        with pytest.raises(VeraError, match=r"^--accelerator cuda --devices 2 --num-nodes 1: `CUDAAccelerator` can "
                                            r"not run on your system[^\n]*$"):
            make_fabric("cuda", 2, 1)
