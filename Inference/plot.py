"""The paper's plotted figures as PNG, from this repository's outputs.

    python Inference/plot.py --run runs/ucf_auc --annotations Data/UCF_Eval.json \\
        --videos Arrest007_x264,RoadAccidents127_x264 --output figures
    python Inference/plot.py --run runs/train-ucf --output figures

A compute_auc.py output (--run with metrics.json and stages.npz) gives one score curve per video
(OUTPUT/<key>.png, like Figs. 8 and 13): Step 1 answers (from --scores, else as the run scored them), after
Step 2, after smoothing, the final frame scores, the ground truth of --annotations shaded. A training.py
output (--run with validation.jsonl, history.jsonl) gives OUTPUT/training_curves.png (Fig. 9: validation
accuracy, and AUC where recorded, against the step, with an N-point moving average) and
OUTPUT/question_evolution.png / .md (Fig. 10: which step changed which question, and the texts).
"""

from __future__ import annotations

from vera.options import Command

COMMAND = Command(__doc__, [
    "plot_run", "output", "plot_annotations", "dataset_optional", "plot_scores", "plot_videos", "smooth",
], prog="plot.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.errors import VeraError

    if (args.run / "metrics.json").is_file():
        written = _score_curves(args)
    else:
        from vera.learning.run_state import HISTORY_FILE, VALIDATION_FILE

        if not (args.run / VALIDATION_FILE).is_file() and not (args.run / HISTORY_FILE).is_file():
            raise VeraError(f"{args.run} is neither a compute_auc.py output (metrics.json) nor a training.py output "
                            f"({VALIDATION_FILE}, {HISTORY_FILE})")
        written = _training(args, args.run / HISTORY_FILE, args.run / VALIDATION_FILE)
    for path in written:
        print(f"wrote {path}")
    return 0


def _score_curves(args) -> list:
    import numpy as np

    from vera.data.annotations import infer_dataset, load_test_annotations
    from vera.errors import VeraError
    from vera.figures import score_curve
    from vera.io import read_json
    from vera.scoring.score_files import read_segment_scores
    from vera.scoring.stages import read_stages

    if args.annotations is None:
        raise VeraError("score curves need --annotations (the test annotations, for the ground truth)")
    dataset = args.dataset or read_json(args.run / "metrics.json", "metrics file").get("dataset") \
        or infer_dataset(args.annotations)
    videos = {video.key: video for video in load_test_annotations(args.annotations, dataset)}
    frames_dir = args.run / "frame_scores"
    keys = args.videos or sorted(path.stem for path in frames_dir.glob("*.npy"))
    unknown = [key for key in keys if key not in videos]
    if unknown:
        raise VeraError(f"--videos: {', '.join(unknown[:5])} not in {args.annotations}")
    written = []
    for key in keys:
        path = frames_dir / f"{key}.npy"
        if not path.is_file():
            raise VeraError(f"video {key} was not scored in {args.run} (no {path})")
        stages, answers = read_stages(args.run, key), None
        if args.scores is not None:
            answers = read_segment_scores(args.scores / f"{key}.json", binary=False).scores
            if len(answers) != len(stages["answers"]):
                raise VeraError(f"video {key}: {args.scores / f'{key}.json'} has {len(answers)} segments, but "
                                f"{args.run} scored {len(stages['answers'])}")
        written.append(score_curve(videos[key], stages, np.load(path), args.output / f"{key}.png", answers))
    return written


def _training(args, history_path, validation_path) -> list:
    from vera.figures import question_evolution, read_jsonl, training_curves

    validations = read_jsonl(validation_path) if validation_path.is_file() else []
    written = []
    if validations:
        written.append(training_curves(validations, args.output / "training_curves.png", args.smooth))
    if history_path.is_file():
        written += question_evolution(read_jsonl(history_path), validations, args.output / "question_evolution.png")
    return written


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
