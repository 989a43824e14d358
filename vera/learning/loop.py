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
its verdict is broadcast, so all ranks hold identical questions. Only rank 0
writes files.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from tqdm import tqdm

from vera.data.annotations import TrainVideo, load_train_annotations
from vera.vlm.backends.base import VLMAnswer, VLMBackend, VLMRequest
from vera.errors import VeraError
from vera.options import SELECT_BY
from vera.data.frames import VLM_IMAGE_SIZE, find_video, open_frames, resize_frames
from vera.io import sha256_text, write_bytes_atomic, write_text_atomic
from vera.scoring.metrics import roc_auc
from vera.learning.optimizer_prompt import build_optimizer_prompt, extract_new_questions, load_optimizer_template
from vera.vlm.parsing import parse_answer
from vera.vlm.prompts import DEFAULT_FRAME_LAYOUT, FRAME_LAYOUTS, build_learner_prompt, learner_request, load_template
from vera.data.segments import video_frame_indices

INITIAL_QUESTIONS = [
    "1. Is there any suspicious person or object that looks unusual in this scene?",
    "2. Is there any behavior that looks unusual in this scene?",
]
HISTORY_FILE = "history.jsonl"
VALIDATION_FILE = "validation.jsonl"
BEST_FILE = "best_questions.txt"
CHECKPOINT_FILE = "last.ckpt"
RUN_FILE = "run.json"
CHECKPOINT_FORMAT = "vera-training/1"
NO_VALIDATION = -1


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
    epochs: int = 10
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

    def check(self) -> None:
        if (self.frames_dir is None) == (self.videos_dir is None):
            raise VeraError("give exactly one of --frames DIR or --videos DIR")
        if self.frame_layout not in FRAME_LAYOUTS:
            raise VeraError(f"--frame-layout must be one of {', '.join(FRAME_LAYOUTS)}, got {self.frame_layout!r}")
        if self.select_by not in SELECT_BY:
            raise VeraError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        for name in ("epochs", "batch_size", "num_frames", "val_every", "val_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise VeraError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "limit_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VeraError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


# --------------------------------------------------------------------------- ranks


class Ranks:
    """This process's place among the DDP processes (a single process when none is set up)."""

    def __init__(self) -> None:
        self.active = torch_dist.is_available() and torch_dist.is_initialized()
        self.rank = torch_dist.get_rank() if self.active else 0
        self.world_size = torch_dist.get_world_size() if self.active else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """``value`` from rank ``src`` on every rank."""
        if not self.active:
            return value
        holder = [value if self.rank == src else None]
        torch_dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def gather_checked(self, work: Callable[[], Any]) -> list[Any]:
        """Run ``work`` on every rank and gather the results; a ``VeraError`` on any rank is raised on all,
        so no rank is left waiting for one that failed."""
        gathered = self.gather(_outcome(work, self))
        return [_unwrap(outcome) for outcome in gathered]

    def on_main(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on rank 0 only and give its result (or its ``VeraError``) to every rank."""
        return _unwrap(self.broadcast(_outcome(work, self) if self.is_main else None))

    def share(self, items: list) -> list:
        """This rank's items: positions ``rank, rank + world_size, …``."""
        return items[self.rank :: self.world_size]

    def merge(self, shares: list[list]) -> list:
        """Undo ``share``: the gathered per-rank lists back in their original order."""
        merged: list = [None] * sum(len(part) for part in shares)
        for rank, part in enumerate(shares):
            merged[rank :: self.world_size] = part
        return merged


def _outcome(work: Callable[[], Any], ranks: Ranks) -> tuple[bool, Any]:
    """``work()``'s result, or its failure as a message. Under DDP any exception is
    passed on (its traceback printed here first), so the other ranks stop too
    instead of waiting for this one forever."""
    try:
        return True, work()
    except VeraError as error:
        return False, str(error)
    except Exception as error:
        if not ranks.active:
            raise
        traceback.print_exc()
        return False, f"rank {ranks.rank} failed: {type(error).__name__}: {error}"


def _unwrap(outcome: tuple[bool, Any]) -> Any:
    succeeded, value = outcome
    if not succeeded:
        raise VeraError(value)
    return value


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
    frames: list[np.ndarray] | None = None
    error: str | None = None


class FrameSource:
    """Reads each video's training frames (``np.arange(0, length, length/8)``) in worker threads."""

    def __init__(self, options: TrainingOptions, workers: int = 4):
        self.options = options
        self.pool = ThreadPoolExecutor(max_workers=workers)

    def _load(self, video: TrainVideo) -> Loaded:
        indices = video_frame_indices(video.length, self.options.num_frames)
        try:
            with open_frames(video.key, frames_dir=self.options.frames_dir,
                             videos_dir=self.options.videos_dir) as source:
                frames = resize_frames(source.read(indices), self.options.image_size)
        except VeraError as error:
            message = str(error) if video.key in str(error) else f"video {video.key}: {error}"
            if not self.options.skip_bad_videos:
                raise VeraError(f"{message} (--skip-bad-videos skips such videos)") from None
            return Loaded(video, error=message)
        return Loaded(video, frames=frames)

    def submit(self, videos: list[TrainVideo]) -> list[Future]:
        return [self.pool.submit(self._load, video) for video in videos]

    def load(self, videos: list[TrainVideo]) -> list[Loaded]:
        return [future.result() for future in self.submit(videos)]

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

    signature: dict
    questions: list[str]
    step: int = 0  # training steps completed
    last_validated_step: int = NO_VALIDATION
    best: Best | None = None
    rejected_updates: int = 0
    skipped_videos: int = 0

    def to_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> TrainingState:
        best = data.get("best")
        return cls(
            signature=data["signature"], questions=list(data["questions"]), step=int(data["step"]),
            last_validated_step=int(data["last_validated_step"]),
            best=Best(**best) if best else None,
            rejected_updates=int(data["rejected_updates"]), skipped_videos=int(data["skipped_videos"]),
        )


def _list_digest(videos: list[TrainVideo]) -> str:
    return sha256_text(json.dumps([[v.key, v.length, v.label] for v in videos]))


def run_signature(options: TrainingOptions, train: list[TrainVideo], val: list[TrainVideo],
                  learner_template: str, optimizer_template: str) -> dict:
    """The options that decide the trajectory; a resumed run must match them.

    ``epochs`` and ``max_steps`` are left out: continuing a run for longer is fine.
    """
    return {
        "dataset": options.dataset, "model": options.model,
        "train": _list_digest(train), "val": _list_digest(val),
        "batch_size": options.batch_size, "num_frames": options.num_frames,
        "val_every": options.val_every, "select_by": options.select_by, "seed": options.seed,
        "frame_layout": options.frame_layout, "max_new_tokens": options.max_new_tokens,
        "skip_bad_videos": options.skip_bad_videos,
        "learner_template": sha256_text(learner_template), "optimizer_template": sha256_text(optimizer_template),
        "initial_questions": list(options.initial_questions),
    }


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


def save_checkpoint(path: Path, state: TrainingState) -> None:
    buffer = BytesIO()
    torch.save(state.to_dict(), buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> TrainingState:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise VeraError(f"cannot read checkpoint {path} ({error}); use --overwrite to start again") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise VeraError(f"{path} is not a VERA training checkpoint; use --overwrite to start again")
    return TrainingState.from_dict(data)


def prepare_output(options: TrainingOptions, signature: dict) -> TrainingState:
    """Resume from the checkpoint in ``options.output``, or start a fresh run there."""
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    ours = [output / name for name in (HISTORY_FILE, VALIDATION_FILE, BEST_FILE, CHECKPOINT_FILE, RUN_FILE)]
    if options.overwrite:
        for path in ours:
            path.unlink(missing_ok=True)
    checkpoint = output / CHECKPOINT_FILE
    if not checkpoint.exists():
        leftovers = [path.name for path in ours if path.exists()]
        if leftovers:
            raise VeraError(f"{output} holds {', '.join(leftovers)} but no {CHECKPOINT_FILE}; "
                            "use another --output or --overwrite")
        return TrainingState(signature=signature, questions=list(options.initial_questions))
    state = load_checkpoint(checkpoint)
    differing = sorted(key for key in set(signature) | set(state.signature)
                       if signature.get(key) != state.signature.get(key))
    if differing:
        raise VeraError(f"{output} holds a run with different {', '.join(differing)}; "
                        "use another --output, the same options, or --overwrite")
    _keep_records(output / HISTORY_FILE, lambda record: record["step"] <= state.step)
    _keep_records(output / VALIDATION_FILE, lambda record: record["step"] <= state.last_validated_step)
    if state.best is not None:
        write_text_atomic(output / BEST_FILE, "".join(q + "\n" for q in state.best.questions))
    return state


# --------------------------------------------------------------------------- the loop


def _accuracy(predictions: list[int], labels: list[int]) -> float | None:
    if not labels:
        return None
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def _answer_record(loaded: Loaded, answer: VLMAnswer) -> dict:
    parsed = parse_answer(answer.text)
    return {
        "key": loaded.video.key, "label": loaded.video.label, "prediction": int(parsed.score),
        "well_formed": bool(parsed.well_formed), "status": parsed.status,
        "label_prob": answer.label_prob, "truncated": bool(answer.extra.get("truncated", False)),
        "response": answer.text,
    }


class VerbalizedLearning:
    """The training loop of one process (rank)."""

    def __init__(self, options: TrainingOptions, *, log: Callable[[dict, int], None] | None = None,
                 progress: bool = True):
        """Read and check the lists, templates and output folder (before any model is loaded)."""
        options.check()
        self.options = options
        self.backend: VLMBackend | None = None
        self.log = log or (lambda metrics, step: None)
        self.ranks = Ranks()
        self.progress = progress and self.ranks.is_main
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
        self.optimizer_template = load_optimizer_template(options.optimizer_prompt_file)
        signature = run_signature(options, self.train, self.val, self.learner_template, self.optimizer_template)
        # Rank 0 alone touches the output folder; the others take its state.
        self.state: TrainingState = self.ranks.on_main(lambda: prepare_output(options, signature))
        self.frames = FrameSource(options)

    def _check_sources(self) -> None:
        """Every listed video must have a frame folder or video file: better said now than in epoch 9."""
        missing = []
        for video in {video.key: video for video in self.train + self.val}.values():
            if self.options.frames_dir is not None:
                if not (Path(self.options.frames_dir) / video.key).is_dir():
                    missing.append(video.key)
            else:
                try:
                    find_video(Path(self.options.videos_dir), video.key)
                except VeraError:
                    missing.append(video.key)
        if missing and not self.options.skip_bad_videos:
            where = self.options.frames_dir or self.options.videos_dir
            raise VeraError(f"{len(missing)} listed videos have no frames in {where}: {', '.join(missing[:5])}"
                            f"{' …' if len(missing) > 5 else ''} (--skip-bad-videos skips them)")
        absent = set(missing)
        for name, videos in (("training", self.train), ("validation", self.val)):
            if all(video.key in absent for video in videos):
                raise VeraError(f"none of the {len(videos)} {name} videos has frames in "
                                f"{self.options.frames_dir or self.options.videos_dir}: nothing to learn from "
                                "(--skip-bad-videos skips bad videos, it cannot replace them all)")
        if missing and self.ranks.is_main:
            print(f"warning: {len(missing)} listed videos have no frames and will be skipped: "
                  f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}", file=sys.stderr)

    # -- totals

    @property
    def total_steps(self) -> int:
        total = self.options.epochs * steps_per_epoch(len(self.train), self.options.batch_size)
        return min(total, self.options.max_steps) if self.options.max_steps else total

    # -- model calls

    def _answer(self, loaded: list[Loaded], questions: list[str]) -> list[dict]:
        """The learner's answers for the readable videos of ``loaded`` (errors recorded, not answered)."""
        usable = [item for item in loaded if item.frames is not None]
        prompt = build_learner_prompt(self.learner_template, questions, self.options.num_frames)
        requests = [learner_request(prompt, list(item.frames), item.video.key, self.options.frame_layout)
                    for item in usable]
        answers = iter(self.backend.generate(requests, self.options.max_new_tokens) if requests else [])
        return [_answer_record(item, next(answers)) if item.frames is not None
                else {"key": item.video.key, "label": item.video.label, "error": item.error}
                for item in loaded]

    def _optimize(self, loaded: list[Loaded], records: list[dict], questions: list[str], step: int) -> dict:
        """One optimizer call (rank 0): the proposal for the next questions."""
        predictions = [record["prediction"] for record in records]
        targets = [record["label"] for record in records]
        prompt = build_optimizer_prompt(self.optimizer_template, questions, predictions, targets,
                                        self.options.num_frames)
        images = [frame for item in loaded for frame in item.frames]
        request = VLMRequest(prompt, images, key=f"optimizer step {step}",
                             image_block=self.options.frame_layout == "released")
        answer = self.backend.generate([request], self.options.max_new_tokens)[0]
        proposal = extract_new_questions(answer.text)
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
            mine.extend(self.frames.load(self.ranks.share(batch)))
            return self._answer(mine, questions)

        records = self.ranks.merge(self.ranks.gather_checked(answer_my_share))
        answered = [record for record in records if "error" not in record]

        def optimize() -> dict:
            # Rank 0 reads the other ranks' frames itself: cheaper than sending images between ranks.
            loaded = {item.video.key: item for item in mine}
            loaded.update((item.video.key, item) for item in self.frames.load(
                [video for video in batch if video.key not in loaded and any(r["key"] == video.key for r in answered)]))
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

    # -- validation and selection

    def validate(self) -> dict:
        """Score the current questions on (this rank's share of) the validation list, gathered everywhere."""
        questions = list(self.state.questions)
        mine = self.ranks.share(self.val)
        bar = tqdm(total=len(self.val), desc=f"validation @ step {self.state.step}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)

        def answer_my_share() -> list[dict]:
            records: list[dict] = []
            for chunk in self.frames.chunks(mine, self.options.val_batch_size):
                records.extend(self._answer(chunk, questions))
                bar.update(len(chunk) * self.ranks.world_size)
            return records

        try:
            records = self.ranks.merge(self.ranks.gather_checked(answer_my_share))
        finally:
            bar.close()
        answered = [record for record in records if "error" not in record]
        if not answered:  # every validation video unreadable: no score could select questions
            raise VeraError(f"none of the {len(records)} validation videos could be read at step {self.state.step} "
                            f"(first: {records[0]['error']})")
        labels = np.asarray([record["label"] for record in answered])
        predictions = np.asarray([record["prediction"] for record in answered])
        soft = [record["label_prob"] for record in answered]
        use_soft = bool(soft) and all(value is not None for value in soft)
        auc = roc_auc(labels, np.asarray(soft, dtype=float) if use_soft else predictions)
        return {
            "step": self.state.step, "questions": questions,
            "accuracy": _accuracy(predictions.tolist(), labels.tolist()), "auc": auc,
            "auc_from": "label_prob" if use_soft else "labels",
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

    def _validate_and_select(self) -> None:
        result = self.validate()
        self.state.skipped_videos += len(result["skipped"])
        selected = self.select(result)
        self.state.last_validated_step = self.state.step
        result["selected"] = selected
        if self.ranks.is_main:
            _append_jsonl(self.output / VALIDATION_FILE, result)
            write_text_atomic(self.output / BEST_FILE, "".join(q + "\n" for q in self.state.best.questions))
            save_checkpoint(self.output / CHECKPOINT_FILE, self.state)
        best = self.state.best
        self.log({"val_accuracy": result["accuracy"], "val_auc": result["auc"],
                  "best_metric": best.metric, "val_skipped": len(result["skipped"])}, self.state.step)

    def _validation_due(self) -> bool:
        step = self.state.step
        return self.state.last_validated_step != step and (step == 0 or step % self.options.val_every == 0)

    # -- the run

    def run(self, backend: VLMBackend) -> TrainingState:
        """Train until ``total_steps``, validating on schedule; resumable at every step."""
        self.backend = backend
        if self.ranks.is_main and self.state.last_validated_step != NO_VALIDATION:
            print(f"resuming {self.output} after step {self.state.step} of {self.total_steps}", file=sys.stderr)
        if self.ranks.is_main:
            write_text_atomic(self.output / RUN_FILE, json.dumps(self._run_info(), indent=1, default=str) + "\n")
            save_checkpoint(self.output / CHECKPOINT_FILE, self.state)
        bar = tqdm(total=self.total_steps, initial=min(self.state.step, self.total_steps), desc="training",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            if self._validation_due():
                # Step 0 scores the initial questions first; later, it redoes a validation a kill cut short.
                self._validate_and_select()
            while self.state.step < self.total_steps:
                record = self.train_step()
                if self.ranks.is_main:
                    _append_jsonl(self.output / HISTORY_FILE, record)
                    save_checkpoint(self.output / CHECKPOINT_FILE, self.state)
                self.log({"train_accuracy": record["train_accuracy"], "update_accepted": float(record["update_accepted"]),
                          "skipped_videos": float(self.state.skipped_videos), "epoch": float(record["epoch"])},
                         self.state.step)
                bar.update(1)
                bar.set_postfix(train_acc=record["train_accuracy"], best=self._best_metric())
                if self._validation_due():
                    self._validate_and_select()
            if self.state.last_validated_step != self.state.step:
                self._validate_and_select()  # a run stopped early still scores its last questions
        finally:
            bar.close()
            self.frames.close()
        return self.state

    def _best_metric(self) -> float | None:
        return None if self.state.best is None else self.state.best.metric

    def _run_info(self) -> dict:
        info = {key: value for key, value in asdict(self.options).items()}
        info.update(world_size=self.ranks.world_size, backend=self.backend.describe(),
                    train_videos=len(self.train), val_videos=len(self.val), total_steps=self.total_steps)
        return info


def train(options: TrainingOptions, backend: VLMBackend, *, log: Callable[[dict, int], None] | None = None,
          progress: bool = True) -> TrainingState:
    """Run (or resume) verbalized learning into ``options.output``; returns the final state."""
    return VerbalizedLearning(options, log=log, progress=progress).run(backend)


def _lightning_loggers(output: Path) -> list:
    """CSV logs always; TensorBoard too where it is installed."""
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(root_dir=output, name="logs", flush_logs_every_n_steps=1)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(root_dir=output, name="logs"))
    return loggers


def train_with_lightning(options: TrainingOptions, make_backend: Callable[[str], VLMBackend], *,
                         accelerator: str = "auto", devices: int = 1) -> TrainingState:
    """Launch one process per device (DDP when ``devices > 1``), log through Lightning, and train.

    Lightning Fabric rather than the ``Trainer``: verbalized learning has no
    weights, optimizer or gradients, it must validate before the first step,
    and a resumed run must replay the exact data order from mid-epoch, which
    the ``Trainer`` does not do for a plain shuffled loader. Fabric provides the
    process launching, the DDP process group and the loggers; the loop is ours.
    ``make_backend`` receives this process's device (``cuda:1``, ``cpu`` …).
    """
    from lightning.fabric import Fabric

    if devices < 1:
        raise VeraError(f"--devices must be at least 1, got {devices}")
    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp" if devices > 1 else "auto",
                        loggers=_lightning_loggers(Path(options.output)))
    except (ValueError, RuntimeError) as error:  # Lightning's word on an accelerator/devices it cannot provide
        raise VeraError(f"--accelerator {accelerator} --devices {devices}: {error}") from None
    fabric.launch()

    def log(metrics: dict, step: int) -> None:
        fabric.log_dict({name: float(value) for name, value in metrics.items() if value is not None}, step=step)

    learning = VerbalizedLearning(options, log=log)
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
