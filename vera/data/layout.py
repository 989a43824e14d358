"""The documented ``Data/`` layout (Data/README.md), and the defaults the commands take from it.

``python Data/download.py`` fills this layout; every command then finds its
inputs there when they are not named: the annotations and training lists of
``--dataset``, the authors' scores and features, ``name_gt_pair.json`` for
XD-Violence AP, and the authors' prompt files. ``Data/`` is looked up in the
current folder (``VERA_DATA`` names another one). A default is taken only
where the file exists; a required input that is neither given nor there is a
one-line error saying how to fetch it. Imports nothing heavy: options use it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vera.errors import VeraError

TEST_ANNOTATIONS = {"ucf": "UCF_Eval.json", "xd": "xd_test_800.json"}
TRAIN_LISTS = {"ucf": "UCF_Instruct_train.json", "xd": "xd_train.json"}
VAL_LISTS = {"ucf": "UCF_Instruct_val.json", "xd": "xd_val.json"}
XD_GT_FRAMES = "name_gt_pair.json"
LEARNER_PROMPT = "VERA_learner_instruct.txt"
OPTIMIZER_PROMPT = "VERA_optimizer_instruct.txt"


def data_root() -> Path:
    return Path(os.environ.get("VERA_DATA", "Data"))


def _file(name: str) -> Path | None:
    path = data_root() / name
    return path if path.is_file() else None


def _folder(name: str) -> Path | None:
    path = data_root() / name
    return path if path.is_dir() else None


def _missing(flag: str, path: Path, what: str) -> VeraError:
    return VeraError(f"argument {flag}: not given, and {path} is absent ({what}; python Data/download.py "
                     "fetches the authors' files into Data/)")


def fill_defaults(args: argparse.Namespace, names: set[str]) -> list[str]:
    """Fill the unnamed inputs of ``names`` from ``Data/``; return one line per default taken, for the log.

    ``names`` are the option names the command takes (``vera.options``).
    """
    dataset = getattr(args, "dataset", None)
    taken: list[str] = []

    def take(dest: str, flag: str, path: Path | None, required: bool, fallback: Path, what: str) -> None:
        if getattr(args, dest, None) is not None:
            return
        if path is None:
            if required:
                raise _missing(flag, fallback, what)
            return
        setattr(args, dest, path)
        taken.append(f"{flag} {path} (default from {data_root()}/)")

    def need_dataset(flag: str) -> str:
        if dataset is None:
            raise VeraError(f"argument {flag}: required (or --dataset, to take it from {data_root()}/)")
        return dataset

    if "annotations" in names and getattr(args, "annotations", None) is None:
        name = TEST_ANNOTATIONS[need_dataset("--annotations")]
        take("annotations", "--annotations", _file(name), True, data_root() / name, "the test annotations")
    if "train" in names and getattr(args, "train", None) is None:
        name = TRAIN_LISTS[need_dataset("--train")]
        take("train", "--train", _file(name), True, data_root() / name, "the training list")
    if "val" in names and getattr(args, "val", None) is None:
        name = VAL_LISTS[need_dataset("--val")]
        take("val", "--val", _file(name), True, data_root() / name, "the validation list")
    if "scores" in names and getattr(args, "scores", None) is None:
        name = f"scores/{need_dataset('--scores')}"
        take("scores", "--scores", _folder(name), True, data_root() / name, "Step 1's segment scores")
    if "features" in names and dataset is not None:
        take("features", "--features", _folder(f"features/{dataset}"), False, data_root(), "")
    if "gt_frames" in names and dataset == "xd" and getattr(args, "metric", None) in (None, "ap"):
        take("gt_frames", "--gt-frames", _file(XD_GT_FRAMES), False, data_root(), "")
    for dest, flag, name in (("prompt_file", "--prompt-file", LEARNER_PROMPT),
                             ("optimizer_prompt_file", "--optimizer-prompt-file", OPTIMIZER_PROMPT)):
        if dest in names and getattr(args, dest, None) is None:
            take(dest, flag, _file(name), False, data_root(), "")
            if getattr(args, dest) is None:
                taken.append(f"the project's own template for {flag} ({data_root() / name} is absent; "
                             "python Data/download.py --what prompts fetches the authors')")
    return taken
