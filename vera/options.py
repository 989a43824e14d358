"""Every command-line option of the project, defined once: flag, type, default, help and validation.

A command lists the options it takes by name (``build_parser(["dataset",
"annotations", ...])``), so the same flag means, defaults to and rejects the
same thing in every script: ``--fps nan`` gives the same one-line error in
Step 1, feature extraction and training. Where a flag means something else in
another command (``--batch-size`` counts segments in Step 1, videos in
training, views in feature extraction) it is a separate option with its own
name here.

This module imports nothing heavy (no torch, no transformers), so ``--help``
and argument errors answer at once; commands import their stage after parsing.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vera.constants import (  # noqa: F401 - the option registry and its users read them here
    BACKENDS, DATASETS, DEFAULT_EPOCHS, DEFAULT_NUM_QUESTIONS, FRAME_LAYOUTS, FRAME_SAMPLINGS,
    HALF_WINDOW, METRICS, NO_QUESTIONS, PRESETS, PROTOCOLS, QWEN_VIDEO_EPOCHS, SCORE_MODES, SELECT_BY,
)
from vera.errors import VeraError

# Choices of the command line alone; the method's constants come from vera.constants.
IMAGE_FORMATS = ("png", "jpeg")
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
ACCELERATORS = ("auto", "cuda", "cpu")
ARTIFACTS = ("annotations", "prompts", "scores", "features")  # what Data/download.py fetches


# -- value types: each turns the text into a value or says, in one line, what is wrong --------

def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def workers_or_auto(text: str) -> int | None:
    """A number of worker processes, or ``auto`` (``None``: the command decides from the CPUs)."""
    if text == "auto":
        return None
    if not text.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number or 'auto', got {text!r}")
    return _whole_number(text, 0)


def frame_rate(text: str) -> float:
    """A frame rate whose 10-second window keeps at least one frame each side of a centre."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or round(5.0 * value) < 1:
        raise argparse.ArgumentTypeError(
            f"must be a finite frame rate of at least 0.1 (one frame each side of a segment centre), got {text}")
    return value


def shard(text: str) -> tuple[int, int]:
    """``I/N`` with ``0 <= I < N`` → ``(I, N)``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"{text}: need 0 <= I < N")
    return index, count


def _existing(text: str, kind: str, is_kind: Callable[[Path], bool]) -> Path:
    path = Path(text)
    if not is_kind(path):
        raise argparse.ArgumentTypeError(f"{kind} not found: {path}" if not path.exists() else f"not a {kind}: {path}")
    return path


def existing_file(text: str) -> Path:
    return _existing(text, "file", Path.is_file)


def existing_dir(text: str) -> Path:
    return _existing(text, "folder", Path.is_dir)


def output_dir(text: str) -> Path:
    """A folder the run can write to: it exists and is writable, or it can be created.

    Checked before any work so that a typo or a read-only disk is not found
    after an hour of computation.
    """
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a folder")
    probe = path
    while not probe.exists():  # the nearest existing ancestor decides whether we can create it
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        raise argparse.ArgumentTypeError(f"cannot write to {path}: {probe} is not a writable folder")
    return path


def questions_source(text: str) -> Path | str:
    """A questions file, or ``none`` (``NO_QUESTIONS``) for no guiding questions; a file named none is ``./none``."""
    return NO_QUESTIONS if text == NO_QUESTIONS else existing_file(text)


def model_ref(text: str) -> str:
    """A local model folder, or a Hub id (``owner/name``); a local path that does not exist fails now."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a local folder or a Hugging Face id")
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text).exists()
    if looks_local and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"model folder not found: {text}")
    return text


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A share between 0 and 1 (``0.1`` for 10 %)."""
    value = _number(text, "a fraction between 0 and 1 (0.1 for 10%)")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (0.1 for 10%), got {text}")
    return value


def positive_fraction(text: str) -> float:
    value = fraction(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"must be a fraction above 0 and at most 1, got {text}")
    return value


def positive_finite(text: str) -> float:
    value = _number(text, "a positive number")
    if not (0.0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


MIN_TEMPERATURE = 1e-30  # 1/τ must stay finite in float32 logits (similarities are float32 as released)


def temperature(text: str) -> float:
    """τ > 0; ``inf`` gives uniform weights."""
    value = _number(text, "a positive number or inf")
    if not value >= MIN_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_TEMPERATURE:g} (or inf), got {text}")
    return value


def class_list(text: str) -> tuple[str, ...]:
    """``A,B,…`` → ``("A", "B", …)``: non-empty names, each once."""
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be class names separated by commas, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"names a class twice: {text!r}")
    return names


def key_list(text: str) -> tuple[str, ...]:
    """``KEY,KEY,…`` → video keys, each once."""
    keys = tuple(key.strip() for key in text.split(","))
    if not all(keys) or len(set(keys)) != len(keys):
        raise argparse.ArgumentTypeError(f"must be distinct video keys separated by commas, got {text!r}")
    return keys


# -- types of the newcomer commands (make_annotations, download) --------------------------------

def output_file(text: str) -> Path:
    """A file the run can write: not a folder, in a folder that exists (or can be created) and is writable."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name")
    output_dir(str(path.parent))  # the same writability check, phrased for the folder
    return path


def artifact_list(text: str) -> tuple[str, ...]:
    """Comma-separated artifact kinds, each one of ``ARTIFACTS``, in the order given (repeats dropped)."""
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in ARTIFACTS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"choose from {','.join(ARTIFACTS)} (comma-separated), got {text!r}")
    return kinds


def mirror_url(text: str) -> str:
    """An http(s) base address without a trailing slash."""
    if not text.startswith(("http://", "https://")) or len(text.rstrip("/")) <= len("https://"):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// address, got {text!r}")
    return text.rstrip("/")


def base_urls(text: str) -> tuple[str, ...]:
    """Comma-separated ``http(s)://host:port[/path]`` API roots; a URL without a path gets ``/v1``."""
    urls = []
    for part in text.split(","):
        part = part.strip()
        try:
            parsed = urlsplit(part)
            parsed.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{part!r}: {error}") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
            raise argparse.ArgumentTypeError(f"{part!r} is not an http(s)://host:port URL")
        url = part.rstrip("/") if parsed.path.strip("/") else f"{parsed.scheme}://{parsed.netloc}/v1"
        if url in urls:
            raise argparse.ArgumentTypeError(f"{url} is given twice")
        urls.append(url)
    return tuple(urls)


def served_model_name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must name the model as the server lists it (GET /v1/models)")
    return text


def positive_seconds(text: str) -> float:
    value = _number(text, "a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


# -- the options ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One command-line option: what argparse needs, in one place."""

    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    choices: Sequence[str] | None = None
    action: str | None = None
    required: bool = False
    metavar: str | None = None
    dest: str | None = None
    nargs: str | None = None

    def add_to(self, parser: argparse._ActionsContainer, required: bool | None = None) -> None:
        kwargs: dict[str, Any] = {"help": self.help}
        if self.dest:
            kwargs["dest"] = self.dest
        if self.action:
            kwargs["action"] = self.action
        else:
            kwargs.update(type=self.type, default=self.default, choices=self.choices, metavar=self.metavar)
            if self.nargs:
                kwargs["nargs"] = self.nargs
            if required if required is not None else self.required:
                kwargs["required"] = True
        parser.add_argument(*self.flags, **kwargs)


@dataclass(frozen=True)
class OneOf:
    """Options of which at most one (exactly one when ``required``) may be given."""

    names: tuple[str, ...]
    required: bool = True


def _opt(*flags: str, **kwargs: Any) -> Option:
    return Option(flags=flags, **kwargs)


OPTIONS: dict[str, Option] = {
    # inputs
    "dataset": _opt("--dataset", choices=DATASETS, required=True,
                    help="ucf (UCF-Crime) or xd (XD-Violence); decides the key rule and the normal label"),
    "dataset_optional": _opt("--dataset", choices=DATASETS,
                             help="ucf or xd (default: inferred from the annotation file)"),
    "annotations": _opt("--annotations", type=existing_file, metavar="FILE",
                        help="test annotations: UCF_Eval.json, xd_test_800.json (or the official UCF txt where "
                             "lengths are not needed); default: Data/ (see Data/README.md)"),
    "frames": _opt("--frames", type=existing_dir, metavar="DIR",
                   help="folder of <key>/%%06d.jpg frame folders (Preprocessing/extract_frames.py)"),
    "videos": _opt("--videos", type=existing_dir, metavar="DIR",
                   help="folder holding <key>.mp4 (or .avi, …) anywhere below it; frames are decoded directly "
                        "(pixels differ slightly from --frames, which went through JPEG)"),
    "fps": _opt("--fps", type=frame_rate, metavar="F",
                help=f"frame rate for a true 10-second window, ±round(5·F) frames (default: ±{HALF_WINDOW} "
                     "frames, the released 30 fps assumption); give every stage the same value"),
    "limit": _opt("--limit", type=positive_int, metavar="N", help="only the first N videos of the annotation file"),
    "allow_length_mismatch": _opt("--allow-length-mismatch", action="store_true",
                                  help="use a video whose frame count differs from its annotated length "
                                       "(its frames are read up to the annotated length)"),
    # outputs and runs
    "output": _opt("--output", type=output_dir, required=True, metavar="DIR", help="output folder"),
    "scoring_output": _opt("--output", type=output_dir, metavar="DIR",
                           help="output folder (default: runs/<dataset>_<metric>_<protocol>)"),
    "overwrite": _opt("--overwrite", action="store_true",
                      help="replace what the output folder holds from a run with other settings"),
    "no_progress": _opt("--no-progress", action="store_true",
                        help="no progress bar (when not on a terminal, progress is logged as plain lines anyway)"),
    "shard": _opt("--shard", type=shard, default=(0, 1), metavar="I/N",
                  help="this run takes every N-th video from the I-th (0-based); with --devices/--num-nodes "
                       "its processes split those again, process r of W taking every W-th from the r-th"),
    # the VLM
    "model": _opt("--model", type=model_ref, required=True, metavar="PATH_OR_ID",
                  help="local folder or Hugging Face id of the VLM (an id needs the network or the local cache)"),
    "backend": _opt("--backend", choices=BACKENDS, default="hf",
                    help="how the VLM runs: hf (in this process) or openai (OpenAI-compatible servers, "
                         "--base-url; default: %(default)s)"),
    # the openai backend
    "served_model": _opt("--served-model", type=served_model_name, metavar="NAME",
                         help="with --backend openai, instead of --model: the model's name on the servers "
                              "(as GET /v1/models lists it)"),
    "base_url": _opt("--base-url", type=base_urls, metavar="URL[,URL...]",
                     help="with --backend openai: the servers, e.g. http://gpu1:8000/v1,http://gpu2:8000/v1 "
                          "(a URL without a path gets /v1)"),
    "concurrency": _opt("--concurrency", type=positive_int, default=8, metavar="N",
                        help="with --backend openai: requests in flight per server (default: %(default)s)"),
    "request_timeout": _opt("--request-timeout", type=positive_seconds, default=600.0, metavar="SECONDS",
                            help="with --backend openai: wait at most this long for an answer before retrying "
                                 "(default: %(default)s)"),
    "retries": _opt("--retries", type=non_negative_int, default=8, metavar="N",
                    help="with --backend openai: retries of a request that failed or timed out, the server "
                         "resting 1, 2, 4, ... 60 s after each failure (default: %(default)s, about 3 minutes)"),
    "image_format": _opt("--image-format", choices=IMAGE_FORMATS, default="png",
                         help="with --backend openai: how frames travel: png (lossless, the pixels the hf backend "
                              "sees) or jpeg (quality 95, about 4x smaller, 20x cheaper to encode; "
                              "default: %(default)s)"),
    "device": _opt("--device", default="auto", help="cpu, cuda or cuda:N (default auto: a GPU if there is one)"),
    "dtype": _opt("--dtype", choices=DTYPE_CHOICES, default="auto",
                  help="model precision (auto: bfloat16 on GPU for the VLM, float32 for ImageBind as LAVAD ran it; "
                       "float32 on CPU)"),
    "questions": _opt("--questions", type=questions_source, metavar="FILE|none",
                      help="guiding questions, one per line (e.g. training's best_questions.txt), or 'none': "
                           "the bare prompt, the template with no questions inserted"),
    "preset": _opt("--preset", choices=PRESETS,
                   help="the published questions (ucf, xd, ucf-qwen) or training's two initial ones (initial)"),
    "prompt_file": _opt("--prompt-file", type=existing_file, metavar="FILE",
                        help="learner template with $Data and 'Based on the analysis above'; default: the "
                             "authors' Data/VERA_learner_instruct.txt where it exists, else the project's own"),
    "frame_layout": _opt("--frame-layout", choices=FRAME_LAYOUTS,
                         help="released: all frames at the first <image> (as the authors fed InternVL2); "
                              "per-frame: one frame per Frame line; qwen-video: the frames as one video at "
                              "[$Data], as the authors fed Qwen2-VL (default: qwen-video for a Qwen2-VL model "
                              "and a template with [$Data], else released)"),
    "max_new_tokens": _opt("--max-new-tokens", type=positive_int, default=1024, metavar="N",
                           help="answer length limit (default: %(default)s, as released)"),
    "dump_inputs": _opt("--dump-inputs", type=output_dir, metavar="DIR",
                        help="write what the model is fed, per request: DIR/<name>.npz (input_ids without padding "
                             "and the pixel tensors under the model's argument names) and DIR/<name>.txt (the "
                             "decoded text); large (InternVL: 19 MB per segment), so use with --limit"),
    # Step 1
    "step1_batch_size": _opt("--batch-size", type=positive_int, default=8, metavar="N",
                             help="segments per generate call (default: %(default)s)"),
    "score_mode": _opt("--score-mode", choices=SCORE_MODES, default="generate",
                       help="generate: the model answers the questions and its answer's label is the score (the "
                            "paper's protocol); label: no answer, the label is read from the logits after a forced "
                            "'Output:' (one forward pass, a faster approximation; docs/speed.md) "
                            "(default: %(default)s)"),
    "static_cache": _opt("--static-cache", action="store_true",
                         help="pre-allocate the key-value cache for generation (transformers' static cache); "
                              "same answers, less allocation per token"),
    "decoder": _opt("--decoder", choices=("auto", "generate"), default="auto",
                    help="auto: the project's greedy loop (vera.vlm.greedy; same answers as generate, faster) "
                         "wherever it reproduces generate, else generate; generate: transformers' generate always "
                         "(default: %(default)s)"),
    "compile": _opt("--compile", action="store_true",
                    help="compile the decoding step (torch.compile, CUDA graphs on a GPU; implies --static-cache); "
                         "the first batch takes minutes to compile"),
    "input_workers": _opt("--input-workers", type=workers_or_auto, metavar="N|auto",
                          help="processes per GPU process that read (for the VLM: and resize) the frames of the coming "
                               "segments or videos while the model works, one video each; 0 reads them in this "
                               "process, before each batch; same results either way (default auto: the CPUs per GPU "
                               "process less one, at most 4; 0 on one CPU)"),
    # features
    "checkpoint": _opt("--checkpoint", type=existing_file, metavar="FILE",
                       help="the official imagebind_huge.pth"),
    "random_init": _opt("--random-init", action="store_true", help="seeded random weights of ImageBind-huge's shape"),
    "tiny": _opt("--tiny", action="store_true", help="with --random-init: a small model, for smoke runs"),
    "features_batch_size": _opt("--batch-size", type=positive_int, default=48, metavar="N",
                                help="views per forward pass (3 per segment; default: %(default)s)"),
    "clamp_short": _opt("--clamp-short", action="store_true",
                        help="for a video with fewer frames than annotated, reuse its last frame instead of failing"),
    # frames
    "videos_in": _opt("--videos", type=existing_dir, required=True, metavar="DIR",
                      help="folder of videos (searched recursively)"),
    "frames_out": _opt("--frames", type=output_dir, required=True, metavar="DIR",
                       help="output folder: <frames>/<key>/%%06d.jpg"),
    "workers": _opt("--workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                    help="videos decoded in parallel (default: the CPU count)"),
    "annotations_check": _opt("--annotations", type=existing_file, metavar="FILE",
                              help="VERA annotation JSON (test or training list) to check frame counts against"),
    "allow_short": _opt("--allow-short", action="store_true",
                        help="accept a video that decodes fewer frames than its container declares"),
    # scoring
    "scores": _opt("--scores", type=existing_dir, metavar="DIR",
                   help="folder of <key>.json segment scores (Step 1); default: Data/scores/<dataset>"),
    "features": _opt("--features", type=existing_dir, metavar="DIR",
                      help="folder of <key>.npy segment features (needed for Step 2); default: "
                           "Data/features/<dataset> where it exists"),
    "metric": _opt("--metric", choices=METRICS, help="default: auc for ucf, ap for xd"),
    "protocol": _opt("--protocol", choices=PROTOCOLS, default="released",
                     help="released: the authors' scripts bit for bit; paper: the paper's text (default: %(default)s)"),
    "score_field": _opt("--score-field", default="score",
                        help="segment value to score by: the 0/1 'score' (default) or a soft one such as Step 1's "
                             "'label_prob' (paper protocol; null values fall back to 'score')"),
    "gt_frames": _opt("--gt-frames", type=existing_file, metavar="FILE",
                      help="XD-Violence frame labels of Wu et al. ({key: [0/1, …]}); default for XD AP: the "
                           "authors' Data/name_gt_pair.json where it exists"),
    "allow_missing": _opt("--allow-missing", action="store_true",
                          help="skip videos whose score or feature file is absent"),
    "merge_xd_duplicates": _opt("--merge-xd-duplicates", action="store_true",
                                help="fold the 14 '<key>.mp4' entries of xd_annotations.json into their videos"),
    "skip_step2": _opt("--skip-step2", action="store_true", help="ablation: no scene context"),
    "skip_smoothing": _opt("--skip-smoothing", action="store_true", help="ablation: no temporal smoothing"),
    "skip_position_weighting": _opt("--skip-position-weighting", action="store_true",
                                    help="ablation: no position weighting"),
    "no_curves": _opt("--no-curves", action="store_true", help="do not draw roc.png / pr.png"),
    # training
    "train": _opt("--train", type=existing_file, metavar="FILE",
                  help="training list (UCF_Instruct_train.json, xd_train.json); default: Data/"),
    "val": _opt("--val", type=existing_file, metavar="FILE",
                help="validation list (UCF_Instruct_val.json, xd_val.json); default: Data/"),
    "epochs": _opt("--epochs", type=positive_int, metavar="N",
                   help=f"default: {DEFAULT_EPOCHS}, or {QWEN_VIDEO_EPOCHS} in the qwen-video frame layout (the "
                        "authors' Qwen2-VL training)"),
    "train_batch_size": _opt("--batch-size", type=positive_int, default=2, metavar="N",
                             help="training videos per step (default: %(default)s)"),
    "num_frames": _opt("--num-frames", type=positive_int, default=8, metavar="N",
                       help="frames per training video (default: %(default)s)"),
    "val_every": _opt("--val-every", type=positive_int, default=100, metavar="N",
                      help="validate every N steps (default: %(default)s)"),
    "max_steps": _opt("--max-steps", type=positive_int, metavar="N", help="stop after N steps in all"),
    "limit_val": _opt("--limit-val", type=positive_int, metavar="N",
                      help="validate on the first N videos of --val only"),
    "val_batch_size": _opt("--val-batch-size", type=positive_int, default=8, metavar="N",
                           help="validation videos per model call (default: %(default)s)"),
    "select_by": _opt("--select-by", choices=SELECT_BY, default="accuracy",
                      help="keep the questions with the best validation accuracy (released) or AUC"),
    "initial_questions": _opt("--questions", type=questions_source, metavar="FILE|none",
                              help="initial questions, one per line (default: the released two), or 'none' "
                                   "to start from the bare prompt"),
    "optimizer_prompt_file": _opt("--optimizer-prompt-file", type=existing_file, metavar="FILE",
                                  help="optimizer template; default: the authors' Data/VERA_optimizer_instruct.txt "
                                       "where it exists, else the project's own"),
    "seed": _opt("--seed", type=non_negative_int, default=0, metavar="N",
                 help="seed of the per-epoch shuffling (default: %(default)s)"),
    "skip_bad_videos": _opt("--skip-bad-videos", action="store_true",
                            help="skip videos whose frames cannot be read (fails if none is left)"),
    "frame_sampling": _opt("--frame-sampling", choices=FRAME_SAMPLINGS, default="uniform",
                           help="the learner's frames of a training video: uniform (released, "
                                "np.arange(0, length, length/N)), random (N distinct frames, in order) or tsn "
                                "(one random frame from each of N equal parts); drawn from --seed, epoch, step and "
                                "video, so a resumed run draws the same; validation always uses uniform "
                                "(default: %(default)s)"),
    "num_questions": _opt("--num-questions", type=positive_int, default=DEFAULT_NUM_QUESTIONS, metavar="M",
                          help="the most questions the optimizer may propose (the paper's m); its prompt says so, "
                               "and a longer list is rejected (default: %(default)s, the paper's)"),
    "no_optimizer_frames": _opt("--no-optimizer-frames", action="store_true",
                                help="ablation: the optimizer sees no frames, only the questions, predictions and "
                                     "targets (its prompt then has no frame block)"),
    "devices": _opt("--devices", type=positive_int, default=1, metavar="N",
                    help="processes, one per GPU; more than 1 runs DDP (default: %(default)s)"),
    "accelerator": _opt("--accelerator", choices=ACCELERATORS, default="auto", help="default: %(default)s"),
    "num_nodes": _opt("--num-nodes", type=positive_int, default=1, metavar="M",
                      help="machines, each running --devices processes (the command runs on each: started by "
                           "hand with Lightning's MASTER_ADDR/NODE_RANK, by torchrun or by SLURM; "
                           "default: %(default)s)"),
    # scoring hyper-parameters (Steps 2-3), varied by the paper's Tables 11, 13-17; None = the protocol's value
    "k_ratio": _opt("--k-ratio", type=fraction, metavar="R",
                    help="Step 2: K/h, the share of a video's h segments that each segment retrieves (paper: K, "
                         "Table 13, in %% of h); 0 = no retrieval. Default: 0.15 released (int(0.15·h), as the "
                         "released scripts), 0.10 UCF / 0.15 XD paper"),
    "random_k": _opt("--random-k", type=non_negative_int, metavar="SEED",
                     help="Step 2 control (Table 13, 'random'): K segments drawn at random for each segment "
                          "instead of the K most similar; the draw is seeded by SEED and the video key"),
    "tau": _opt("--tau", type=temperature, metavar="T",
                help="Step 2: softmax temperature τ (unitless; weights softmax(S/τ) over cosine similarities S, "
                     "Table 16); inf = uniform weights. Default 0.1 in both protocols (the released softmax(10·S))"),
    "window": _opt("--window", type=positive_int, metavar="W",
                   help="Step 3: Gaussian filter size ω, in segments (Table 14). Default 15 released (both "
                        "datasets); paper 15 UCF, 30 XD"),
    "sigma1": _opt("--sigma1", type=positive_finite, metavar="S",
                   help="Step 3: σ₁, the smoothing Gaussian's standard deviation, in segments (Table 15). Default "
                        "10 released (both datasets); paper 10 UCF, 30 XD"),
    "sigma2": _opt("--sigma2", type=positive_fraction, metavar="F",
                   help="Step 3: σ₂ of the position weighting, as a fraction of the video's length in frames "
                        "(Table 17: 0.25, 0.5, 0.75). Default 0.5, i.e. ⌊F/2⌋"),
    "classes": _opt("--classes", type=class_list, metavar="A,B",
                    help="evaluate only the videos of these classes (UCF folders such as RoadAccidents,Shoplifting; "
                         "XD label codes such as B1,G), without normal videos unless --with-normal (Table 11)"),
    "with_normal": _opt("--with-normal", action="store_true",
                        help="with --classes: add every normal video to the evaluated set"),
    "traffic_scores": _opt("--traffic-scores", type=existing_dir, metavar="DIR",
                           help="Step 1 scores made with the traffic questions Q_traffic (Table 11's second row)"),
    "store_scores": _opt("--store-scores", type=existing_dir, metavar="DIR",
                         help="Step 1 scores made with the store questions Q_store (Table 11's third row)"),
    # figures
    "plot_run": _opt("--run", type=existing_dir, required=True, metavar="DIR",
                     help="a compute_auc.py output (score curves) or a training.py output (training curves)"),
    "plot_scores": _opt("--scores", type=existing_dir, metavar="DIR",
                        help="Step 1 scores (<key>.json): segment answers from there instead of the run's stages.npz"),
    "plot_annotations": _opt("--annotations", type=existing_file, metavar="FILE",
                             help="test annotations, for the ground truth of score curves"),
    "plot_videos": _opt("--videos", type=key_list, metavar="KEY,KEY",
                        help="videos to draw (default: every video of the run)"),
    "smooth": _opt("--smooth", type=positive_int, default=5, metavar="N",
                   help="moving average over N validations in the training curve (default: %(default)s, as Fig. 9)"),
    # make_annotations (an annotation file for your own videos)
    "annotations_out": _opt("--output", type=output_file, required=True, metavar="FILE",
                            help="annotation file to write (JSON, the format of UCF_Eval.json / xd_test_800.json)"),
    "labels": _opt("--labels", type=existing_file, metavar="CSV",
                   help="optional labels: columns video,class,intervals (see Data/README.md); without it the "
                        "file holds keys and lengths only"),
    "overwrite_file": _opt("--overwrite", action="store_true", help="replace the output file if it exists"),
    # download (the authors' released artifacts)
    "download_dataset": _opt("--dataset", choices=DATASETS + ("all",), default="all",
                             help="ucf, xd or all (default: %(default)s)"),
    "download_what": _opt("--what", type=artifact_list, default=ARTIFACTS, metavar="LIST",
                          help=f"comma-separated, from {','.join(ARTIFACTS)} (default: all)"),
    "dest": _opt("--dest", type=output_dir, default="Data", metavar="DIR",
                 help="where the documented Data/ layout is filled (default: Data/ in the current folder)"),
    "mirror": _opt("--mirror", type=mirror_url, metavar="URL",
                   help="fetch everything from URL instead: URL/github/<owner>/<repo>/<commit>/<path> and "
                        "URL/drive/<file id> (see Data/README.md)"),
    "download_retries": _opt("--retries", type=non_negative_int, default=3, metavar="N",
                    help="retries of an interrupted transfer, each resuming where it stopped (default: %(default)s)"),
    # InternVL2 conversion
    "convert_src": _opt("src", type=existing_dir, metavar="SRC",
                        help="original InternVL2 checkpoint folder (config.json of InternVLChatModel)"),
    "convert_dst": _opt("dst", type=output_dir, metavar="DST", help="folder for the converted checkpoint"),
    "convert_overwrite": _opt("--overwrite", action="store_true", help="replace what DST holds"),
    # report (Inference/report.py; detect.py writes one too)
    "frame_scores": _opt("--frame-scores", type=existing_dir, metavar="DIR",
                         help="a compute_auc.py output (frame_scores/ and stages.npz) or its frame_scores/ folder: "
                              "final frame scores and the curves after each step (default: the Step 1 answers "
                              "alone, each over its segment's frames)"),
    "top_k": _opt("--top-k", type=positive_int, default=5, metavar="K",
                  help="the K highest-scoring segments of each video get thumbnails and their explanation "
                       "(default: %(default)s)"),
    "max_explanations": _opt("--max-explanations", type=positive_int, default=30, metavar="N",
                             help="at most N segments explained with their frames per video: the flagged ones "
                                  "(answer 1) and the top K, highest scores first (default: %(default)s)"),
    # detect.py (VERA on your own videos)
    "detect_inputs": _opt("inputs", type=Path, nargs="+", metavar="VIDEO_OR_FOLDER",
                          help="video files, or folders searched recursively for videos"),
    "detect_model": _opt("--model", type=model_ref, metavar="PATH_OR_ID",
                         help="local folder or Hugging Face id of the VLM (default: the paper's InternVL2-8B, "
                              "downloaded and converted once into the cache; see docs/models.md)"),
    "detect_features": _opt("--features", type=existing_file, metavar="FILE",
                            help="ImageBind's checkpoint (imagebind_huge.pth), for Step 2's segment features"),
    "detect_skip_bad_videos": _opt("--skip-bad-videos", action="store_true",
                                   help="leave out, naming them, the videos that cannot be decoded or are too "
                                        "short to score (under 2 frames), and go on with the others; without it "
                                        "such a video stops the run before Step 1"),
    "detect_dataset": _opt("--dataset", choices=DATASETS, default="ucf",
                           help="whose hyper-parameters Steps 2-3 use (paper protocol: ucf ω 15, σ₁ 10, K 10%%; "
                                "xd ω 30, σ₁ 30, K 15%%; default: %(default)s)"),
}


def check_backend_options(args: argparse.Namespace) -> None:
    """What argparse cannot check alone: the options that go with --backend (one-line ``VeraError``)."""
    if args.backend == "openai":
        if getattr(args, "model", None) is not None:
            raise VeraError("argument --model: with --backend openai the model runs on the servers; "
                            "name it with --served-model NAME")
        if args.served_model is None:
            raise VeraError("argument --served-model: required with --backend openai")
        if args.base_url is None:
            raise VeraError("argument --base-url: required with --backend openai")
        if args.frame_layout is None:
            args.frame_layout = "per-frame"  # the only layout a chat message can express
        elif args.frame_layout != "per-frame":
            raise VeraError(f"argument --frame-layout: the openai backend sends each frame as its own image and "
                            f"cannot express the {args.frame_layout!r} layout; use --frame-layout per-frame")
    else:
        for name, flag in (("served_model", "--served-model"), ("base_url", "--base-url")):
            if getattr(args, name, None) is not None:
                raise VeraError(f"argument {flag}: only with --backend openai")


# A flag of one command that users naturally type in another, and the flags the other takes instead
# (Step 1 and feature extraction take --device; training takes --accelerator and --devices).
FLAG_ALTERNATIVES = {
    "--device": ("--accelerator", "--devices"),
    "--accelerator": ("--device",),
    "--devices": ("--device",),
}


def _flag_usage(action: argparse.Action) -> str:
    flag = action.option_strings[-1]
    if action.nargs == 0:
        return flag
    if action.choices:
        return f"{flag} {{{','.join(action.choices)}}}"
    return f"{flag} {action.metavar or action.dest.upper()}"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as one ``VeraError`` line instead of usage text and exit.

    Abbreviations are off: a prefix of a flag (``--device`` of ``--devices``) is
    an unknown option, named as such, never silently another flag.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        # A flag of another command is named before argparse would complain of missing options.
        tokens = sys.argv[1:] if args is None else list(args)
        tokens = tokens[: tokens.index("--")] if "--" in tokens else tokens
        foreign = [flag for flag in dict.fromkeys(token.split("=", 1)[0] for token in tokens)
                   if flag in FLAG_ALTERNATIVES and flag not in self._option_string_actions]
        if foreign:
            self.error(f"unrecognized arguments: {' '.join(foreign)}")
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise VeraError(message + self._alternatives(message))

    def _alternatives(self, message: str) -> str:
        """For an unknown flag that another command takes, the flags this command takes instead."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        hints = []
        for flag in dict.fromkeys(token.split("=", 1)[0] for token in message[len(prefix):].split()):
            offered = [self._option_string_actions[alternative] for alternative in FLAG_ALTERNATIVES.get(flag, ())
                       if alternative in self._option_string_actions]
            if offered:
                hints.append(f"this command has no {flag}; it takes "
                             + " and ".join(_flag_usage(action) for action in offered))
        return f" ({'; '.join(hints)})" if hints else ""


def build_parser(description: str, items: Iterable[str | OneOf], prog: str | None = None) -> argparse.ArgumentParser:
    """A parser with the named options (and groups of alternatives), in the order given."""
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for item in items:
        if isinstance(item, OneOf):
            group = parser.add_mutually_exclusive_group(required=item.required)
            for name in item.names:
                OPTIONS[name].add_to(group, required=False)
        else:
            OPTIONS[item].add_to(parser)
    return parser


@dataclass
class Command:
    """A command's description and options; ``parse`` turns argv into a namespace or a one-line error."""

    description: str
    items: list[str | OneOf] = field(default_factory=list)
    prog: str | None = None
    # Checks argparse cannot make alone, run inside ``parse`` so a mistake is the only line printed.
    checks: tuple[Callable[[argparse.Namespace], None], ...] = ()

    def parser(self) -> argparse.ArgumentParser:
        return build_parser(self.description, self.items, self.prog)

    def parse(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """Parse ``argv``; inputs not named are taken from ``Data/`` where it holds them (``vera.data.layout``)."""

        args = self.parser().parse_args(argv)
        names = {name for item in self.items for name in (item.names if isinstance(item, OneOf) else (item,))}
        taken = fill_defaults(args, names)
        for check in self.checks:
            check(args)
        if getattr(args, "no_progress", False):
            from vera.progress import quiet_library_bars

            quiet_library_bars()
        for line in taken:
            print(f"using {line}")
        return args


def fill_defaults(args: argparse.Namespace, names: set[str]) -> list[str]:
    """Fill the unnamed inputs of ``names`` from ``Data/`` (``vera.data.layout``); one line per default taken.

    ``names`` are the option names the command takes (``vera.options``).
    """
    from vera.data.layout import PROMPTS, REQUIRED, XD_GT_FRAMES, data_root

    root, dataset = data_root(), getattr(args, "dataset", None)
    taken: list[str] = []

    def unnamed(dest: str) -> bool:
        return dest in names and getattr(args, dest, None) is None

    def take(dest: str, flag: str, path: Path) -> None:
        setattr(args, dest, path)
        taken.append(f"{flag} {path} (default from {root}/)")

    for dest, (flag, per_dataset, what) in REQUIRED.items():
        if unnamed(dest):
            if dataset is None:
                raise VeraError(f"argument {flag}: required (or --dataset, to take it from {root}/)")
            path = root / per_dataset[dataset]
            if not (path.is_dir() if dest == "scores" else path.is_file()):
                raise VeraError(f"argument {flag}: not given, and {path} is absent ({what}; python "
                                "Data/download.py fetches the authors' files into Data/)")
            take(dest, flag, path)
    optional = {"features": ("--features", root / f"features/{dataset}", dataset is not None, Path.is_dir),
                "gt_frames": ("--gt-frames", root / XD_GT_FRAMES,
                              dataset == "xd" and getattr(args, "metric", None) in (None, "ap"), Path.is_file)}
    for dest, (flag, path, applies, exists) in optional.items():
        if unnamed(dest) and applies and exists(path):
            take(dest, flag, path)
    for dest, (flag, name) in PROMPTS.items():
        if unnamed(dest):
            if (root / name).is_file():
                take(dest, flag, root / name)
            else:
                taken.append(f"the project's own template for {flag} ({root / name} is absent; "
                             "python Data/download.py --what prompts fetches the authors')")
    return taken


def scoring_options(args: argparse.Namespace):
    """The ``ScoringOptions`` of a parsed compute_auc/reproduce_tables command line; absent flags mean the defaults."""
    from vera.scoring.steps import ScoringOptions

    given = vars(args)
    fields = ("protocol", "score_field", "skip_step2", "skip_smoothing", "skip_position_weighting", "k_ratio",
              "random_k", "tau", "window", "sigma1", "sigma2", "classes", "with_normal")
    return ScoringOptions(dataset=args.dataset, metric=given.get("metric") or ("auc" if args.dataset == "ucf" else "ap"),
                          **{name: given[name] for name in fields if given.get(name) is not None})
