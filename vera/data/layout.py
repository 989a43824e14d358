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


# Required inputs of a dataset: option name → (flag, its path under Data/ per dataset, what it is).
REQUIRED = {
    "annotations": ("--annotations", TEST_ANNOTATIONS, "the test annotations"),
    "train": ("--train", TRAIN_LISTS, "the training list"),
    "val": ("--val", VAL_LISTS, "the validation list"),
    "scores": ("--scores", {"ucf": "scores/ucf", "xd": "scores/xd"}, "Step 1's segment scores"),
}
PROMPTS = {"prompt_file": ("--prompt-file", LEARNER_PROMPT),
           "optimizer_prompt_file": ("--optimizer-prompt-file", OPTIMIZER_PROMPT)}


def fill_defaults(args: argparse.Namespace, names: set[str]) -> list[str]:
    """Fill the unnamed inputs of ``names`` from ``Data/``; return one line per default taken, for the log.

    ``names`` are the option names the command takes (``vera.options``).
    """
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
