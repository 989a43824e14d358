"""VERA on any videos in one run (``detect.py``): every stage, each in its own resumable folder.

    OUTPUT/input/     annotations.json (keys and decoded lengths; labels with --labels) and videos/, links
                      to the files, through which every stage reads their frames (``vera.data.frames``);
                      left_out.json, the videos that cannot be scored (with ``skip_bad_videos``)
    OUTPUT/step1/     Step 1: <key>.json, each segment's answer to the guiding questions
    OUTPUT/features/  ImageBind segment features <key>.npy (not with --skip-step2)
    OUTPUT/scores/    Steps 2-3 (the paper protocol, any length, no labels needed): frame_scores/<key>.npy,
                      stages.npz, summary.json
    OUTPUT/report/    index.html and videos/<key>.html, <key>.png (``vera.report``)

Each folder is a ``vera.runs.RunFolder``: rerunning the command resumes where
it stopped (finished videos are skipped), and a folder made with other
settings is refused unless ``overwrite``, which then redoes that stage. Every
folder is checked, and every video decoded whole and its length checked,
before a model loads.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

from vera.data.annotations import TestVideo, load_test_annotations
from vera.data.own_videos import MeasuredVideo, measure_each, read_labels, video_files, write_annotations
from vera.constants import MIN_SCORED_FRAMES
from vera.errors import VeraError
from vera.io import read_json, sha256_text, write_json_atomic
from vera.runs import RunFolder

ANNOTATION_DATASET = "ucf"  # the file format only (class as folder); any key and any label fit it
ANNOTATIONS_FILE = "annotations.json"
LINKS_DIR = "videos"
LEFT_OUT_FILE = "left_out.json"  # the videos that cannot be scored: [{"video": path, "reason": line}]
_SHOWN = 3


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
    def left_out(self) -> Path:
        return self.input / LEFT_OUT_FILE

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
        return [folder / ANNOTATIONS_FILE, folder / LINKS_DIR, folder / LEFT_OUT_FILE]

    return RunFolder(paths.input, "detect-input", identity, overwrite=overwrite, outputs=outputs)


def unscorable(video: MeasuredVideo | str) -> str | None:
    """Why a measured video cannot be scored (one line naming it), or None: it does not decode, or it is
    shorter than Steps 2-3 score."""
    if isinstance(video, str):
        return video
    if video.length < MIN_SCORED_FRAMES:
        return (f"video {video.key}: {video.length} frame(s), too short to score (at least {MIN_SCORED_FRAMES} "
                f"needed; {video.path})")
    return None


def check_left_out(left_out: list[dict], total: int, skip_bad_videos: bool, log) -> None:
    """Stop on videos that cannot be scored, naming them, or (``skip_bad_videos``) name each and go on."""
    reasons = [entry["reason"] for entry in left_out]
    if not reasons:
        return
    listed = "; ".join(reasons[:_SHOWN]) + ("; …" if len(reasons) > _SHOWN else "")
    if len(reasons) == total:
        raise VeraError(listed if total == 1 else f"none of the {total} videos can be scored: {listed}")
    if not skip_bad_videos:
        counted = listed if len(reasons) == 1 else f"{len(reasons)} of {total} videos cannot be scored: {listed}"
        raise VeraError(f"{counted} (--skip-bad-videos leaves such videos out and goes on with the others)")
    for reason in reasons:
        log(f"left out (--skip-bad-videos): {reason}")


def prepare_inputs(paths: DetectPaths, inputs: list[Path], labels: Path | None, workers: int,
                   overwrite: bool, skip_bad_videos: bool = False,
                   log=print) -> tuple[list[TestVideo], list[float], list[dict]]:
    """Measure the videos (once), link them under one folder and write their annotation file.

    Every video is decoded whole here, before any model runs: one that does
    not decode or is too short to score stops the run, naming it, or with
    ``skip_bad_videos`` is left out (named, and recorded in ``left_out.json``,
    so that a resumed run says the same). Returns the videos as every stage
    reads them, the frame rates found (empty when resumed) and the videos left
    out (``{"video", "reason"}``).
    """
    files = video_files(inputs)
    folder = input_folder(paths, files, labels, overwrite).open()
    rates: list[float] = []
    if folder.resumed and paths.annotations.is_file():
        left_out = read_json(paths.left_out, "list of left-out videos") if paths.left_out.is_file() else []
        check_left_out(left_out, len(files), skip_bad_videos, log)
    else:
        results = measure_each(files, workers)
        left_out = [{"video": str(path), "reason": reason} for path, result in zip(files, results)
                    if (reason := unscorable(result)) is not None]
        check_left_out(left_out, len(files), skip_bad_videos, log)
        measured = [result for result in results if unscorable(result) is None]
        chosen = read_labels(labels, measured, [Path(entry["video"]) for entry in left_out]) if labels else None
        paths.videos.mkdir(parents=True, exist_ok=True)
        for video in measured:
            link = paths.videos / f"{video.key}{video.path.suffix.lower()}"
            if link.is_symlink() or link.exists():
                link.unlink()
            os.symlink(video.path.resolve(), link)
        write_json_atomic(paths.left_out, left_out)
        write_annotations(measured, chosen, ANNOTATION_DATASET, paths.annotations, overwrite=True)
        rates = sorted({round(video.fps, 3) for video in measured if video.fps})
    return load_test_annotations(paths.annotations, ANNOTATION_DATASET), rates, left_out


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
    """Everything ``detect.py`` was asked for (``detect.py`` builds it from the command line)."""

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
    skip_bad_videos: bool = False  # leave out videos that do not decode or are too short, instead of stopping
    prompt_source: str = "--preset ucf, the default template"  # where the questions came from, for errors


def _feature_settings(settings: DetectSettings, half: int):
    from vera.features.feature_extraction import FeatureSettings
    from vera.features.imagebind import HUGE, TINY

    if settings.random_init:
        model = f"random-{(TINY if settings.tiny else HUGE).name} (seed 0)"
    else:
        model = f"{settings.checkpoint.name} ({settings.checkpoint.stat().st_size} bytes)"
    return FeatureSettings(model=model, dtype="float32", half_window=half)


def run_detect(settings: DetectSettings, log=print) -> Path:
    """Every stage in turn (see the module docstring); returns the report's index page."""
    from vera.data.segments import half_window
    from vera.features.feature_extraction import feature_folder
    from vera.report.build import ReportSettings, report_folder
    from vera.scoring.steps import ScoringOptions
    from vera.scoring.unlabelled import frame_scores_folder
    from vera.vlm.backends import model_type_of
    from vera.vlm.prompts import build_learner_prompt, resolve_frame_layout
    from vera.vlm.step1 import Step1Settings, step1_folder, step1_identity

    paths = DetectPaths(settings.output)
    videos, rates, left_out = prepare_inputs(paths, settings.inputs, settings.labels, settings.workers,
                                             settings.overwrite, settings.skip_bad_videos, log)
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
    inputs.left_out = [entry["reason"] for entry in left_out]
    return write_report(inputs, report, sources)


def _step1(settings: DetectSettings, step1, videos: list[TestVideo], log) -> None:
    from vera.vlm.backends import load_backend
    from vera.vlm.context import check_context
    from vera.vlm.prompts import build_learner_prompt
    from vera.vlm.step1 import Step1Runner

    backend = load_backend("hf", settings.model, device=settings.device, dtype=settings.dtype,
                           max_batch_size=settings.batch_size, local_files_only=settings.local_files_only)
    prompt = build_learner_prompt(settings.template, settings.questions, step1.num_frames, step1.frame_layout)
    check_context(backend, prompt, step1.frame_layout, step1.num_frames, step1.image_size, step1.max_new_tokens,
                  settings.prompt_source)
    summary = Step1Runner(backend, settings.template, settings.questions, step1).run(videos)
    del backend
    release_memory()
    log(summary.text())
    check_failures("Step 1", summary.failed)


def _features(settings: DetectSettings, features, paths: DetectPaths, videos: list[TestVideo], log) -> None:
    from vera.devices import resolve_device
    from vera.features.feature_extraction import extract_features
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
