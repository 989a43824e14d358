"""HTML reports: per video its score curve, top segments and the model's explanations; a sortable index.

    python Inference/report.py --scores Data/scores/ucf --frame-scores runs/ucf_auc --output runs/ucf_report
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("report"))
