"""The report's HTML: one page per video and a sortable index, self-contained and offline.

Every image is inlined as a ``data:`` URI and the only script is the index's
small sorter, inline: a page needs nothing but itself (no CDN, no font, no
network). Every text that comes from outside, the model's answers above all,
is escaped; control characters a model may emit are shown as U+FFFD.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from vera.report.inputs import ReportInputs, Segment, VideoReport

INDEX_FILE = "index.html"
VIDEOS_DIR = "videos"  # pages and plots, so that no key can clash with index.html
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

CSS = """
:root { --ink: #1d2330; --muted: #5d6677; --line: #dde1e8; --flag: #c62828; --accent: #1f5fbf; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 48px; }
h1 { font-size: 1.5rem; margin: 0.3em 0 0.2em; word-break: break-all; }
h2 { font-size: 1.15rem; margin: 1.6em 0 0.6em; border-bottom: 1px solid var(--line); padding-bottom: 0.2em; }
h3 { font-size: 1rem; margin: 0 0 0.4em; }
a { color: var(--accent); }
.muted { color: var(--muted); }
.facts { display: flex; flex-wrap: wrap; gap: 8px; margin: 0.6em 0 1em; padding: 0; list-style: none; }
.facts li { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 3px 10px; }
.facts b { font-weight: 600; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figure img { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 0.85rem; margin-top: 4px; }
.strip { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.thumb { display: block; background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
         text-decoration: none; color: var(--ink); font-size: 0.85rem; }
.thumb img, .frames img { display: block; width: 100%; height: auto; background: #000; }
.thumb span { display: block; padding: 4px 8px; }
.thumb.flagged { border-color: var(--flag); }
.segment { background: #fff; border: 1px solid var(--line); border-left: 5px solid var(--line); border-radius: 8px;
           padding: 12px 14px; margin: 0 0 14px; }
.segment.flagged { border-left-color: var(--flag); }
.badge { display: inline-block; border-radius: 4px; padding: 0 7px; font-size: 0.8rem; font-weight: 600;
         color: #fff; background: var(--muted); vertical-align: 1px; }
.badge.flag { background: var(--flag); }
.frames { display: grid; grid-template-columns: repeat(8, 1fr); gap: 6px; margin: 8px 0; }
@media (max-width: 900px) { .frames { grid-template-columns: repeat(4, 1fr); } }
.frames figure { padding: 0; border: 0; }
.frames figcaption { text-align: center; margin: 2px 0 0; }
pre.response { white-space: pre-wrap; word-break: break-word; background: var(--bg); border: 1px solid var(--line);
               border-radius: 6px; padding: 8px 10px; margin: 6px 0 0; font: 13px/1.45 ui-monospace, Menlo, Consolas,
               monospace; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th button:focus-visible { outline: 2px solid var(--accent); }
th[aria-sort="ascending"] button::after { content: " \\25B2"; font-size: 0.7em; }
th[aria-sort="descending"] button::after { content: " \\25BC"; font-size: 0.7em; }
tbody tr:hover { background: #f0f4fb; }
td.key { word-break: break-all; }
details { margin-top: 1.4em; }
details td.text { white-space: pre-wrap; word-break: break-word; font-size: 0.85rem; }
ul.questions { list-style: none; padding: 0; margin: 0; }
ul.questions li { margin: 0 0 4px; }
.note { background: #fff8e1; border: 1px solid #f3d58a; border-radius: 6px; padding: 6px 10px; }
"""

# Sorts the index table by the clicked column (numbers by data-value, empty cells last), toggling the direction.
SORT_SCRIPT = """
(function () {
  var table = document.getElementById("videos");
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  function value(row, column, numeric) {
    var text = row.cells[column].getAttribute("data-value");
    if (!numeric) return text.toLowerCase();
    return text === "" ? NaN : parseFloat(text);
  }
  function sortBy(header) {
    var column = headers.indexOf(header);
    var numeric = header.getAttribute("data-type") === "number";
    var direction = header.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, column, numeric), y = value(b, column, numeric);
      if (numeric) {
        if (isNaN(x) || isNaN(y)) return isNaN(x) - isNaN(y);
        return direction * (x - y);
      }
      return direction * (x < y ? -1 : x > y ? 1 : 0);
    });
    headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    rows.forEach(function (row) { body.appendChild(row); });
  }
  headers.forEach(function (header) {
    header.querySelector("button").addEventListener("click", function () { sortBy(header); });
  });
})();
"""


@dataclass(frozen=True)
class Thumbnail:
    """One frame as a ``data:`` URI, with its index."""

    frame: int
    uri: str


def text(value: object) -> str:
    """Any text as HTML: escaped, control characters replaced."""
    return html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True)


def page_name(key: str) -> str:
    """The file name of a video's page (the key as it is; links quote it, so '#' or '?' in a key are safe)."""
    return f"{key}.html"


def href(name: str) -> str:
    return quote(name, safe="/")


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def frame_time(frame: int, fps: float | None) -> str:
    """``192`` or ``192 (0:06.4)`` where the frame rate is known."""
    if not fps:
        return str(frame)
    seconds = frame / fps
    return f"{frame} ({int(seconds // 60)}:{seconds % 60:04.1f})"


def _document(title: str, body: str, script: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{text(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body>\n</html>\n")


WELL_FORMED = ("ok", "label-only")  # vera.vlm.parsing's statuses of an answer whose label was read as written
MALFORMED_NOTE = (
    '<p class="muted">An answer that is not well formed still gets a label by the released rule: 0 only if a "0" '
    'follows its last "Output", else 1. So a model that writes no readable answer (a random tiny model, or '
    "answers cut by --max-new-tokens) flags nearly every segment.</p>")


def _malformed(inputs: ReportInputs) -> str:
    """'N of M (status count, …)' over the segments whose Step 1 file records a parse status; '' where none does
    (the authors' released score files)."""
    statuses = [segment.status for video in inputs.videos for segment in video.segments if segment.status]
    bad = sorted(status for status in statuses if status not in WELL_FORMED)
    if not statuses:
        return ""
    counts = ", ".join(f"{status} {bad.count(status)}" for status in dict.fromkeys(bad))
    return f"{len(bad)} of {len(statuses)}" + (f" ({counts})" if counts else "")


def _facts(items: Sequence[tuple[str, str]]) -> str:
    items_html = "".join(f"<li>{text(name)} <b>{text(value)}</b></li>" for name, value in items)
    return f'<ul class="facts">{items_html}</ul>'


def _video_facts(video: VideoReport) -> list[tuple[str, str]]:
    facts = []
    if video.truth is not None:
        facts.append(("class", video.truth.video_class))
    facts += [("frames", str(video.length)), ("segments", str(len(video.segments))),
              ("flagged", str(len(video.flagged))), ("max score", number(float(video.frame_scores.max()))),
              ("mean score", number(float(video.frame_scores.mean())))]
    if video.labels is not None:
        facts.append(("AUC", percent(video.auc) if video.auc is not None else "— (one class only)"))
    return facts


def _segment_title(segment: Segment, fps: float | None) -> str:
    answer = number(segment.answer, 0 if segment.answer in (0, 1) else 2)
    badge = ('<span class="badge flag">answer 1 · flagged</span>' if segment.flagged
             else f'<span class="badge">answer {text(answer)}</span>')
    return (f"<h3>Segment {segment.index + 1}: centre frame {text(frame_time(segment.centre, fps))} "
            f"{badge} <span class=\"muted\">final score {text(number(segment.score))}</span></h3>")


def _explanation(segment: Segment, thumbnails: dict[int, Thumbnail], fps: float | None) -> str:
    frames = "".join(
        f'<figure><img src="{thumbnails[frame].uri}" alt="frame {frame}">'
        f"<figcaption>{text(frame_time(frame, fps))}</figcaption></figure>"
        for frame in segment.frames if frame in thumbnails)
    seen = ", ".join(str(frame) for frame in segment.frames)
    response = (f'<pre class="response">{text(segment.response)}</pre>' if segment.response is not None
                else '<p class="muted">The score file holds no answer text for this segment.</p>')
    status = "" if segment.status in (None, "ok") else f" · answer not well formed ({text(segment.status)})"
    return (f'<article class="segment{" flagged" if segment.flagged else ""}" id="segment-{segment.centre}">'
            f"{_segment_title(segment, fps)}"
            f'<p class="muted">window frames {segment.start}–{segment.end - 1}; '
            f"the model saw frames {seen}{status}</p>"
            + (f'<div class="frames">{frames}</div>' if frames else "") + response + "</article>")


def _answers_table(video: VideoReport) -> str:
    rows = "".join(
        f"<tr><td class=\"num\">{segment.index + 1}</td><td class=\"num\">{segment.centre}</td>"
        f"<td class=\"num\">{segment.start}–{segment.end - 1}</td>"
        f"<td class=\"num\">{text(number(segment.answer, 2))}</td>"
        f"<td class=\"num\">{text(number(segment.score))}</td>"
        f"<td class=\"text\">{text(segment.response) if segment.response is not None else ''}</td></tr>"
        for segment in video.segments)
    return (f"<details><summary>Every segment's answer ({len(video.segments)})</summary>"
            '<table><thead><tr><th class="num">#</th><th class="num">centre</th><th class="num">window</th>'
            '<th class="num">answer</th><th class="num">final score</th><th>explanation</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></details>")


def video_page(video: VideoReport, inputs: ReportInputs, plot_uri: str, thumbnails: dict[int, Thumbnail],
               fps: float | None, top_k: int, limit: int) -> str:
    """One video's page: facts, the plot, the top segments, the explanations, every answer."""
    top = video.top(top_k)
    explained, left_out = video.explained(top_k, limit)
    curves = ("Grey: Step 1 answers; blue: after Step 2 (similar segments); orange: after smoothing; black: final "
              "frame scores" if inputs.steps_run else
              "Grey: Step 1 answers; black: the answers over their frames (no Steps 2–3: give --frame-scores)")
    if video.truth is not None and video.truth.intervals:
        curves += "; red band: ground truth"
    parts = [f'<nav><a href="../{INDEX_FILE}">← all videos</a></nav>', f"<h1>{text(video.key)}</h1>",
             _facts(_video_facts(video)),
             f'<figure id="plot"><img src="{plot_uri}" alt="anomaly scores of {text(video.key)} over its frames">'
             f"<figcaption>{text(curves)}.</figcaption></figure>"]
    if top:
        strip = "".join(
            f'<a class="thumb{" flagged" if segment.flagged else ""}" href="#segment-{segment.centre}">'
            + (f'<img src="{thumbnails[segment.centre].uri}" alt="frame {segment.centre}">'
               if segment.centre in thumbnails else "")
            + f"<span>frame {text(frame_time(segment.centre, fps))} · score {text(number(segment.score))}"
              f"{' · flagged' if segment.flagged else ''}</span></a>"
            for segment in top)
        parts += [f'<section id="top"><h2>Highest-scoring segments</h2><div class="strip">{strip}</div></section>']
    if inputs.questions:
        items = "".join(f"<li>{text(question)}</li>" for question in inputs.questions)  # numbered in their text
        parts += [f'<section id="questions"><h2>Guiding questions</h2><ul class="questions">{items}</ul></section>']
    heading = (f"Explanations: segments flagged by the model (answer 1: {len(video.flagged)}) or among the "
               f"{top_k} highest-scoring")
    notes = []
    if left_out:
        notes.append(f"{left_out} more flagged segments are not shown here (--max-explanations {limit}); "
                     "every answer is in the table below.")
    if not thumbnails:
        notes.append("No frames: give --frames or --videos to see what the model saw.")
    parts += [f'<section id="explanations"><h2>{text(heading)}</h2>'
              + "".join(f'<p class="note">{text(note)}</p>' for note in notes)
              + "".join(_explanation(segment, thumbnails, fps) for segment in explained) + "</section>",
              _answers_table(video)]
    return _document(f"VERA · {video.key}", "\n".join(parts))


def index_page(inputs: ReportInputs) -> str:
    """All videos with their scores, sortable by any column; the AUC where the videos are labelled."""
    labelled = any(video.labels is not None for video in inputs.videos)
    columns = [("video", "text"), *([("class", "text")] if labelled else []), ("frames", "number"),
               ("segments", "number"), ("flagged", "number"), ("max score", "number"), ("mean score", "number"),
               *([("AUC", "number")] if labelled else [])]
    head = "".join(f'<th data-type="{kind}"{" class=num" if kind == "number" else ""}>'
                   f'<button type="button">{text(name)}</button></th>' for name, kind in columns)
    rows = []
    for video in sorted(inputs.videos, key=lambda video: (-float(video.frame_scores.max()), video.key)):
        link = f'{VIDEOS_DIR}/{page_name(video.key)}'
        cells = [f'<td class="key" data-value="{text(video.key)}"><a href="{href(link)}">{text(video.key)}</a></td>']
        if labelled:
            name = video.truth.video_class if video.truth is not None else ""
            cells.append(f'<td data-value="{text(name)}">{text(name)}</td>')
        values: list[float | None] = [video.length, len(video.segments), len(video.flagged),
                                      float(video.frame_scores.max()), float(video.frame_scores.mean())]
        shown = [str(video.length), str(len(video.segments)), str(len(video.flagged)), number(values[3]),
                 number(values[4])]
        if labelled:
            values.append(None if video.auc is None else float(video.auc))
            shown.append(percent(values[-1]))
        cells += [f'<td class="num" data-value="{"" if value is None else repr(value)}">{text(label)}</td>'
                  for value, label in zip(values, shown)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    facts = [("videos", str(len(inputs.videos))),
             ("flagged segments", str(sum(len(video.flagged) for video in inputs.videos)))]
    malformed = _malformed(inputs)
    if malformed:
        facts.append(("answers not well formed", malformed))
    if inputs.step1.get("model"):
        facts.append(("Step 1 model", str(inputs.step1["model"])))
    if inputs.scoring:
        facts.append(("Steps 2–3", f"{inputs.scoring.get('protocol', '?')} protocol, "
                                   f"{inputs.scoring.get('dataset', '?')} settings"
                     + (", without Step 2" if inputs.scoring.get("skip_step2") else "")))
    elif not inputs.steps_run:
        facts.append(("scores", "Step 1 answers only (no --frame-scores)"))
    if labelled:
        facts.append(("AUC over these videos' frames", percent(inputs.overall_auc())))
    if inputs.metrics and inputs.metrics.get("value") is not None:
        facts.append((f"compute_auc.py {str(inputs.metrics.get('metric', '')).upper()}",
                      percent(inputs.metrics["value"])))
    left_out = "".join(f"<li>{text(reason)}</li>" for reason in inputs.left_out)
    body = "\n".join([
        "<h1>VERA report</h1>", _facts(facts),
        *([MALFORMED_NOTE] if malformed and not malformed.startswith("0 ") else []),
        *([f'<div class="note" id="left-out">Left out, not scored ({len(inputs.left_out)}):<ul>{left_out}</ul></div>']
          if inputs.left_out else []),
        '<p class="muted">Click a column heading to sort. Each video\'s page shows its score curve and the '
        "model's answers to the guiding questions for the segments it flagged.</p>",
        f'<table id="videos"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>',
    ])
    return _document("VERA report", body, SORT_SCRIPT)
