"""A small labelled test set for the report tests: annotations, Step 1 answers with text, frames, a scoring run.

Frames are JPEG folders whose frames spell their own index (``video_fixtures``),
so a test can read back which frame a thumbnail shows. The answers' text
carries markup, an ampersand and a control character, as a model's output may.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vera.data.annotations import load_test_annotations
from vera.scoring.synthetic import write_synthetic_inputs
from video_fixtures import decode_index, index_frame
from scripts import run

# An anomalous video, a normal one, and one whose key needs escaping in HTML and quoting in a link.
ODD_KEY = "Fight#2 <b>&x264"
ENTRIES = [
    {"video": "frames/Arrest/Arrest007_x264.mp4", "temporal_label": [90, 250, -1, -1], "length": 330},
    {"video": "frames/Normal/Normal_Videos_018_x264.mp4", "temporal_label": [-1, -1, -1, -1], "length": 200},
    {"video": f"frames/Fighting/{ODD_KEY}.mp4", "temporal_label": [40, 120, -1, -1], "length": 250},
]
QUESTIONS = ["1. Is anyone fighting?", "2. Is anything <burning> & smoking?"]


def response(centre: int, score: int) -> str:
    """What the stand-in model answered for a segment: markup that must stay text, a control character."""
    return (f"Answers to Prompt Questions: segment {centre} <script>window.__injected = {centre}</script> "
            f"& done\x01\nOutput: {score}")


@dataclass
class ReportCase:
    root: Path
    annotations: Path
    scores: Path
    features: Path
    frames: Path
    run: Path

    def keys(self) -> list[str]:
        return [video.key for video in load_test_annotations(self.annotations, "ucf")]

    def step1(self, key: str) -> dict:
        return json.loads((self.scores / f"{key}.json").read_text())

    def frame_scores(self, key: str) -> np.ndarray:
        return np.load(self.run / "frame_scores" / f"{key}.npy")


def make_case(root: Path, seed: int = 3) -> ReportCase:
    case = ReportCase(root, root / "ann.json", root / "scores", root / "features", root / "frames", root / "run")
    case.annotations.write_text(json.dumps(ENTRIES))
    videos = load_test_annotations(case.annotations, "ucf")
    write_synthetic_inputs(videos, case.scores, case.features, width=16, seed=seed)
    for video in videos:
        path = case.scores / f"{video.key}.json"
        content = json.loads(path.read_text())
        for centre, entry in content.items():
            entry.update(response=response(int(centre), entry["score"]), parse_status="ok")
        path.write_text(json.dumps(content))
        folder = case.frames / video.key
        folder.mkdir(parents=True)
        for index in range(video.length):
            cv2.imwrite(str(folder / f"{index:06d}.jpg"), index_frame(index, (96, 72)))
    (case.scores / "run.json").write_text(json.dumps({"identity": {"kind": "step1", "model": "stand-in",
                                                                   "questions": QUESTIONS, "num_frames": 8}}))
    assert run("compute_auc", ["--dataset", "ucf", "--annotations", str(case.annotations), "--scores",
                               str(case.scores), "--features", str(case.features), "--output", str(case.run),
                               "--no-curves"]) == 0
    return case


def data_uri_frame(uri: str) -> int:
    """The frame index a JPEG ``data:`` URI shows."""
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    image = np.array(Image.open(BytesIO(base64.b64decode(uri[len(prefix):]))).convert("RGB"))
    return decode_index(image)


class PageParser(HTMLParser):
    """The parts of a report page the tests read: table rows, articles and their images, links, sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[dict]] = []
        self.articles: dict[str, list[str]] = {}  # id → image sources
        self.strip: list[tuple[str, str]] = []  # (href, image source) of the top segments
        self.urls: list[str] = []
        self._article: str | None = None
        self._thumb: str | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            if values.get(name) is not None:
                self.urls.append(values[name])
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body and self.rows:
            self.rows[-1].append(dict(values))
        elif tag == "a" and self._in_body and self.rows and self.rows[-1]:
            self.rows[-1][-1]["link"] = values["href"]
        elif tag == "article":
            self._article = values["id"]
            self.articles[self._article] = []
        elif tag == "a" and "thumb" in (values.get("class") or ""):
            self._thumb = values["href"]
        elif tag == "img" and self._article is not None:
            self.articles[self._article].append(values["src"])
        elif tag == "img" and self._thumb is not None:
            self.strip.append((self._thumb, values["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag == "article":
            self._article = None
        elif tag == "a":
            self._thumb = None


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser
