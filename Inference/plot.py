"""The paper's plotted figures as PNG: score curves of test videos, training curves, question evolution.

    python Inference/plot.py --run runs/ucf_auc --annotations Data/UCF_Eval.json --videos Arrest007_x264 --output figures
    python Inference/plot.py --run runs/train-ucf --output figures
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("plot"))
