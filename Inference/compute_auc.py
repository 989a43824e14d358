"""Steps 2 and 3 of VERA, then the frame-level evaluation (AUC/AP).

The options and what the command writes: ``python Inference/compute_auc.py --help``; the code: ``vera/commands/compute_auc.py``.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("compute_auc"))
