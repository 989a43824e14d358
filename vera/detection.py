"""VERA on any videos in one run (``detect.py``): every stage, each in its own resumable folder.

    OUTPUT/input/     annotations.json (keys and decoded lengths; labels with --labels) and videos/, links
                      to the files, through which every stage reads their frames (``vera.data.frames``)
    OUTPUT/step1/     Step 1: <key>.json, each segment's answer to the guiding questions
    OUTPUT/features/  ImageBind segment features <key>.npy (not with --skip-step2)
    OUTPUT/scores/    Steps 2-3 (the paper protocol, any length, no labels needed): frame_scores/<key>.npy,
                      stages.npz, summary.json
    OUTPUT/report/    index.html and videos/<key>.html, <key>.png (``vera.report``)

Each folder is a ``vera.runs.RunFolder``: rerunning the command resumes where
it stopped (finished videos are skipped), and a folder made with other
settings is refused unless ``overwrite``, which then redoes that stage. Every
folder is checked before a model loads.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

from vera.data.annotations import TestVideo, load_test_annotations
from vera.data.own_videos import measure_files, read_labels, video_files, write_annotations
from vera.errors import VeraError
from vera.io import sha256_text
from vera.runs import RunFolder

ANNOTATION_DATASET = "ucf"  # the file format only (class as folder); any key and any label fit it
ANNOTATIONS_FILE = "annotations.json"
LINKS_DIR = "videos"


@dataclass(frozen=True)
class DetectPaths:
    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def annotations(self) -> Path:
        return self.input / ANNOTATIONS_FILE

    @property
    def videos(self) -> Path:
        return self.input / LINKS_DIR

    @property
    def step1(self) -> Path:
        return self.root / "step1"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def report(self) -> Path:
        return self.root / "report"


def input_folder(paths: DetectPaths, files: list[Path], labels: Path | None, overwrite: bool) -> RunFolder:
    """The input stage's folder; its identity is the video files (path and size) and the labels' text."""
    identity = {"videos": [[str(path.resolve()), path.stat().st_size] for path in files],
                "labels_sha256": None if labels is None else sha256_text(labels.read_text(encoding="utf-8"))}

    def outputs(folder: Path) -> list[Path]:
        return [folder / ANNOTATIONS_FILE, folder / LINKS_DIR]

    return RunFolder(paths.input, "detect-input", identity, overwrite=overwrite, outputs=outputs)


def prepare_inputs(paths: DetectPaths, inputs: list[Path], labels: Path | None, workers: int,
                   overwrite: bool) -> tuple[list[TestVideo], list[float]]:
    """Measure the videos (once), link them under one folder and write their annotation file.

    Returns the videos as every stage reads them, and the frame rates found
    (empty when resumed).
    """
    files = video_files(inputs)
    folder = input_folder(paths, files, labels, overwrite).open()
    rates: list[float] = []
    if not (folder.resumed and paths.annotations.is_file()):
        measured = measure_files(files, workers)
        chosen = read_labels(labels, measured) if labels else None
        paths.videos.mkdir(parents=True, exist_ok=True)
        for video in measured:
            link = paths.videos / f"{video.key}{video.path.suffix.lower()}"
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(video.path.resolve(), link)
        write_annotations(measured, chosen, ANNOTATION_DATASET, paths.annotations, overwrite=True)
        rates = sorted({round(video.fps, 3) for video in measured if video.fps})
    return load_test_annotations(paths.annotations, ANNOTATION_DATASET), rates


def release_memory() -> None:
    """Return a dropped model's memory before the next one loads (the VLM and ImageBind need not share it)."""
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_failures(stage: str, failed: dict[str, str]) -> None:
    if failed:
        listed = "; ".join(list(failed.values())[:3])
        raise VeraError(f"{stage} failed for {len(failed)} videos ({listed}); fix them and rerun to resume")


@dataclass
class DetectSettings:
    """Everything ``detect.py`` was asked for (``vera.commands.detect`` builds it from the command line)."""

    inputs: list[Path]
    output: Path
    model: str  # a folder or Hub id, resolved (the paper's model already converted)
    local_files_only: bool
    questions: list[str]
    template: str
    template_source: str
    frame_layout: str | None
    checkpoint: Path | None  # ImageBind; None with random_init or skip_step2
    random_init: bool = False
    tiny: bool = False
    skip_step2: bool = False
    dataset: str = "ucf"
    labels: Path | None = None
    fps: float | None = None
    max_new_tokens: int = 1024
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    workers: int = 1
    input_workers: int = 0  # frame readers ahead of the VLM and ImageBind (vera.data.loading); 0: in process
    top_k: int = 5
    max_explanations: int = 30
    overwrite: bool = False
    progress: bool = True


def _feature_settings(settings: DetectSettings, half: int):
    from vera.features.extraction import FeatureSettings
    from vera.features.imagebind import HUGE, TINY

    if settings.random_init:
        model = f"random-{(TINY if settings.tiny else HUGE).name} (seed 0)"
    else:
        model = f"{settings.checkpoint.name} ({settings.checkpoint.stat().st_size} bytes)"
    return FeatureSettings(model=model, dtype="float32", half_window=half)


def run_detect(settings: DetectSettings, log=print) -> Path:
    """Every stage in turn (see the module docstring); returns the report's index page."""
    from vera.data.segments import half_window
    from vera.features.extraction import feature_folder
    from vera.report.build import ReportSettings, report_folder
    from vera.scoring.steps import ScoringOptions
    from vera.scoring.unlabelled import frame_scores_folder
    from vera.vlm.backends import model_type_of
    from vera.vlm.prompts import build_learner_prompt, resolve_frame_layout
    from vera.vlm.step1 import Step1Settings, step1_folder, step1_identity

    paths = DetectPaths(settings.output)
    videos, rates = prepare_inputs(paths, settings.inputs, settings.labels, settings.workers, settings.overwrite)
    log(f"{len(videos)} videos, {sum(video.length for video in videos)} frames ({paths.annotations})")
    if rates and rates != [30.0] and settings.fps is None:
        log(f"frame rates found: {', '.join(f'{rate:g}' for rate in rates)} fps; the segment windows assume "
            "30 fps (±150 frames) as the paper's code does; --fps F gives true 10-second windows")
    model_type = model_type_of(settings.model, local_files_only=settings.local_files_only)
    step1 = Step1Settings(output=paths.step1, videos_dir=paths.videos,
                          frame_layout=resolve_frame_layout(settings.frame_layout, model_type, settings.template),
                          fps=settings.fps, batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                          overwrite=settings.overwrite, template_source=settings.template_source,
                          progress=settings.progress, input_workers=settings.input_workers)
    prompt = build_learner_prompt(settings.template, settings.questions, step1.num_frames, step1.frame_layout)
    options = ScoringOptions(dataset=settings.dataset, metric="auc", protocol="paper",
                             skip_step2=settings.skip_step2)
    features = None if settings.skip_step2 else _feature_settings(settings, half_window(settings.fps))
    report = ReportSettings(paths.report, videos_dir=paths.videos, top_k=settings.top_k,
                            max_explanations=settings.max_explanations, overwrite=settings.overwrite)
    sources = {"scores": paths.step1, "frame_scores": paths.scores,
               "annotations": paths.annotations if settings.labels else None}
    # Every stage's folder is checked (writable, same settings or --overwrite) before any model loads.
    identity = step1_identity("hf", settings.model, settings.questions, prompt, step1)
    resumed_step1 = step1_folder(step1, identity, videos).check()
    resumed_features = features is not None and feature_folder(paths.features, features, settings.overwrite).check()
    frame_scores_folder(paths.scores, options, annotations=paths.annotations, scores_dir=paths.step1,
                        features_dir=paths.features, overwrite=settings.overwrite).check()
    report_folder(report, sources).check()

    # A stage whose every video is done is not loaded again (a resumed run goes straight to the report).
    if resumed_step1 and all((paths.step1 / f"{video.key}.json").is_file() for video in videos):
        log(f"Step 1: all {len(videos)} videos answered before")
    else:
        _step1(settings, step1, videos, log)
    if features is not None:
        if resumed_features and all((paths.features / f"{video.key}.npy").is_file() for video in videos):
            log(f"features: all {len(videos)} videos computed before")
        else:
            _features(settings, features, paths, videos, log)
    _scores(options, paths, videos, settings.overwrite)
    from vera.report.build import write_report
    from vera.report.inputs import load_report_inputs

    inputs = load_report_inputs(paths.step1, paths.scores, sources["annotations"], ANNOTATION_DATASET)
    return write_report(inputs, report, sources)


def _step1(settings: DetectSettings, step1, videos: list[TestVideo], log) -> None:
    from vera.vlm.backends import load_backend
    from vera.vlm.step1 import Step1Runner

    backend = load_backend("hf", settings.model, device=settings.device, dtype=settings.dtype,
                           max_batch_size=settings.batch_size, local_files_only=settings.local_files_only)
    summary = Step1Runner(backend, settings.template, settings.questions, step1).run(videos)
    del backend
    release_memory()
    log(summary.text())
    check_failures("Step 1", summary.failed)


def _features(settings: DetectSettings, features, paths: DetectPaths, videos: list[TestVideo], log) -> None:
    from vera.devices import resolve_device
    from vera.features.extraction import extract_features
    from vera.features.imagebind import load_vision_encoder

    import torch

    device = resolve_device(settings.device)
    encoder = load_vision_encoder(settings.checkpoint, random_init=settings.random_init, tiny=settings.tiny,
                                  device=device, dtype=torch.float32)
    report = extract_features(videos, encoder, paths.features, features, videos_dir=paths.videos,
                              show_progress=settings.progress, overwrite=settings.overwrite,
                              input_workers=settings.input_workers)
    del encoder
    release_memory()
    log(f"features: {len(report.written)} written, {len(report.skipped)} already complete")
    check_failures("feature extraction", report.failed)


def _scores(options, paths: DetectPaths, videos: list[TestVideo], overwrite: bool) -> None:
    from vera.scoring.unlabelled import frame_scores_folder, score_videos, write_frame_scores

    folder = frame_scores_folder(paths.scores, options, annotations=paths.annotations, scores_dir=paths.step1,
                                 features_dir=paths.features, overwrite=overwrite).open()
    write_frame_scores(score_videos(videos, paths.step1, None if options.skip_step2 else paths.features, options),
                       options, folder)
