"""Every scoring table of the VERA paper in one run: the step ablation, each Step 2/3 hyper-parameter study
(Tables 13-17) and the scenario subsets (Table 11), with the paper's value beside ours.

    python Inference/reproduce_tables.py --dataset ucf --annotations Data/UCF_Eval.json \\
        --scores Data/scores/ucf --features Data/features/ucf --output runs/ucf_tables

Writes OUTPUT/<table>.md and OUTPUT/<table>.csv (shaped like the paper's tables), OUTPUT/tables.md (all of
them) and OUTPUT/tables.json ({table: [{"setting": {option: value}, "value": metric, "paper": value}]}; values
as fractions, at full precision). Each video's similarities and neighbours are computed once for all settings;
every number equals a separate compute_auc.py run with that setting, bit for bit.
"""

from __future__ import annotations

from vera.options import Command, scoring_options

COMMAND = Command(__doc__, [
    "dataset", "annotations", "scores", "features", "output", "metric", "protocol", "gt_frames", "allow_missing",
    "merge_xd_duplicates", "traffic_scores", "store_scores", "overwrite",
], prog="reproduce_tables.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.errors import VeraError

    if args.features is None:
        raise VeraError("--features is required: the tables vary Step 2, which compares segment features")
    from vera.data.annotations import NORMAL_CLASS, load_test_annotations
    from vera.runs import RunFolder
    from vera.scoring.tables import reproduce, write_tables

    base = scoring_options(args)
    videos = load_test_annotations(args.annotations, args.dataset, merge_xd_duplicates=args.merge_xd_duplicates)
    identity = {name: None if value is None else str(value) for name, value in vars(args).items()
                if name not in ("output", "overwrite")}
    folder = RunFolder(args.output, "reproduce_tables", {**identity, "metric": base.metric},
                       overwrite=args.overwrite).open()
    anomaly_classes = tuple(sorted({video.video_class for video in videos} - {NORMAL_CLASS}))
    tables = reproduce(videos, base, anomaly_classes, args.scores, args.features, args.traffic_scores,
                       args.store_scores, args.gt_frames, args.allow_missing)
    print(write_tables(tables, base, folder.path))
    print(f"wrote {folder.path / 'tables.json'}")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
