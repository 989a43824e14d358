"""Steps 2 and 3 of VERA, then the frame-level evaluation.

    python Inference/compute_auc.py --dataset ucf --annotations Data/UCF_Eval.json \
        --scores Data/scores/ucf --features Data/features/ucf --output runs/ucf_auc

Writes OUTPUT/metrics.json, OUTPUT/frame_scores/<key>.npy and ROC/PR curves.
The default ``released`` protocol reproduces the authors' scripts bit for bit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vera.annotations import DATASETS, load_test_annotations  # noqa: E402
from vera.errors import run_cli  # noqa: E402
from vera.evaluate import evaluate, summary, write_outputs  # noqa: E402
from vera.scoring import METRICS, PROTOCOLS, ScoringOptions  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--annotations", required=True, type=Path,
                        help="test annotations: VERA JSON (UCF_Eval.json, xd_test_800.json) or the official UCF txt")
    parser.add_argument("--scores", required=True, type=Path, help="folder of <key>.json segment scores (Step 1)")
    parser.add_argument("--features", type=Path, help="folder of <key>.npy segment features (needed for Step 2)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--metric", choices=METRICS, help="default: auc for ucf, ap for xd")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="released")
    parser.add_argument("--score-field", default="score",
                        help="segment value to score by: the 0/1 'score' (default) or a soft one such as Step 1's "
                             "'label_prob' (paper protocol; null values fall back to 'score')")
    parser.add_argument("--gt-frames", type=Path, help="XD-Violence frame labels of Wu et al. ({key: [0/1, …]})")
    parser.add_argument("--allow-missing", action="store_true", help="skip videos whose score or feature file is absent")
    parser.add_argument("--merge-xd-duplicates", action="store_true",
                        help="fold the 14 '<key>.mp4' entries of xd_annotations.json into their videos")
    parser.add_argument("--skip-step2", action="store_true", help="ablation: no scene context")
    parser.add_argument("--skip-smoothing", action="store_true", help="ablation: no temporal smoothing")
    parser.add_argument("--skip-position-weighting", action="store_true", help="ablation: no position weighting")
    parser.add_argument("--no-curves", action="store_true", help="do not draw roc.png / pr.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = ScoringOptions(
        dataset=args.dataset,
        metric=args.metric or ("auc" if args.dataset == "ucf" else "ap"),
        protocol=args.protocol,
        score_field=args.score_field,
        skip_step2=args.skip_step2,
        skip_smoothing=args.skip_smoothing,
        skip_position_weighting=args.skip_position_weighting,
    )
    videos = load_test_annotations(args.annotations, args.dataset, merge_xd_duplicates=args.merge_xd_duplicates)
    evaluation = evaluate(videos, args.scores, args.features, options, args.gt_frames, args.allow_missing)
    write_outputs(evaluation, args.output, curves=not args.no_curves)
    print(summary(evaluation))
    print(f"wrote {args.output / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
