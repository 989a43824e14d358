"""A training run's state on disk: its identity, checkpoint, JSONL records, and resuming after a kill.

The checkpoint holds the step count, the questions and the selection state;
with the epoch order a function of (seed, step), that is all a resume needs.
Every step and validation is written in the order that makes a kill safe: its
JSONL line, its CSV log row, then the checkpoint that covers both. On resume,
lines and rows past the checkpoint are dropped and their work redone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from vera.data.annotations import TrainVideo
from vera.errors import VeraError
from vera.io import parse_json, read_json, sha256_text, write_text_atomic
from vera.learning.fabric_io import LOG_NAME, trim_metrics
from vera.learning.run_log import is_validation_row, step_row, validation_row
from vera.learning.settings import TrainingOptions, validation_rule
from vera.runs import RunFolder

HISTORY_FILE = "history.jsonl"
VALIDATION_FILE = "validation.jsonl"
BEST_FILE = "best_questions.txt"
CHECKPOINT_FILE = "last.ckpt"
CHECKPOINT_FORMAT = "vera-training/2"
NO_VALIDATION = -1
# Options of the paper's training studies (see run_identity).
STUDY_OPTIONS = ("frame_sampling", "num_questions", "optimizer_frames")


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


# --------------------------------------------------------------------------- identity


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
    """What the qwen-video layout does differently in training (one optimizer video, the validation rule).
    A qwen-video folder whose identity lacks them trained otherwise and is refused on resume; the other
    layouts' identities do not carry them."""
    if options.frame_layout != "qwen-video":
        return {}
    return {"optimizer_input": "one video", "validation_rule": validation_rule(options.frame_layout)}


def _study_settings(options: TrainingOptions) -> dict:
    """The study options that differ from the released method. Only these enter the identity, so that a
    released-method run's identity names none of them and its folders without them still resume."""
    return {spec.name: getattr(options, spec.name) for spec in fields(TrainingOptions)
            if spec.name in STUDY_OPTIONS and getattr(options, spec.name) != spec.default}


# --------------------------------------------------------------------------- JSONL records


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: it and anything after it belong to an unfinished step
        records.append(parse_json(line, f"{path} line {number}"))  # a key twice is no kill's doing
    return records


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _keep_records(path: Path, keep: Callable[[dict], bool]) -> None:
    """Drop the lines of steps the checkpoint does not cover (their work is redone)."""
    if path.exists():
        kept = [record for record in read_jsonl(path) if keep(record)]
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def write_best(output: Path, questions: list[str]) -> None:
    write_text_atomic(Path(output) / BEST_FILE, "".join(q + "\n" for q in questions))


# --------------------------------------------------------------------------- checkpoint and resume


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
        last = state.last_validated_step if is_validation_row(row) else state.step
        return int(row["step"]) <= last

    trim_metrics(output, covered)
    if state.best is not None:
        write_best(output, state.best.questions)
    return folder, state, False


class RunRecorder:
    """Writes each step and validation: the JSONL line and ``best_questions.txt`` on rank 0, then the CSV log row
    and the checkpoint, which Fabric's ``log_dict`` and ``save`` take on every rank (``save`` writes on rank 0
    and holds the others until it is written)."""

    def __init__(self, fabric, output: Path, fingerprint: str, is_main: bool):
        self.fabric = fabric
        self.output = Path(output)
        self.fingerprint = fingerprint
        self.is_main = is_main

    def step(self, record: dict, state: TrainingState) -> None:
        if self.is_main:
            append_jsonl(self.output / HISTORY_FILE, record)
        self._log(step_row(record, state.skipped_videos), state.step)
        self.save(state)

    def validation(self, result: dict, state: TrainingState) -> None:
        if self.is_main:
            append_jsonl(self.output / VALIDATION_FILE, result)
            write_best(self.output, state.best.questions)
        self._log(validation_row(result, state.best.metric), state.step)
        self.save(state)

    def save(self, state: TrainingState) -> None:
        self.fabric.save(self.output / CHECKPOINT_FILE, state.to_dict(self.fingerprint))

    def _log(self, row: dict, step: int) -> None:
        # Before the checkpoint: rows past it are trimmed on resume.
        self.fabric.log_dict({name: float(value) for name, value in row.items() if value is not None}, step=step)
