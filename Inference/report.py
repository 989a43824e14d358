"""An HTML report per video, and an index: score curves, top segments, and the model's explanations.

    python Inference/report.py --scores Data/scores/ucf --frame-scores runs/ucf_auc \\
        --annotations Data/UCF_Eval.json --videos Data/videos/ucf --output runs/ucf_report

--scores is a Step 1 output (<key>.json with the model's answers); --frame-scores a compute_auc.py output
(frame_scores/, stages.npz; without it the page shows the Step 1 answers alone); --annotations adds the
ground truth and the AUC; --frames or --videos add the frames the model saw. Writes OUTPUT/index.html
(every video, sortable) and OUTPUT/videos/<key>.html and <key>.png. The pages need no network: every image
is inside them.
"""

from __future__ import annotations

from vera.options import Command, OneOf

COMMAND = Command(__doc__, [
    "scores", "frame_scores", "plot_annotations", "dataset_optional", OneOf(("frames", "videos"), required=False),
    "output", "top_k", "max_explanations", "overwrite",
], prog="report.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.report.build import ReportSettings, write_report
    from vera.report.inputs import load_report_inputs

    # Reads: Step 1's answers (the explanations), compute_auc.py's frame scores and the annotation; writes a
    # self-contained HTML page per video (score curves, the top segments with their frames and answers).
    inputs = load_report_inputs(args.scores, args.frame_scores, args.annotations, args.dataset)
    settings = ReportSettings(args.output, args.frames, args.videos, args.top_k, args.max_explanations,
                              args.overwrite)
    index = write_report(inputs, settings, {"scores": args.scores, "frame_scores": args.frame_scores,
                                            "annotations": args.annotations})
    print(f"wrote {index} and {len(inputs.videos)} video pages")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
