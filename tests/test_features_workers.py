"""Feature extraction with its frames read by worker processes (``--input-workers``): the same bytes as in process
on the real clips, the same one-line failures for damaged, short and unreadable videos, and the real script."""

from __future__ import annotations

import importlib
import multiprocessing
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from test_features import data, encoder  # noqa: F401 (fixtures)
from test_step1_workers import CLIPS, folder_bytes
from fixtures.videos import write_problem_videos

import vera.features.feature_extraction as extraction
from vera.data.annotations import TestVideo
from vera.errors import run_cli
from vera.features.feature_extraction import FeatureSettings, extract_features
from vera.features.imagebind import TINY, segment_clips
from fixtures.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = FeatureSettings(model="random-tiny (seed 0)")


@pytest.fixture
def worker_counts(monkeypatch) -> list[int]:
    """The input workers alive during each run's reading, as the run started them."""
    counts = []
    original = extraction.read_ahead

    @contextmanager
    def counting(jobs, workers, chunk, **options):
        with original(jobs, workers, chunk, **options) as reads:
            counts.append(len(multiprocessing.active_children()))
            yield reads

    monkeypatch.setattr(extraction, "read_ahead", counting)
    return counts


def test_workers_write_the_same_bytes_on_the_real_clips(shared_data, encoder, worker_counts, tmp_path):  # noqa: F811
    road = "RoadAccidents133_x264_270_451"
    # The road clip annotated 19 frames longer than it is, read with --clamp-short: its last frame stands in.
    videos = [TestVideo(key, length + 19 * (key == road)) for key, length in CLIPS.items()]
    results = {}
    for workers in (0, 2):
        # 24 views: 8 segments per forward pass, so each video is 2 or 3 batches, each a worker's chunk.
        report = extract_features(videos, encoder, tmp_path / f"out{workers}", SETTINGS, batch_size=24,
                                  clamp_short=True, show_progress=False, input_workers=workers,
                                  videos_dir=shared_data / "clips")
        assert report.written == list(CLIPS) and report.segments == 12 + 17 + 16 + 24 + 1
        results[workers] = folder_bytes(tmp_path / f"out{workers}")
    assert worker_counts == [0, 2]
    assert set(results[0]) == {"summary.json", *[f"{key}.npy" for key in CLIPS]}
    features = [np.load(tmp_path / "out0" / f"{key}.npy") for key in CLIPS]
    assert [len(rows) for rows in features] == [13, 17, 16, 24]
    assert len({rows[0].tobytes() for rows in features}) == 4 and all(np.isfinite(rows).all() for rows in features)
    assert results[2] == results[0]


def test_damaged_short_and_unreadable_videos_fail_alike_in_workers(encoder, worker_counts, tmp_path):  # noqa: F811
    videos = tmp_path / "videos"
    bad = segment_clips(32, 200)[0].frames[1]  # frame 181, first read for the third segment
    write_problem_videos(videos, bad)
    annotated = [TestVideo("damaged", 200), TestVideo("good", 120), TestVideo("cut", 200), TestVideo("junk", 50)]
    results = {}
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        # 6 views: 2 segments per batch; the rows before the damaged frame's batch are saved as partial work.
        report = extract_features(annotated, encoder, out, SETTINGS, videos_dir=videos, batch_size=6,
                                  partial_every_s=0, show_progress=False, input_workers=workers)
        results[workers] = (report.written, report.failed, folder_bytes(out))
    assert worker_counts == [0, 2]
    written, failed, files = results[0]
    assert written == ["good"] and list(failed) == ["damaged", "cut", "junk"]
    assert failed["damaged"].startswith(f"video damaged: cannot decode frame {bad}: decoding fails at frame {bad}")
    assert failed["cut"].startswith(f"video cut: the annotation gives 200 frames but {videos / 'cut.mp4'} has ")
    assert failed["cut"].endswith(" (use --clamp-short to read its last frame in place of the missing ones)")
    assert failed["junk"].startswith(f"video junk: cannot open the video (corrupt or unsupported format?) "
                                     f"({videos / 'junk.mp4'}: ")
    assert all("\n" not in message for message in failed.values())
    assert set(files) == {".partial/damaged.npy", "good.npy", "summary.json"}
    assert np.load(tmp_path / "out0" / ".partial" / "damaged.npy").shape == (2, TINY.out_dim)
    assert results[2] == results[0]


def test_the_script_with_input_workers_writes_what_in_process_writes(data, tmp_path):  # noqa: F811
    """Through ``Preprocessing/extract_features.py``, which its spawned workers import again (its ``__main__`` guard),
    from JPEG folders (the test above reads video files)."""
    argv = ["--annotations", str(data["annotations"]), "--frames", str(data["frames"]), "--random-init", "--tiny",
            "--device", "cpu", "--batch-size", "12", "--no-progress"]
    assert run_cli(load_script("extract_features").main,
                   [*argv, "--output", str(tmp_path / "out0"), "--input-workers", "0"]) == 0
    done = subprocess.run([sys.executable, "Preprocessing/extract_features.py", *argv, "--output",
                           str(tmp_path / "out2"), "--input-workers", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 written, 0 already complete, 0 failed; 29 segments" in done.stdout
    expected = folder_bytes(tmp_path / "out0")
    assert set(expected) == {"summary.json", "Fighting033_x264_570_841.npy", "RoadAccidents133_x264_270_451.npy"}
    assert folder_bytes(tmp_path / "out2") == expected
