"""Step 1 of VERA: the VLM answers the guiding questions for every segment of every test video.

    python Inference/generate_initial_score.py --dataset ucf --annotations ../shared/data/annotations/UCF_Eval.json \
        --frames Data/frames/ucf --model OpenGVLab/InternVL3-8B-hf --preset ucf --output Data/scores/ucf

Writes OUTPUT/<key>.json (centre → start, end, score, response, parse_status,
well_formed, label_prob), OUTPUT/run.json and a summary of malformed answers.
Rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vera.annotations import DATASETS, load_test_annotations  # noqa: E402
from vera.backends import BACKENDS, load_backend  # noqa: E402
from vera.errors import VeraError, run_cli  # noqa: E402
from vera.prompts import (  # noqa: E402
    DEFAULT_FRAME_LAYOUT,
    FRAME_LAYOUTS,
    PRESET_QUESTIONS,
    load_questions,
    load_template,
    preset_questions,
)
from vera.step1 import Step1Runner, Step1Settings, parse_shard  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--annotations", required=True, type=Path,
                        help="test annotations with lengths (UCF_Eval.json, xd_test_800.json)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="folder of <key>/%%06d.jpg frame folders")
    source.add_argument("--videos", type=Path, help="folder holding <key>.mp4 (or .avi, …) anywhere below it")
    parser.add_argument("--model", required=True, help="local folder or Hugging Face id of the VLM")
    parser.add_argument("--backend", choices=BACKENDS, default="hf")
    questions = parser.add_mutually_exclusive_group(required=True)
    questions.add_argument("--questions", type=Path, help="text file, one guiding question per line")
    questions.add_argument("--preset", choices=list(PRESET_QUESTIONS), help="the published questions")
    parser.add_argument("--output", required=True, type=Path, help="folder for <key>.json and run.json")
    parser.add_argument("--batch-size", type=int, default=8, help="segments per generate call (default 8)")
    parser.add_argument("--shard", default="0/1", help="I/N: this process takes every N-th video from the I-th")
    parser.add_argument("--limit", type=int, help="only the first N videos of the annotation file")
    parser.add_argument("--prompt-file", type=Path,
                        help="learner template with $Data and 'Based on the analysis above' "
                             "(e.g. the authors' VERA_learner_instruct.txt); default: the project's own")
    parser.add_argument("--frame-layout", choices=FRAME_LAYOUTS, default=DEFAULT_FRAME_LAYOUT,
                        help="released: all frames at the first <image> (as the authors fed InternVL2); "
                             "per-frame: one frame per Frame line")
    parser.add_argument("--fps", type=float,
                        help="frame rate for a true 10-second window (default: 150 frames each side, "
                             "the released 30 fps assumption)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="answer length limit (default 1024)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: a GPU if there is one)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="model precision (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--allow-length-mismatch", action="store_true",
                        help="score a video whose frame count differs from the annotation, using the annotation")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo this run's videos and replace results made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise VeraError("--batch-size, --max-new-tokens and --limit must be at least 1")
    if args.fps is not None and args.fps <= 0:
        raise VeraError("--fps must be positive")
    questions = load_questions(args.questions) if args.questions else preset_questions(args.preset)
    template = load_template(args.prompt_file)
    videos = load_test_annotations(args.annotations, args.dataset)
    settings = Step1Settings(
        output=args.output, frames_dir=args.frames, videos_dir=args.videos, frame_layout=args.frame_layout,
        fps=args.fps, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        shard=parse_shard(args.shard), limit=args.limit, overwrite=args.overwrite,
        allow_length_mismatch=args.allow_length_mismatch,
        template_source=str(args.prompt_file) if args.prompt_file else "default", progress=not args.no_progress,
    )
    backend = load_backend(args.backend, args.model, device=args.device, dtype=args.dtype,
                           max_batch_size=args.batch_size)
    summary = Step1Runner(backend, template, questions, settings).run(videos)
    print(summary.text())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
