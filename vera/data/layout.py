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

import os
from pathlib import Path


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
