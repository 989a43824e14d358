"""Write an annotation file for a folder of your own videos, so every stage runs on them.

    python Data/make_annotations.py --videos DIR --dataset ucf --output my_videos.json [--labels labels.csv]

Finds every video below DIR, measures its length by decoding every frame, and
writes the test-annotation format of the chosen dataset (ucf: like
UCF_Eval.json, the class as folder; xd: like xd_test_800.json). The key of a
video is its file name without the last extension. Without --labels the file
holds keys and lengths only: enough for extract_features.py and
generate_initial_score.py; compute_auc.py needs labels (the CSV format is in
Data/README.md).
"""

from __future__ import annotations

from vera.errors import VeraError
from vera.options import Command

COMMAND = Command(__doc__, [
    "videos_in", "dataset", "annotations_out", "labels", "workers", "overwrite_file",
], prog="make_annotations.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    if args.output.exists() and not args.overwrite:  # said before decoding anything
        raise VeraError(f"{args.output} exists; pass --overwrite to replace it")
    from vera.data.annotations import NORMAL_CLASS
    from vera.data.own_videos import measure_videos, read_label_rows, read_labels, write_annotations

    if args.labels:
        read_label_rows(args.labels)  # a malformed CSV is told before every frame is decoded
    videos = measure_videos(args.videos, workers=args.workers)
    labels = read_labels(args.labels, videos) if args.labels else None
    write_annotations(videos, labels, args.dataset, args.output, overwrite=args.overwrite)
    frames = sum(video.length for video in videos)
    rates = sorted({round(video.fps, 3) for video in videos if video.fps})
    print(f"wrote {args.output}: {len(videos)} videos, {frames} frames"
          + (f", {sum(label.video_class != NORMAL_CLASS for label in labels.values())} anomalous" if labels else
             " (no labels: compute_auc.py needs --labels)"))
    if rates and rates != [30.0]:
        # The released windows assume 30 fps (±150 frames = 10 s); other rates need --fps for true 10 s.
        print(f"frame rates found: {', '.join(f'{rate:g}' for rate in rates)} fps; give --fps to "
              "extract_features.py and generate_initial_score.py for 10-second windows")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
