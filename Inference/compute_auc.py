"""Steps 2 and 3 of VERA, then the frame-level evaluation.

    python Inference/compute_auc.py --dataset ucf      # inputs from Data/ (python Data/download.py)
    python Inference/compute_auc.py --dataset ucf --annotations Data/UCF_Eval.json \\
        --scores Data/scores/ucf --features Data/features/ucf --output runs/ucf_auc

Writes OUTPUT/metrics.json, OUTPUT/frame_scores/<key>.npy, ROC/PR curves and
OUTPUT/stages.npz (each segment's value after every step, for Inference/plot.py).
The default ``released`` protocol reproduces the authors' scripts bit for bit;
--k-ratio, --random-k, --tau, --window, --sigma1 and --sigma2 change the
paper's hyper-parameters (default: the protocol's values), --classes A,B
evaluates a scenario subset.
A rerun replaces every output of the previous one; OUTPUT/run.json records the
options and inputs, and a folder made with others is refused unless --overwrite.
"""

from __future__ import annotations

from vera.options import Command, scoring_options

COMMAND = Command(__doc__, [
    "dataset", "annotations", "scores", "features", "scoring_output", "metric", "protocol", "score_field", "gt_frames",
    "allow_missing", "merge_xd_duplicates", "skip_step2", "skip_smoothing", "skip_position_weighting", "no_curves",
    "k_ratio", "random_k", "tau", "window", "sigma1", "sigma2", "classes", "with_normal", "overwrite",
], prog="compute_auc.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.data.annotations import load_test_annotations
    from vera.scoring.evaluate import evaluate, evaluation_folder, summary, write_outputs

    options = scoring_options(args)  # the protocol and the paper's hyper-parameters (vera/constants.py)
    if args.output is None:
        from pathlib import Path

        args.output = Path("runs") / f"{options.dataset}_{options.metric}_{options.protocol}"
    if not args.no_curves:
        from vera.figures import preload_plotting

        preload_plotting()
    # A folder this run may not write is refused now, not after the computation.
    folder = evaluation_folder(args.output, options, annotations=args.annotations, scores_dir=args.scores,
                               features_dir=args.features, gt_frames=args.gt_frames,
                               merge_xd_duplicates=args.merge_xd_duplicates, overwrite=args.overwrite)
    folder.check()

    # Reads: the test annotation, each video's Step 1 answers y (one 0/1 per segment) and its ImageBind features.
    videos = load_test_annotations(args.annotations, args.dataset, merge_xd_duplicates=args.merge_xd_duplicates)
    # For each video (vera/scoring/steps.py, Sec. 3.3): Step 2, the scene context of Eq. (4) (each segment's
    # score becomes the softmax-weighted mean over its K most similar segments); Step 3, Gaussian smoothing
    # over the segments, expansion to frames and the position weighting of Eq. (5). Then the frame-level metric:
    # ROC AUC (UCF-Crime) or AP (XD-Violence), by scikit-learn (vera/scoring/metrics.py).
    evaluation = evaluate(videos, args.scores, args.features, options, args.gt_frames, args.allow_missing)

    # Writes: metrics.json, frame_scores/<key>.npy, stages.npz (every step's values) and the ROC/PR curves.
    write_outputs(evaluation, folder.open(), curves=not args.no_curves)
    print(summary(evaluation))
    if args.merge_xd_duplicates:
        print(merge_report(args, videos, evaluation, options))
    print(f"wrote {args.output / 'metrics.json'}")
    return 0


def merge_report(args, merged: list, evaluation, options) -> str:
    """What --merge-xd-duplicates changed: the videos whose labels it changed, and the metric without it."""
    from vera.data.annotations import load_test_annotations
    from vera.scoring.evaluate import evaluate

    plain = {video.key: video for video in load_test_annotations(args.annotations, args.dataset)}
    changed = [video for video in merged if plain.get(video.key) != video]
    if not changed:
        return "--merge-xd-duplicates changed no video"
    without = evaluate(list(plain.values()), args.scores, args.features, options, args.gt_frames, args.allow_missing)
    lines = [f"--merge-xd-duplicates changed {len(changed)} videos (normal → violent, the intervals of their "
             f"'<key>.mp4' entries): {', '.join(video.key for video in changed)}",
             f"{options.metric.upper()} without merging: {100 * without.metrics['value']:.4f} %; "
             f"with: {100 * evaluation.metrics['value']:.4f} %"]
    return "\n".join(lines)


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
