"""Verbalized learning: a frozen VLM learns VERA's guiding questions (the paper's Algorithm 1).

No weights change. Each step, the *learner* answers the current questions
about a batch of training videos and predicts 0/1; the *optimizer* (the same
model) sees the batch's frames, the predictions and the targets, and rewrites
the questions. Every ``val_every`` steps the questions are scored on the
validation list, and the best ones so far (strictly higher accuracy, or AUC)
are kept in ``best_questions.txt``.

The run is a pure function of the data lists, the options and the model's
greedy answers: epoch ``e`` visits the training videos in the order
``permutation(seed, e)``, so a checkpoint needs only the step count, the
questions and the selection state to resume exactly where it stopped.

Multi-process (DDP): every rank answers its share of each batch and of the
validation list; answers are gathered, the optimizer runs on rank 0 only, and
its verdict is broadcast, so all ranks hold identical questions and the outputs
do not depend on the number of processes. Only rank 0 writes files.

Why Lightning Fabric and not the ``Trainer`` (checked against Lightning 2.6):
the ``Trainer`` cannot give the exact resume this loop has.

- A kill during a validation: the ``Trainer`` checkpoints at the end of a
  training batch, and when it restarts from there at a step whose validation
  was due it fast-forwards past that validation (``_TrainingEpochLoop.advance``,
  ``increment_progress_to_evaluation_end``); here the cut validation is redone,
  so ``validation.jsonl`` and the selected questions equal an uninterrupted run's.
- Mid-epoch resume needs a stateful loader; the ``Trainer`` otherwise restarts
  the shuffled epoch with another order. Here a step's batch is computed from
  (seed, epoch, position), so only the step count is stored.
- Algorithm 1 scores the initial questions before step 1 and the last
  questions of a run stopped early; the ``Trainer`` validates only on its
  interval.
- The ``Trainer``'s DDP wraps a module with gradients (a frozen VLM has
  none), shards validation with a sampler that repeats videos to even out the
  ranks (which would change the accuracy), and its checkpoint is a pickle of
  loop internals; ours is JSON text and counters.

Fabric does all the distributed work: it launches the processes (``--devices``,
``--num-nodes``), moves answers between ranks (``all_gather``, ``broadcast``),
writes the checkpoint (``save``, as JSON), and logs (one CSV log per run,
continued on resume); see ``vera.distributed`` (processes and collectives, shared
with Step 1 and features) and ``vera.learning.fabric_io`` (checkpoint and log).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from lightning.fabric import Fabric

from vera.data.annotations import TrainVideo, load_train_annotations
from vera.data.frames import VLM_IMAGE_SIZE, find_video, open_frames
from vera.distributed import Ranks, make_fabric, release_at_exit
from vera.errors import VeraError
from vera.io import read_json, sha256_text, write_text_atomic
from vera.learning.fabric_io import LOG_NAME, JSONCheckpointIO, RunCSVLogger, trim_metrics
from vera.learning.optimizer_prompt import (
    build_optimizer_prompt,
    extract_new_questions,
    load_optimizer_template,
    state_question_limit,
)
from vera.learning.sampling import training_frame_indices
from vera.options import DEFAULT_EPOCHS, DEFAULT_NUM_QUESTIONS, FRAME_SAMPLINGS, QWEN_VIDEO_EPOCHS, SELECT_BY
from vera.progress import Progress, progress
from vera.runs import RunFolder
from vera.scoring.metrics import roc_auc
from vera.vlm.backends.base import VLMAnswer, VLMBackend, VLMRequest
from vera.vlm.parsing import UNREADABLE, last_character_label, parse_answer
from vera.vlm.prompts import (
    DEFAULT_FRAME_LAYOUT,
    FRAME_LAYOUTS,
    INITIAL_QUESTIONS,
    build_learner_prompt,
    learner_frames,
    learner_request,
    load_template,
)

HISTORY_FILE = "history.jsonl"
VALIDATION_FILE = "validation.jsonl"
BEST_FILE = "best_questions.txt"
CHECKPOINT_FILE = "last.ckpt"
CHECKPOINT_FORMAT = "vera-training/2"
NO_VALIDATION = -1
# Options of the paper's training studies (see run_identity).
STUDY_OPTIONS = ("frame_sampling", "num_questions", "optimizer_frames")


@dataclass
class TrainingOptions:
    """Everything that decides a run. Defaults are the released ones."""

    dataset: str
    train: Path
    val: Path
    output: Path
    frames_dir: Path | None = None
    videos_dir: Path | None = None
    model: str = ""
    epochs: int | None = None  # None: default_epochs(frame_layout)
    batch_size: int = 2
    num_frames: int = 8
    image_size: int = VLM_IMAGE_SIZE
    val_every: int = 100
    max_steps: int | None = None
    limit_val: int | None = None
    val_batch_size: int = 8
    select_by: str = "accuracy"
    prompt_file: Path | None = None
    optimizer_prompt_file: Path | None = None
    frame_layout: str = DEFAULT_FRAME_LAYOUT
    max_new_tokens: int = 1024
    seed: int = 0
    skip_bad_videos: bool = False
    overwrite: bool = False
    initial_questions: list[str] = field(default_factory=lambda: list(INITIAL_QUESTIONS))
    # The paper's training studies; the defaults are the released method.
    frame_sampling: str = "uniform"
    num_questions: int = DEFAULT_NUM_QUESTIONS
    optimizer_frames: bool = True

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = default_epochs(self.frame_layout)

    def check(self) -> None:
        if (self.frames_dir is None) == (self.videos_dir is None):
            raise VeraError("give exactly one of --frames DIR or --videos DIR")
        if self.frame_layout not in FRAME_LAYOUTS:
            raise VeraError(f"--frame-layout must be one of {', '.join(FRAME_LAYOUTS)}, got {self.frame_layout!r}")
        if self.select_by not in SELECT_BY:
            raise VeraError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.frame_sampling not in FRAME_SAMPLINGS:
            raise VeraError(f"--frame-sampling must be one of {', '.join(FRAME_SAMPLINGS)}, "
                            f"got {self.frame_sampling!r}")
        for name in ("epochs", "batch_size", "num_frames", "val_every", "val_batch_size", "max_new_tokens",
                     "num_questions"):
            if getattr(self, name) < 1:
                raise VeraError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "limit_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VeraError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def default_epochs(frame_layout: str) -> int:
    """The epochs of the authors' run for this layout: their Qwen2-VL script trained for 50
    (``vera_qwen_train.py``), their InternVL2 script for 10. The one place ``--epochs`` gets its default."""
    return QWEN_VIDEO_EPOCHS if frame_layout == "qwen-video" else DEFAULT_EPOCHS


def validation_rule(frame_layout: str) -> str:
    """How validation reads a label from an answer: the authors' Qwen2-VL script looked at the answer's last
    character (``last-character``); their InternVL2 script, at its published commit, used Step 1's ``output``
    rule, as the learner's training answers are read in every layout."""
    return "last-character" if frame_layout == "qwen-video" else "output"


# --------------------------------------------------------------------------- data


def epoch_order(num_videos: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so resume replays it."""
    return np.random.default_rng([seed, epoch]).permutation(num_videos)


def steps_per_epoch(num_videos: int, batch_size: int) -> int:
    return -(-num_videos // batch_size)  # the last batch may be short, as released (drop_last=False)


def batch_at(videos: list[TrainVideo], step: int, batch_size: int, seed: int) -> tuple[int, list[TrainVideo]]:
    """Epoch and videos of global step ``step`` (0-based)."""
    per_epoch = steps_per_epoch(len(videos), batch_size)
    epoch, position = divmod(step, per_epoch)
    order = epoch_order(len(videos), seed, epoch)
    picked = order[position * batch_size : (position + 1) * batch_size]
    return epoch, [videos[i] for i in picked]


@dataclass
class Loaded:
    """A video's frames, or why they could not be read."""

    video: TrainVideo
    indices: list[int]
    frames: list[np.ndarray] | None = None
    error: str | None = None


class FrameSource:
    """Reads each video's frames in worker threads: at a training step ``(epoch, step)`` those of
    ``--frame-sampling``; for validation (no step) always the released ``np.arange(0, length, length/8)``,
    so that every validation scores the questions on the same frames."""

    def __init__(self, options: TrainingOptions, workers: int = 4):
        self.options = options
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def _load(self, video: TrainVideo, at: tuple[int, int] | None) -> Loaded:
        epoch, step = at if at is not None else (0, 0)
        indices = training_frame_indices(video.length, self.options.num_frames,
                                         self.options.frame_sampling if at is not None else "uniform",
                                         seed=self.options.seed, epoch=epoch, step=step, key=video.key)
        try:
            with open_frames(video.key, frames_dir=self.options.frames_dir,
                             videos_dir=self.options.videos_dir) as source:
                # 448×448 as Step 1, or the frames as qwen-vl-utils resizes them in the qwen-video layout
                frames = learner_frames(source, indices, self.options.frame_layout, self.options.image_size)
        except VeraError as error:
            message = str(error) if video.key in str(error) else f"video {video.key}: {error}"
            if not self.options.skip_bad_videos:
                raise VeraError(f"{message} (--skip-bad-videos skips such videos)") from None
            return Loaded(video, indices.tolist(), error=message)
        return Loaded(video, indices.tolist(), frames=frames)

    def submit(self, videos: list[TrainVideo], at: tuple[int, int] | None = None) -> list[Future]:
        return [self.pool.submit(self._load, video, at) for video in videos]

    def load(self, videos: list[TrainVideo], at: tuple[int, int] | None = None) -> list[Loaded]:
        """``videos`` read for training step ``at = (epoch, step)``, or for validation (``None``)."""
        return [future.result() for future in self.submit(videos, at)]

    def chunks(self, videos: list[TrainVideo], size: int) -> Iterator[list[Loaded]]:
        """``videos`` in chunks of ``size``, reading the next chunk while the caller works on this one."""
        pending = self.submit(videos[:size])
        for start in range(0, len(videos), size):
            ahead = self.submit(videos[start + size : start + 2 * size])
            yield [future.result() for future in pending]
            pending = ahead

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- state


@dataclass
class Best:
    """The selected questions and the validation that chose them."""

    questions: list[str]
    metric: float | None = None
    step: int = NO_VALIDATION
    accuracy: float | None = None
    auc: float | None = None


@dataclass
class TrainingState:
    """What a checkpoint holds: enough to continue the run exactly."""

    questions: list[str]
    step: int = 0  # training steps completed
    last_validated_step: int = NO_VALIDATION
    best: Best | None = None
    rejected_updates: int = 0
    skipped_videos: int = 0
    trained_videos: int = 0  # training videos the learner answered, over all steps

    def to_dict(self, fingerprint: str) -> dict:
        """The checkpoint: JSON text and counters, tied to its run by the run folder's fingerprint."""
        return {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict, where: Path) -> TrainingState:
        try:
            best = data["best"]
            return cls(
                questions=[str(q) for q in data["questions"]], step=int(data["step"]),
                last_validated_step=int(data["last_validated_step"]), best=Best(**best) if best else None,
                rejected_updates=int(data["rejected_updates"]), skipped_videos=int(data["skipped_videos"]),
                trained_videos=int(data["trained_videos"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise VeraError(f"checkpoint {where} is damaged ({error!r}); use --overwrite to start again") from None


def _list_digest(videos: list[TrainVideo]) -> str:
    return sha256_text(json.dumps([[v.key, v.length, v.label] for v in videos]))


def run_identity(options: TrainingOptions, train: list[TrainVideo], val: list[TrainVideo],
                 learner_template: str, optimizer_template: str) -> dict:
    """The options that decide the trajectory (``run.json``'s identity); a resumed run must match them.

    ``epochs`` and ``max_steps`` are left out: continuing a run for longer is
    fine. So are ``--devices`` and ``--num-nodes``: the outputs do not depend on them.
    """
    return {
        "dataset": options.dataset, "model": options.model,
        "train": _list_digest(train), "val": _list_digest(val),
        "batch_size": options.batch_size, "num_frames": options.num_frames, "image_size": options.image_size,
        "val_every": options.val_every, "select_by": options.select_by, "seed": options.seed,
        "frame_layout": options.frame_layout, "max_new_tokens": options.max_new_tokens,
        "skip_bad_videos": options.skip_bad_videos,
        "learner_template": sha256_text(learner_template), "optimizer_template": sha256_text(optimizer_template),
        "initial_questions": list(options.initial_questions),
        **_study_settings(options),
        **_qwen_video_settings(options),
    }


def _qwen_video_settings(options: TrainingOptions) -> dict:
    """What the qwen-video layout does differently in training (one optimizer video, the validation rule). In the
    identity so that a qwen-video run begun before training followed the authors' Qwen2-VL script is not
    continued with other inputs; other layouts' identities are unchanged."""
    if options.frame_layout != "qwen-video":
        return {}
    return {"optimizer_input": "one video", "validation_rule": validation_rule(options.frame_layout)}


def _study_settings(options: TrainingOptions) -> dict:
    """The study options that differ from the released method. Only these enter the identity, so that a run
    made before the options existed (necessarily with the released method) still resumes."""
    return {spec.name: getattr(options, spec.name) for spec in fields(TrainingOptions)
            if spec.name in STUDY_OPTIONS and getattr(options, spec.name) != spec.default}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: it and anything after it belong to an unfinished step
    return records


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _keep_records(path: Path, keep: Callable[[dict], bool]) -> None:
    """Drop the lines of steps the checkpoint does not cover (their work is redone)."""
    if path.exists():
        kept = [record for record in _read_jsonl(path) if keep(record)]
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def load_checkpoint(path: Path, fingerprint: str | None = None) -> TrainingState:
    """The state in ``last.ckpt`` (JSON); with ``fingerprint``, it must belong to that run."""
    data = read_json(path, "checkpoint")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise VeraError(f"{path} is not a VERA training checkpoint ({CHECKPOINT_FORMAT}); "
                        "use --overwrite to start again")
    if fingerprint is not None and data.get("fingerprint") != fingerprint:
        raise VeraError(f"{path} belongs to another run than {Path(path).parent / 'run.json'}; "
                        "use --overwrite to start again")
    return TrainingState.from_dict(data, path)


def _outputs(folder: Path) -> list[Path]:
    """What a training run writes into its folder (``--overwrite`` removes exactly these)."""
    return [folder / name for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE, CHECKPOINT_FILE, LOG_NAME)]


def _is_validation_row(row: dict[str, str]) -> bool:
    return bool(row.get("val_skipped"))


def open_output(options: TrainingOptions, identity: dict) -> tuple[RunFolder, TrainingState, bool]:
    """Open ``options.output`` (rank 0): the run folder, the state to continue from, and whether it is fresh.

    A resumed run's files are cut back to what its checkpoint covers: lines and
    log rows of a step that a kill interrupted are dropped and the step redone.
    """
    output = Path(options.output)
    folder = RunFolder(output, "training", identity, overwrite=options.overwrite, outputs=_outputs,
                       record={"options": {name: str(value) if isinstance(value, Path) else value
                                           for name, value in asdict(options).items() if name != "overwrite"}})
    folder.open()
    checkpoint = output / CHECKPOINT_FILE
    if not checkpoint.exists():
        leftovers = [path.name for path in folder.outputs()]
        if leftovers and not options.overwrite:
            raise VeraError(f"{output} holds {', '.join(leftovers)} but no {CHECKPOINT_FILE}: its progress "
                            "cannot be resumed; use another --output or --overwrite")
        if leftovers:
            folder.clear()
            folder.write_record()
        return folder, TrainingState(questions=list(options.initial_questions)), True
    state = load_checkpoint(checkpoint, folder.fingerprint)
    _keep_records(output / HISTORY_FILE, lambda record: record["step"] <= state.step)
    _keep_records(output / VALIDATION_FILE, lambda record: record["step"] <= state.last_validated_step)

    def covered(row: dict[str, str]) -> bool:
        if None in row.values() or not str(row.get("step", "")).isdigit():
            return False  # a row cut by a kill
        last = state.last_validated_step if _is_validation_row(row) else state.step
        return int(row["step"]) <= last

    trim_metrics(output, covered)
    if state.best is not None:
        write_text_atomic(output / BEST_FILE, "".join(q + "\n" for q in state.best.questions))
    return folder, state, False


# --------------------------------------------------------------------------- progress lines
# What a log (not a terminal: there vera.progress draws bars) says of each step and validation.


def _step_line(record: dict, total: int, best: float | None) -> str:
    return (f"step {record['step']}/{total} (epoch {record['epoch']}): train accuracy {record['train_accuracy']}, "
            f"update {record['update_status']}, best {best}")


def _validation_line(result: dict) -> str:
    return (f"validation @ step {result['step']}: accuracy {result['accuracy']}, auc {result['auc']}"
            f"{', selected' if result['selected'] else ''}")


# --------------------------------------------------------------------------- the loop


def _accuracy(predictions: list[int], labels: list[int]) -> float | None:
    if not labels:
        return None
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def _answer_record(loaded: Loaded, answer: VLMAnswer, rule: str = "output") -> dict:
    """One answer: ``prediction`` by ``rule`` (``validation_rule``); ``well_formed``/``status`` by Step 1's parse."""
    parsed = parse_answer(answer.text)
    prediction = last_character_label(answer.text) if rule == "last-character" else parsed.score
    return {
        "key": loaded.video.key, "label": loaded.video.label, "frames": loaded.indices,
        "prediction": int(prediction),
        "well_formed": bool(parsed.well_formed), "status": parsed.status,
        "label_prob": answer.label_prob, "truncated": bool(answer.extra.get("truncated", False)),
        "response": answer.text,
    }


class VerbalizedLearning:
    """The training loop of one process (rank)."""

    def __init__(self, options: TrainingOptions, ranks: Ranks, *, progress: bool = True):
        """Read and check the lists, templates and output folder (before any model is loaded)."""
        options.check()
        self.options = options
        self.ranks = ranks
        self.backend: VLMBackend | None = None
        self.show_progress = progress and ranks.is_main
        self.output = Path(options.output)
        self.train = load_train_annotations(options.train, options.dataset)
        self.val = load_train_annotations(options.val, options.dataset)[: options.limit_val]
        if not self.train or not self.val:
            raise VeraError("the training and validation lists must each name at least one video")
        if options.select_by == "auc" and len({video.label for video in self.val}) < 2:
            raise VeraError("--select-by auc needs normal and anomalous videos in the validation list "
                            "(check --limit-val)")
        self._check_sources()
        self.learner_template = load_template(options.prompt_file)
        self.optimizer_template = state_question_limit(
            load_optimizer_template(options.optimizer_prompt_file), options.num_questions,
            f"optimizer prompt file {options.optimizer_prompt_file}" if options.optimizer_prompt_file
            else "the default optimizer prompt")
        identity = run_identity(options, self.train, self.val, self.learner_template, self.optimizer_template)
        self.folder: RunFolder | None = None  # rank 0's; the other ranks never touch the output folder

        def open_on_main() -> tuple[str, TrainingState, bool]:
            # Read here and broadcast rather than fabric.load on every rank: every file of the
            # output folder is rank 0's, so on several machines it need be on rank 0's disk only.
            self.folder, state, fresh = open_output(options, identity)
            return self.folder.fingerprint, state, fresh

        self.fingerprint, self.state, self.fresh = ranks.on_main(open_on_main)
        self.frames = FrameSource(options)

    def _check_sources(self) -> None:
        """Every listed video must have a frame folder or video file: better said now than in epoch 9."""
        missing = set()
        for video in {video.key: video for video in self.train + self.val}.values():
            if self.options.frames_dir is not None:
                if not (Path(self.options.frames_dir) / video.key).is_dir():
                    missing.add(video.key)
            else:
                try:
                    find_video(Path(self.options.videos_dir), video.key)
                except VeraError:
                    missing.add(video.key)
        where = self.options.frames_dir or self.options.videos_dir
        names = sorted(missing)
        listed = f"{', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
        if missing and not self.options.skip_bad_videos:
            raise VeraError(f"{len(missing)} listed videos have no frames in {where}: {listed} "
                            "(--skip-bad-videos skips them)")
        for split, videos in (("training", self.train), ("validation", self.val)):
            if all(video.key in missing for video in videos):
                raise VeraError(f"no readable {split} videos left: none of the {len(videos)} has frames in {where}")
        if missing and self.ranks.is_main:
            print(f"warning: {len(missing)} listed videos have no frames and will be skipped: {listed}",
                  file=sys.stderr)

    # -- totals

    @property
    def total_steps(self) -> int:
        total = self.options.epochs * steps_per_epoch(len(self.train), self.options.batch_size)
        return min(total, self.options.max_steps) if self.options.max_steps else total

    # -- model calls

    def _answer(self, loaded: list[Loaded], questions: list[str], rule: str = "output") -> list[dict]:
        """The learner's answers for the readable videos of ``loaded`` (errors recorded, not answered), labels read
        by ``rule``."""
        usable = [item for item in loaded if item.frames is not None]
        prompt = build_learner_prompt(self.learner_template, questions, self.options.num_frames,
                                      self.options.frame_layout)
        requests = [learner_request(prompt, list(item.frames), item.video.key, self.options.frame_layout)
                    for item in usable]
        answers = iter(self.backend.generate(requests, self.options.max_new_tokens) if requests else [])
        return [_answer_record(item, next(answers), rule) if item.frames is not None
                else {"key": item.video.key, "label": item.video.label, "error": item.error}
                for item in loaded]

    def _optimize(self, loaded: list[Loaded] | None, records: list[dict], questions: list[str], step: int) -> dict:
        """One optimizer call (rank 0): the proposal for the next questions. ``loaded`` None: no frames shown
        (``--no-optimizer-frames``)."""
        predictions = [record["prediction"] for record in records]
        targets = [record["label"] for record in records]
        layout = self.options.frame_layout
        prompt = build_optimizer_prompt(self.optimizer_template, questions, predictions, targets,
                                        self.options.num_frames, with_frames=loaded is not None, frame_layout=layout)
        images = [frame for item in loaded or [] for frame in item.frames]
        # qwen-video: the batch's frames in order as one video, in the authors' chat string (vera.vlm.qwen_video)
        request = VLMRequest(prompt, images, key=f"optimizer step {step}",
                             image_block=bool(images) and layout == "released", video=layout == "qwen-video")
        answer = self.backend.generate([request], self.options.max_new_tokens)[0]
        proposal = extract_new_questions(answer.text, self.options.num_questions)
        return {"response": answer.text, "truncated": bool(answer.extra.get("truncated", False)),
                "accepted": proposal.accepted, "status": proposal.status,
                "questions": proposal.questions if proposal.accepted else list(questions)}

    # -- one step

    def train_step(self) -> dict:
        """Learner on every rank's share, optimizer on rank 0, verdict broadcast. Returns the history record."""
        step = self.state.step
        epoch, batch = batch_at(self.train, step, self.options.batch_size, self.options.seed)
        questions = list(self.state.questions)
        mine: list[Loaded] = []

        def answer_my_share() -> list[dict]:
            mine.extend(self.frames.load(self.ranks.share(batch), at=(epoch, step)))
            return self._answer(mine, questions)

        records = self.ranks.merge(self.ranks.gather_checked(answer_my_share))
        answered = [record for record in records if "error" not in record]

        def optimize() -> dict:
            if answered and not self.options.optimizer_frames:
                return self._optimize(None, answered, questions, step + 1)
            # Rank 0 reads the other ranks' frames itself (the same draw: it depends on seed, epoch, step and
            # video only): cheaper than sending images between ranks.
            loaded = {item.video.key: item for item in mine}
            loaded.update((item.video.key, item) for item in self.frames.load(
                [video for video in batch if video.key not in loaded and any(r["key"] == video.key for r in answered)],
                at=(epoch, step)))
            pairs = [(loaded[record["key"]], record) for record in answered if loaded[record["key"]].frames is not None]
            if not pairs:
                return {"response": None, "truncated": False, "accepted": False, "status": "no_readable_video",
                        "questions": questions}
            return self._optimize([item for item, _ in pairs], [record for _, record in pairs], questions, step + 1)

        verdict = self.ranks.on_main(optimize)
        predictions = [record["prediction"] for record in answered]
        labels = [record["label"] for record in answered]
        skipped = [record for record in records if "error" in record]
        self.state.questions = list(verdict["questions"])
        self.state.rejected_updates += not verdict["accepted"]
        self.state.skipped_videos += len(skipped)
        self.state.trained_videos += len(answered)
        self.state.step = step + 1
        return {
            "epoch": epoch, "step": step + 1, "videos": [video.key for video in batch],
            "labels": labels, "predictions": predictions, "train_accuracy": _accuracy(predictions, labels),
            "questions_before": questions, "questions_after": self.state.questions,
            "update_accepted": verdict["accepted"], "update_status": verdict["status"],
            "optimizer_response": verdict["response"], "optimizer_truncated": verdict["truncated"],
            "learner": answered,
            "skipped": [{"key": r["key"], "error": r["error"]} for r in skipped],
        }

    def _check_something_readable(self) -> None:
        """With --skip-bad-videos, a first epoch (or a shorter run) in which every video was skipped is an error:
        the later epochs read the same videos, and a run that learned nothing must not look finished."""
        first_epoch = min(steps_per_epoch(len(self.train), self.options.batch_size), self.total_steps)
        if self.state.trained_videos == 0 and self.state.step >= first_epoch:
            raise VeraError(f"no readable training videos left: every training video of the first {self.state.step} "
                            f"steps was unreadable and skipped (see {self.output / HISTORY_FILE})")

    # -- validation and selection

    def validate(self, shown: Progress) -> dict:
        """Score the current questions on (this rank's share of) the validation list, gathered everywhere;
        ``shown`` counts the videos (rank 0's share times the ranks)."""
        questions = list(self.state.questions)
        mine = self.ranks.share(self.val)
        rule = validation_rule(self.options.frame_layout)

        def answer_my_share() -> list[dict]:
            records: list[dict] = []
            for chunk in self.frames.chunks(mine, self.options.val_batch_size):
                records.extend(self._answer(chunk, questions, rule))
                shown.update(len(chunk) * self.ranks.world_size)
            return records

        records = self.ranks.merge(self.ranks.gather_checked(answer_my_share))
        answered = [record for record in records if "error" not in record]
        if not answered:
            raise VeraError(f"no readable validation videos left: all {len(self.val)} were unreadable and skipped")
        labels = np.asarray([record["label"] for record in answered])
        predictions = np.asarray([record["prediction"] for record in answered])
        soft = [record["label_prob"] for record in answered]
        use_soft = all(value is not None for value in soft)
        # An unreadable answer (last-character rule) is wrong, in the AUC as in the accuracy.
        hard = np.where(predictions == UNREADABLE, 1 - labels, predictions)
        auc = roc_auc(labels, np.asarray(soft, dtype=float) if use_soft else hard)
        return {
            "step": self.state.step, "questions": questions,
            "accuracy": _accuracy(predictions.tolist(), labels.tolist()), "auc": auc,
            "auc_from": "label_prob" if use_soft else "labels", "rule": rule,
            "videos": len(answered), "well_formed": int(sum(r["well_formed"] for r in answered)),
            "skipped": [{"key": r["key"], "error": r["error"]} for r in records if "error" in r],
            "predictions": answered,
        }

    def select(self, result: dict) -> bool:
        """Algorithm 1: the validated questions replace the best only on a strictly higher metric."""
        metric = result[self.options.select_by]
        best = self.state.best
        if best is not None and (metric is None or (best.metric is not None and metric <= best.metric)):
            return False
        self.state.best = Best(list(result["questions"]), metric, result["step"], result["accuracy"], result["auc"])
        return True

    def _validate_and_select(self, training: Progress) -> None:
        """Validate, select, record; ``training``'s postfix shows the best metric from now on."""
        with progress(total=len(self.val), desc=f"validation @ step {self.state.step}", unit="video",
                      enabled=self.show_progress, leave=False) as shown:
            result = self.validate(shown)
            self.state.skipped_videos += len(result["skipped"])
            selected = self.select(result)
            self.state.last_validated_step = self.state.step
            result["selected"] = selected
            if self.ranks.is_main:
                _append_jsonl(self.output / VALIDATION_FILE, result)
                write_text_atomic(self.output / BEST_FILE, "".join(q + "\n" for q in self.state.best.questions))
            self._log({"val_accuracy": result["accuracy"], "val_auc": result["auc"],
                       "best_metric": self.state.best.metric, "val_skipped": len(result["skipped"])})
            self._save()
            shown.close(message=_validation_line(result))
        training.set_postfix(best=self.state.best.metric)

    def _validation_due(self) -> bool:
        step = self.state.step
        return self.state.last_validated_step != step and (step == 0 or step % self.options.val_every == 0)

    # -- files and logs (rank 0 writes; the log and checkpoint calls are made on every rank)

    def _log(self, metrics: dict) -> None:
        """One row of the CSV log, before the checkpoint: rows past the checkpoint are trimmed on resume."""
        self.ranks.fabric.log_dict({name: float(value) for name, value in metrics.items() if value is not None},
                                   step=self.state.step)

    def _save(self) -> None:
        # Fabric writes on rank 0 and holds every rank until it is written.
        self.ranks.fabric.save(self.output / CHECKPOINT_FILE, self.state.to_dict(self.fingerprint))

    # -- the run

    def run(self, backend: VLMBackend) -> TrainingState:
        """Train until ``total_steps``, validating on schedule; resumable at every step."""
        self.backend = backend
        if self.ranks.is_main:
            if not self.fresh:
                print(f"resuming {self.output} after step {self.state.step} of {self.total_steps}", file=sys.stderr)
            else:
                self.folder.write_record(**self._run_info())
        self._save()
        shown = progress(total=self.total_steps, initial=min(self.state.step, self.total_steps), desc="training",
                         unit="step", enabled=self.show_progress)
        try:
            self._check_something_readable()
            if self._validation_due():
                # Step 0 scores the initial questions first; later, it redoes a validation a kill cut short.
                self._validate_and_select(shown)
            while self.state.step < self.total_steps:
                record = self.train_step()
                if self.ranks.is_main:
                    _append_jsonl(self.output / HISTORY_FILE, record)
                self._log({"train_accuracy": record["train_accuracy"], "update_accepted": record["update_accepted"],
                           "skipped_videos": self.state.skipped_videos, "epoch": record["epoch"]})
                self._save()
                best = self._best_metric()
                shown.set_postfix(train_acc=record["train_accuracy"], best=best)
                shown.update(1, message=_step_line(record, self.total_steps, best))
                self._check_something_readable()
                if self._validation_due():
                    self._validate_and_select(shown)
            if self.state.last_validated_step != self.state.step:
                self._validate_and_select(shown)  # a run stopped early still scores its last questions
        except BaseException:
            shown.close(stopped=True)  # the log says the run stopped, then the error propagates
            raise
        finally:
            shown.close()
            self.frames.close()
        return self.state

    def _best_metric(self) -> float | None:
        return None if self.state.best is None else self.state.best.metric

    def _run_info(self) -> dict:
        return {"world_size": self.ranks.world_size, "backend": self.backend.describe(),
                "train_videos": len(self.train), "val_videos": len(self.val), "total_steps": self.total_steps}


def train(options: TrainingOptions, make_backend: Callable[[str], VLMBackend], *, accelerator: str = "auto",
          devices: int = 1, num_nodes: int = 1, start_method: str = "popen", progress: bool = True) -> TrainingState:
    """Run (or resume) verbalized learning into ``options.output``; returns the final state (rank 0's).

    Launches ``devices`` processes per node through Lightning Fabric (DDP when
    more than one in all; ``start_method`` as in ``vera.distributed.make_fabric``,
    e.g. ``fork``). Options, lists and the output folder are checked before
    ``make_backend`` loads the model on this process's device (``cuda:1``, ``cpu`` …).
    """
    options.check()
    fabric = make_fabric(accelerator, devices, num_nodes, start_method=start_method,
                         plugins=[JSONCheckpointIO()], loggers=[RunCSVLogger(Path(options.output))])
    return fabric.launch(_train_process, options, make_backend, progress)


def _train_process(fabric: Fabric, options: TrainingOptions, make_backend: Callable[[str], VLMBackend],
                   progress: bool) -> TrainingState:
    """What each process runs, once Fabric has started them all."""
    if fabric.world_size > 1:
        release_at_exit()
    learning = VerbalizedLearning(options, Ranks.of(fabric), progress=progress)
    state = learning.run(make_backend(str(fabric.device)))
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.print(summary(state, options))
    return state


def summary(state: TrainingState, options: TrainingOptions) -> str:
    """One line for the end of a run."""
    best = state.best
    return (f"{state.step} steps, {state.rejected_updates} optimizer answers rejected, "
            f"{state.skipped_videos} unreadable videos skipped; best questions (validation {options.select_by} "
            f"{best.metric} at step {best.step}) in {Path(options.output) / BEST_FILE}")
