"""vera.progress: a bar on a terminal, plain log lines (no carriage returns) anywhere else."""

from __future__ import annotations

import io

from vera.progress import progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_when_not_on_a_terminal_at_most_every_interval_and_at_the_end():
    stream, clock = io.StringIO(), Clock()
    # 100 segments were done before (a resumed run): the rate and eta count only this run's work.
    with progress(total=3500, desc="step 1", unit="segment", stream=stream, clock=clock, initial=100) as bar:
        for _ in range(10):  # 10 segments every 10 s: a line at 30, 60 and 90 s, then the final one at 100 s
            clock.now += 10
            bar.update(10)
            if clock.now - 1000 == 40:
                bar.set_postfix(not_well_formed=3)
                bar.write("error: video x: frame 3 is corrupt")
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.splitlines() == [
        "step 1: 130/3500 segments (3.7%), 1.0/s, eta 56 min",
        "error: video x: frame 3 is corrupt",
        "step 1: 160/3500 segments (4.6%), 1.0/s, eta 56 min, not_well_formed=3",
        "step 1: 190/3500 segments (5.4%), 1.0/s, eta 55 min, not_well_formed=3",
        "step 1: 200/3500 segments (5.7%), 1.0/s, finished in 2 min, not_well_formed=3",
    ]


def test_iterating_counts_items_and_slow_rates_read_as_seconds_per_item():
    stream, clock = io.StringIO(), Clock()
    seen = []
    for video in progress(["a", "b"], desc="features", unit="video", stream=stream, clock=clock, log_every_s=0):
        clock.now += 120
        seen.append(video)
    assert seen == ["a", "b"]
    assert stream.getvalue().splitlines() == [
        "features: 1/2 videos (50.0%), 120.0 s/video, eta 2 min",
        "features: 2/2 videos (100.0%), 120.0 s/video, eta 0 s",
        "features: 2/2 videos (100.0%), 120.0 s/video, finished in 4 min",
    ]


def test_a_terminal_gets_a_bar_and_disabled_progress_only_messages():
    terminal = Terminal()
    with progress(total=5, desc="frames", unit="video", stream=terminal) as bar:
        bar.update(5)
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()
    quiet = io.StringIO()
    with progress(total=5, desc="frames", unit="video", stream=quiet, enabled=False, log_every_s=0) as bar:
        bar.update(5)
        bar.write("FAILED: video x")
    assert quiet.getvalue() == "FAILED: video x\n"


def test_a_stage_logs_plain_lines_into_a_log(tmp_path, capsys):
    """Step 1 with progress on, its stderr captured (not a terminal): log lines, no carriage return."""
    import cv2
    import numpy as np

    from vera.data.annotations import TestVideo
    from vera.vlm.backends.scripted import ScriptedBackend
    from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE
    from vera.constants import PRESET_QUESTIONS
    from vera.vlm.step1 import Step1Runner, Step1Settings

    (tmp_path / "frames" / "v").mkdir(parents=True)
    for index in range(40):
        cv2.imwrite(str(tmp_path / "frames" / "v" / f"{index:06d}.jpg"), np.full((8, 8, 3), index, np.uint8))
    settings = Step1Settings(output=tmp_path / "out", frames_dir=tmp_path / "frames", image_size=8, progress=True)
    Step1Runner(ScriptedBackend(lambda request: "Output: 1"), DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"],
                settings).run([TestVideo("v", 40)])
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.startswith("step 1: 3/3 segments (100.0%), ") and err.endswith(", not_well_formed=0\n")
    assert err.count("\n") == 1


def test_per_unit_messages_are_logged_at_once_with_rate_and_eta_and_a_closing_message_replaces_the_count():
    stream, clock = io.StringIO(), Clock()
    with progress(total=4, desc="training", unit="step", stream=stream, clock=clock, initial=1) as bar:
        clock.now += 120
        bar.update(1, message="step 2/4: train accuracy 0.5")  # logged at once, though under log_every_s
        clock.now += 60
        bar.set_postfix(best=0.5)
        bar.update(1, message="step 3/4: train accuracy 1.0")
        with progress(total=2, desc="validation", unit="video", stream=stream, clock=clock, leave=False) as sub:
            sub.update(2)
            sub.close(message="validation @ step 3: accuracy 1.0")
        clock.now += 30
        bar.update(1)  # no message: the periodic count line, as usual
    assert stream.getvalue().splitlines() == [
        "step 2/4: train accuracy 0.5, 120.0 s/step, eta 4 min",
        "step 3/4: train accuracy 1.0, 90.0 s/step, eta 2 min",
        "validation @ step 3: accuracy 1.0",
        "training: 4/4 steps (100.0%), 70.0 s/step, eta 0 s, best=0.5",
        "training: 4/4 steps (100.0%), 70.0 s/step, finished in 4 min, best=0.5",
    ]


def test_messages_stay_off_a_terminal_and_out_of_disabled_progress():
    terminal = Terminal()
    with progress(total=2, desc="training", unit="step", stream=terminal) as bar:
        with progress(total=1, desc="validation", unit="video", stream=terminal, leave=False) as sub:
            sub.update(1)
            sub.close(message="validation @ step 0: accuracy 1.0")
        bar.update(1, message="step 1/2: train accuracy 0.5")
    assert "\r" in terminal.getvalue() and "accuracy" not in terminal.getvalue()
    quiet = io.StringIO()
    with progress(total=2, desc="training", stream=quiet, enabled=False) as bar:
        bar.update(1, message="step 1/2")
        bar.close(message="done")
    assert quiet.getvalue() == ""


def test_bytes_are_logged_with_si_prefixes_counting_only_this_runs_bytes_in_the_rate():
    stream, clock = io.StringIO(), Clock()
    # A download resumed after 12 MB of 45.6 MB: 4 MB every 10 s, then the last 21.6 MB.
    with progress(total=45_600_000, initial=12_000_000, desc="archive", unit="B", unit_scale=True, stream=stream,
                  clock=clock) as bar:
        for _ in range(3):
            clock.now += 10
            bar.update(4_000_000)
        clock.now += 10
        bar.update(21_600_000)
    assert stream.getvalue().splitlines() == [
        "archive: 24.0 MB/45.6 MB (52.6%), 400.0 kB/s, eta 54 s",
        "archive: 45.6 MB/45.6 MB (100.0%), 840.0 kB/s, finished in 40 s",
    ]
    stream = io.StringIO()
    with progress(desc="page", unit="B", unit_scale=True, stream=stream, clock=clock, log_every_s=0) as bar:
        clock.now += 1
        bar.update(999)
        clock.now += 1
        bar.update(999_960 - 999)  # 999.96 kB rounds to 1.0 MB, never to "1000.0 kB"
    assert stream.getvalue().splitlines() == [
        "page: 999 B, 999 B/s",
        "page: 1.0 MB, 500.0 kB/s",
        "page: 1.0 MB, 500.0 kB/s, finished in 2 s",
    ]
    terminal = Terminal()
    with progress(total=2_000_000, desc="archive", unit="B", unit_scale=True, stream=terminal) as bar:
        bar.update(2_000_000)
    assert "\r" in terminal.getvalue() and "2.00M/2.00M" in terminal.getvalue()
