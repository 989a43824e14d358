"""Inference/plot.py: the files are produced, are PNGs of a sensible size, and draw the data they should."""

from __future__ import annotations

import importlib
import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from vera.data.annotations import load_test_annotations
from vera.errors import VeraError
from vera.figures import moving_average, question_versions
from vera.learning.launch import train
from vera.learning.settings import TrainingOptions
from vera.scoring.synthetic import write_synthetic_inputs
from vera.vlm.backends.base import VLMRequest
from vera.vlm.backends.scripted import ScriptedBackend
from fixtures.scripts import load_script

compute_auc = load_script("compute_auc")
plot = load_script("plot")
PNG = b"\x89PNG\r\n\x1a\n"


def _image(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    return image


def _colour_pixels(image: np.ndarray, bgr: tuple[int, int, int], tolerance: int = 40) -> int:
    return int(np.count_nonzero(np.all(np.abs(image.astype(int) - bgr) <= tolerance, axis=2)))


def test_score_curves(tmp_path):
    entries = [{"video": "frames/Arrest/Arrest007_x264.mp4", "temporal_label": [1530, 2160, -1, -1], "length": 3144},
               {"video": "frames/Normal/Normal_Videos_018_x264.mp4", "temporal_label": [-1, -1, -1, -1],
                "length": 1181}]
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps(entries))
    write_synthetic_inputs(load_test_annotations(annotation, "ucf"), tmp_path / "scores", tmp_path / "features",
                           width=16, seed=2)
    compute_auc.main(["--dataset", "ucf", "--annotations", str(annotation), "--scores", str(tmp_path / "scores"),
                      "--features", str(tmp_path / "features"), "--output", str(tmp_path / "run"), "--no-curves"])
    assert plot.main(["--run", str(tmp_path / "run"), "--annotations", str(annotation), "--scores",
                      str(tmp_path / "scores"), "--output", str(tmp_path / "figures")]) == 0
    arrest = _image(tmp_path / "figures" / "Arrest007_x264.png")
    normal = _image(tmp_path / "figures" / "Normal_Videos_018_x264.png")
    # Every curve is drawn: blue (Step 2), orange (smoothing), black (final); red shading only where there is an anomaly.
    for colour in ((180, 119, 31), (14, 127, 255), (0, 0, 0)):
        assert _colour_pixels(arrest, colour) > 300
    shade = (220, 220, 247)  # the ground truth's light red on white
    assert _colour_pixels(arrest, shade, 12) > 2000 and _colour_pixels(normal, shade, 12) < 200
    assert plot.main(["--run", str(tmp_path / "run"), "--annotations", str(annotation), "--videos",
                      "Normal_Videos_018_x264", "--output", str(tmp_path / "one")]) == 0
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["Normal_Videos_018_x264.png"]
    with pytest.raises(VeraError, match="score curves need --annotations"):
        plot.main(["--run", str(tmp_path / "run"), "--output", str(tmp_path / "x")])
    with pytest.raises(VeraError, match="--videos: Nope_x264 not in"):
        plot.main(["--run", str(tmp_path / "run"), "--annotations", str(annotation), "--videos", "Nope_x264",
                   "--output", str(tmp_path / "x")])
    (tmp_path / "run" / "stages.npz").unlink()
    with pytest.raises(VeraError, match="stages.npz not found: rerun Inference/compute_auc.py"):
        plot.main(["--run", str(tmp_path / "run"), "--annotations", str(annotation), "--output", str(tmp_path / "x")])


# ------------------------------------------------------------------ training


def _learner(request: VLMRequest) -> str:
    """Right on a share of the videos that grows with the number of '(good)' questions, else wrong."""
    if request.key.startswith("optimizer step "):
        step = int(request.key.rsplit(" ", 1)[1])
        good = ["(good)"] * min(step // 3, 4) + ["(plain)"] * max(0, 2 - step // 5)
        questions = [f"{n}. Is question {n} of step {step} answered? {tag}" for n, tag in enumerate(good, start=1)]
        if step % 4 == 0:  # the optimizer sometimes keeps the questions
            return "Reasoning: keep them."
        return "Reasoning:\nscripted.\nNew Prompt Questions:\n" + "\n".join(questions or ["1. Anything odd?"]) + "\n"
    label = 0 if request.key.startswith("Normal") else 1
    right = zlib.crc32((request.key + request.prompt).encode()) % 5 < request.prompt.count("(good)") + 1
    return f"Answers to Prompt Questions: …\nOutput:\n{label if right else 1 - label}"


@pytest.fixture(scope="module")
def training_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    names = [f"Abuse/Abuse{n:03d}_x264" for n in range(6)] + [
        f"Training_Normal_Videos_Anomaly/Normal_Videos{n:03d}_x264" for n in range(6)]
    for name in names:
        folder = root / "frames" / Path(name).name
        folder.mkdir(parents=True)
        for index in range(8):
            cv2.imwrite(str(folder / f"{index:06d}.jpg"), np.full((8, 8, 3), index * 20, np.uint8))
    # An unbalanced validation list, so that AUC and accuracy differ.
    for split, chosen in (("train", names), ("val", names[:6] + names[6:8])):
        (root / f"{split}.json").write_text(json.dumps([{"video": f"frames/{n}.mp4", "length": 8} for n in chosen]))
    options = TrainingOptions(dataset="ucf", train=root / "train.json", val=root / "val.json",
                              frames_dir=root / "frames", output=root / "run", model="scripted", epochs=5,
                              batch_size=2, val_every=2, val_batch_size=12, num_frames=4)
    backend = ScriptedBackend(_learner)
    train(options, lambda device: backend, accelerator="cpu", progress=False)
    return root / "run"


def test_training_curves_and_question_evolution(training_run, tmp_path):
    assert plot.main(["--run", str(training_run), "--output", str(tmp_path)]) == 0
    curves = _image(tmp_path / "training_curves.png")
    timeline = _image(tmp_path / "question_evolution.png")
    assert _colour_pixels(curves, (180, 119, 31)) > 200  # accuracy (blue)
    assert _colour_pixels(curves, (44, 160, 44)) > 200  # AUC (green)
    assert _colour_pixels(timeline, (40, 39, 214)) > 20  # red change marks
    text = (tmp_path / "question_evolution.md").read_text()
    validations = [json.loads(line) for line in (training_run / "validation.jsonl").read_text().splitlines()]
    assert text.count("### step ") == len(validations) > 10
    assert "| 0 | Q1 | 1. Is there any suspicious person" in text


def test_question_versions_by_hand():
    history = [
        {"step": 1, "questions_before": ["a", "b"], "questions_after": ["a", "c"]},
        {"step": 2, "questions_before": ["a", "c"], "questions_after": ["a", "c"]},
        {"step": 3, "questions_before": ["a", "c"], "questions_after": ["d", "c", "e"]},
        {"step": 4, "questions_before": ["d", "c", "e"], "questions_after": ["d"]},
    ]
    assert question_versions(history) == [
        [(0, 3, "a"), (3, 4, "d")],
        [(0, 1, "b"), (1, 4, "c")],
        [(3, 4, "e")],
    ]


def test_moving_average_by_hand():
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(moving_average(np.array([2.0, 4.0]), 5), [2.0, 3.0])


def test_a_folder_of_neither_kind_is_refused(tmp_path):
    with pytest.raises(VeraError, match="neither a compute_auc.py output"):
        plot.main(["--run", str(tmp_path), "--output", str(tmp_path / "x")])
