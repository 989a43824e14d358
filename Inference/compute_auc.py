"""Steps 2 and 3 of VERA, then the frame-level evaluation.

    python Inference/compute_auc.py --dataset ucf --annotations Data/UCF_Eval.json \
        --scores Data/scores/ucf --features Data/features/ucf --output runs/ucf_auc

Writes OUTPUT/metrics.json, OUTPUT/frame_scores/<key>.npy and ROC/PR curves.
The default ``released`` protocol reproduces the authors' scripts bit for bit.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("compute_auc"))
