"""Step 1 of VERA: ask a frozen VLM the guiding questions about every segment of every test video.

For each video the segments are centred on frames 0, 16, 32, … (``vera.data.segments``);
each shows the VLM 8 frames of its window, resized to 448×448 (bicubic), with
the learner prompt. The answer's 0/1 label (``vera.vlm.parsing``) is the segment's
initial score. Output, per video, ``<output>/<key>.json``::

    {"0": {"start": 0.0, "end": 150.0, "score": 1, "response": "…", "parse_status": "ok",
           "well_formed": true, "label_prob": 0.93}, "16": {…}, …}

plus ``<output>/run.json`` (what produced the folder) and a summary of the
answers that were not well formed.

The folder is a ``vera.runs.RunFolder``: finished videos are skipped on a
rerun, a folder made with another model, other questions or settings is
refused unless ``overwrite``, and a video in progress is checkpointed to
``<output>/.partial/<key>.json`` every ``checkpoint_every`` answers (and on the
way out of a failing or interrupted run), so a rerun loses at most the answers
since the last checkpoint. A checkpoint saved for another annotation length is
dropped and its video asked afresh (the run identity holds no lengths, so an
edited annotation would otherwise mix windows of two lengths). All files are
written atomically.

Several processes (``vera.distributed``: ``--devices N --num-nodes M``) split
the videos: each answers its share with its own model and writes its own
score files and ``summary.rank-R-of-W.json``; rank 0 alone opens the folder
(``run.json``, ``--overwrite``) before the others start, and merges the
summaries into ``summary.json`` at the end. ``--shard I/N`` selects first, the
processes split the shard's videos again. A run resumes with any number of
processes. (Batches form within a process, so with ``batch_size`` > 1 the
segments batched together depend on the split; answers agree up to the
numerical effects of batching.)
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from vera.data.annotations import TestVideo, check_frame_count
from vera.distributed import Ranks
from vera.vlm.backends.base import VLMAnswer, VLMBackend, VLMRequest
from vera.errors import VeraError
from vera.data.frames import VLM_IMAGE_SIZE, VideoFrames, open_frames
from vera.data.loading import FramesInfo, ReadJob, read_ahead
from vera.io import read_json, sha256_text
from vera.progress import progress
from vera.runs import RunFolder
from vera.vlm.input_dump import enable_input_dumps
from vera.vlm.parsing import LABEL_ONLY, PARSE_STATUSES, ParsedAnswer, answer_prefix, parse_answer
from vera.vlm.prompts import build_learner_prompt, frame_reader, learner_request
from vera.constants import DEFAULT_FRAME_LAYOUT, FRAME_LAYOUTS, NUM_FRAMES
from vera.data.segments import half_window, segment_centres, segment_window, window_frame_indices

KIND = "step1"


@dataclass(frozen=True)
class Segment:
    """One segment: its centre, its window ``[start, end)`` and the frames the VLM sees."""

    centre: int
    start: int
    end: int
    indices: tuple[int, ...]


def plan_segments(length: int, half: int, num_frames: int = NUM_FRAMES) -> list[Segment]:
    """The segments of a video of ``length`` frames, in increasing centre order."""
    segments = []
    for centre in segment_centres(length).tolist():
        start, end = segment_window(centre, length, half)
        segments.append(Segment(centre, start, end, tuple(window_frame_indices(start, end, num_frames).tolist())))
    return segments


def select_videos(videos: list[TestVideo], shard: tuple[int, int] = (0, 1),
                  limit: int | None = None) -> list[TestVideo]:
    """The first ``limit`` videos of the annotation order, then every N-th from the I-th (deterministic)."""
    chosen = videos[:limit] if limit is not None else videos
    index, count = shard
    return chosen[index::count]


@dataclass
class Step1Settings:
    """Everything that shapes a Step 1 run besides the model and the videos."""

    output: Path
    frames_dir: Path | None = None
    videos_dir: Path | None = None
    frame_layout: str = DEFAULT_FRAME_LAYOUT
    fps: float | None = None  # None: the released 150-frame half window (30 fps assumed)
    batch_size: int = 8
    max_new_tokens: int = 1024
    num_frames: int = NUM_FRAMES
    image_size: int = VLM_IMAGE_SIZE
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    overwrite: bool = False
    allow_length_mismatch: bool = False
    checkpoint_every: int = 64
    template_source: str = "default"
    progress: bool = True
    dump_inputs: Path | None = None  # a folder for every request's model inputs (vera.vlm.input_dump)
    score_mode: str = "generate"  # or "label" (vera.vlm.decoding)
    input_workers: int = 0  # processes reading frames ahead of the model; 0: in this process (vera.data.loading)


@dataclass
class Step1Summary:
    """What a run did: counts by parse status, failed videos, time spent."""

    videos: int = 0
    videos_skipped: int = 0
    segments: int = 0
    segments_generated: int = 0
    by_status: Counter = field(default_factory=Counter)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    processes: int = 1

    @property
    def not_well_formed(self) -> int:
        return sum(count for status, count in self.by_status.items() if status != "ok")

    def as_dict(self) -> dict:
        return {"videos": self.videos, "videos_skipped_as_finished": self.videos_skipped,
                "segments": self.segments, "segments_generated": self.segments_generated,
                "not_well_formed": self.not_well_formed, "by_status": dict(sorted(self.by_status.items())),
                "failed_videos": self.failed, "warnings": self.warnings, "seconds": round(self.seconds, 3),
                "processes": self.processes,
                "seconds_per_generated_segment": (round(self.seconds / self.segments_generated, 4)
                                                  if self.segments_generated else None)}

    def text(self) -> str:
        lines = [f"{self.videos} videos ({self.videos_skipped} already finished), {self.segments} segments, "
                 f"{self.segments_generated} generated in {self.seconds:.1f} s"
                 + (f" by {self.processes} processes" if self.processes > 1 else "")]
        if self.segments:
            bad = self.not_well_formed
            detail = ", ".join(f"{s} {n}" for s, n in sorted(self.by_status.items()) if s != "ok")
            lines.append(f"answers not well formed: {bad} of {self.segments} ({100 * bad / self.segments:.1f}%)"
                         + (f": {detail}" if detail else ""))
        lines += [f"warning: {warning}" for warning in self.warnings]
        lines += [f"failed: {message}" for message in self.failed.values()]
        return "\n".join(lines)


def step1_identity(backend: str, model: str | None, questions: list[str], prompt: str,
                   settings: Step1Settings, image_format: str | None = None) -> dict:
    """What decides the answers; a run into a folder made with other values is refused without --overwrite.

    Built from names alone (the backend's name and the model as given), so
    that a command can check the output folder before it loads the model.
    ``image_format``: how the ``openai`` backend encodes frames for the
    server (JPEG changes the pixels the model sees); None for in-process
    backends, whose identities then stay as they were.
    """
    s = settings
    identity = {"backend": backend, "model": model, "questions": list(questions), "prompt_sha256": sha256_text(prompt),
                "frame_layout": s.frame_layout, "half_window": half_window(s.fps), "num_frames": s.num_frames,
                "image_size": s.image_size, "max_new_tokens": s.max_new_tokens, "score_mode": s.score_mode}
    if image_format is not None:
        identity["image_format"] = image_format
    return identity


def step1_folder(settings: Step1Settings, identity: dict, videos: list[TestVideo] | None = None,
                 record: dict | None = None) -> RunFolder:
    """Step 1's run folder.

    Its outputs are the summaries and the score files of ``videos`` (every
    ``*.json`` if not given): ``--overwrite`` removes those and no other file.
    """
    keys = None if videos is None else {f"{video.key}.json" for video in videos}

    def outputs(folder: Path) -> list[Path]:
        return [path for path in folder.glob("*.json")
                if path.name.startswith("summary") or (keys is None or path.name in keys)]

    return RunFolder(settings.output, KIND, identity, overwrite=settings.overwrite, outputs=outputs, record=record,
                     shared=settings.shard[1] > 1)  # the jobs of one sharded run write into one folder


class _VideoState:
    """One video in progress: its segments, the answers so far, its frame reader."""

    def __init__(self, video: TestVideo, segments: list[Segment], done: dict[str, dict]):
        self.video = video
        self.segments = segments
        self.done = done
        self.since_checkpoint = 0
        self.failed = False

    @property
    def complete(self) -> bool:
        return len(self.done) == len(self.segments)

    def entries(self) -> dict[str, dict]:
        """Answers in centre order, keyed by the centre as a string."""
        return {str(s.centre): self.done[str(s.centre)] for s in self.segments if str(s.centre) in self.done}


class Step1Runner:
    """Runs Step 1 over a list of videos with one backend; see the module docstring."""

    def __init__(self, backend: VLMBackend, template: str, questions: list[str], settings: Step1Settings):
        if settings.frame_layout not in FRAME_LAYOUTS:
            raise VeraError(f"unknown frame layout {settings.frame_layout!r}; choose one of {', '.join(FRAME_LAYOUTS)}")
        if (settings.frames_dir is None) == (settings.videos_dir is None):
            raise VeraError("give exactly one of --frames and --videos")
        if settings.batch_size < 1 or settings.checkpoint_every < 1:
            raise VeraError("--batch-size and the checkpoint interval must be at least 1")
        if settings.score_mode == "label" and not hasattr(backend, "score_labels"):
            raise VeraError(f"backend {backend.name} has no label-only mode; use --score-mode generate")
        self.backend = backend
        self.settings = settings
        self.questions = list(questions)
        self.template = template
        self.prompt = build_learner_prompt(template, self.questions, settings.num_frames, settings.frame_layout)
        if settings.dump_inputs is not None:
            enable_input_dumps(backend, settings.dump_inputs)
        self.half = half_window(settings.fps)
        self.output = Path(settings.output)
        description = backend.describe()
        self.identity = step1_identity(backend.name, description.get("model"), self.questions, self.prompt, settings,
                                       description.get("image_format"))
        self.record = {"prompt": self.prompt, "template_source": settings.template_source, "fps": settings.fps,
                       "backend": description}
        if settings.score_mode == "label":
            self.record["answer_prefix"] = answer_prefix(self.prompt)

    # -- the output folder ------------------------------------------------------------------

    @staticmethod
    def _partial_name(video: TestVideo) -> str:
        return f"{video.key}.json"

    def _load_partial(self, video: TestVideo, segments: list[Segment]) -> dict[str, dict]:
        saved = self.folder.read_partial(self._partial_name(video))
        if not isinstance(saved, dict) or saved.get("length") != video.length or not isinstance(
                saved.get("segments"), dict):
            return {}
        centres = {str(s.centre) for s in segments}
        return {key: value for key, value in saved["segments"].items() if key in centres}

    def _checkpoint(self, state: _VideoState) -> None:
        self.folder.write_partial(self._partial_name(state.video),
                                  {"length": state.video.length, "segments": state.entries()})
        state.since_checkpoint = 0

    def _finish(self, state: _VideoState) -> None:
        self.folder.finish_json(self._partial_name(state.video), state.entries())
        state.since_checkpoint = 0

    # -- frames to requests -----------------------------------------------------------------

    def _check_length(self, video: TestVideo, frames: VideoFrames | FramesInfo) -> None:
        warning = check_frame_count(video.key, video.length, frames.num_frames, frames.source,
                                    self.settings.allow_length_mismatch)
        if warning is not None:
            self.summary.warnings.append(warning)

    def _requests(self, states: list[_VideoState]) -> Iterator[tuple[_VideoState, Segment, VLMRequest]]:
        """Segments still to answer, video after video, each with its request; a bad video is skipped.

        The frames are read in this process, or by ``input_workers`` processes ahead of the model
        (``vera.data.loading``): the same reads, taken in the same order, so the same requests.
        """
        s = self.settings
        pending = [(state, [seg for seg in state.segments if str(seg.centre) not in state.done]) for state in states]
        pending = [(state, todo) for state, todo in pending if todo]
        reader = frame_reader(s.frame_layout, s.image_size)
        jobs = [ReadJob(state.video.key, partial(open_frames, state.video.key, frames_dir=s.frames_dir,
                                                 videos_dir=s.videos_dir),
                        reader, [segment.indices for segment in todo]) for state, todo in pending]
        # A worker reads one batch at a time, a few batches ahead of the model.
        with read_ahead(jobs, s.input_workers, s.batch_size) as videos:
            for (state, todo), reads in zip(pending, videos, strict=True):
                try:
                    with reads as frames:
                        self._check_length(state.video, frames)
                        for segment, pixels in zip(todo, reads):
                            name = f"{state.video.key} segment {segment.centre}"
                            yield state, segment, learner_request(self.prompt, pixels, name, s.frame_layout,
                                                                  dump_name=f"{state.video.key}_{segment.centre}")
                except VeraError as error:
                    state.failed = True
                    self.summary.failed[state.video.key] = str(error)
                    self.bar.write(f"error: {error}")

    def _record(self, state: _VideoState, segment: Segment, answer: VLMAnswer) -> None:
        if self.settings.score_mode == "label":  # the label was read from the logits: no text to parse
            parsed = ParsedAnswer(answer.extra["score"], True, LABEL_ONLY)
        else:
            parsed = parse_answer(answer.text)
        status = parsed.status
        if not parsed.well_formed and answer.extra.get("truncated"):
            status = "truncated"
        state.done[str(segment.centre)] = {
            "start": float(segment.start), "end": float(segment.end), "score": parsed.score,
            "response": answer.text, "parse_status": status, "well_formed": parsed.well_formed,
            # The label's probability only where the label is unambiguous.
            "label_prob": answer.label_prob if parsed.well_formed else None,
        }
        state.since_checkpoint += 1

    def _answer(self, batch: list[tuple[_VideoState, Segment, VLMRequest]]) -> None:
        requests = [request for _, _, request in batch]
        answers = (self.backend.score_labels(requests) if self.settings.score_mode == "label"
                   else self.backend.generate(requests, self.settings.max_new_tokens))
        if len(answers) != len(batch):
            raise VeraError(f"backend {self.backend.name} returned {len(answers)} answers for {len(batch)} requests")
        touched: dict[int, _VideoState] = {}
        for (state, segment, _), answer in zip(batch, answers, strict=True):
            self._record(state, segment, answer)
            touched[id(state)] = state
        self.summary.segments_generated += len(batch)
        for state in touched.values():
            if state.complete and not state.failed:
                self._finish(state)
            elif state.since_checkpoint >= self.settings.checkpoint_every:
                self._checkpoint(state)
        bad = sum(1 for state, segment, _ in batch if not state.done[str(segment.centre)]["well_formed"])
        self._malformed_this_run += bad
        self.bar.set_postfix(not_well_formed=self._malformed_this_run)
        self.bar.update(len(batch))

    # -- the run ----------------------------------------------------------------------------

    def run(self, all_videos: list[TestVideo], ranks: Ranks | None = None) -> Step1Summary:
        """Answer every segment of the selected videos; return the summary (also written to the output).

        With several processes (``ranks``) each answers its share of the
        videos, and every process returns the merged summary of all.
        """
        ranks = ranks or Ranks()
        started = time.perf_counter()
        videos = ranks.share(select_videos(all_videos, self.settings.shard, self.settings.limit))
        # Outputs are the score files of every annotated video, so that --overwrite also removes those of
        # videos this shard or --limit does not redo: they must not pass for results of this configuration.
        self.folder = ranks.open_folder(step1_folder(self.settings, self.identity, all_videos, self.record))
        summary = ranks.merged_summary(Step1Summary, lambda: self._run_share(videos, ranks, started))
        if ranks.is_main:
            self.folder.write_summary(self._summary_name(), summary.as_dict())
            self.folder.tidy()  # only now: other processes may still have had work in progress
        return summary

    def _run_share(self, videos: list[TestVideo], ranks: Ranks, started: float) -> Step1Summary:
        """This process's videos; with several processes, its own summary is written too."""
        self.summary = Step1Summary()
        self._malformed_this_run = 0
        states = []
        for video in videos:
            if video.length is None:
                raise VeraError(f"video {video.key}: the annotation gives no length; Step 1 needs the VERA JSON "
                                "annotations (UCF_Eval.json, xd_test_800.json)")
            segments = plan_segments(video.length, self.half, self.settings.num_frames)
            if not segments:
                self.summary.warnings.append(f"video {video.key}: length 0, no segments")
                continue
            if (self.output / f"{video.key}.json").is_file():
                self.summary.videos_skipped += 1
                states.append(_VideoState(video, segments, read_json(self.output / f"{video.key}.json", "score file")))
                continue
            states.append(_VideoState(video, segments, self._load_partial(video, segments)))
        self.summary.videos = len(states)
        remaining = sum(len(s.segments) - len(s.done) for s in states)
        # Bars of several processes on one terminal would overwrite each other: there only rank 0 shows one.
        show = self.settings.progress and (ranks.is_main or not sys.stderr.isatty())
        desc = f"step 1 [rank {ranks.rank}/{ranks.world_size}]" if ranks.active else "step 1"
        batch: list = []
        requests = self._requests(states)
        with progress(total=remaining, unit="segment", desc=desc, enabled=show) as self.bar:
            try:
                for item in requests:
                    batch.append(item)
                    if len(batch) == self.settings.batch_size:
                        self._answer(batch)
                        batch = []
                if batch:
                    self._answer(batch)
            finally:
                requests.close()  # on the way out of a failing run: the input workers stop now
                # Whatever stops the run, answers not yet checkpointed are kept.
                for state in states:
                    if state.since_checkpoint:
                        self._checkpoint(state)
        self.summary.seconds = time.perf_counter() - started
        for state in states:
            if state.video.key in self.summary.failed:
                continue
            self.summary.segments += len(state.done)
            self.summary.by_status.update(entry.get("parse_status", "ok") for entry in state.done.values())
        unknown = set(self.summary.by_status) - set(PARSE_STATUSES)
        if unknown:
            self.summary.warnings.append(f"unknown parse statuses in existing files: {sorted(unknown)}")
        if ranks.active:
            self.folder.write_summary(ranks.summary_name(self._summary_name()),
                                      {**self.summary.as_dict(), "rank": ranks.rank, "processes": ranks.world_size})
        return self.summary

    def _summary_name(self) -> str:
        index, count = self.settings.shard
        return "summary.json" if count == 1 else f"summary.shard-{index}-of-{count}.json"
