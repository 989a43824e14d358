"""Write a report: per video a PNG score curve and a self-contained HTML page, and the index.

``OUTPUT/index.html`` lists the videos; ``OUTPUT/videos/<key>.html`` and
``<key>.png`` are each video's page and plot (the plot is also inlined in the
page). Frames for the thumbnails come from ``vera.data.frames`` (JPEG folders
or the video files). The folder is a ``vera.runs.RunFolder``: a rerun with the
same inputs replaces the pages whole, other inputs are refused unless
``overwrite``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from vera.data.annotations import TestVideo
from vera.data.frames import open_frames
from vera.figures import score_curve
from vera.io import write_text_atomic
from vera.report.inputs import ReportInputs, VideoReport
from vera.report.pages import INDEX_FILE, VIDEOS_DIR, Thumbnail, index_page, page_name, video_page
from vera.runs import RunFolder

KIND = "report"
THUMBNAIL_WIDTH = 256  # pixels; shown at about 170-260 CSS pixels
JPEG_QUALITY = 82


@dataclass(frozen=True)
class ReportSettings:
    output: Path
    frames_dir: Path | None = None
    videos_dir: Path | None = None
    top_k: int = 5
    max_explanations: int = 30
    overwrite: bool = False


def report_folder(settings: ReportSettings, sources: dict[str, Path | None]) -> RunFolder:
    """The output folder; its identity is the inputs (absolute paths) and what the pages show."""
    identity = {name: None if path is None else str(Path(path).resolve()) for name, path in sources.items()}
    identity.update(frames=None if settings.frames_dir is None else str(Path(settings.frames_dir).resolve()),
                    videos=None if settings.videos_dir is None else str(Path(settings.videos_dir).resolve()),
                    top_k=settings.top_k, max_explanations=settings.max_explanations)

    def outputs(folder: Path) -> list[Path]:
        return [folder / INDEX_FILE, folder / VIDEOS_DIR]

    return RunFolder(settings.output, KIND, identity, overwrite=settings.overwrite, outputs=outputs)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg_uri(frame: np.ndarray, width: int = THUMBNAIL_WIDTH) -> str:
    """A frame (H, W, 3 uint8 RGB), scaled to ``width`` pixels wide, as a JPEG ``data:`` URI."""
    image = Image.fromarray(frame)
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.BICUBIC)
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return data_uri(buffer.getvalue(), "image/jpeg")


def thumbnails(video: VideoReport, settings: ReportSettings) -> tuple[dict[int, Thumbnail], float | None]:
    """The frames a page shows (top segments' centres, explained segments' frames), and the frame rate."""
    if settings.frames_dir is None and settings.videos_dir is None:
        return {}, None
    explained, _ = video.explained(settings.top_k, settings.max_explanations)
    wanted = sorted({segment.centre for segment in video.top(settings.top_k)}
                    | {frame for segment in explained for frame in segment.frames})
    with open_frames(video.key, frames_dir=settings.frames_dir, videos_dir=settings.videos_dir) as frames:
        pixels = frames.read(wanted) if wanted else []
        fps = getattr(frames, "fps", None)
    return {frame: Thumbnail(frame, jpeg_uri(image)) for frame, image in zip(wanted, pixels)}, fps


def _plot(video: VideoReport, path: Path) -> Path:
    truth = video.truth or TestVideo(video.key, video.length)
    title = (f"{video.key} ({truth.video_class}, {video.length} frames)" if video.truth is not None
             else f"{video.key} ({video.length} frames)")
    return score_curve(TestVideo(video.key, video.length, truth.intervals, truth.video_class), video.curves,
                       video.frame_scores, path, title=title)


def write_report(inputs: ReportInputs, settings: ReportSettings, sources: dict[str, Path | None]) -> Path:
    """Write every page and plot (see the module docstring); return the index's path."""
    folder = report_folder(settings, sources).open()

    def write(staging: Path) -> None:
        for video in inputs.videos:
            plot = _plot(video, staging / VIDEOS_DIR / f"{video.key}.png")
            frames, fps = thumbnails(video, settings)
            page = video_page(video, inputs, data_uri(plot.read_bytes(), "image/png"), frames, fps,
                              settings.top_k, settings.max_explanations)
            write_text_atomic(staging / VIDEOS_DIR / page_name(video.key), page)
        write_text_atomic(staging / INDEX_FILE, index_page(inputs))

    folder.replace_outputs(write, last=INDEX_FILE)
    return settings.output / INDEX_FILE
