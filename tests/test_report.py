"""Inference/report.py: the numbers, curves, thumbnails and explanations on the pages, escaping, offline, errors."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from fixtures.reports import ENTRIES, ODD_KEY, QUESTIONS, data_uri_frame, make_case, parse
from vera.errors import VeraError
from fixtures.scripts import run

TOP_K, LIMIT = 3, 6


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_case(tmp_path_factory.mktemp("report-case"))


@pytest.fixture(scope="module")
def report(case):
    output = case.root / "report"
    assert run("report", ["--scores", str(case.scores), "--frame-scores", str(case.run), "--annotations",
                          str(case.annotations), "--frames", str(case.frames), "--output", str(output),
                          "--top-k", str(TOP_K), "--max-explanations", str(LIMIT)]) == 0
    return output


def auc_by_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the share of (anomalous, normal) frame pairs ranked right, ties counting half."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = 0.0
    for value in positive:
        wins += np.count_nonzero(negative < value) + 0.5 * np.count_nonzero(negative == value)
    return wins / (positive.size * negative.size)


def labels_of(entry: dict) -> np.ndarray:
    labels = np.zeros(entry["length"])
    starts_ends = entry["temporal_label"]
    for start, end in zip(starts_ends[::2], starts_ends[1::2]):
        if start >= 0:
            labels[start:end] = 1
    return labels


def segment_scores(frame_scores: np.ndarray, count: int) -> list[float]:
    """Each segment's mean frame score over the 16 frames it stands for (the last one: the rest)."""
    return [float(np.mean(frame_scores[16 * u: 16 * u + 16])) for u in range(count)]


def seen_frames(start: int, end: int) -> list[int]:
    """The 8 frames Step 1 shows for a window: start + j·(end − start)/8, cut to whole frames."""
    return [int(start + j * (end - start) / 8) for j in range(8)]


def test_index_lists_every_video_with_its_numbers(case, report):
    rows = parse(report / "index.html").rows
    assert len(rows) == 3
    by_key = {row[0]["data-value"]: row for row in rows}
    assert set(by_key) == set(case.keys()) and ODD_KEY in by_key
    all_labels, all_scores = [], []
    for entry in ENTRIES:
        key = Path(entry["video"]).stem
        step1, frames = case.step1(key), case.frame_scores(key)
        cells = [cell["data-value"] for cell in by_key[key]]
        # class, frames, segments, flagged, max, mean, AUC
        assert cells[2:7] == [str(entry["length"]), str(len(step1)),
                              str(sum(1 for segment in step1.values() if segment["score"] == 1)),
                              repr(float(frames.max())), repr(float(frames.mean()))]
        labels = labels_of(entry)
        if labels.any():
            assert float(cells[7]) == pytest.approx(auc_by_pairs(labels, frames), abs=1e-12)
        else:
            assert cells[7] == ""  # one class only: no AUC for the normal video
        all_labels.append(labels)
        all_scores.append(frames)
        # The link reaches the page, whatever characters the key holds.
        assert (report / unquote(by_key[key][0]["link"])).is_file()
    overall = auc_by_pairs(np.concatenate(all_labels), np.concatenate(all_scores))
    metrics = json.loads((case.run / "metrics.json").read_text())
    assert metrics["auc"] == pytest.approx(overall, abs=1e-12)
    index = (report / "index.html").read_text()
    assert f"{100 * overall:.2f} %" in index
    # Sorted by the highest frame score first.
    maxima = [float(row[5]["data-value"]) for row in rows]
    assert maxima == sorted(maxima, reverse=True)


def test_each_page_shows_the_plot_the_top_segments_and_what_the_model_saw(case, report):
    left_outs, unflagged_top = [], []
    for key in case.keys():
        page = report / "videos" / f"{key}.html"
        html_text = page.read_text()
        png = (report / "videos" / f"{key}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html_text
        step1, frames = case.step1(key), case.frame_scores(key)
        centres = sorted(int(centre) for centre in step1)
        scores = segment_scores(frames, len(centres))
        top = sorted(range(len(centres)), key=lambda u: (-scores[u], u))[:TOP_K]
        flagged = [u for u, centre in enumerate(centres) if step1[str(centre)]["score"] == 1]
        wanted = sorted(set(top) | set(flagged), key=lambda u: (-scores[u], u))[:LIMIT]
        parsed = parse(page)
        # The strip: the top K segments' centre frames, linked to their explanations.
        assert [(href, data_uri_frame(src)) for href, src in parsed.strip] == \
            [(f"#segment-{centres[u]}", centres[u]) for u in top]
        # The explanations: flagged and top segments, highest first within the limit, shown in time order.
        assert list(parsed.articles) == [f"segment-{centres[u]}" for u in sorted(wanted)]
        for u in wanted:
            segment = step1[str(centres[u])]
            images = parsed.articles[f"segment-{centres[u]}"]
            assert [data_uri_frame(src) for src in images] == seen_frames(int(segment["start"]), int(segment["end"]))
            escaped = (f"segment {centres[u]} &lt;script&gt;window.__injected = {centres[u]}&lt;/script&gt; "
                       f"&amp; done\ufffd\nOutput: {segment['score']}")
            assert escaped in html_text
        left_out = len([u for u in flagged if u not in wanted])
        assert (f"{left_out} more flagged segments are not shown" in html_text) == (left_out > 0)
        left_outs.append(left_out)
        unflagged_top += [u for u in top if u not in flagged]
        # Every answer, in the table at the end.
        assert html_text.count("&lt;script&gt;window.__injected") == len(wanted) + len(centres)
        for question in QUESTIONS:
            assert f"<li>{html.escape(question)}</li>" in html_text
    # The case covers both: a video with more flagged segments than the limit, a top segment not flagged.
    assert max(left_outs) > 0 and unflagged_top


def test_pages_are_escaped_and_need_no_network(case, report):
    pages = [report / "index.html", *sorted((report / "videos").glob("*.html"))]
    assert len(pages) == 4
    for page in pages:
        text = page.read_text()
        assert "<script>window" not in text and "\x01" not in text
        outside_images = re.sub(r"data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+", "", text)
        assert not re.search(r"(?i)\b(?:https?|ftp|wss?|file):|url\(|@import|//[a-z0-9]", outside_images), page
        for url in parse(page).urls:
            # Inline images, fragments, or files of the report itself.
            assert url.startswith(("data:image/png;base64,", "data:image/jpeg;base64,", "#")) or \
                (page.parent / unquote(url)).resolve().is_file(), (page, url[:80])
    assert "<b>&x264" not in (report / "index.html").read_text()  # the odd key is escaped
    assert html.escape(ODD_KEY) in (report / "index.html").read_text()


def test_without_frame_scores_the_answers_stand_alone(case, tmp_path):
    output = tmp_path / "report"
    assert run("report", ["--scores", str(case.scores), "--output", str(output)]) == 0
    rows = parse(output / "index.html").rows
    assert len(rows) == 3 and len(rows[0]) == 6  # no class, no AUC without annotations
    for row in rows:
        step1 = case.step1(row[0]["data-value"])
        answers = np.array([step1[str(c)]["score"] for c in sorted(int(c) for c in step1)], dtype=float)
        assert float(row[4]["data-value"]) == answers.max()
        length = max(int(segment["end"]) for segment in step1.values())
        repeated = np.repeat(answers, [16] * (len(answers) - 1) + [length - 16 * (len(answers) - 1)])
        assert float(row[5]["data-value"]) == pytest.approx(repeated.mean(), abs=1e-15)
    page = (output / "videos" / "Arrest007_x264.html").read_text()
    assert "no Steps 2–3" in page and "No frames: give --frames or --videos" in page
    assert "Step 1 answers only (no --frame-scores)" in (output / "index.html").read_text()


def test_the_folder_is_replaced_on_rerun_and_refused_for_other_inputs(case, tmp_path, capsys):
    output = tmp_path / "report"
    argv = ["--scores", str(case.scores), "--frame-scores", str(case.run / "frame_scores"), "--output", str(output)]
    assert run("report", argv) == 0
    (output / "videos" / "stale.html").write_text("old")
    assert run("report", argv) == 0
    assert not (output / "videos" / "stale.html").exists()
    assert run("report", ["--scores", str(case.scores), "--output", str(output)]) == 2
    assert "was made with other settings (frame_scores differ" in capsys.readouterr().err
    assert run("report", ["--scores", str(case.scores), "--output", str(output), "--overwrite"]) == 0


def _copy(case, tmp_path):
    scores, run_dir = tmp_path / "scores", tmp_path / "run"
    shutil.copytree(case.scores, scores)
    shutil.copytree(case.run, run_dir)
    return scores, run_dir


def test_inputs_that_disagree_are_errors_naming_the_video(case, tmp_path):
    from vera.report.inputs import load_report_inputs

    scores, run_dir = _copy(case, tmp_path)
    content = json.loads((scores / "Arrest007_x264.json").read_text())
    content["16"]["score"] = 1 - content["16"]["score"]
    (scores / "Arrest007_x264.json").write_text(json.dumps(content))
    with pytest.raises(VeraError, match=r"video Arrest007_x264: .*stages.npz holds other Step 1 answers than"):
        load_report_inputs(scores, run_dir)

    scores, run_dir = _copy(case, tmp_path / "b")
    (scores / "Normal_Videos_018_x264.json").unlink()
    with pytest.raises(VeraError, match=r"video Normal_Videos_018_x264: no Step 1 file"):
        load_report_inputs(scores, run_dir)

    scores, run_dir = _copy(case, tmp_path / "c")
    np.save(run_dir / "frame_scores" / "Arrest007_x264.npy", np.zeros(331))
    with pytest.raises(VeraError, match=r"video Arrest007_x264: frame scores .* must be up to 330 finite numbers"):
        load_report_inputs(scores, run_dir)

    annotations = tmp_path / "two.json"
    annotations.write_text(json.dumps(ENTRIES[:2]))
    with pytest.raises(VeraError, match=r"1 videos are not in .*two.json: Fight#2 <b>&x264"):
        load_report_inputs(case.scores, case.run, annotations)
    longer = [dict(ENTRIES[0], length=340), *ENTRIES[1:]]
    annotations.write_text(json.dumps(longer))
    with pytest.raises(VeraError, match=r"video Arrest007_x264: score file .* covers 330 frames, but the annotation "
                                        r"gives 340"):
        load_report_inputs(case.scores, case.run, annotations)
    with pytest.raises(VeraError, match="holds neither frame_scores/ nor <key>.npy files"):
        load_report_inputs(case.scores, case.scores)


def test_a_video_without_frames_is_an_error_naming_it(case, tmp_path, capsys):
    frames = tmp_path / "frames"
    shutil.copytree(case.frames, frames)
    shutil.rmtree(frames / "Arrest007_x264")
    assert run("report", ["--scores", str(case.scores), "--frames", str(frames), "--output",
                          str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Arrest007_x264" in error and len(error.strip().splitlines()) == 1



def test_the_index_counts_the_answers_that_are_not_well_formed(case, report, tmp_path):
    def fact(index: Path) -> str | None:
        found = re.search(r"<li>answers not well formed <b>([^<]*)</b></li>", index.read_text())
        return found and found.group(1)

    total = sum(len(case.step1(key)) for key in case.keys())
    assert fact(report / "index.html") == f"0 of {total}"  # the case's answers are all "ok"
    assert "flags nearly every segment" not in (report / "index.html").read_text()
    scores = tmp_path / "scores"
    shutil.copytree(case.scores, scores)
    first = scores / f"{case.keys()[0]}.json"
    content = json.loads(first.read_text())
    for number, centre in enumerate(sorted(content, key=int)[:4]):
        content[centre]["parse_status"] = "no-marker" if number == 0 else "truncated"
    first.write_text(json.dumps(content))
    output = tmp_path / "report"
    assert run("report", ["--scores", str(scores), "--output", str(output)]) == 0
    assert fact(output / "index.html") == f"4 of {total} (no-marker 1, truncated 3)"
    assert "flags nearly every segment" in (output / "index.html").read_text()
