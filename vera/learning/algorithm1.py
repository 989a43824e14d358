"""Algorithm 1 of the paper (arXiv 2412.01095): verbalized learning of the guiding questions Q.

No weights change. One frozen VLM plays two roles. The *learner* answers the
guiding questions Q about each video of a batch of training videos and
predicts 0/1; the *optimizer* sees the batch's frames, the learner's
predictions and the labels, and proposes new questions, which replace Q. Every
``val_every`` steps Q is scored on the validation list; the best questions Q*
(first the initial ones, then any with strictly higher validation accuracy, or
AUC with ``--select-by auc``) are the run's result, ``best_questions.txt``.

Algorithm 1's steps, and where each runs (Algorithm 1 is in App. A.1 of v1
and v3, the CVPR version's supplementary material; Eqs. (1)–(2) are in
Sec. 3.2, numbered the same in v1, v3 and the CVPR version):

    Q <- the initial guiding questions; validate Q      VerbalizedLearning.run
    for each epoch, for each batch of training videos   run; the batch: training_data.batch_at
        learner: answer Q on each video, predict 0/1    learner_pass (Eq. (1))
        optimizer: new Q from the batch's frames,       optimizer_proposal (Eq. (2); an unusable answer keeps Q)
                   the predictions and the labels
        every val_every steps: validation accuracy      VerbalizedLearning.validate, validation_scores
        Q* <- Q if it is strictly higher                select
    return Q*                                           best_questions.txt (run_state)

Several processes: each answers its share of a batch and of the validation
list, the optimizer runs on rank 0 and its verdict is broadcast, so every rank
holds the same Q and the outputs do not depend on the number of processes.
Frames are read ahead of the model (``training_data.frame_reads``): each
stretch of training steps up to the next validation in one pass, each
validation in another. Checkpoint, resume and files: ``run_state``; reporting:
``run_log``.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from vera.distributed import Ranks
from vera.errors import VeraError
from vera.learning.optimizer_prompt import (
    build_optimizer_prompt,
    extract_new_questions,
    load_optimizer_template,
    state_question_limit,
)
from vera.learning.run_log import step_line, training_progress, validation_line, validation_progress
from vera.learning.run_state import HISTORY_FILE, Best, RunRecorder, TrainingState, open_output, run_identity
from vera.learning.settings import TrainingOptions, validation_rule
from vera.learning.training_data import (
    FrameReads,
    Loaded,
    batch_at,
    check_sources,
    frame_reads,
    load_lists,
    step_limit_note,
    steps_per_epoch,
)
from vera.progress import Progress
from vera.scoring.metrics import roc_auc
from vera.vlm.backends.base import VLMAnswer, VLMBackend, VLMRequest
from vera.vlm.parsing import UNREADABLE, last_character_label, parse_answer
from vera.vlm.prompts import build_learner_prompt, learner_request, load_template


# Algorithm 1 (App. A.1)
class VerbalizedLearning:
    """Algorithm 1 in one process (rank)."""

    def __init__(self, options: TrainingOptions, ranks: Ranks, *, input_workers: int = 0, progress: bool = True):
        """Read and check the lists, templates and output folder (before any model is loaded). ``input_workers``
        processes read the frames ahead of the model (0: this process reads them); the outputs are the same."""
        options.check()
        self.options = options
        self.input_workers = input_workers
        self.ranks = ranks
        self.backend: VLMBackend | None = None
        self.show_progress = progress and ranks.is_main
        self.output = Path(options.output)
        self.train, self.val = load_lists(options)
        check_sources(options, self.train, self.val, warn=ranks.is_main)
        self.learner_template = load_template(options.prompt_file)
        self.optimizer_template = state_question_limit(
            load_optimizer_template(options.optimizer_prompt_file), options.num_questions,
            f"optimizer prompt file {options.optimizer_prompt_file}" if options.optimizer_prompt_file
            else "the default optimizer prompt")
        identity = run_identity(options, self.train, self.val, self.learner_template, self.optimizer_template)
        self.folder = None  # rank 0's RunFolder; the other ranks never touch the output folder

        def open_on_main() -> tuple[str, TrainingState, bool]:
            # Read here and broadcast rather than fabric.load on every rank: every file of the
            # output folder is rank 0's, so on several machines it need be on rank 0's disk only.
            self.folder, state, fresh = open_output(options, identity)
            return self.folder.fingerprint, state, fresh

        self.fingerprint, self.state, self.fresh = ranks.on_main(open_on_main)
        self.record = RunRecorder(ranks.fabric, self.output, self.fingerprint, ranks.is_main)

    @property
    def total_steps(self) -> int:
        total = self.options.epochs * steps_per_epoch(len(self.train), self.options.batch_size)
        return min(total, self.options.max_steps) if self.options.max_steps else total

    # -- the algorithm

    # Algorithm 1's loop, Q* <- Q0 to "Return Q*" (App. A.1)
    def run(self, backend: VLMBackend) -> TrainingState:
        """Train until ``total_steps``, validating on schedule; resumable at every step."""
        self.backend = backend
        if self.ranks.is_main:
            if not self.fresh:
                print(f"resuming {self.output} after step {self.state.step} of {self.total_steps}", file=sys.stderr)
            else:
                self.folder.write_record(**self._run_info())
            note = step_limit_note(self.options.epochs, steps_per_epoch(len(self.train), self.options.batch_size),
                                   self.options.max_steps)
            if note:
                print(note, file=sys.stderr)
        self.record.save(self.state)
        shown = training_progress(self.total_steps, self.state.step, self.show_progress)
        try:
            self._check_something_readable()
            if self._validation_due():
                # Step 0 scores the initial questions first; later, it redoes a validation a kill cut short.
                self.validate_and_select(shown)
            while self.state.step < self.total_steps:
                end = self._next_validation()
                with self._training_reads(self.state.step, end) as reads:
                    while self.state.step < end:
                        record = self.train_step(reads)
                        self.record.step(record, self.state)
                        best = None if self.state.best is None else self.state.best.metric
                        shown.set_postfix(train_acc=record["train_accuracy"], best=best)
                        shown.update(1, message=step_line(record, self.total_steps, best))
                        self._check_something_readable()
                if self._validation_due():
                    self.validate_and_select(shown)
            if self.state.last_validated_step != self.state.step:
                self.validate_and_select(shown)  # a run stopped early still scores its last questions
        except BaseException:
            shown.close(stopped=True)  # the log says the run stopped, then the error propagates
            raise
        finally:
            shown.close()
        return self.state

    # one iteration t of Algorithm 1: Eq. (1) on the batch, then Eq. (2) (Sec. 3.2, App. A.1)
    def train_step(self, reads: FrameReads) -> dict:
        """One step: the learner on the batch (each rank its share), the optimizer's proposal (rank 0),
        broadcast. Returns the step's ``history.jsonl`` record. ``reads``: ``_training_reads``."""
        step = self.state.step
        epoch, batch = batch_at(self.train, step, self.options.batch_size, self.options.seed)
        questions = list(self.state.questions)
        mine: list[Loaded] = []

        def answer_my_share() -> list[dict]:
            mine.extend(reads.take(self.ranks.share(batch), at=(epoch, step)))
            return learner_pass(self.backend, self.learner_template, questions, mine, self.options)

        records = self.ranks.merge(self.ranks.gather_checked(answer_my_share))
        answered = [record for record in records if "error" not in record]

        def optimize() -> dict:
            if answered and not self.options.optimizer_frames:
                return optimizer_proposal(self.backend, self.optimizer_template, questions, None, answered,
                                          step + 1, self.options)
            # Rank 0 reads the other ranks' frames itself (the same draw: it depends on seed, epoch, step and
            # video only): cheaper than sending images between ranks.
            loaded = {item.video.key: item for item in mine}
            loaded.update((item.video.key, item) for item in reads.take(
                [video for video in batch if video.key not in loaded and any(r["key"] == video.key for r in answered)],
                at=(epoch, step)))
            pairs = [(loaded[record["key"]], record) for record in answered if loaded[record["key"]].frames is not None]
            if not pairs:
                return {"response": None, "truncated": False, "accepted": False, "status": "no_readable_video",
                        "questions": questions}
            return optimizer_proposal(self.backend, self.optimizer_template, questions, [item for item, _ in pairs],
                                      [record for _, record in pairs], step + 1, self.options)

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

    # Algorithm 1's "if t mod μ = 0": Acc_t, then Q* <- Q_t if Acc_t > Acc* (unnumbered, App. A.1)
    def validate_and_select(self, training: Progress) -> None:
        """Validate the current questions, select, record; ``training``'s postfix shows the best metric from now on."""
        with validation_progress(self.state.step, len(self.val), self.show_progress) as shown:
            result = self.validate(shown)
            self.state.skipped_videos += len(result["skipped"])
            chosen = select(self.state.best, result, self.options.select_by)
            if chosen is not None:
                self.state.best = chosen
            self.state.last_validated_step = self.state.step
            result["selected"] = chosen is not None
            self.record.validation(result, self.state)
            shown.close(message=validation_line(result))
        training.set_postfix(best=self.state.best.metric)

    # Acc_t of Q_t on D_val, by Eq. (1) per video (unnumbered, App. A.1)
    def validate(self, shown: Progress) -> dict:
        """Score the current questions on (this rank's share of) the validation list, gathered everywhere;
        ``shown`` counts the videos (rank 0's share times the ranks)."""
        questions = list(self.state.questions)
        mine = self.ranks.share(self.val)
        rule = validation_rule(self.options.frame_layout)

        def answer_my_share() -> list[dict]:
            records: list[dict] = []
            size = self.options.val_batch_size
            # The next chunk is read while the model answers this one.
            with frame_reads(self.options, [(None, video) for video in mine], self.input_workers, size) as reads:
                for start in range(0, len(mine), size):
                    chunk = reads.take(mine[start:start + size], at=None)
                    records.extend(learner_pass(self.backend, self.learner_template, questions, chunk,
                                                self.options, rule))
                    shown.update(len(chunk) * self.ranks.world_size)
            return records

        records = self.ranks.merge(self.ranks.gather_checked(answer_my_share))
        if not any("error" not in record for record in records):
            raise VeraError(f"no readable validation videos left: all {len(self.val)} were unreadable and skipped")
        return validation_scores(records, questions, self.state.step, rule)

    def _training_reads(self, start: int, end: int) -> AbstractContextManager[FrameReads]:
        """The frames of steps ``start`` to ``end - 1``, read in one pass: each step's share of its batch, and on
        rank 0, where the optimizer sees frames, the other ranks' videos after them (``train_step`` takes those
        it needs: rank 0 reads them itself, the same draw, rather than receive images from the other ranks)."""
        plan = []
        for step in range(start, end):
            epoch, batch = batch_at(self.train, step, self.options.batch_size, self.options.seed)
            mine = self.ranks.share(batch)
            keys = {video.key for video in mine}
            others = [video for video in batch if video.key not in keys] if (
                self.ranks.is_main and self.options.optimizer_frames) else []
            plan.extend(((epoch, step), video) for video in mine + others)
        return frame_reads(self.options, plan, self.input_workers, self.options.batch_size)

    # -- when

    def _next_validation(self) -> int:
        """The step after which the next validation is due (or the run ends)."""
        return min(self.total_steps, (self.state.step // self.options.val_every + 1) * self.options.val_every)

    def _validation_due(self) -> bool:
        step = self.state.step
        return self.state.last_validated_step != step and (step == 0 or step % self.options.val_every == 0)

    def _check_something_readable(self) -> None:
        """With --skip-bad-videos, a first epoch (or a shorter run) in which every video was skipped is an error:
        the later epochs read the same videos, and a run that learned nothing must not look finished."""
        first_epoch = min(steps_per_epoch(len(self.train), self.options.batch_size), self.total_steps)
        if self.state.trained_videos == 0 and self.state.step >= first_epoch:
            raise VeraError(f"no readable training videos left: every training video of the first {self.state.step} "
                            f"steps was unreadable and skipped (see {self.output / HISTORY_FILE})")

    def _run_info(self) -> dict:
        return {"world_size": self.ranks.world_size, "backend": self.backend.describe(),
                "train_videos": len(self.train), "val_videos": len(self.val), "total_steps": self.total_steps}


# --------------------------------------------------------------------------- the two roles, validation, selection


# Eq. (1), Sec. 3.2: Ŷ⁽ʲ⁾ = f_learner⁽ᵗ⁾(Ṽ⁽ʲ⁾) with prompt (θ, Q_t)
def learner_pass(backend: VLMBackend, template: str, questions: list[str], loaded: list[Loaded],
                 options: TrainingOptions, rule: str = "output") -> list[dict]:
    """The learner's answers to ``questions`` for the readable videos of ``loaded`` (an unreadable one is recorded
    with its error, not answered), each label read by ``rule`` (``settings.validation_rule``)."""
    usable = [item for item in loaded if item.frames is not None]
    prompt = build_learner_prompt(template, questions, options.num_frames, options.frame_layout)
    requests = [learner_request(prompt, list(item.frames), item.video.key, options.frame_layout) for item in usable]
    answers = iter(backend.generate(requests, options.max_new_tokens) if requests else [])
    return [_answer_record(item, next(answers), rule) if item.frames is not None
            else {"key": item.video.key, "label": item.video.label, "error": item.error}
            for item in loaded]


def _answer_record(loaded: Loaded, answer: VLMAnswer, rule: str) -> dict:
    """One answer: ``prediction`` by ``rule``; ``well_formed``/``status`` by Step 1's parse."""
    parsed = parse_answer(answer.text)
    prediction = last_character_label(answer.text) if rule == "last-character" else parsed.score
    return {
        "key": loaded.video.key, "label": loaded.video.label, "frames": loaded.indices,
        "prediction": int(prediction),
        "well_formed": bool(parsed.well_formed), "status": parsed.status,
        "label_prob": answer.label_prob, "truncated": bool(answer.extra.get("truncated", False)),
        "response": answer.text,
    }


# Eq. (2), Sec. 3.2: Q_{t+1} = f_opt⁽ᵗ⁾(V_batch, Ŷ_batch, Y_batch) with prompt (ψ, Q_t)
def optimizer_proposal(backend: VLMBackend, template: str, questions: list[str], loaded: list[Loaded] | None,
                       records: list[dict], step: int, options: TrainingOptions) -> dict:
    """One optimizer call: the questions for the next step, and whether its answer gave usable ones (if not,
    ``questions`` stay). ``loaded`` None: no frames shown (``--no-optimizer-frames``)."""
    predictions = [record["prediction"] for record in records]
    targets = [record["label"] for record in records]
    layout = options.frame_layout
    prompt = build_optimizer_prompt(template, questions, predictions, targets, options.num_frames,
                                    with_frames=loaded is not None, frame_layout=layout)
    images = [frame for item in loaded or [] for frame in item.frames]
    # qwen-video: the batch's frames in order as one video, in the authors' chat string (vera.vlm.qwen_video)
    request = VLMRequest(prompt, images, key=f"optimizer step {step}",
                         image_block=bool(images) and layout == "released", video=layout == "qwen-video")
    answer = backend.generate([request], options.max_new_tokens)[0]
    proposal = extract_new_questions(answer.text, options.num_questions)
    return {"response": answer.text, "truncated": bool(answer.extra.get("truncated", False)),
            "accepted": proposal.accepted, "status": proposal.status,
            "questions": proposal.questions if proposal.accepted else list(questions)}


# Acc_t of Algorithm 1 (unnumbered, App. A.1)
def validation_scores(records: list[dict], questions: list[str], step: int, rule: str) -> dict:
    """The validation accuracy (and AUC) of ``questions`` from the learner's validation ``records``: the
    ``validation.jsonl`` record, before selection."""
    answered = [record for record in records if "error" not in record]
    labels = np.asarray([record["label"] for record in answered])
    predictions = np.asarray([record["prediction"] for record in answered])
    soft = [record["label_prob"] for record in answered]
    use_soft = all(value is not None for value in soft)
    # An unreadable answer (last-character rule) is wrong, in the AUC as in the accuracy.
    hard = np.where(predictions == UNREADABLE, 1 - labels, predictions)
    auc = roc_auc(labels, np.asarray(soft, dtype=float) if use_soft else hard)
    return {
        "step": step, "questions": questions,
        "accuracy": _accuracy(predictions.tolist(), labels.tolist()), "auc": auc,
        "auc_from": "label_prob" if use_soft else "labels", "rule": rule,
        "videos": len(answered), "well_formed": int(sum(r["well_formed"] for r in answered)),
        "skipped": [{"key": r["key"], "error": r["error"]} for r in records if "error" in r],
        "predictions": answered,
    }


# Algorithm 1's "if Acc_t > Acc*: Q* <- Q_t" (unnumbered, App. A.1; Q* also in Sec. 3.3)
def select(best: Best | None, result: dict, select_by: str) -> Best | None:
    """The new best questions Q* if the validated questions beat ``best`` on a strictly higher metric
    (the first validation always does), else None."""
    metric = result[select_by]
    if best is not None and (metric is None or (best.metric is not None and metric <= best.metric)):
        return None
    return Best(list(result["questions"]), metric, result["step"], result["accuracy"], result["auc"])


def _accuracy(predictions: list[int], labels: list[int]) -> float | None:
    if not labels:
        return None
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))
